"""JSON text ⇄ values, exact for every number, or refused with the reason.

The model: an integer is exact at any size (up to Python's 4300 digits); any other number is the
nearest 64-bit float, as in every JSON reader. A number that has no such float is refused, never
changed: ``1e999`` (infinite) and ``1e-400`` (a non-zero number that would become ``0.0``).

orjson does the work, except where it would change a number: it reads integers beyond 64 bits as
floats (``123456789012345678901234567890`` → ``1.2345678901234568e+29``), refuses those beyond
1e308 and reads ``1e-400`` as ``0.0``. Text where such a number may appear (a run of 20 digits, a
``-`` and 19 digits, an exponent of three digits below zero) is therefore read by the standard
library, whose ints keep every digit, after orjson has checked that it is JSON; values orjson
cannot write fall back to it too. Everything else (timestamps in nanoseconds included: 19 digits
fit orjson's 64 bits) pays one byte translation and three substring searches.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
# Shapes of numbers orjson would change, once every digit reads 0 (orjson is exact in
# [-2**63, 2**64)); an exponent of three digits or more below zero may be below the float range.
_LONG, _NEGATIVE, _TINY = b"0" * 20, b"-" + b"0" * 19, b"0e-000"
_LONG_RUN = re.compile(rb"[0-9]{19,}")
_INF = float("inf")


def _needs_exact(raw: bytes | bytearray | memoryview) -> bool:
    # A C table lookup per byte plus substring searches: ~20x cheaper than a regex scan.
    shape = bytes(raw).translate(_DIGITS_TO_ZERO)
    return _LONG in shape or _NEGATIVE in shape or _TINY in shape


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON value; raises :data:`JSONDecodeError` (a ValueError) on invalid text and on
    a number it cannot keep (see the module docstring), with the reason."""
    raw = data.encode() if isinstance(data, str) else data
    if not _needs_exact(raw):
        return orjson.loads(data)  # validates strictly (no NaN, no trailing data)
    # orjson checks the grammar (UTF-8, surrogates, depth, trailing data) of the same text with
    # each long digit run cut to its first four digits (valid stays valid, invalid stays invalid:
    # a leading zero and a \uXXXX escape keep their digits); the stdlib reads the numbers.
    orjson.loads(_LONG_RUN.sub(lambda m: m[0][:4], bytes(raw)))
    return _exact(bytes(raw))


def _exact(raw: bytes) -> Any:
    text = raw.decode()
    try:
        return json.loads(text, parse_float=_float)
    except RecursionError:
        raise JSONDecodeError("nested too deeply to read its numbers exactly", text, 0) from None
    except ValueError as exc:  # _float, or an integer beyond sys.get_int_max_str_digits()
        raise JSONDecodeError(str(exc).partition("; use")[0], text, 0) from None


def _float(text: str) -> float:
    value = float(text)
    if value == 0.0 and any(c in "123456789" for c in text.partition("e")[0].partition("E")[0]):
        raise ValueError(f"number {_short(text)} is too small for a 64-bit float (it would become 0)")
    if value in (_INF, -_INF):
        raise ValueError(f"number {_short(text)} is too large for a 64-bit float")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    """Encode ``value`` as compact JSON; raises TypeError for what JSON cannot represent and for a
    value nested too deeply to encode."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError as exc:  # integers beyond 64 bits, nesting beyond orjson's 255 levels, ...
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                              sort_keys=sort_keys)
        except RecursionError:
            raise TypeError("value nested too deeply to encode") from None
        except (TypeError, ValueError):
            raise exc from None
        return text.encode()
