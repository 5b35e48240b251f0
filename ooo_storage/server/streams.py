"""Websocket handlers of docs/protocol.md §5: key/glob subscriptions and the clock stream on ``/``.

Every rejection (invalid key, filters, ``on_subscribe``) happens before the upgrade, as a plain
HTTP response; Origin and Host, and the access policy (``read`` on the key; any known principal
for the clock), were checked before the handler ran, as for every request (``app.py``,
``auth.py``). After the upgrade the handler only reads (client frames are
ignored, except that any frame counts as a sign of life and pings are answered); pools write the
frames. A stream ends when its token expires (``auth.Guard.expire``: closed with 1008).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from .._utils import maybe_await
from ..errors import NotActive
from ..protocol.frames import parse_version, pong_frame
from .connection import Connection
from .context import Context
from .errors import status_of
from .rest import check_key

log = logging.getLogger("ooo_storage.server")

BEARER = "bearer"
_DONE = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def wants_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def bearer_token(request: web.Request) -> str | None:
    """The token of a ``Sec-WebSocket-Protocol: bearer, <token>`` offer (or an ``Authorization:
    Bearer <token>`` header): what the access policy authenticates (``auth.py``), also for
    middlewares and hooks of your own."""
    headers = request.headers
    protocols = headers.get("Sec-WebSocket-Protocol")
    if protocols is not None:  # plain HTTP requests (most) skip the split
        offered = [p.strip() for p in protocols.split(",")]
        if len(offered) >= 2 and offered[0] == BEARER and offered[1]:
            return offered[1]
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == BEARER and token:
        return token.strip()
    return None


async def _open(
    ctx: Context, request: web.Request, on_drop: Callable[[Connection, bool], None]
) -> Connection:
    cfg = ctx.config
    ws = web.WebSocketResponse(
        protocols=(BEARER,),
        autoping=False,  # pongs must reach us: they are what keepalive measures
        compress=False,  # one frame's bytes are shared by every subscriber
        max_msg_size=cfg.max_msg_size,
        timeout=cfg.close_timeout,
    )
    writer = await ws.prepare(request)
    return Connection(ws, request, cfg, ctx.flusher, on_drop=on_drop, writer=writer)


async def _read_until_closed(conn: Connection) -> None:
    ws = conn.ws
    while True:
        msg = await ws.receive()
        if msg.type in _DONE:
            return
        conn.seen()
        if msg.type is WSMsgType.PING:
            conn.send(pong_frame(msg.data))  # queued: never inside a frame being written


async def _unsubscribed(ctx: Context, key: str) -> None:
    hook = ctx.filters.on_unsubscribe
    if hook is None:
        return
    try:
        await maybe_await(hook(key))
    except Exception:
        log.exception("on_unsubscribe failed for %s", key)


async def subscribe(ctx: Context, request: web.Request, key: str) -> web.StreamResponse:
    check_key(key)
    if not ctx.store.active:
        raise NotActive()  # before the upgrade: a plain 503
    await ctx.filters.check_subscribe(key)
    pools = ctx.pools
    conn = await _open(ctx, request, pools.dropped)
    joined = False
    try:
        try:
            await pools.join(key, conn, parse_version(request.query.get("v")))
            joined = True
        except Exception as exc:
            status, message = status_of(exc)
            if status == 500:  # not the client's doing: the operator needs the traceback
                log.error("subscribe to %.200s failed: %r", key, exc, exc_info=exc)
            await conn.close(WSCloseCode.INTERNAL_ERROR, message)
            return conn.ws
        conn.start()
        expiry = ctx.guard.expire(conn)
        try:
            await _read_until_closed(conn)
        finally:
            expiry.cancel()
    finally:
        pools.leave(conn)
        await conn.close(WSCloseCode.OK, "")
        if joined:
            await _unsubscribed(ctx, key)
    return conn.ws


async def clock(ctx: Context, request: web.Request) -> web.StreamResponse:
    clocks = ctx.clocks
    conn = await _open(ctx, request, lambda c, slow: clocks.leave(c))
    try:
        clocks.join(conn)
        conn.start()
        expiry = ctx.guard.expire(conn)
        try:
            await _read_until_closed(conn)
        finally:
            expiry.cancel()
    finally:
        clocks.leave(conn)
        await conn.close(WSCloseCode.OK, "")
    return conn.ws
