"""RFC 6902 patch builder: the ops that turn one JSON document into another. Pure, no I/O.

Used by the server to turn "old state → new state" of a stream pool into the ``data`` of a
``snapshot:false`` frame (PROTOCOL.md §5.5). Documents are the decoded JSON values (``dict``,
``list``, ``str``, ``int``, ``float``, ``bool``, ``None``).

Equality is *typed*: Python says ``True == 1`` and ``1 == 1.0``, JSON text does not, so a change
between them is a ``replace`` (otherwise a client would keep a stale ``1`` where the server now has
``true``).
"""

from __future__ import annotations

from typing import Any

from . import jsontext
from .meta import Object

__all__ = ["Op", "diff", "object_diff", "pointer", "same"]

Op = dict[str, Any]


def pointer(parent: str, token: str | int) -> str:
    """Append one reference token to a JSON pointer (RFC 6901 escaping of ``~`` and ``/``)."""
    text = str(token)
    if "~" in text or "/" in text:
        text = text.replace("~", "~0").replace("/", "~1")
    return f"{parent}/{text}"


def same(a: Any, b: Any) -> bool:
    """Typed deep equality of two JSON values (``True`` is not ``1``, ``1`` is not ``1.0``)."""
    if a.__class__ is not b.__class__:
        return False
    if a.__class__ is dict:
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if a.__class__ is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff(old: Any, new: Any) -> list[Op]:
    """The RFC 6902 ops that transform ``old`` into ``new`` (``[]`` when they are the same).

    Objects are diffed member by member and arrays index by index (extra tail elements are
    removed from the end backwards or appended), so each op addresses the state left by the
    previous one; a change of type is a single ``replace``. The root pointer is ``""``.
    """
    ops: list[Op] = []
    _diff(old, new, "", ops)
    return ops


def _diff(old: Any, new: Any, path: str, ops: list[Op]) -> None:
    if old.__class__ is dict and new.__class__ is dict:
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": pointer(path, key)})
        for key, value in new.items():
            if key in old:
                _diff(old[key], value, pointer(path, key), ops)
            else:
                ops.append({"op": "add", "path": pointer(path, key), "value": value})
    elif old.__class__ is list and new.__class__ is list:
        common = min(len(old), len(new))
        for i in range(common):
            _diff(old[i], new[i], pointer(path, i), ops)
        # Remove from the end backwards so every index is valid when its op is applied.
        for i in range(len(old) - 1, common - 1, -1):
            ops.append({"op": "remove", "path": pointer(path, i)})
        for i in range(common, len(new)):
            ops.append({"op": "add", "path": pointer(path, i), "value": new[i]})
    elif not same(old, new):
        ops.append({"op": "replace", "path": path, "value": new})


def object_diff(old: Object, new: Object) -> list[Op]:
    """The ops turning the object JSON (PROTOCOL.md §2.1) of ``old`` into that of ``new``.

    E.g. an overwrite gives ``replace /updated`` plus the ops inside ``/data``.
    """
    return diff(jsontext.loads(old.to_json()), jsontext.loads(new.to_json()))
