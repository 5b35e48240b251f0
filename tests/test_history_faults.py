"""A history journal that fails under a durable store (issue 11, outside attack 3): a journal that
cannot take an append (its disk full, here: a segment it cannot create) never costs LevelDB's copy
of an event, a start does not fail for it, the history catches up when it can; a damaged first
journal item no longer turns every resume into a 410. Real LevelDB, real journal files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.errors import HistoryTrimmed
from ooo_storage.journal import Journal
from ooo_storage.layered import _BATCH_MAGIC, HistoryOptions, _decode_item, _History

_SEGMENTS = range(1, 200)
"""Segment first indexes blocked: a journal segment is ``events_<first:020d>.dat``."""


def _store(base: Path) -> Layered:
    # 8 segments of 128 KiB: a few hundred 1 KiB events need a new segment, none is evicted.
    history = HistoryOptions(base / "history", max_bytes=1 << 20, files=8)
    return Layered(memory=MemoryLayer(), embedded=LevelDBLayer(base / "db", sync=True), history=history)


def _block(base: Path) -> None:
    """Make every new journal segment fail to open (a directory where its data file goes): a real
    failing append, as on a full disk."""
    for first in _SEGMENTS:
        (base / "history" / f"events_{first:020d}.dat").mkdir(exist_ok=True)


def _unblock(base: Path) -> None:
    for first in _SEGMENTS:
        path = base / "history" / f"events_{first:020d}.dat"
        if path.is_dir():
            path.rmdir()


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of a file fail (EFBIG) in this process meanwhile, as on a full
    disk. LevelDB's files stay small at a start (it compresses the padding), the journal's do not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _history(store: Layered) -> _History:
    history = store._history
    assert history is not None
    return history


async def _catch_up(store: Layered) -> None:
    history = _history(store)
    history._catch_up_at = 0.0  # now, not in _CATCH_UP_EVERY seconds
    await history.trim()


async def _fill(store: Layered, start: int, n: int) -> None:
    """``n`` sets of about 1 KiB, 50 at a time (distinct keys: one group commit)."""
    for low in range(start, start + n, 50):
        await asyncio.gather(
            *(store.set(f"k/{i % 50}", {"i": i, "pad": "x" * 1000}) for i in range(low, min(low + 50, start + n)))
        )


def _kept_revisions(store: Layered) -> set[int]:
    layer = store.embedded
    assert isinstance(layer, LevelDBLayer)
    return {e.revision for _, f in layer.kept_events() for e in _decode_item(_BATCH_MAGIC + f)}


async def test_a_failed_append_keeps_leveldb_copies_and_the_history_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    await store.start()
    try:
        await _fill(store, 0, 10)
        version = store.revision
        _block(tmp_path)
        with caplog.at_level(logging.ERROR, "ooo_storage"):
            await _fill(store, 10, 300)
            for _ in range(3):
                await _history(store).trim()
        last = store.revision
        journal = {e.revision for e in _history(store).replay(version, last)}
        assert len(journal) < last - version  # the journal could not take them all
        # every event the journal lacks is still in LevelDB (the old trim dropped them)
        assert set(range(version + 1, last + 1)) <= journal | _kept_revisions(store)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 2, [r.getMessage() for r in errors]  # not one per batch
        with pytest.raises(HistoryTrimmed):  # never a replay missing them
            list(store.replay(version))
        _unblock(tmp_path)
        await _catch_up(store)
        await _fill(store, 310, 5)
        events = list(store.replay(version))
        assert [e.revision for e in events] == list(range(version + 1, store.revision + 1))
        assert events[-1].object is not None and events[-1].object.path == "k/14"
    finally:
        await store.close()


CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_history_faults import _block, _fill, _store

    async def main(base):
        store = _store(base)
        await store.start()
        await _fill(store, 0, 10)
        print(store.revision, flush=True)
        _block(base)  # its disk full: the journal lacks what follows, LevelDB keeps it
        await _fill(store, 10, 300)
        print(store.revision, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(Path(sys.argv[1])))
    """
)


