"""Transactions (issue 12): the ops of one all-or-nothing commit and the rules they must follow.
Pure: no I/O. ``Layered.commit`` applies a :class:`Plan` under its locks; this module decides
whether a transaction is well formed and whether its ``expect`` still holds.

What a transaction may hold:

* ``set`` (a JSON value, or bytes/str of JSON text), ``patch`` (the merge document of a PATCH,
  docs/protocol.md §4.4, merged into the stored data; the key must exist) and ``del`` (a key, which
  may be missing: then it changes nothing, or a glob) ops, at least one;
* each key at most once: a transaction states the end result of each key, not a sequence;
* no ``set``/``patch`` on a glob (no push), and no glob delete matching another op's key (which
  op would win is not obvious: split the transaction);
* ``expect``: ``{key: version | None}``, the :func:`version` of each key as the caller read it,
  None for a key that must not exist. A version is the object's ``updated`` stamp, or its
  ``created`` stamp while ``updated`` is 0 (a fresh object): both are distinct clock values, so a
  key deleted and created again never has the version it had before. 0 is refused (it would
  match every fresh object of the key).
* keys of at most :data:`MAX_KEY_BYTES` bytes, ops and ``expect`` alike: a transaction
  creates no key that ``GET``/``DELETE /{key}`` cannot reach (a request line holds 8 190 bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import orjson

from ..errors import InvalidTransaction
from . import keys
from .objects import Object

__all__ = ["MAX_KEY_BYTES", "Committed", "Plan", "TxnOp", "conflicts", "plan", "shown", "version"]

MAX_KEY_BYTES = 4096
"""The longest key of a transaction's op or ``expect`` (a valid key is ASCII: a byte a character):
with room for the method, the query and the version, it fits aiohttp's 8 190-byte request line, so
the single-key routes of both engines reach what a transaction made."""

Kind = Literal["set", "patch", "del"]
_KINDS = ("set", "patch", "del")


class TxnOp(NamedTuple):
    """One op of a transaction: ``set`` and ``patch`` take ``data``; ``del`` takes a key or a glob."""

    op: Kind
    key: str
    data: Any = None


class Committed(NamedTuple):
    """What a committed transaction returns: its store revision (every event of it carries it) and
    one index per op, in op order ("" for a ``del``)."""

    revision: int
    indexes: list[str]


class Plan(NamedTuple):
    """A well-formed transaction: its ops, its expectations, and what ``Layered`` must lock."""

    ops: tuple[TxnOp, ...]
    expect: dict[str, int | None]
    locked: tuple[str, ...]
    """Every concrete key the transaction writes or expects, sorted (the lock order)."""
    globs: bool
    """Whether it deletes a glob (it then takes the store gate exclusively)."""
    check_merged: Callable[[str, bytes], object] | None = None
    """Called with the key and the merged document of each ``patch`` before anything is written
    (the server's size limit, as ``PATCH`` has): what it raises refuses the transaction."""


def version(obj: Object) -> int:
    """The stamp ``expect`` compares: ``updated``, or ``created`` for a never-updated object."""
    return obj.updated or obj.created


def _invalid(why: str) -> InvalidTransaction:
    return InvalidTransaction(f"storage: invalid transaction: {why}")


def shown(text: str) -> str:
    """``text`` quoted as JSON, cut to 100 characters: it comes from the client."""
    return orjson.dumps(text[:100]).decode()


def _too_long(key: str) -> bool:
    """Checked before the key's syntax, so that a huge key is refused for its length, not its
    characters (a non-ASCII key counts its characters: it is refused anyway)."""
    return len(key) > MAX_KEY_BYTES


def plan(
    ops: Sequence[TxnOp],
    expect: Mapping[str, int | None] | None = None,
    check_merged: Callable[[str, bytes], object] | None = None,
) -> Plan:
    """Check ``ops`` and ``expect`` against the rules above; InvalidTransaction names the first
    rule broken. ``check_merged``: see :attr:`Plan.check_merged`."""
    if isinstance(ops, str | bytes) or not ops:
        raise _invalid("no ops (give at least one set, patch or del)")
    seen: set[str] = set()
    globs: list[str] = []
    checked = []
    for i, item in enumerate(ops):
        op = _op(i, item)
        if op.key in seen:
            raise _invalid(f"op {i}: {shown(op.key)} appears twice (one op per key)")
        seen.add(op.key)
        if "*" in op.key:
            globs.append(op.key)
        checked.append(op)
    for glob in globs:
        for key in seen:
            if key != glob and "*" not in key and keys.match(glob, key):
                raise _invalid(
                    f"the delete of {shown(glob)} also matches {shown(key)}: split the transaction"
                )
    wanted = _expect(expect)
    locked = {key for key in seen if "*" not in key} | set(wanted)
    return Plan(tuple(checked), wanted, tuple(sorted(locked)), bool(globs), check_merged)


def _op(i: int, item: Any) -> TxnOp:
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise _invalid(f"op {i}: not an op (use TxnOp(op, key, data))")
    op = TxnOp(*item)
    if op.op not in _KINDS:
        raise _invalid(f"op {i}: unknown op {op.op!r} (set, patch or del)")
    if not isinstance(op.key, str):
        raise _invalid(f"op {i}: the key must be a string")
    if _too_long(op.key):
        raise _invalid(f"op {i}: key longer than {MAX_KEY_BYTES} bytes: {shown(op.key)}")
    if not keys.is_valid(op.key):
        raise _invalid(f"op {i}: invalid path {shown(op.key)}")
    if op.op != "del" and "*" in op.key:
        raise _invalid(f"op {i}: {op.op} on the glob {op.key} (only del takes a glob)")
    if op.op != "del" and op.data is None:
        raise _invalid(f"op {i}: {op.op} of {op.key} without data (for JSON null, give b'null')")
    return op


def _expect(expect: Mapping[str, int | None] | None) -> dict[str, int | None]:
    if expect is None:
        return {}
    if not isinstance(expect, Mapping):
        raise _invalid("expect must map keys to versions or None")
    wanted: dict[str, int | None] = {}
    for key, stamp in expect.items():
        if isinstance(key, str) and _too_long(key):
            raise _invalid(f"expect: key longer than {MAX_KEY_BYTES} bytes: {shown(key)}")
        if not isinstance(key, str) or not keys.is_valid(key) or "*" in key:
            raise _invalid(f"expect: invalid key {shown(str(key))} (a key, not a glob)")
        if stamp is not None and (type(stamp) is not int or stamp <= 0):
            raise _invalid(
                f"expect: {key}: {stamp!r} is not a version (the object's updated stamp, or its "
                "created stamp when updated is 0; null for a key that must not exist)"
            )
        wanted[key] = stamp
    return wanted


def conflicts(expect: Mapping[str, int | None], current: Mapping[str, Object | None]) -> list[str]:
    """The keys of ``expect`` whose object in ``current`` is not the one expected, sorted."""
    changed = []
    for key, stamp in expect.items():
        obj = current.get(key)
        holds = obj is None if stamp is None else obj is not None and version(obj) == stamp
        if not holds:
            changed.append(key)
    return sorted(changed)
