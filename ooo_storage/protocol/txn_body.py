"""The body of ``POST /?api=txn`` (docs/protocol.md §4.7): JSON text into a transaction. Pure.

::

    {"expect": {"accounts/a": 1796282432824439747, "holds/42": null},
     "ops": [{"op": "set", "key": "accounts/a", "data": {"balance": 90}},
             {"op": "patch", "key": "accounts/b", "data": {"balance": 110}},
             {"op": "del", "key": "holds/*"}]}

This module checks what only the wire can get wrong (the JSON itself, its shape, the members and
their types, how many ops) and then hands the ops to :func:`.txn.plan`, which owns the rules of a
transaction (valid keys, one op per key, globs only in ``del``, versions), so that a malformed
body is refused with its reason before any filter, hook or lock sees it. Every refusal is an
:class:`~ooo_storage.errors.InvalidTransaction` (400) naming the op (``ops[i]``) and what to change.

JSON ``null`` is a value here: ``"data": null`` sets null (as ``POST`` of ``null`` does), while a
missing ``"data"`` is refused. The store reads a ``str`` as JSON text and ``None`` as no data, so
those two values reach it as their JSON text (``"a"`` stays the string ``"a"``).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidTransaction
from . import jsontext
from .txn import Plan, TxnOp, plan
from .txn import shown as _shown

__all__ = ["MAX_OPS", "parse"]

MAX_OPS = 1000
"""The most ops one request may carry, and the most keys its ``expect`` may name: a transaction
locks every key it writes or expects, and holds the store's write path while it applies them (no
other write lands in between)."""

_BODY = '{"ops": [{"op": "set", "key": "...", "data": ...}, ...], "expect": {"<key>": <version> | null}}'
_MEMBERS = frozenset({"ops", "expect"})
_OP_MEMBERS = frozenset({"op", "key", "data"})
_KINDS = ("set", "patch", "del")


def _invalid(why: str) -> InvalidTransaction:
    return InvalidTransaction(f"storage: invalid transaction: {why}")


def parse(body: bytes, max_ops: int = MAX_OPS) -> Plan:
    """The transaction ``body`` asks for, checked (see the module doc); InvalidTransaction says
    what is wrong with it."""
    doc = _document(body)
    for name in doc:
        if name not in _MEMBERS:
            raise _invalid(f"unknown member {_shown(name)} (the body is {_BODY})")
    raw_ops = doc.get("ops")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise _invalid(f'"ops" must be a non-empty array of ops (the body is {_BODY})')
    if len(raw_ops) > max_ops:
        raise _invalid(f"{len(raw_ops)} ops, over the limit of {max_ops}: split the transaction")
    ops = [_op(i, item) for i, item in enumerate(raw_ops)]
    expect = doc.get("expect")
    if expect is not None and not isinstance(expect, dict):
        raise _invalid('"expect" must be an object {"<key>": <version> | null}')
    if expect is not None and len(expect) > max_ops:
        raise _invalid(f"{len(expect)} keys in expect, over the limit of {max_ops}: split the transaction")
    return plan(ops, _expect(expect or {}))


def _document(body: bytes) -> dict[str, Any]:
    if not body:
        raise _invalid(f"empty body (the body is {_BODY})")
    try:
        doc = jsontext.loads(body)
    except jsontext.JSONDecodeError as exc:
        raise _invalid(f"the body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _invalid(f"the body must be a JSON object {_BODY}")
    return doc


def _op(i: int, item: Any) -> TxnOp:
    where = f"ops[{i}]"
    if not isinstance(item, dict):
        raise _invalid(f'{where} must be an object {{"op": "set"|"patch"|"del", "key": ..., "data": ...}}')
    for name in item:
        if name not in _OP_MEMBERS:
            raise _invalid(f"{where}: unknown member {_shown(name)} (op, key, data)")
    kind, key = item.get("op"), item.get("key")
    if kind not in _KINDS:
        shown = _shown(kind) if isinstance(kind, str) else "missing" if kind is None else "not a string"
        raise _invalid(f'{where}: "op" is {shown}: it must be "set", "patch" or "del"')
    if not isinstance(key, str):
        raise _invalid(f'{where}: "key" must be a string (a key, or a glob for del)')
    if kind == "del":
        if "data" in item:
            raise _invalid(f'{where}: del of {_shown(key)} takes no "data"')
        return TxnOp("del", key)
    if "data" not in item:
        raise _invalid(f'{where}: {kind} of {_shown(key)} needs "data" (any JSON value, null included)')
    data = item["data"]
    return TxnOp(kind, key, jsontext.dumps(data) if data is None or isinstance(data, str) else data)


def _expect(expect: dict[str, Any]) -> dict[str, int | None]:
    """``expect`` with its values checked for type; :func:`.txn.plan` checks keys and versions."""
    for key, stamp in expect.items():
        if stamp is not None and type(stamp) is not int:
            raise _invalid(
                f"expect[{_shown(key)}] must be a whole number (the object's version: its "
                '"updated", or its "created" when "updated" is 0) or null (the key must not exist)'
            )
    return expect
