"""The PATCH merge of docs/protocol.md §4.4: merge a JSON body into stored data. Pure, no I/O.

Rules (those of the ``ooo`` family, so existing clients see the same results):

* only an object body has an effect; any other body leaves the data as it is;
* object into object → recursive merge, members absent from the data are added;
* object into array → element-wise by the keys ``"0"``, ``"1"``, …; keys that are not the index of
  an existing element are ignored (a merge never grows an array);
* object data + non-object patch value → :class:`MergeError`
  ``merge: patch value must be object for key "<dotted.path>"`` (nothing is written);
* anything else → the patch value replaces the data (``null`` sets null, it does not delete).

The result is re-encoded compact with sorted keys (:func:`merge_json`).

A merge descends as deep as patch and data are both objects (or an array under an object), at most
:data:`MAX_DEPTH` levels: deeper → :class:`MergeError` (a 400), never a ``RecursionError`` (a 500).
"""

from __future__ import annotations

from typing import Any

from ..errors import MergeError
from . import jsontext

__all__ = ["MAX_DEPTH", "MergeError", "merge", "merge_json"]

MAX_DEPTH = 256
"""Deepest level a merge descends to: two Python frames a level stay far below the recursion
limit (1000), wherever the merge runs, and 256 is where orjson stops encoding nested values."""




def merge(data: Any, patch: Any) -> Any:
    """Return ``data`` with ``patch`` merged into it (neither argument is modified)."""
    return _merge_into(data, patch, ())


def merge_json(data: bytes, patch: Any) -> bytes:
    """Merge ``patch`` (a decoded value) into the JSON text ``data``; compact, sorted keys.

    Data nested too deeply for the encoder (beyond ~900 levels) is a :class:`MergeError` too."""
    try:
        return jsontext.dumps(merge(jsontext.loads(data), patch), sort_keys=True)
    except (TypeError, jsontext.JSONDecodeError) as exc:  # JSON values: only their depth fails
        raise MergeError(f"merge: {exc}") from None


def _merge_into(data: Any, patch: Any, path: tuple[str, ...]) -> Any:
    if patch.__class__ is not dict:
        return data
    if data.__class__ is list:
        return [
            _merge_member(value, patch, str(i), path) if str(i) in patch else value
            for i, value in enumerate(data)
        ]
    if data.__class__ is dict:
        merged = {
            key: _merge_member(value, patch, key, path) if key in patch else value
            for key, value in data.items()
        }
        for key, value in patch.items():
            if key not in data:
                merged[key] = value
        return merged
    return data


def _merge_member(value: Any, patch: dict[str, Any], key: str, path: tuple[str, ...]) -> Any:
    new = patch[key]
    here = (*path, key)
    if len(here) > MAX_DEPTH and new.__class__ is dict:
        raise MergeError(f"merge: patch nested deeper than {MAX_DEPTH} levels")
    if value.__class__ is dict:
        if new.__class__ is not dict:
            raise MergeError(f'merge: patch value must be object for key "{".".join(here)}"')
        return _merge_into(value, new, here)
    if value.__class__ is list and new.__class__ is dict:
        return _merge_into(value, new, here)
    return new
