"""Transactions survive kill -9 whole or not at all (issue 12): a real child process commits
transactions to a durable (``sync=True``) LevelDB store, with a durable event history, and is killed
with SIGKILL 20 times; after each kill the data and the history hold every acknowledged transaction
whole and no transaction in part."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.layered import HistoryOptions

WRITERS = 4

COMMITTER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer
    from ooo_storage.layered import HistoryOptions
    from ooo_storage.protocol.txn import TxnOp

    async def main(base, writers):
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(base + "/db", sync=True),
                        history=HistoryOptions(base + "/history"))
        await store.start()
        print("ready", store.revision, flush=True)

        async def writer(w):
            try:
                seq = (await store.get(f"p{w}/a")).value + 1
            except Exception:
                seq = 1
            while True:
                ops = [TxnOp("set", f"p{w}/a", seq), TxnOp("set", f"log/{w}/{seq}", seq),
                       TxnOp("set", f"p{w}/b", seq)]
                done = await store.commit(ops)
                sys.stdout.write(f"{w} {seq} {done.revision}\\n")
                sys.stdout.flush()
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def _store(base: Path, sync: bool = False) -> Layered:
    return Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(str(base / "db"), sync=sync),
        history=HistoryOptions(base / "history"),
    )


def _kill_after(base: Path, acks: int, delay: float) -> tuple[int, list[tuple[int, int]]]:
    """Run the committer until it acknowledged ``acks`` transactions, kill -9 it ``delay`` seconds
    later (a random moment of the commits in flight: right after an acknowledgement the next
    transactions have barely started); returns the revision it started at and every (writer,
    seq) it acknowledged."""
    child = subprocess.Popen(
        [sys.executable, "-c", COMMITTER, str(base), str(WRITERS)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    ready = child.stdout.readline().split()
    assert ready and ready[0] == "ready", f"the committer did not start: {ready}"
    lines = []
    for line in child.stdout:
        lines.append(line)
        if len(lines) >= acks:
            break
    time.sleep(delay)  # not a synchronisation: the moment of the kill, chosen at random
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate()
    lines += rest.splitlines(keepends=True)
    acked = [(int(w), int(s)) for w, s, _ in (ln.split() for ln in lines if ln.endswith("\n"))]
    return int(ready[1]), acked


async def _check(base: Path, started: int, acked: list[tuple[int, int]]) -> None:
    store = _store(base, sync=True)  # durable, as the committer: the history continues
    await store.start()
    try:
        for w in range(WRITERS):
            a, b = store.peek(f"p{w}/a"), store.peek(f"p{w}/b")
            assert (a is None) == (b is None), f"writer {w}: half a transaction ({a}, {b})"
            last = 0 if a is None or b is None else a.value
            assert b is None or b.value == last, f"writer {w}: p/a {last} but p/b {b.value}"
            logs = sorted(o.value for o in await store.get_list(f"log/{w}/*"))
            assert logs == list(range(1, last + 1)), f"writer {w}: logs {logs[-3:]} for pair {last}"
        for w, seq in acked:
            assert store.peek(f"log/{w}/{seq}") is not None, f"acknowledged {w}/{seq} lost"
        await _check_history(store, started)
    finally:
        await store.close()


async def _check_history(store: Layered, started: int) -> None:
    """Every transaction replayed since ``started`` is whole: its 3 events, in op order."""
    assert store._history is not None
    newest = store._history.journal.log.last_tag
    by_revision: dict[int, list[Event]] = defaultdict(list)
    if newest > started:
        async for event in store.events(since=started):
            by_revision[event.revision].append(event)
            if event.revision >= newest and not event.more:
                break
    for revision, events in by_revision.items():
        shape = [(e.key.split("/")[0][0], e.txn, e.more) for e in events]
        assert shape == [("p", 3, True), ("l", 3, True), ("p", 3, False)], (revision, events)


async def test_kill_9_never_leaves_half_a_transaction(tmp_path: Path) -> None:
    rng = random.Random(12)
    acked_total = 0
    for _ in range(20):
        started, acked = _kill_after(tmp_path, rng.randint(1, 10), rng.uniform(0, 0.02))
        acked_total += len(acked)
        await _check(tmp_path, started, acked)
    assert acked_total >= 20
