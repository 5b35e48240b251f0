"""MemoryLayer and KeyIndex against plain dict and set models: the lazily merged sorted index never
diverges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.layers import MemoryLayer
from ooo_storage.layers.memory import KeyIndex
from ooo_storage.protocol import keys
from ooo_storage.protocol.objects import Object

segment = st.sampled_from(["a", "b", "c", "ab", "x1"])
key = st.lists(segment, min_size=1, max_size=3).map("/".join)
glob = st.lists(st.sampled_from(["a", "b", "*", "a*"]), min_size=1, max_size=3).map("/".join)
op = st.one_of(
    st.tuples(st.just("set"), key),
    st.tuples(st.just("del"), key),
    st.tuples(st.just("delglob"), glob),
    st.tuples(st.just("list"), glob),
    st.tuples(st.just("keys"), st.just("")),
)


def obj(k: str, n: int) -> Object:
    return Object(n, 0, keys.last_index(k), k, b"%d" % n)


@settings(max_examples=300)
@given(st.lists(op, max_size=40))
def test_matches_dict_model(ops: list[tuple[str, str]]) -> None:
    layer, model = MemoryLayer(), {}
    for n, (kind, arg) in enumerate(ops):
        if kind == "set":
            layer.set(arg, obj(arg, n))
            model[arg] = obj(arg, n)
        elif kind == "del":
            assert layer.delete(arg) == (1 if model.pop(arg, None) else 0)
        elif kind == "delglob":
            doomed = [k for k in model if keys.match(arg, k)]
            assert layer.delete(arg) == len(doomed)
            for k in doomed:
                del model[k]
        elif kind == "list":
            assert sorted(o.path for o in layer.get_list(arg)) == sorted(k for k in model if keys.match(arg, k))
        else:
            assert layer.keys() == sorted(model)
        assert len(layer) == len(model)
    assert layer.keys() == sorted(model)
    assert all(layer.get(k) == v for k, v in model.items())


def test_raw_values_parse_on_first_access() -> None:
    layer = MemoryLayer()
    o = obj("a/b", 5)
    layer.bulk_load({"a/b": o.to_json()})
    assert layer.get_raw("a/b") == o.to_json()
    assert layer.get("a/b") == o
    assert layer.get_list("a/*") == [o] and layer.keys() == ["a/b"]


page_op = st.one_of(
    st.tuples(st.just("set"), key, st.integers(0, 6)),  # created from a small range: ties happen
    st.tuples(st.just("del"), key, st.just(0)),
    st.tuples(st.just("delglob"), glob, st.just(0)),
    st.tuples(st.just("page"), glob, st.integers(1, 4)),
)


@settings(max_examples=300)
@given(st.lists(page_op, max_size=60), st.booleans())
def test_pages_match_sorted_lists(ops: list[tuple[str, str, int]], bulk: bool) -> None:
    """Every page, from every position, in both orders, equals the slice of the sorted list: on
    both paths (prefix scan, time walk) and while the time index is updated in place."""
    layer: MemoryLayer = MemoryLayer()
    model: dict[str, Object] = {}
    if bulk:  # a cold start: raw bytes, parsed when the time index is built
        seed = {k: obj(k, 3) for k in ("a", "b/a", "a/b/c")}
        layer.bulk_load({k: o.to_json() for k, o in seed.items()})
        model.update(seed)
    for kind, arg, n in ops:
        if kind == "set":
            o = Object(n, 0, keys.last_index(arg), arg, b"1")
            layer.set(arg, o)
            model[arg] = o
        elif kind == "del":
            layer.delete(arg)
            model.pop(arg, None)
        elif kind == "delglob":
            layer.delete(arg)
            for k in [k for k in model if keys.match(arg, k)]:
                del model[k]
        else:
            for descending in (True, False):
                ordered = sorted(
                    (o for k, o in model.items() if keys.match(arg, k)),
                    key=lambda o: (o.created, o.path), reverse=descending,
                )
                positions = [None] + [(o.created, o.path) for o in ordered]
                for i, after in enumerate(positions):
                    assert layer.page(arg, n, after, descending) == ordered[i : i + n]


def test_page_walks_the_time_index_for_dense_patterns() -> None:
    layer = MemoryLayer()
    for i in range(2000):
        layer.set(f"items/{i}", Object(10_000 - i, 0, str(i), f"items/{i}", b"1"))
    layer.set("users/1", Object(1, 0, "1", "users/1", b"1"))
    assert [o.path for o in layer.page("items/*", 3)] == ["items/0", "items/1", "items/2"]
    assert layer._by_time is not None  # the dense pattern walked the time index
    assert [o.path for o in layer.page("users/*", 3)] == ["users/1"]
    layer.set("items/0", Object(1, 5, "0", "items/0", b"2"))  # moved to the oldest place
    assert [o.path for o in layer.page("items/*", 2, (9_999, "items/1"))] == ["items/2", "items/3"]
    assert [o.path for o in layer.page("items/*", 2, descending=False)] == ["items/0", "items/1999"]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["add", "discard", "check"]), key, glob), max_size=40))
def test_key_index_matches_set_model(ops: list[tuple[str, str, str]]) -> None:
    index, model = KeyIndex(["a", "b/c"]), {"a", "b/c"}
    for kind, k, pattern in ops:
        if kind == "add":
            index.add(k)
            model.add(k)
        elif kind == "discard":
            index.discard(k)
            model.discard(k)
        else:
            prefix = keys.glob_prefix(pattern)
            assert list(index.matching_keys(pattern)) == sorted(m for m in model if keys.match(pattern, m))
            assert list(index.with_prefix(prefix)) == sorted(m for m in model if m.startswith(prefix))
            assert index.count_prefix(prefix) == sum(m.startswith(prefix) for m in model)
        assert len(index) == len(model) and (k in index) == (k in model)
    assert index.keys() == list(index) == sorted(model)


@settings(max_examples=200)
@given(st.lists(key, max_size=30), glob, st.integers(1, 5))
def test_scan_in_steps_finds_what_matching_keys_finds(keys_: list[str], pattern: str, step: int) -> None:
    layer = MemoryLayer()
    for k in keys_:
        layer.set(k, obj(k, 1))
    found: list[str] = []
    after: str | None = None
    while True:
        objs, after = layer.scan(pattern, after, step)
        found.extend(o.path for o in objs)
        if after is None:
            break
    assert found == list(layer.matching_keys(pattern))


@settings(max_examples=200)
@given(st.lists(st.tuples(key, st.integers(0, 6)), max_size=40), glob, st.integers(1, 4), st.integers(1, 5),
       st.booleans())
def test_pages_within_a_visit_budget_resume_to_the_same_list(
    items: list[tuple[str, int]], pattern: str, limit: int, visit: int, descending: bool
) -> None:
    """Short pages that stop when the budget runs out, resumed from where they stopped, give
    exactly the list that unbounded pages give."""
    layer = MemoryLayer()
    for k, created in items:
        layer.set(k, Object(created, 0, keys.last_index(k), k, b"1"))
    expected = sorted((o for o in (layer.get(k) for k in layer.matching_keys(pattern)) if o),
                      key=lambda o: (o.created, o.path), reverse=descending)
    got: list[Object] = []
    after = None
    for _ in range(1000):
        objs, resume = layer.page_within(pattern, limit, after, descending, visit)
        assert len(objs) <= limit
        got.extend(objs)
        if resume is not None:
            after = resume
        elif len(objs) == limit:
            after = (objs[-1].created, objs[-1].path)
        else:
            break
    assert got == expected


@pytest.mark.parametrize("descending", [True, False])
def test_a_short_page_orders_equal_times_by_path(descending: bool) -> None:
    """Objects written at the same ``created`` are ordered by path, also on a page that holds every
    match (sorted rather than picked from a heap, with ``created`` alone when no two are equal)."""
    layer = MemoryLayer()
    for name, created in [("b", 5), ("a", 5), ("d", 7), ("c", 5), ("e", 1)]:
        layer.set(f"t/{name}", Object(created, 0, name, f"t/{name}", b"1"))
    layer.set("u", Object(9, 0, "u", "u", b"1"))  # outside the glob: the prefix path is taken
    ordered = ["t/e", "t/a", "t/b", "t/c", "t/d"]
    want = ordered[::-1] if descending else ordered
    for limit in (5, 6, 1000):
        assert [o.path for o in layer.page("t/*", limit, descending=descending)] == want
    assert [o.path for o in layer.page("t/*", 3, (5, "t/c"), descending)] == (
        ["t/b", "t/a", "t/e"] if descending else ["t/d"])
    distinct = MemoryLayer()
    for i, name in enumerate("cab"):
        distinct.set(f"t/{name}", Object(10 - i, 0, name, f"t/{name}", b"1"))
    assert [o.path for o in distinct.page("t/*", 10, descending=descending)] == (
        ["t/c", "t/a", "t/b"] if descending else ["t/b", "t/a", "t/c"])
