"""Event history (issue 11) across ``clear()`` and through the public ``replay``: clear emits no
event, so a replay across it would patch keys that are gone: the history's floor rises above it
(HistoryTrimmed, and a websocket resuming across it gets a snapshot). Real LevelDB, a real journal,
a real server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer, StorageError
from ooo_storage.errors import HistoryTrimmed
from ooo_storage.protocol.objects import Event
from ooo_storage.server import Server, ServerRunner


def _store(tmp: Path, history: bool = True) -> Layered:
    return Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(tmp / "db"),
        history=HistoryOptions(tmp / "history", max_bytes=1 << 20) if history else None,
    )


async def test_events_since_before_a_clear_raise_history_trimmed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    await store.set("a/1", 1)
    before = store.revision
    await store.set("a/2", 2)
    await store.clear()
    with pytest.raises(HistoryTrimmed):
        await anext(store.events("a/*", since=before))
    with pytest.raises(HistoryTrimmed):
        store.replay(store.revision - 1)
    after = store.revision
    await store.set("a/3", 3)  # the history goes on after the clear
    assert [e.key for e in store.replay(after)] == ["a/3"]
    await store.close()
    store = _store(tmp_path)  # and the cut survives a restart
    await store.start()
    with pytest.raises(HistoryTrimmed):
        store.replay(before)
    assert [e.key for e in store.replay(after)] == ["a/3"]
    await store.close()


async def test_replay_is_public_and_bounded_by_upto(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    start = store.revision
    for i in range(5):
        await store.set(f"k/{i}", i)
    middle = start + 3
    assert [e.key for e in store.replay(start, middle)] == ["k/0", "k/1", "k/2"]
    assert [e.revision for e in store.replay(middle)] == [middle + 1, middle + 2]
    await store.close()
    plain = _store(tmp_path / "plain", history=False)
    await plain.start()
    with pytest.raises(StorageError, match="history"):
        plain.replay(0)
    await plain.close()


async def test_a_websocket_resuming_across_a_clear_gets_a_snapshot(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    ws_base = runner.url.replace("http://", "ws://")
    try:
        async with aiohttp.ClientSession() as http:
            await store.set("c/1", {"n": 1})
            await store.set("c/2", {"n": 2})
            ws = await http.ws_connect(f"{ws_base}/c/*")
            first = orjson.loads((await ws.receive(timeout=5)).data)
            await ws.close()
            assert first["snapshot"] is True and len(first["data"]) == 2
            await store.clear()
            await store.set("c/3", {"n": 3})
            ws = await http.ws_connect(f"{ws_base}/c/*?v={first['version']}")
            frame = orjson.loads((await ws.receive(timeout=5)).data)
            await ws.close()
            # Before: a patch adding c/3 to a state that still held c/1 and c/2.
            assert frame["snapshot"] is True
            assert [o["index"] for o in frame["data"]] == ["3"]
    finally:
        await runner.stop()
        await store.close()


def test_single_event_items_from_an_earlier_version_still_decode() -> None:
    """Earlier versions wrote one journal item per event (JSON head, newline, data); batches are
    items starting with 0x00. Both decode, so a history kept across an upgrade replays."""
    from ooo_storage.layered import _decode_item

    old_set = b'[7,"set","o/1",5,6,"1","o/1"]\n{"v":1}'
    old_del = b'[8,"del","o/1"]'
    assert [(e.revision, e.operation, e.key) for e in _decode_item(old_set)] == [(7, "set", "o/1")]
    assert [e.object.value for e in _decode_item(old_set)] == [{"v": 1}]  # type: ignore[union-attr]
    batch = b"\x00" + b"".join(len(i).to_bytes(4, "little") + i for i in (old_set, old_del))
    assert [(e.revision, e.operation) for e in _decode_item(batch)] == [(7, "set"), (8, "del")]


async def test_many_events_and_transactions_span_batches_whole(tmp_path: Path) -> None:
    """Small segments make many batches: every event comes back once, in order, and each
    transaction whole (a batch never starts inside one)."""
    store = Layered(
        memory=MemoryLayer(), embedded=LevelDBLayer(tmp_path / "db"),
        history=HistoryOptions(tmp_path / "history", max_bytes=8 << 20, files=8),
    )
    await store.start()
    start = store.revision
    committed: list[tuple[int, str, int]] = []
    store.on_commit(lambda e: committed.append((e.revision, e.key, e.txn)))
    for i in range(3000):
        if i % 100 == 0:
            async with store.transaction() as tx:
                for j in range(5):
                    tx.set(f"t/{i}/{j}", {"pad": "y" * 500})
        else:
            await store.set(f"s/{i}", {"pad": "x" * 500})
    got = [(e.revision, e.key, e.txn) for e in store.replay(start)]
    assert got == committed
    for since in (start + 1, committed[700][0], committed[-2][0]):
        assert [e[0] for e in (
            (ev.revision,) for ev in store.replay(since))] == [c[0] for c in committed if c[0] > since]
    await store.close()


async def test_a_list_resume_across_set_with_meta_gets_a_snapshot(tmp_path: Path) -> None:
    """set_with_meta can give a key a new ``created`` (a new position in the list): its replayed
    event has txn -1, and a websocket resuming across it gets a snapshot, not a patch built on the
    key's old position."""
    store = _store(tmp_path)
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    ws_base = runner.url.replace("http://", "ws://")
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                await store.set(f"m/{i}", {"n": i})
            ws = await http.ws_connect(f"{ws_base}/m/*")
            first = orjson.loads((await ws.receive(timeout=5)).data)
            await ws.close()
            assert [o["index"] for o in first["data"]] == ["2", "1", "0"]
            old = await store.get("m/0")
            await store.set_with_meta("m/0", {"n": 9}, old.created + 10**12, old.created + 10**12)
            events = list(store.replay(int(first["version"], 16)))
            assert [(e.key, e.txn, e.more) for e in events] == [("m/0", -1, False)]
            ws = await http.ws_connect(f"{ws_base}/m/*?v={first['version']}")
            frame = orjson.loads((await ws.receive(timeout=5)).data)
            await ws.close()
            assert frame["snapshot"] is True
            assert [o["index"] for o in frame["data"]] == ["0", "2", "1"]
            await store.set("m/1", {"n": 5})  # a plain set afterwards is a plain event again
            assert [e.txn for e in store.replay(events[0].revision)] == [0]
    finally:
        await runner.stop()
        await store.close()


