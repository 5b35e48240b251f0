"""MemoryLayer against a plain dict model: the lazily merged sorted index never diverges."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage import keys
from ooo_storage.layers import MemoryLayer
from ooo_storage.meta import Object

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
