"""Events larger than a history batch (1 MiB) but within a segment (issue 11, finding 4): each is a
journal item of its own, replayed whole (also after a restart, and from LevelDB's copies); only an
event larger than a segment is left out, and the log says the real sizes. Real LevelDB, real
journals."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ooo_storage import Event, HistoryTrimmed, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.layered import _BATCH_MAGIC, HistoryOptions, _decode_item, _restored

BIG = {"s": "z" * (2 << 20)}  # a 2 MiB value: twice a batch, a quarter of a default segment (8 MiB)


def _store(base: Path, sync: bool = False, max_bytes: int = 64 << 20) -> Layered:
    return Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(base / "db", sync=sync),
        history=HistoryOptions(base / "history", max_bytes=max_bytes),
    )


def _shape(events: list[Event]) -> list[tuple[int, str, str, bytes | None]]:
    return [(e.revision, e.operation, e.key, e.object.data if e.object else None) for e in events]


@pytest.mark.parametrize("sync", [False, True], ids=["batched", "leveldb-sync"])
async def test_an_event_of_two_mib_is_kept_and_replays_also_after_a_restart(
    tmp_path: Path, sync: bool
) -> None:
    store = _store(tmp_path, sync)
    await store.start()
    since = store.revision
    told: list[Event] = []
    store.on_commit(told.append)
    await store.set("v/big", BIG)  # the journal's first item: the oldest one is read alone
    await store.set("v/a", 1)
    await store.set("v/big", {"s": BIG["s"] + "y"})
    await store.set("v/a", 2)
    try:
        assert _shape(list(store.replay(since))) == _shape(told)
        assert len(told[2].object.data) == (2 << 20) + 9  # type: ignore[union-attr]
    finally:
        await store.close()
    store = _store(tmp_path, sync)
    await store.start()
    try:
        assert _shape(list(store.replay(since))) == _shape(told)
    finally:
        await store.close()


async def test_leveldb_copies_larger_than_a_journal_item_are_put_back_in_several(tmp_path: Path) -> None:
    """A group commit's copy of several big events is cut between events into items a segment
    holds (a start appends the copies a killed process's journal lacked)."""
    store = _store(tmp_path, sync=True, max_bytes=8 * (3 << 20))  # 3 MiB segments
    await store.start()
    assert store._history is not None and isinstance(store.embedded, LevelDBLayer)
    history = store._history
    since = store.revision
    told: list[Event] = []
    store.on_commit(told.append)
    await asyncio.gather(*(store.set(f"v/{i}", BIG) for i in range(3)), store.set("v/a", 1))
    kept = store.embedded.kept_events()
    await store.close()
    assert max(len(frames) for _, frames in kept) > history._max_item  # one group, 6 MiB
    items, lost = _restored(kept, since, history._batch_bytes, history._max_item)
    assert lost == 0 and all(len(item) <= history._max_item for _, item in items)
    assert [tag for tag, _ in items] == sorted(tag for tag, _ in items)
    events = [e for _, item in items for e in _decode_item(item)]
    assert _shape(events) == _shape(told)
    assert all(item[:1] == _BATCH_MAGIC for _, item in items)


async def test_an_event_larger_than_a_segment_is_not_kept_and_the_log_says_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, max_bytes=8 * (64 << 10))  # 64 KiB segments
    await store.start()
    since = store.revision
    await store.set("v/a", 1)
    with caplog.at_level(logging.ERROR, logger="ooo_storage"):
        await store.set("v/big", {"s": "z" * 100_000})
    await store.set("v/a", 2)
    try:
        with pytest.raises(HistoryTrimmed):
            list(store.replay(since))
        big = store.revision - 1
        assert [e.key for e in store.replay(big)] == ["v/a"]
        assert "its 100" in caplog.text and "more than one history segment holds (65" in caplog.text
    finally:
        await store.close()
