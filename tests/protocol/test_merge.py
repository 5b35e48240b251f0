"""PATCH merge (PROTOCOL.md §4.1), exhaustively by example and by property."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.protocol.merge import MergeError, merge, merge_json

scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=3)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from("abc01"), c, max_size=3),
    max_leaves=12,
)


@pytest.mark.parametrize(
    ("data", "patch", "result"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {"a": None}, {"a": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3, "z": 4}}, {"a": {"x": 1, "y": 3, "z": 4}}),
        ({"a": [1, 2, 3]}, {"a": {"1": 20}}, {"a": [1, 20, 3]}),
        ({"a": [{"x": 1}, {"x": 2}]}, {"a": {"0": {"y": 5}}}, {"a": [{"x": 1, "y": 5}, {"x": 2}]}),
        ({"a": [1, 2]}, {"a": {"5": 9, "z": 1}}, {"a": [1, 2]}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": "s"}, {"a": [1]}, {"a": [1]}),
        ([1, 2], {"0": 5}, [5, 2]),
        ({"a": 1}, [1, 2], {"a": 1}),
        ({"a": 1}, 42, {"a": 1}),
        ({"a": 1}, None, {"a": 1}),
        (42, {"a": 1}, 42),
        ("text", {"a": 1}, "text"),
        ({}, {}, {}),
    ],
)
def test_merge_examples(data: Any, patch: Any, result: Any) -> None:
    assert merge(data, patch) == result


@pytest.mark.parametrize(
    ("data", "patch", "message"),
    [
        ({"a": {"b": 1}}, {"a": 1}, 'merge: patch value must be object for key "a"'),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": []}}, 'merge: patch value must be object for key "a.b"'),
        ({"a": [{"b": {}}]}, {"a": {"0": {"b": None}}}, 'merge: patch value must be object for key "a.0.b"'),
    ],
)
def test_merge_type_mismatch(data: Any, patch: Any, message: str) -> None:
    with pytest.raises(MergeError) as err:
        merge(data, patch)
    assert str(err.value) == message


def test_merge_does_not_modify_arguments() -> None:
    data = {"a": {"b": [1, {"c": 2}]}}
    patch = {"a": {"b": {"1": {"d": 3}}}}
    snapshot = orjson.dumps(data), orjson.dumps(patch)
    assert merge(data, patch) == {"a": {"b": [1, {"c": 2, "d": 3}]}}
    assert (orjson.dumps(data), orjson.dumps(patch)) == snapshot


def test_merge_json_sorted_compact() -> None:
    assert merge_json(b'{"b": 1, "a": {"d": 1, "c": 2}}', {"e": 1}) == (b'{"a":{"c":2,"d":1},"b":1,"e":1}')


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abc"), values, max_size=4),
    st.dictionaries(st.sampled_from("abcd"), values, max_size=4),
)
def test_merge_properties(data: dict[str, Any], patch: dict[str, Any]) -> None:
    try:
        merged = merge(data, patch)
    except MergeError:
        return
    # Every member of the data survives; every patch member lands (recursively merged or replaced).
    assert set(merged) == set(data) | set(patch)
    for key, value in patch.items():
        if key not in data or not isinstance(data[key], dict | list) or not isinstance(value, dict):
            assert merged[key] == value
    # Merging the same patch twice changes nothing more (idempotent).
    assert merge(merged, patch) == merged


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [400, 1000])
def test_merge_deeper_than_the_limit_is_a_merge_error(depth: int) -> None:
    with pytest.raises(MergeError, match="nested deeper than 256 levels"):
        merge(_nested(depth, 1), _nested(depth, 2))
    assert merge(_nested(255, 1), _nested(255, 2)) == _nested(255, 2)


def test_merge_json_of_data_too_deep_to_encode_is_a_merge_error() -> None:
    data = b'{"a":' * 1000 + b"1" + b"}" * 1000
    with pytest.raises(MergeError, match="nested too deeply"):
        merge_json(data, {"b": 1})