async def test_every_kind_of_event_replays_exactly_after_a_restart(tmp_path: Path) -> None:
    """Plain sets have their own binary frame in the history (no JSON head): every event, of
    every kind, mixed in one batch, replays after a restart equal to what the observers were told
    (object included), in order."""
    store = _store(tmp_path)
    await store.start()
    start = store.revision
    told: list[Event] = []
    store.on_commit(told.append)
    await store.set("u/1", {"v": 1})
    await store.set("u/1", [1, "é", None])  # an overwrite: updated set
    await store.push("logs/*", {"line": 1})
    await store.set_with_meta("u/2", {"m": 1}, 5, 6)
    await store.set_with_meta("u/3", 7, 2**63 + 5, 0)  # beyond a signed 64-bit stamp: JSON
    await store.delete("u/2")
    async with store.transaction() as tx:
        tx.set("u/4", 4)
        tx.delete("u/1")
    await store.set("a-long/key/with.dots_and-dashes/" + "k" * 300, {"x": "y" * 2000})
    await store.delete("logs/*")
    await store.close()

    store = _store(tmp_path)
    await store.start()
    moved = {"u/2", "u/3"}  # set_with_meta's events replay with txn -1 (a resume takes a snapshot)
    expected = [e._replace(txn=-1) if e.key in moved and e.operation == "set" else e for e in told]
    assert list(store.replay(start)) == expected
    await store.close()


def test_a_batch_of_json_and_binary_set_frames_decodes() -> None:
    """A batch written before sets had their binary frame (JSON heads) and one after both decode."""
    from ooo_storage.layered import _decode_item

    old_set = b'[7,"set","o/1",5,6,"1","o/1"]\n{"v":1}'
    new_set = (
        (33 - 4 + 3 + 7).to_bytes(4, "little") + b"\x01" + (8).to_bytes(8, "little")
        + (5).to_bytes(8, "little") + (9).to_bytes(8, "little") + (3).to_bytes(4, "little")
        + b"o/1" + b'{"v":2}'
    )
    batch = b"\x00" + len(old_set).to_bytes(4, "little") + old_set + new_set
    events = list(_decode_item(batch))
    assert [(e.revision, e.operation, e.key) for e in events] == [(7, "set", "o/1"), (8, "set", "o/1")]
    assert [tuple(e.object) for e in events if e.object is not None] == [
        (5, 6, "1", "o/1", b'{"v":1}'), (5, 9, "1", "o/1", b'{"v":2}'),
    ]


async def test_a_stamp_no_history_can_hold_loses_the_event_not_the_write(tmp_path: Path) -> None:
    """A created stamp beyond 64 bits (set_with_meta) has no frame: the write is committed and
    acknowledged, and replays across its event raise HistoryTrimmed instead of a TypeError."""
    store = _store(tmp_path)
    await store.start()
    before = store.revision
    await store.set_with_meta("u/1", 1, 2**70, 0)
    assert store.peek("u/1") is not None
    with pytest.raises(HistoryTrimmed):
        store.replay(before)
    after = store.revision
    await store.set("u/2", 2)
    assert [e.key for e in store.replay(after)] == ["u/2"]
    await store.close()
