"""The RFC 6902 builder: every diff applies (with the real ``jsonpatch``) to exactly the new document."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.protocol.jsonpatch import diff, object_diff, pointer, same
from ooo_storage.protocol.objects import Object

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f", "", "0"]), children, max_size=5)
    ),
    max_leaves=25,
)


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    return jsonpatch.apply_patch(doc, ops)


@settings(max_examples=400, deadline=None)
@given(json_values, json_values)
def test_diff_applies_to_new(old: Any, new: Any) -> None:
    ops = diff(old, new)
    assert same(apply(old, ops), new)
    assert (ops == []) == same(old, new)


@pytest.mark.parametrize(
    ("old", "new", "ops"),
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 2}, [{"op": "replace", "path": "/a", "value": 2}]),
        ({"a": 1}, {}, [{"op": "remove", "path": "/a"}]),
        ({}, {"a/b": 1}, [{"op": "add", "path": "/a~1b", "value": 1}]),
        ({"~": 1}, {"~": 2}, [{"op": "replace", "path": "/~0", "value": 2}]),
        ([1, 2, 3], [1], [{"op": "remove", "path": "/2"}, {"op": "remove", "path": "/1"}]),
        ([1], [1, 2], [{"op": "add", "path": "/1", "value": 2}]),
        (1, True, [{"op": "replace", "path": "", "value": True}]),
        (1, 1.0, [{"op": "replace", "path": "", "value": 1.0}]),
        ({"a": [1]}, {"a": {"0": 1}}, [{"op": "replace", "path": "/a", "value": {"0": 1}}]),
        (None, {}, [{"op": "replace", "path": "", "value": {}}]),
    ],
)
def test_diff_examples(old: Any, new: Any, ops: list[dict[str, Any]]) -> None:
    assert diff(old, new) == ops
    assert same(apply(old, ops), new)


def test_pointer_escapes() -> None:
    assert pointer("", "a/b~c") == "/a~1b~0c"
    assert pointer("/x", 3) == "/x/3"


def test_same_is_typed() -> None:
    assert not same(True, 1)
    assert not same(0, False)
    assert not same(1, 1.0)
    assert same({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert not same({"a": 1}, {"b": 1})


def test_object_diff_overwrite() -> None:
    old = Object(10, 0, "1", "users/1", b'{"name":"a","age":3}')
    new = Object(10, 20, "1", "users/1", b'{"name":"b","age":3}')
    assert object_diff(old, new) == [
        {"op": "replace", "path": "/updated", "value": 20},
        {"op": "replace", "path": "/data/name", "value": "b"},
    ]


def test_object_diff_to_empty() -> None:
    old = Object(10, 0, "1", "users/1", b'{"name":"a"}')
    ops = object_diff(old, Object.empty())
    import orjson

    assert apply(orjson.loads(old.to_json()), ops) == orjson.loads(Object.empty().to_json())
