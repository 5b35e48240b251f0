"""Every rule of PROTOCOL.md §5.5 on the stream views, without a server, a socket or a sleep.

A :class:`Subscriber` holds what a client of the pool holds: a snapshot replaces it, a patch is
applied to it with the ``jsonpatch`` package (an implementation independent of ours), exactly as
the bytes of the frame say. After every event it must equal what the pool now shows; an answer of
``None`` (no frame, in ``no_patch`` mode too) must leave what the pool shows unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.protocol import jsontext, keys
from ooo_storage.protocol.filters import Limit, ListView
from ooo_storage.protocol.objects import Event, Object
from ooo_storage.protocol.views import SNAPSHOT, Change, ListState, ObjectState

EMPTY = {"created": 0, "updated": 0, "index": "", "data": {}}
S = 10**9  # one second of the clock, in ns


def obj(path: str, data: Any, created: int, updated: int = 0) -> Object:
    return Object(created, updated, path.rpartition("/")[2], path, orjson.dumps(data))


def put(o: Object, revision: int) -> Event:
    return Event(o.path, "set", o, revision)


def delete(o: Object, revision: int) -> Event:
    return Event(o.path, "del", o, revision)


def glob_delete(pattern: str, revision: int) -> Event:
    return Event(pattern, "del", None, revision)


class Subscriber:
    """A subscriber of one pool: follows the frames it would be sent and checks them."""

    def __init__(self, state: ObjectState | ListState) -> None:
        self.state = state
        self.doc: Any = orjson.loads(state.data())  # the initial snapshot

    def apply(self, event: Event) -> Change:
        before = self.state.data()
        change = self.state.apply(event)
        if change is None:
            assert self.state.data() == before, "nothing was sent, yet what the pool shows changed"
        elif change is SNAPSHOT:
            self.doc = orjson.loads(self.state.data())
        else:
            assert isinstance(change, list) and change, "an empty patch is never sent"
            wire = orjson.loads(jsontext.dumps(change))  # the frame's data, as the hub encodes it
            self.doc = jsonpatch.apply_patch(self.doc, wire)
        assert self.doc == orjson.loads(self.state.data())
        return change

    def values(self) -> list[Any]:
        return [item["data"] for item in self.doc]


def ops(change: Change) -> list[tuple[str, str]]:
    assert isinstance(change, list)
    return [(op["op"], op["path"]) for op in change]


def object_pool(key: str, current: Object | None, revision: int, **kw: Any) -> Subscriber:
    state = ObjectState(key, **kw)
    state.load(current, revision)
    return Subscriber(state)


def list_pool(objs: list[Object], revision: int, view: ListView | None = None) -> Subscriber:
    state = ListState(view.key if view else "l/*", view)
    state.load(sorted(objs, key=lambda o: (o.created, o.path), reverse=True), revision)
    return Subscriber(state)


def hide_odd(key: str, o: Object) -> Object | None:
    """An object filter: hides odd numbers, shows everything else wrapped with the key it got."""
    value = orjson.loads(o.data)
    if isinstance(value, int) and value % 2:
        return None
    return o._replace(data=orjson.dumps({"shown": value, "via": key}))


# -- single-key pools ------------------------------------------------------------------------------

ADA = obj("u/1", {"name": "ada", "age": 3}, created=10 * S)


def test_object_set_on_the_empty_object_is_a_snapshot() -> None:
    sub = object_pool("u/1", None, 5)
    assert sub.doc == EMPTY
    assert sub.apply(put(ADA, 6)) is SNAPSHOT
    assert sub.doc == orjson.loads(ADA.to_json())


def test_object_set_of_a_present_object_is_a_patch() -> None:
    sub = object_pool("u/1", ADA, 5)
    bob = ADA._replace(updated=11 * S, data=b'{"name":"bob","age":3}')
    change = sub.apply(put(bob, 6))
    assert sorted(ops(change)) == [("replace", "/data/name"), ("replace", "/updated")]
    assert sub.doc["data"] == {"name": "bob", "age": 3}


def test_object_set_that_changes_nothing_sends_nothing() -> None:
    sub = object_pool("u/1", ADA, 5)
    assert sub.apply(put(ADA, 6)) is None  # already part of the snapshot the pool was built from
    # what is shown does not change: the diff is empty, so no frame either
    constant = object_pool("u/1", ADA, 5, object_fn=lambda key, o: o._replace(updated=0, data=b"1"))
    assert constant.apply(put(ADA._replace(updated=11 * S, data=b'"other"'), 6)) is None


def test_object_delete_is_a_patch_to_the_empty_object() -> None:
    sub = object_pool("u/1", ADA, 5)
    assert isinstance(sub.apply(delete(ADA, 6)), list)
    assert sub.doc == EMPTY
    assert sub.apply(delete(ADA, 7)) is None  # absent already: nothing


def test_object_glob_delete_removes_only_what_was_written_before_it() -> None:
    sub = object_pool("u/1", ADA, 5)
    assert sub.apply(glob_delete("v/*", 6)) is None  # does not match
    assert sub.apply(glob_delete("u/1/*", 7)) is None  # more segments
    assert sub.apply(glob_delete("u/*", 4)) is None  # older than the object: it stays
    assert sub.doc["data"] == {"name": "ada", "age": 3}
    assert isinstance(sub.apply(glob_delete("u/*", 8)), list)
    assert sub.doc == EMPTY
    written_after = ADA._replace(created=12 * S)
    assert sub.apply(put(written_after, 10)) is SNAPSHOT
    assert sub.apply(glob_delete("u/*", 9)) is None  # delivered late: the object is newer


def test_object_glob_delete_of_the_empty_object_is_a_snapshot() -> None:
    sub = object_pool("u/1", None, 5)
    assert sub.apply(glob_delete("u/*", 6)) is SNAPSHOT  # "a snapshot of it if already empty"
    assert sub.doc == EMPTY


def test_object_filter_shows_hides_and_transforms() -> None:
    sub = object_pool("n/1", obj("n/1", 1, created=S), 5, object_fn=hide_odd)
    assert sub.doc == EMPTY  # hidden
    assert sub.apply(put(obj("n/1", 3, created=S, updated=2 * S), 6)) is None  # still hidden
    assert sub.apply(put(obj("n/1", 4, created=S, updated=3 * S), 7)) is SNAPSHOT
    assert sub.doc["data"] == {"shown": 4, "via": "n/1"}
    assert ("replace", "/data/shown") in ops(sub.apply(put(obj("n/1", 6, created=S, updated=4 * S), 8)))
    assert isinstance(sub.apply(put(obj("n/1", 7, created=S, updated=5 * S), 9)), list)  # hidden again
    assert sub.doc == EMPTY
    assert sub.apply(delete(obj("n/1", 7, created=S), 10)) is SNAPSHOT  # shown was already empty
    assert sub.doc == EMPTY


# -- list pools ------------------------------------------------------------------------------------


def items(*spec: tuple[str, int]) -> list[Object]:
    """``l/<name>`` objects whose value is their creation second."""
    return [obj(f"l/{name}", second, created=second * S) for name, second in spec]


def test_list_snapshot_is_newest_first() -> None:
    sub = list_pool(items(("a", 1), ("b", 3), ("c", 2)), 5)
    assert sub.values() == [3, 2, 1]
    assert list_pool([], 5).doc == []


def test_list_set_of_a_new_item_is_an_add_at_its_position() -> None:
    sub = list_pool(items(("a", 1), ("c", 3)), 5)
    (newest,) = items(("d", 4))
    assert ops(sub.apply(put(newest, 6))) == [("add", "/0")]
    (between,) = items(("b", 2))  # set_with_meta may write an item between others
    assert ops(sub.apply(put(between, 7))) == [("add", "/2")]
    assert sub.values() == [4, 3, 2, 1]
    (tie,) = items(("bb", 2))  # equal stamps: ordered by path
    assert ops(sub.apply(put(tie, 8))) == [("add", "/2")]


def test_list_set_of_a_present_item_is_a_replace_at_its_position() -> None:
    a, b, c = items(("a", 1), ("b", 2), ("c", 3))
    sub = list_pool([a, b, c], 5)
    assert ops(sub.apply(put(b._replace(updated=9 * S, data=b'"new"'), 6))) == [("replace", "/1")]
    assert sub.values() == [3, "new", 1]
    assert sub.apply(put(c, 7)) is None  # unchanged: already in the snapshot


def test_list_item_moved_by_set_with_meta_is_removed_and_added() -> None:
    a, b, c = items(("a", 1), ("b", 2), ("c", 3))
    sub = list_pool([a, b, c], 5)
    assert ops(sub.apply(put(a._replace(created=4 * S), 6))) == [("remove", "/2"), ("add", "/0")]
    assert sub.values() == [1, 3, 2]


def test_list_delete_of_a_present_item_is_a_remove_and_of_an_absent_one_nothing() -> None:
    a, b, c = items(("a", 1), ("b", 2), ("c", 3))
    sub = list_pool([a, b, c], 5)
    assert ops(sub.apply(delete(b, 6))) == [("remove", "/1")]
    assert sub.apply(delete(b, 7)) is None
    assert sub.values() == [3, 1]


def test_list_glob_delete_removes_items_written_before_it_in_one_snapshot() -> None:
    a, b = items(("a", 1), ("b", 2))
    sub = list_pool([a, b], 10)
    (c,) = items(("c", 3))
    assert sub.apply(put(c, 12)) is not None
    # The glob delete committed at revision 11 is delivered after the set of revision 12.
    assert sub.apply(glob_delete("l/*", 11)) is SNAPSHOT
    assert sub.values() == [3]
    assert sub.apply(glob_delete("l/*", 13)) is SNAPSHOT
    assert sub.doc == []


def test_list_glob_delete_narrower_than_the_pool() -> None:
    apple, avocado, banana = items(("apple", 1), ("avocado", 2), ("banana", 3))
    sub = list_pool([apple, avocado, banana], 5)
    assert sub.apply(glob_delete("l/a*", 6)) is SNAPSHOT
    assert sub.values() == [3]
    assert sub.apply(glob_delete("l/x*", 7)) is SNAPSHOT  # a peer glob: one snapshot even if none went
    assert sub.values() == [3]


def test_list_glob_delete_that_only_may_hold_items_of_the_pool() -> None:
    """``a/b/*`` is no peer of ``a/*/c`` but its delete can remove ``a/b/c`` (the index routes it)."""
    view = ListView("a/*/c")
    abc = obj("a/b/c", 1, created=S)
    sub = list_pool([obj("a/x/c", 2, created=2 * S)], 5, view)
    assert not keys.peer("a/*/c", "a/b/*")
    assert sub.apply(glob_delete("a/b/*", 6)) is None
    assert ops(sub.apply(put(abc, 7))) == [("add", "/1")]
    assert sub.apply(glob_delete("a/b/*", 8)) is SNAPSHOT
    assert sub.values() == [2]


def test_list_ascending_order_positions_count_from_the_oldest() -> None:
    view = ListView("l/*", limit=Limit(order="asc"))
    a, b, c = items(("a", 1), ("b", 2), ("c", 3))
    sub = list_pool([a, b], 5, view)
    assert sub.values() == [1, 2]
    assert ops(sub.apply(put(c, 6))) == [("add", "/2")]
    assert ops(sub.apply(delete(a, 7))) == [("remove", "/0")]
    assert sub.values() == [2, 3]


def test_list_limit_keeps_the_newest_and_evicts_with_remove_and_add() -> None:
    view = ListView("l/*", limit=Limit(2))
    a, b, c, d, e = items(("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5))
    sub = list_pool([a, b, c], 5, view)
    assert sub.values() == [3, 2]  # the snapshot is limited too
    assert ops(sub.apply(put(d, 6))) == [("remove", "/1"), ("add", "/0")]
    assert sub.values() == [4, 3]
    assert sub.apply(put(a, 7)) is None  # older than everything kept: never shown
    assert ops(sub.apply(delete(c, 8))) == [("remove", "/1")]
    assert ops(sub.apply(put(a, 9))) == [("add", "/1")]  # room again
    assert ops(sub.apply(put(e, 10))) == [("remove", "/1"), ("add", "/0")]
    assert sub.values() == [5, 4]


@dataclass(frozen=True)
class ManualLimit(Limit):
    """A limit whose clock the test sets (``now[0]``, ns) instead of reading the process clock."""

    now: list[int] = field(default_factory=lambda: [0])

    def cutoff(self) -> int | None:
        return None if self.max_age is None else self.now[0] - int(self.max_age * S)


def test_list_max_age_items_expire_at_the_next_event_of_the_pool_with_a_remove() -> None:
    limit = ManualLimit(max_age=10, now=[15 * S])
    a, b, c, d = items(("a", 1), ("b", 6), ("c", 7), ("d", 20))
    sub = list_pool([a, b, c], 5, ListView("l/*", limit=limit))
    assert sub.values() == [7, 6]  # a was already older than 10 s
    limit.now[0] = 17 * S  # b expires; nothing is sent until an event comes
    assert sub.values() == [7, 6]
    # Any event of the pool, even one that shows nothing itself (an expired item is never shown)
    assert ops(sub.apply(put(a, 6))) == [("remove", "/1")]
    assert ops(sub.apply(put(d, 7))) == [("add", "/0")]
    assert sub.values() == [20, 7]
    limit.now[0] = 18 * S  # c expires: a replace of d brings its remove too
    assert ops(sub.apply(put(d._replace(updated=18 * S, data=b"21"), 8))) == [("remove", "/1"), ("replace", "/0")]
    assert sub.values() == [21]


def test_filtered_list_views_send_the_diff_of_the_shown_document() -> None:
    def by_value(key: str, objs: list[Object]) -> list[Object]:
        return sorted(objs, key=lambda o: orjson.loads(o.data)["shown"])

    view = ListView("l/*", hide_odd, by_value)
    a, b, c = items(("a", 4), ("b", 3), ("c", 2))
    sub = list_pool([a, b, c], 5, view)
    assert sub.doc == [
        {**orjson.loads(c.to_json()), "data": {"shown": 2, "via": "l/*"}},
        {**orjson.loads(a.to_json()), "data": {"shown": 4, "via": "l/*"}},
    ]
    assert sub.apply(put(b._replace(updated=9 * S, data=b"5"), 6)) is None  # hidden, stays hidden
    assert isinstance(sub.apply(put(b._replace(updated=9 * S, data=b"0"), 7)), list)
    assert [v["shown"] for v in sub.values()] == [0, 2, 4]
    assert isinstance(sub.apply(delete(a, 8)), list)
    assert sub.apply(glob_delete("l/*", 9)) is SNAPSHOT
    assert sub.doc == []


# -- any sequence of events ------------------------------------------------------------------------

NAMES = ["a", "b", "ab", "ba", "c"]
GLOBS = ["l/*", "l/a*", "l/*b", "l/b*"]
values = st.one_of(
    st.integers(0, 9),
    st.fixed_dictionaries({"n": st.integers(0, 3), "tags": st.lists(st.sampled_from("xyz"), max_size=3)}),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(NAMES), values),
        st.tuples(st.just("move"), st.sampled_from(NAMES), st.integers(1, 40)),
        st.tuples(st.just("del"), st.sampled_from(NAMES)),
        st.tuples(st.just("glob"), st.sampled_from(GLOBS)),
    ),
    max_size=30,
)


def by_bytes(key: str, objs: list[Object]) -> list[Object]:
    """A list filter that reorders: by the shown JSON text of each value."""
    return sorted(objs, key=lambda o: (o.data, o.path))


VIEWS = {
    "plain": lambda: ListView("l/*"),
    "ascending, 3 newest": lambda: ListView("l/*", limit=Limit(3, order="asc")),
    "2 newest": lambda: ListView("l/*", limit=Limit(2)),
    "object and list filters": lambda: ListView("l/*", hide_odd, by_bytes),
}


class Store:
    """What the store holds and the events its writes commit, in revision order."""

    def __init__(self, limit: Limit | None) -> None:
        self.objects: dict[str, Object] = {}
        self.limit = limit  # the server trims the store after each write to a limited glob
        self.revision = 0
        self.clock = 100

    def step(self, step: tuple[Any, ...]) -> Event | None:
        self.revision += 1
        self.clock += 1
        kind, *args = step
        if kind in ("set", "move"):
            path = f"l/{args[0]}"
            old = self.objects.get(path)
            if kind == "move":
                new = obj(path, args[1], created=args[1], updated=self.clock)
            elif old is None:
                new = obj(path, args[1], created=self.clock)
            else:
                new = obj(path, args[1], created=old.created, updated=self.clock)
            self.objects[path] = new
            if self.limit is not None:
                kept = {o.path for o in self.limit.trim(self.newest_first())}
                self.objects = {p: o for p, o in self.objects.items() if p in kept}
            return put(new, self.revision)
        if kind == "del":
            gone = self.objects.pop(f"l/{args[0]}", None)
            return None if gone is None else delete(gone, self.revision)  # NotFound: no event
        self.objects = {p: o for p, o in self.objects.items() if not keys.match(args[0], p)}
        return glob_delete(args[0], self.revision)

    def newest_first(self) -> list[Object]:
        return sorted(self.objects.values(), key=lambda o: (o.created, o.path), reverse=True)


@settings(max_examples=150, deadline=None)
@given(view_name=st.sampled_from(sorted(VIEWS)), before=steps, after=steps)
def test_list_patches_follow_the_store(
    view_name: str, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    """A pool built after ``before`` and fed the events of ``after`` shows, after every event, what
    GET shows (the view over the store), and its frames take a sub there."""
    view = VIEWS[view_name]()
    store = Store(view.limit)
    for step in before:
        store.step(step)
    sub = list_pool(store.newest_first(), store.revision, view)
    for step in after:
        event = store.step(step)
        if event is not None:
            sub.apply(event)
        assert sub.doc == [orjson.loads(o.to_json()) for o in view.apply(store.newest_first())]


@settings(max_examples=150, deadline=None)
@given(filtered=st.booleans(), before=steps, after=steps)
def test_object_patches_follow_the_store(
    filtered: bool, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    """A single-key pool fed the events routed to it shows, after every event, what GET shows."""
    store = Store(None)
    for step in before:
        store.step(step)
    object_fn = hide_odd if filtered else None
    sub = object_pool("l/a", store.objects.get("l/a"), store.revision, object_fn=object_fn)
    for step in after:
        event = store.step(step)
        if event is not None and (event.key == "l/a" or event.object is None):
            sub.apply(event)
        current = store.objects.get("l/a")
        shown = None if current is None else (current if object_fn is None else object_fn("l/a", current))
        assert sub.doc == (EMPTY if shown is None else orjson.loads(shown.to_json()))


@settings(max_examples=150, deadline=None)
@given(view_name=st.sampled_from(sorted(VIEWS)), before=steps, after=steps, overtaking=st.data())
def test_list_patches_hold_when_a_glob_delete_is_overtaken(
    view_name: str, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], overtaking: st.DataObject
) -> None:
    """Later writes may reach a pool before a glob delete (the views do not rely on commit order):
    the delete must then remove only the items written before its revision. A sub following
    the frames always holds what the pool shows; an unlimited pool ends where GET is."""
    view = VIEWS[view_name]()
    store = Store(view.limit)
    for step in before:
        store.step(step)
    sub = list_pool(store.newest_first(), store.revision, view)
    late: list[Event] = []  # a glob delete held back, then how many later events overtake it
    ahead = 0
    for step in after:
        event = store.step(step)
        if event is None:
            continue
        if event.object is None:
            for held in late:
                sub.apply(held)
            late, ahead = [event], overtaking.draw(st.integers(0, 3), label="overtaken by")
            continue
        if late and ahead == 0:
            sub.apply(late.pop())
        sub.apply(event)
        ahead -= 1
    for held in late:
        sub.apply(held)
    if view.limit is None:  # a limited pool that missed a delete may have evicted what GET keeps
        assert sub.doc == [orjson.loads(o.to_json()) for o in view.apply(store.newest_first())]
