"""Object JSON bytes, parsing and the clock (PROTOCOL.md §2)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage import Object
from ooo_storage.errors import CorruptObject
from ooo_storage.protocol.clock import now
from ooo_storage.protocol.objects import load_object


def test_empty_object_bytes() -> None:
    assert Object.empty().to_json() == b'{"created":0,"updated":0,"index":"","data":{}}'


def test_object_bytes_exact_key_order() -> None:
    obj = Object(5, 7, "1", "users/1", b'{"b":1,"a":[1,2]}')
    assert obj.to_json() == b'{"created":5,"updated":7,"index":"1","path":"users/1","data":{"b":1,"a":[1,2]}}'
    assert obj.value == {"b": 1, "a": [1, 2]}


def test_object_is_immutable() -> None:
    obj = Object(1, 0, "a", "a", b"1")
    with pytest.raises(AttributeError):
        obj.created = 2  # type: ignore[misc]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.sampled_from(["", "a", "x/y"]), json_values)
def test_roundtrip(created: int, updated: int, path: str, value: object) -> None:
    obj = Object(created, updated, path.rpartition("/")[2], path, orjson.dumps(value))
    raw = obj.to_json()
    assert orjson.loads(raw)["data"] == value
    assert Object.from_json(raw) == obj


def test_from_json_accepts_equivalent_json() -> None:
    raw = b'{ "data": {"x": 1}, "index": "k", "path": "a/k", "created": 3, "updated": 4 }'
    assert Object.from_json(raw) == Object(3, 4, "k", "a/k", b'{"x":1}')


def test_from_json_string_data_with_quotes() -> None:
    obj = Object(1, 0, "k", "k", orjson.dumps('he said "hi",\\"data":'))
    assert Object.from_json(obj.to_json()) == obj


@pytest.mark.parametrize(("index", "path"), [('a"b', 'x/a"b'), ("a\\b", "x/a\\b"), ("a\nb", "a\nb"),
                                           ("é", "x/é"), ("k", 'x"\\/k')])
def test_indexes_and_paths_that_need_escapes_round_trip(index: str, path: str) -> None:
    """Hand-built objects (the store's keys never need escapes): what ``to_json`` escapes reads
    back through orjson, raw UTF-8 through the own-layout parser, as the same object."""
    obj = Object(1, 2, index, path, b"[1]")
    assert Object.from_json(obj.to_json()) == obj


def test_an_index_that_is_not_utf8_is_a_corrupt_object() -> None:
    with pytest.raises(CorruptObject, match="corrupt object at k"):
        load_object("k", b'{"created":1,"updated":2,"index":"\xff","path":"a/\xff","data":1}')


def test_clock_strictly_increasing() -> None:
    values = [now() for _ in range(10_000)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[0] > 1_600_000_000 * 10**9  # epoch nanoseconds
