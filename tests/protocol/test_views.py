"""Stream views without a server: what one event changes in what a pool shows (PROTOCOL.md §5.5)."""

from __future__ import annotations

import jsonpatch
import orjson

from ooo_storage.protocol.filters import ListView
from ooo_storage.protocol.objects import Event, Object
from ooo_storage.protocol.views import PATCH_MAX_BYTES, SNAPSHOT, ListState, ObjectState


def _obj(key: str, data: object, created: int = 1, updated: int = 0) -> Object:
    return Object(created, updated, key.rpartition("/")[2], key, orjson.dumps(data))


def _set(obj: Object, revision: int) -> Event:
    return Event(obj.path, "set", obj, revision)


def test_object_change_is_a_patch_until_the_documents_are_large() -> None:
    state = ObjectState("doc")
    state.load(_obj("doc", {"n": 0, "pad": "x" * 1000}), 1)
    before = orjson.loads(state.data())
    change = state.apply(_set(_obj("doc", {"n": 1, "pad": "x" * 1000}, updated=2), 2))
    assert isinstance(change, list)
    assert jsonpatch.JsonPatch(change).apply(before) == orjson.loads(state.data())

    big = "y" * PATCH_MAX_BYTES
    assert state.apply(_set(_obj("doc", {"n": 2, "pad": big}, updated=3), 3)) is SNAPSHOT
    assert state.apply(_set(_obj("doc", {"n": 3, "pad": big}, updated=4), 4)) is SNAPSHOT
    assert orjson.loads(state.data())["data"] == {"n": 3, "pad": big}


def test_filtered_list_of_large_documents_sends_snapshots() -> None:
    view = ListView("l/*", object_fn=lambda key, obj: obj)  # any object filter: diffed whole
    state = ListState("l/*", view)
    state.load([], 1)
    small = state.apply(_set(_obj("l/1", {"v": 1}), 2))
    assert isinstance(small, list) and small[0]["op"] == "add"
    big = "z" * PATCH_MAX_BYTES
    assert state.apply(_set(_obj("l/2", {"v": big}, created=2), 3)) is SNAPSHOT
    assert state.apply(_set(_obj("l/2", {"v": big + "!"}, created=2, updated=4), 4)) is SNAPSHOT
    assert state.apply(Event("l/2", "del", _obj("l/2", {}, created=2), 5)) is SNAPSHOT  # back to small
    change = state.apply(_set(_obj("l/1", {"v": 2}, updated=6), 6))
    assert isinstance(change, list)
    assert [o["data"] for o in orjson.loads(state.data())] == [{"v": 2}]
