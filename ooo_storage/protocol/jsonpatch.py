"""RFC 6902 JSON patches: :func:`diff` builds them, :func:`apply_patch` applies them. Pure, no I/O.

The server turns "old state → new state" of a stream into the ``data`` of a ``snapshot:false``
frame with :func:`diff` (docs/protocol.md §5.3); the client keeps a subscription's state as plain Python
values and applies each such frame with :func:`apply_patch`. Documents are decoded JSON values
(``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``).

Equality differs on purpose between the two sides. :func:`diff` compares *typed* (:func:`same`):
``True`` is not ``1`` and ``1`` is not ``1.0``, since JSON text tells them apart and a client would
otherwise keep a stale ``1`` where the server now has ``true``. The ``test`` operation compares as
RFC 6902 §4.6 says (:func:`json_equal`): numbers by value, booleans apart from numbers.

:func:`apply_patch` never modifies its input: it copies only the containers on the path to each
change and shares everything else, so each state handed to a caller stays valid after the next
frame. All six operations are supported, with JSON pointers per RFC 6901 (``~0`` / ``~1`` escapes,
``-`` appends to an array).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import jsontext
from .objects import Object

__all__ = [
    "Op",
    "PatchError",
    "apply_patch",
    "diff",
    "json_equal",
    "object_diff",
    "parse_pointer",
    "pointer",
    "same",
]

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
    """The ops turning the object JSON (docs/protocol.md §2.1) of ``old`` into that of ``new``.

    E.g. an overwrite gives ``replace /updated`` plus the ops inside ``/data``.
    """
    return diff(jsontext.loads(old.to_json()), jsontext.loads(new.to_json()))

_Leaf = Callable[[Any, str, Any], None]


class PatchError(ValueError):
    """A patch that cannot be applied to the document (bad operation, missing target, failed test)."""


def parse_pointer(pointer: str) -> list[str]:
    """Split a JSON pointer into unescaped reference tokens (``""`` is the whole document)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def apply_patch(doc: Any, patch: Iterable[Mapping[str, Any]]) -> Any:
    """Return ``doc`` with every operation of ``patch`` applied in order; ``doc`` is left unchanged.

    Containers on the path to a change are copied once per patch, then changed in place by the
    following operations of the same patch: a patch of n operations on one array costs one copy of
    it, not n (37 000 removes took seconds). Raises :class:`PatchError` when an operation is
    malformed or does not apply; the input is never modified.
    """
    owned: dict[int, Any] = {}  # containers this call made (kept alive, so ids are not reused)
    for op in patch:
        doc = _apply_op(doc, op, owned)
    return doc


def _apply_op(doc: Any, op: Mapping[str, Any], owned: dict[int, Any]) -> Any:
    if not isinstance(op, Mapping):
        raise PatchError(f"patch operation must be an object, got {op!r}")
    name = op.get("op")
    path = parse_pointer(_member(op, "path"))
    if name == "add":
        return _change(doc, path, _add, _member(op, "value"), owned)
    if name == "remove":
        return _change(doc, path, _remove, None, owned)
    if name == "replace":
        return _change(doc, path, _replace, _member(op, "value"), owned)
    if name == "test":
        expected = _member(op, "value")
        if not json_equal(_resolve(doc, path), expected):
            raise PatchError(f"test failed at {op['path']!r}")
        return doc
    if name in ("move", "copy"):
        source = parse_pointer(_member(op, "from"))
        value = _resolve(doc, source)
        if name == "move":
            if path[: len(source)] == source and len(path) > len(source):
                raise PatchError(f"cannot move {op['from']!r} into its own child {op['path']!r}")
            if path == source:
                return doc
            doc = _change(doc, source, _remove, None, owned)
        else:  # two places must not share a container that later operations change in place
            value = copy.deepcopy(value)
        return _change(doc, path, _add, value, owned)
    raise PatchError(f"unknown patch operation {name!r}")


def _member(op: Mapping[str, Any], name: str) -> Any:
    try:
        return op[name]
    except KeyError:
        raise PatchError(f"patch operation {op.get('op')!r} lacks {name!r}") from None


def _index(array: list[Any], token: str, *, insert: bool = False) -> int:
    """The array index named by ``token`` (``-`` is the end, only when inserting)."""
    if insert and token == "-":
        return len(array)
    # RFC 6901: decimal digits without leading zeros (``0`` itself is fine); no sign, no spaces.
    if not token.isdigit() or not token.isascii() or (token[0] == "0" and token != "0"):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(array) or (index == len(array) and not insert):
        raise PatchError(f"array index {token} out of range")
    return index


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        try:
            return node[token]
        except KeyError:
            raise PatchError(f"member {token!r} not found") from None
    if isinstance(node, list):
        return node[_index(node, token)]
    raise PatchError(f"cannot descend into {type(node).__name__} with {token!r}")


def _resolve(doc: Any, path: list[str]) -> Any:
    for token in path:
        doc = _child(doc, token)
    return doc


def _own(node: Any, owned: dict[int, Any]) -> Any:
    """``node`` itself if this call made it, else a shallow copy that this call now owns."""
    if id(node) in owned:
        return node
    if isinstance(node, dict):
        node = dict(node)
    elif isinstance(node, list):
        node = list(node)
    else:
        return node
    owned[id(node)] = node
    return node


def _add(node: Any, token: str, value: Any) -> None:
    if isinstance(node, dict):
        node[token] = value
    elif isinstance(node, list):
        node.insert(_index(node, token, insert=True), value)
    else:
        raise PatchError(f"cannot add {token!r} to a {type(node).__name__}")


def _remove(node: Any, token: str, _value: Any) -> None:
    _child(node, token)  # the target must exist
    if isinstance(node, dict):
        del node[token]
    else:
        del node[_index(node, token)]


def _replace(node: Any, token: str, value: Any) -> None:
    _child(node, token)  # the target must exist
    if isinstance(node, dict):
        node[token] = value
    else:
        node[_index(node, token)] = value


def _change(doc: Any, path: list[str], leaf: _Leaf, value: Any, owned: dict[int, Any]) -> Any:
    """Apply ``leaf(parent, last_token, value)`` at ``path``, in place in containers this call
    owns (copying, once, the ones it does not). Iterative: deep documents cannot hit the
    recursion limit."""
    if not path:
        if leaf is _remove:
            raise PatchError("cannot remove the whole document")
        return value
    root = node = _own(doc, owned)
    for token in path[:-1]:
        child = _child(node, token)
        mine = _own(child, owned)
        if mine is not child:
            _replace(node, token, mine)
        node = mine
    if not isinstance(node, dict | list):
        raise PatchError(f"cannot change {path[-1]!r} inside a {type(node).__name__}")
    leaf(node, path[-1], value)
    return root


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: like ``==`` but ``true`` is not ``1`` and ``false`` is not ``0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return bool(a == b)
