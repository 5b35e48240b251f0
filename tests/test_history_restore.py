"""Restoring a copied data directory with its event history (issue 11, finding 1): the copy carries
the history's state, so nothing in it tells the restore from a restart; a version the server that
ran on after the copy gave its clients must then not be resumed from the copy's history (its
changes are not there): HistoryTrimmed (a snapshot, a 410), while the copy's own versions still
replay. Real LevelDB, a real journal, the directory copied with shutil while the store is closed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from ooo_storage import HistoryTrimmed, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.layered import HistoryOptions

MODES = {
    "batched": (False, None),  # events in batches on the loop, journal closed cleanly
    "leveldb-sync": (True, None),  # events inside LevelDB's group commit
    "journal-fsync": (False, True),  # the writer waits for the journal's fsync
}


def _store(data: Path, mode: str) -> Layered:
    sync, durable = MODES[mode]
    return Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(data / "db", sync=sync),
        history=HistoryOptions(data / "history", max_bytes=1 << 20, durable=durable),
    )


async def _start_later(store: Layered, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Start ``store`` as if ``seconds`` had passed: a restore comes well after the original's
    last start (within ~1 s its revisions may still be above the wall clock: docs/operations.md)."""
    real = time.time_ns
    with monkeypatch.context() as patch:
        patch.setattr(time, "time_ns", lambda: real() + int(seconds * 1e9))
        await store.start()


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_version_of_the_server_that_ran_on_after_the_copy_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    data, backup = tmp_path / "data", tmp_path / "backup"
    store = _store(data, mode)
    await store.start()
    for i in range(4):
        await store.set(f"b/k{i}", {"i": i})
    copied = store.revision  # the last version the copy's lineage issued
    await store.set("b/k1", {"i": 1, "v": 2})
    await store.close()
    shutil.copytree(data, backup)  # the backup, server stopped

    store = _store(data, mode)
    await store.start()
    for i in range(4, 7):  # written after the backup
        await store.set(f"b/k{i}", {"i": i})
    await store.delete("b/k0")
    version = store.revision  # what a client of the original holds
    await store.close()

    shutil.rmtree(data)
    shutil.copytree(backup, data)  # the restore
    store = _store(data, mode)
    await _start_later(store, monkeypatch, 2.0)
    start = store.revision
    for i in range(8):  # past ``version`` whatever the clocks
        await store.set("b/k1", {"after": "restore", "n": i})
    try:
        for since in (version, start - 1, copied + 2):
            with pytest.raises(HistoryTrimmed, match="not issued by this store's data"):
                list(store.replay(since))
            with pytest.raises(HistoryTrimmed):
                async for _ in store.events("b/*", since=since):
                    break
        # The copy's own versions still replay: its events, then the restored server's.
        replayed = [(e.operation, e.key) for e in store.replay(copied)]
        assert replayed == [("set", "b/k1")] * 9
        assert store.peek("b/k0") is not None and store.peek("b/k5") is None
    finally:
        await store.close()


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_restart_still_resumes_from_the_last_version_before_it(
    tmp_path: Path, mode: str
) -> None:
    store = _store(tmp_path, mode)
    await store.start()
    await store.set("a", 1)
    before = store.revision
    await store.set("b", 2)
    last = store.revision
    await store.close()
    store = _store(tmp_path, mode)
    await store.start()
    await store.set("c", 3)
    try:
        assert [e.key for e in store.replay(before)] == ["b", "c"]
        assert [e.key for e in store.replay(last)] == ["c"]
    finally:
        await store.close()


async def test_the_gaps_of_earlier_restarts_are_kept_across_restarts(tmp_path: Path) -> None:
    store = _store(tmp_path, "batched")
    await store.start()
    await store.set("a", 1)
    last = store.revision
    await store.close()
    store = _store(tmp_path, "batched")
    await store.start()
    first_gap = store.revision - 1  # never issued: the start itself is the state at the last one
    await store.set("b", 2)
    await store.close()
    store = _store(tmp_path, "batched")
    await store.start()
    try:
        with pytest.raises(HistoryTrimmed):
            list(store.replay(first_gap))
        assert [e.key for e in store.replay(last)] == ["b"]
    finally:
        await store.close()
