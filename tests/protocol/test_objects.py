"""Object JSON bytes, parsing and the clock (PROTOCOL.md §2)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage import Object
from ooo_storage.protocol.clock import now


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


def test_clock_strictly_increasing() -> None:
    values = [now() for _ in range(10_000)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[0] > 1_600_000_000 * 10**9  # epoch nanoseconds
