"""JSON numbers survive exactly: big integers are neither rounded nor refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage.protocol import jsontext


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


@pytest.mark.parametrize("digits", [309, 310, 400, 4300])
def test_integers_of_309_digits_and_more_are_exact(digits: int) -> None:
    for n in (int("9" * digits), -int("1" + "0" * (digits - 1))):
        text = str(n).encode()
        assert jsontext.loads(b'{"n":%b}' % text) == {"n": n}
        assert jsontext.dumps({"n": n}) == b'{"n":%b}' % text


def test_negative_19_digit_integer_beyond_64_bits_is_exact() -> None:
    assert jsontext.loads(b"[-9999999999999999999]") == [-9999999999999999999]


@pytest.mark.parametrize("text", [b"1e-400", b"[1.5E-400]", b'{"x":-2e-324}', b"0." + b"0" * 400 + b"1"])
def test_a_number_that_would_become_zero_is_refused_with_the_reason(text: bytes) -> None:
    with pytest.raises(jsontext.JSONDecodeError, match="too small for a 64-bit float"):
        jsontext.loads(text)


@pytest.mark.parametrize("text", [b"1e999", b"-1E400", b"1" + b"0" * 400 + b".5"])
def test_a_number_beyond_the_float_range_is_refused(text: bytes) -> None:
    with pytest.raises(jsontext.JSONDecodeError, match="infinity|too large"):
        jsontext.loads(text)


@pytest.mark.parametrize(("text", "value"), [(b"1e-310", 1e-310), (b"0e-500", 0.0), (b"-0.0e-999", -0.0),
                                              (b"5e-324", 5e-324), (b"1.5e-300", 1.5e-300)])
def test_small_floats_that_exist_are_kept(text: bytes, value: float) -> None:
    assert jsontext.loads(text) == value
    assert jsontext.loads(jsontext.dumps(jsontext.loads(text))) == value


def test_more_digits_than_python_reads_is_refused_not_an_error_500() -> None:
    with pytest.raises(jsontext.JSONDecodeError, match="4300 digits"):
        jsontext.loads(b"1" * 5000)


@pytest.mark.parametrize("depth", [990, 1000, 1024])
def test_deep_nesting_with_a_long_number_is_refused_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(jsontext.JSONDecodeError, match="nested too deeply"):
        jsontext.loads(b"[" * depth + b"123456789012345678901234" + b"]" * depth)


def test_deep_nesting_fails_as_type_error_when_encoding() -> None:
    deep: object = 10**30
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(TypeError, match="nested too deeply"):
        jsontext.dumps(deep)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (b'"\\u12345678901234567890123456"', True),  # a \u escape inside a run of digits
        (b"0123456789012345678901234", False),  # a leading zero stays invalid
        (b"[12345678901234567890123 4]", False),
        (b'"\\ud800 12345678901234567890123"', False),  # a lone surrogate stays refused
        (b"[NaN, 12345678901234567890123]", False),
        (b"1.5e-400 x", False),
    ],
)
def test_the_exact_path_keeps_orjsons_grammar(text: bytes, valid: bool) -> None:
    if valid:
        assert jsontext.loads(text) == json.loads(text)
    else:
        with pytest.raises(jsontext.JSONDecodeError):
            jsontext.loads(text)
