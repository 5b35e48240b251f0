"""``Layered.apply_remote``: writes committed by another writer of a shared persistent layer reach the
mirror and the watchers, in order, once, with a local or a shared revision."""

from __future__ import annotations

from ooo_storage import Layered, MemoryLayer
from ooo_storage.protocol.objects import Event, make_object


def _obj(key: str, data: bytes, created: int = 1, updated: int = 0):
    return make_object(created, updated, key.rpartition("/")[2], key, data)


async def test_remote_set_and_delete_reach_mirror_and_observers() -> None:
    store = Layered(MemoryLayer())
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    try:
        assert store.apply_remote("a/1", _obj("a/1", b'{"x":1}'))
        assert (await store.get("a/1")).value == {"x": 1}
        assert not store.apply_remote("a/1", _obj("a/1", b'{"x":1}'))  # already there: no event
        assert store.apply_remote("a/1", None)
        assert store.peek("a/1") is None
        assert not store.apply_remote("a/1", None)  # already gone
        assert [(e.key, e.operation) for e in seen] == [("a/1", "set"), ("a/1", "del")]
        assert seen[1].object is not None and seen[1].object.data == b'{"x":1}'
        assert seen[0].revision < seen[1].revision == store.revision
    finally:
        await store.close()


async def test_shared_revisions_move_the_store_and_old_ones_are_ignored() -> None:
    store = Layered(MemoryLayer())
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    try:
        base = store.revision
        assert store.apply_remote("k", _obj("k", b"1"), base + 10)
        assert store.revision == base + 10 and seen[-1].revision == base + 10
        assert not store.apply_remote("k", _obj("k", b"2"), base + 10)  # replayed: ignored
        assert (await store.get("k")).data == b"1"
        await store.set("k", 3)  # a local write continues above the shared revision
        assert seen[-1].revision == base + 11
    finally:
        await store.close()


async def test_remote_glob_delete_is_one_event() -> None:
    store = Layered(MemoryLayer())
    await store.start()
    for i in range(3):
        await store.set(f"g/{i}", i)
    seen: list[Event] = []
    store.on_commit(seen.append)
    try:
        assert store.apply_remote("g/*", None)
        assert await store.get_list("g/*") == []
        assert [(e.key, e.operation, e.object) for e in seen] == [("g/*", "del", None)]
    finally:
        await store.close()
