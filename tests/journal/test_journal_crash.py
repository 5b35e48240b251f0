"""The journal under kill -9: a writer killed at random points never leaves a torn entry that a
reader could get, and every append acknowledged with ``sync=True`` is there after the restart."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from journal_child import crash, parse_crash_item

from ooo_storage.journal import SegmentLog


def _run_and_kill(directory: Path, round_: int, rng: random.Random) -> dict[int, int]:
    """Fork a crash writer (a real process, without an interpreter start-up), let it acknowledge
    for a random while, kill -9 it; returns its acknowledged ``{index: seq}``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write until killed
        try:
            os.close(read_end)
            sys.stdout = os.fdopen(write_end, "w")
            asyncio.run(crash(str(directory), round_))
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end) as out:
        if not select.select([out], [], [], 30)[0]:  # never hang on a child stuck at start
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked writer printed nothing in 30 s")
        first = out.readline()  # the writer is up and appending
        assert first.startswith("ACK"), f"the writer failed to start: {first!r}"
        time.sleep(rng.uniform(0.002, 0.05))  # the crash point, not a synchronisation
        os.kill(pid, signal.SIGKILL)
        lines = [first, *out.read().splitlines()]  # acknowledged before the kill landed
    os.waitpid(pid, 0)
    acked: dict[int, int] = {}
    for line in lines:
        if line.startswith("ACK"):
            _, index, seq = line.split()
            acked[int(index)] = int(seq)
    return acked


def test_kill9_writer_loses_no_ack_and_returns_no_torn_entry(tmp_path: Path) -> None:
    rng = random.Random(11)
    acked: dict[int, tuple[int, int]] = {}
    for round_ in range(20):
        acked.update({index: (round_, seq) for index, seq in _run_and_kill(tmp_path, round_, rng).items()})
        with SegmentLog(tmp_path) as log:
            found = {index: parse_crash_item(item) for index, item in log.scan()}  # every one whole
            missing = {index: want for index, want in acked.items() if found.get(index) != want}
            assert not missing, f"round {round_}: acknowledged appends lost: {sorted(missing)[:10]}"
            assert log.next_index == len(found), "indexes are consecutive: no hole, no torn entry kept"
    assert len(acked) >= 20  # every writer got work acknowledged before it was killed
