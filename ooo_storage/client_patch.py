"""Apply RFC 6902 JSON patches to decoded JSON documents. Pure: no I/O, no asyncio.

The client keeps the state of a subscription as plain Python values (dict, list, str, int, float,
bool, None) and applies every ``snapshot:false`` frame with :func:`apply_patch`. All six operations
are supported (``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``), with JSON pointers
per RFC 6901 (``~0`` / ``~1`` escapes, ``-`` appends to an array).

Documents are treated as immutable: :func:`apply_patch` never modifies its input, it copies only the
containers on the path to each change and shares everything else. That keeps each state handed to a
caller valid after the next frame arrives, at the cost of one shallow copy per level touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["PatchError", "apply_patch", "parse_pointer", "json_equal"]

_Leaf = Callable[[Any, str, Any], Any]


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

    Raises :class:`PatchError` when an operation is malformed or does not apply; operations are
    atomic as a whole only in the sense that the input is never modified.
    """
    for op in patch:
        doc = _apply_op(doc, op)
    return doc


def _apply_op(doc: Any, op: Mapping[str, Any]) -> Any:
    if not isinstance(op, Mapping):
        raise PatchError(f"patch operation must be an object, got {op!r}")
    name = op.get("op")
    path = parse_pointer(_member(op, "path"))
    if name == "add":
        return _rebuild(doc, path, _add, _member(op, "value"))
    if name == "remove":
        return _rebuild(doc, path, _remove, None)
    if name == "replace":
        return _rebuild(doc, path, _replace, _member(op, "value"))
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
            doc = _rebuild(doc, source, _remove, None)
        return _rebuild(doc, path, _add, value)
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


def _add(node: Any, token: str, value: Any) -> Any:
    if isinstance(node, dict):
        return {**node, token: value}
    if isinstance(node, list):
        index = _index(node, token, insert=True)
        return [*node[:index], value, *node[index:]]
    raise PatchError(f"cannot add {token!r} to a {type(node).__name__}")


def _remove(node: Any, token: str, _value: Any) -> Any:
    _child(node, token)  # the target must exist
    if isinstance(node, dict):
        return {k: v for k, v in node.items() if k != token}
    index = _index(node, token)
    return [*node[:index], *node[index + 1 :]]


def _replace(node: Any, token: str, value: Any) -> Any:
    _child(node, token)  # the target must exist
    if isinstance(node, dict):
        return {**node, token: value}
    copy = list(node)
    copy[_index(node, token)] = value
    return copy


def _rebuild(doc: Any, path: list[str], leaf: _Leaf, value: Any) -> Any:
    """Apply ``leaf(parent, last_token, value)`` at ``path`` and copy the containers above it.

    Iterative rather than recursive so that a deeply nested document cannot hit the recursion limit.
    """
    if not path:
        if leaf is _remove:
            raise PatchError("cannot remove the whole document")
        return value
    parents: list[tuple[Any, str]] = []
    node = doc
    for token in path[:-1]:
        parents.append((node, token))
        node = _child(node, token)
    new = leaf(node, path[-1], value)
    for parent, token in reversed(parents):
        new = _replace(parent, token, new)
    return new


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
