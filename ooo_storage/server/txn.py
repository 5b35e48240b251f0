"""``POST /?api=txn`` (docs/protocol.md §4.7): several writes applied all or nothing.

The body (``protocol/txn_body.py``) is read within the limits of a ``POST`` (``rest.read_body``:
``--max-body-bytes``, the body budget, encodings), then every op passes what its single-key route
would make it pass, before anything is applied:

* the access policy: ``write`` for a ``set``/``patch``, ``delete`` for a ``del``, and ``read`` for
  every key of ``expect`` (a 409 tells whether a key changed: that is a read). The guard lets
  ``POST /`` through (it cannot see the keys before the body is read), so they are decided here,
  with the guard's own :func:`~.auth.decide`, and each key counts as one request in its namespace;
* the filters: the write filter of a ``set`` (static mode: refused without one), the delete filter
  of a ``del``. A ``patch`` on a key with a write filter function is merged here and given to the
  filter as ``PATCH`` does, then committed as a ``set`` expecting the version it merged into (so
  a write in between makes it a 409, never a lost update);
* ``expect`` keys need a read route in static mode;
* the merged document of every ``patch`` stays within ``--max-body-bytes`` (413 as ``PATCH``):
  checked by ``Layered.commit`` where it merges, under its locks, before anything is written.

One refusal refuses the whole transaction with the status its route would give. Then
``Layered.commit`` applies it atomically; the after-write filters of the keys set run once it is
committed, as after a ``POST``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from ..errors import Conflict, HTTPFailure, NotFound, NotSupported
from ..protocol import jsontext, txn_body
from ..protocol.access import Principal, Right
from ..protocol.merge import merge_json
from ..protocol.txn import Committed, Plan, TxnOp, version
from . import rest
from .auth import decide, principal_of
from .context import Context

__all__ = ["committed_body", "conflict_body", "handle", "run"]

_RIGHTS: dict[str, Right] = {"set": "write", "patch": "write", "del": "delete"}


async def handle(ctx: Context, request: web.Request) -> web.Response:
    """Read, check and commit the transaction of ``request``; its answer."""
    body = await rest.read_body(request, ctx.config.max_body_bytes)
    status, answer = await run(ctx, body, principal_of(request))
    return rest.json_response(answer, status)


async def run(ctx: Context, body: bytes, principal: Principal | None) -> tuple[int, bytes]:
    """Check and commit the transaction ``body`` (read whole, within the body limit) sent by
    ``principal`` (None: no access policy); the status (200 or 409) and JSON body of the answer.
    Any other outcome raises, for ``errors.py`` to answer. Apart from ``handle``, for an HTTP
    front that reads the request itself."""
    txn = txn_body.parse(body)
    _authorize(ctx, principal, txn)
    ops, expect = await _filtered(ctx, txn)
    try:
        committed = await ctx.store.commit(ops, expect, check_merged=_size_check(ctx))
    except Conflict as exc:  # TransactionTimeout too: contended keys, retry later
        return 409, conflict_body(exc)
    except NotSupported as exc:
        raise HTTPFailure(501, str(exc)) from None
    for op in ops:
        if op.op != "del":
            await ctx.after_write(op.key)
    return 200, committed_body(committed)


def committed_body(committed: Committed) -> bytes:
    """``{"revision": "<hex>", "indexes": [...]}``: the revision in hex, as stream versions are."""
    return orjson.dumps({"revision": f"{committed.revision:x}", "indexes": committed.indexes})


def conflict_body(exc: Conflict) -> bytes:
    """The 409's body: ``{"error": "<message>", "keys": [<the keys that did not hold>]}``."""
    return orjson.dumps({"error": str(exc), "keys": exc.keys})


def _authorize(ctx: Context, principal: Principal | None, txn: Plan) -> None:
    """Decide every op and every ``expect`` key as its route would (module doc); count them."""
    guard = ctx.guard
    policy = guard.policy
    if policy is None or principal is None:
        return
    for op in txn.ops:
        decide(policy, principal, _RIGHTS[op.op], op.key)
    for key in txn.expect:
        decide(policy, principal, "read", key)
    usage = guard.usage
    if usage is not None:
        written = {op.key for op in txn.ops}
        for key in (*written, *(key for key in txn.expect if key not in written)):
            usage.count_request(key)  # an expect key is a read (§9.2); each key counts once


async def _filtered(ctx: Context, txn: Plan) -> tuple[list[TxnOp], dict[str, int | None]]:
    """The ops as the filters let them through (module doc), and the expectations to commit."""
    filters = ctx.filters
    for key in txn.expect:
        filters.permit_read(key)
    expect = dict(txn.expect)
    ops: list[TxnOp] = []
    for op in txn.ops:
        if op.op == "del":
            await filters.check_delete(op.key)
            ops.append(op)
            continue
        entry = filters.write_entry(op.key)
        if entry is None or entry.fn is None:
            ops.append(op)
        elif op.op == "set":
            ops.append(op._replace(data=await filters.run_write(entry, op.key, _value(op.data))))
        else:
            merged, seen = await _merged(ctx, op)
            expect.setdefault(op.key, seen)
            ops.append(TxnOp("set", op.key, await filters.run_write(entry, op.key, merged)))
    return ops, expect


async def _merged(ctx: Context, op: TxnOp) -> tuple[Any, int]:
    """The document ``op`` (a patch) makes of its key's data now, and the version it merged into;
    404 and 413 as ``PATCH`` answers them."""
    try:
        obj = await ctx.store.get(op.key)
    except NotFound:
        raise HTTPFailure(404, "ooo: not found") from None
    merged = merge_json(obj.data, _value(op.data))
    _size_check(ctx)(op.key, merged)
    return jsontext.loads(merged), version(obj)


def _size_check(ctx: Context) -> Callable[[str, bytes], None]:
    """What refuses a merged document over ``--max-body-bytes``, with ``PATCH``'s 413: for the
    patches merged here (filtered keys) and, through ``Layered.commit``, those merged there."""
    cap = ctx.config.max_body_bytes

    def check(key: str, merged: bytes) -> None:
        if len(merged) > cap:
            raise HTTPFailure(
                413, f"ooo: merged document too large ({len(merged)} bytes, limit {cap} bytes)"
            )

    return check


def _value(data: Any) -> Any:
    """The decoded value of an op's data (``txn_body`` gives ``null`` and strings as JSON text)."""
    return jsontext.loads(data) if isinstance(data, bytes) else data
