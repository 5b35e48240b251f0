"""JSON numbers survive exactly: big integers are neither rounded nor refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage import jsontext


@given(st.integers())
def test_any_integer_round_trips(n: int) -> None:
    text = str(n).encode()
    assert jsontext.loads(text) == n and type(jsontext.loads(text)) is int
    assert jsontext.dumps(n) == text
    assert jsontext.dumps({"n": n, "l": [n]}) == b'{"n":%b,"l":[%b]}' % (text, text)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet="ab1234567890 \"\\é", max_size=25),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@given(values)
def test_values_round_trip(value: object) -> None:
    text = json.dumps(value, indent=1, ensure_ascii=False).encode()  # not compact: whitespace around
    assert jsontext.loads(text) == value
    assert jsontext.loads(jsontext.dumps(value)) == value
    assert jsontext.dumps(jsontext.loads(text)) == jsontext.dumps(value)


def test_long_digit_strings_stay_strings() -> None:
    assert jsontext.loads(b'["12345678901234567890123", 1.5]') == ["12345678901234567890123", 1.5]


@pytest.mark.parametrize("bad", [b"NaN", b"[1,]", b"1 2", b"1e999", b'{"a":1', b"12345678901234567890123 x"])
def test_invalid_text_rejected(bad: bytes) -> None:
    with pytest.raises(jsontext.JSONDecodeError):
        jsontext.loads(bad)


def test_unserialisable_still_refused() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"f": object()})
    with pytest.raises(TypeError):
        jsontext.dumps({"big": 10**30, "f": object()})