async def test_a_start_with_a_journal_that_cannot_take_the_copies_serves_and_catches_up(
    tmp_path: Path,
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    version, last = map(int, child.stdout.split())
    _unblock(tmp_path)
    store = _store(tmp_path)
    with _file_size_limit(100 << 10):  # the journal's segments are 128 KiB: it can't take them
        await store.start()  # was: StorageUnavailable "can't open the history ... File too large"
    try:
        assert (await store.get("k/9")).data == b'{"i":309,"pad":"' + b"x" * 1000 + b'"}'
        with pytest.raises(HistoryTrimmed):
            list(store.replay(version))
        await _catch_up(store)
        events = list(store.replay(version))
        assert [e.revision for e in events] == list(range(version + 1, last + 1))
        # a version issued while the journal lacked its events is not taken for a restart's gap
        assert [e.revision for e in store.replay(last - 5)] == list(range(last - 4, last + 1))
    finally:
        await store.close()


async def test_a_damaged_first_item_raises_the_floor_past_it_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    await store.start()
    for i in range(5):  # several journal items
        await _fill(store, i * 5, 5)
        _history(store).write()
    await store.close()
    segment = next((tmp_path / "history").glob("events_*.dat"))
    data = bytearray(segment.read_bytes())
    data[0:200] = bytes(200)  # zero the data of item 0
    segment.write_bytes(bytes(data))
    store = _store(tmp_path)
    await store.start()
    try:
        version = store.revision
        await _fill(store, 100, 3)
        with caplog.at_level(logging.WARNING, "ooo_storage"):
            events = list(store.replay(version))  # was: 410 for every version, for good
            list(store.replay(version))
        assert [e.revision for e in events] == list(range(version + 1, version + 4))
        warnings = [r for r in caplog.records if "damaged" in r.getMessage()]
        assert len(warnings) == 1
        with pytest.raises(HistoryTrimmed):
            list(store.replay(0))
    finally:
        await store.close()


POWER_LOSS = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_history_faults import _fill, _store

    async def main(base):
        store = _store(base)
        await store.start()
        await _fill(store, 0, 10)
        print(store.revision, flush=True)
        await store._history.trim()  # LevelDB keeps the copies of what follows only
        for i in range(6):  # one journal item each
            await _fill(store, 10 + i * 5, 5)
            store._history.write()
        first = min(r for r, _ in store.embedded.kept_events())
        print(first, store.revision, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(Path(sys.argv[1])))
    """
)


async def test_an_item_lost_at_a_power_failure_is_put_back_from_leveldb_copies(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", POWER_LOSS, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    version, first_copy, last = map(int, child.stdout.split())
    index = (tmp_path / "history" / "events_00000000000000000000.idx").read_bytes()
    entries = [struct.unpack_from("<QQQQII", index, i * 48) for i in range(len(index) // 48)]
    damaged = [e for e in entries if e[1] > first_copy][2]  # an item of the copies' range, mid-way
    with open(tmp_path / "history" / "events_00000000000000000000.dat", "r+b") as data:
        data.seek(damaged[3])
        data.write(bytes(damaged[4]))  # its page never reached the disk
    store = _store(tmp_path)
    await store.start()
    try:
        events = list(store.replay(version))  # was: 410 (the journal's damaged item) for good
        assert [e.revision for e in events] == list(range(version + 1, last + 1))
        assert events[-1].object is not None and events[-1].object.data.startswith(b'{"i":39,')
    finally:
        await store.close()


async def test_journal_truncate_drops_the_tail_across_segments_durably(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_file_size=4096, max_files=8)
    journal.append_tagged_nowait(*((i + 1, bytes([i]) * 1000) for i in range(10)))  # 3-4 segments
    assert len(journal.log.segments) > 2
    assert journal.truncate(4) == 6  # within the second segment (3 items per segment)
    assert (journal.next_index, journal.log.last_tag, len(journal.log.segments)) == (4, 4, 2)
    journal.append_tagged_nowait((40, b"again"))
    await journal.close()
    reopened = Journal(tmp_path, max_file_size=4096, max_files=8)
    try:
        assert reopened.read(2, 3, 4) == [b"\x02" * 1000, b"\x03" * 1000, b"again"]
        assert (reopened.next_index, reopened.log.last_tag) == (5, 40)
    finally:
        await reopened.close()
