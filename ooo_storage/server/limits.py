"""What one client connection may cost: how many connections, how long and how large a request head,
how long a stalled request body; and what all of them together may buffer of request bodies.

aiohttp already caps each request line and header (``max_line_size``, ``max_field_size``,
``max_headers``: app.py passes them as handler arguments) and closes connections idle between
requests (``keepalive_timeout``). It does not bound the time a request head may take, the head's total
size, or the number of connections: hundreds of slow or endless heads used to pin ~2 MB each, and
enough of them used every file descriptor, after which nobody else was served and nothing was logged.

- :class:`ConnectionGate` is the protocol factory ``ServerRunner`` listens with. It wraps each of
  aiohttp's connection handlers in a :class:`GuardedConnection`, which times and sizes request heads
  (408 / 431, then close), and keeps at most ``max_connections`` open: at the limit it closes the
  oldest connection that is only waiting for a request head, or refuses the new one (503) when every
  connection is busy, and says so in the log (once a minute at most).
- :class:`ClientShare` keeps one client (one remote address) from holding more than its share of
  the connections busy: 768 idle websockets of one client used to leave every other client a 503.
  Idle connections need no such cap: the gate closes them to make room.
- :func:`body_middleware` ends a request whose body receives nothing for ``body_timeout``, and
  gives it a :class:`BodyHold` on the server's :class:`BodyBudget`: 200 uploads of 10 MiB that
  never finished used to hold 2 GB.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler

from ..errors import HTTPFailure
from .config import ServerConfig
from .errors import Busy, Notices, response_for

log = logging.getLogger("ooo_storage.server")

FD_HEADROOM_SHARE = 4
FD_HEADROOM_MIN = 128
UNLIMITED_FDS_CONNECTIONS = 65536


def connections_for(fd_limit: int) -> int:
    """The default connection limit under a file-descriptor limit: a quarter of the descriptors,
    and at least 128 of them (half, under a tiny limit), stay free for LevelDB's files, the
    listening socket and whatever else the process opens."""
    headroom = max(fd_limit // FD_HEADROOM_SHARE, min(FD_HEADROOM_MIN, fd_limit // 2))
    return max(1, fd_limit - headroom)


def default_max_connections() -> int:
    """:func:`connections_for` the process's ``RLIMIT_NOFILE`` (soft) limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED_FDS_CONNECTIONS
    return connections_for(soft)


def per_client_limit(config: ServerConfig) -> int:
    """``max_connections_per_client``, or three quarters of the connection limit (at least one):
    the last quarter always stays for the other clients."""
    if config.max_connections_per_client is not None:
        return config.max_connections_per_client
    limit = config.max_connections or default_max_connections()
    return limit - limit // 4


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response, for connections refused below aiohttp."""
    body = message.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def awaiting_head(handler: RequestHandler) -> bool:
    """Whether aiohttp's handler is between requests, waiting for (the rest of) a request head.

    This reads aiohttp's private state: ``_waiter`` is the future its request loop awaits for the
    next parsed request (aiohttp's own keep-alive check uses it the same way), and no request has
    been parsed yet on a connection whose request loop has not started. The connection-limit tests
    fail if a new aiohttp changes this."""
    if handler._request_count == 0 and not handler._messages:
        return True
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def _hold_keepalive(handler: RequestHandler, until: float) -> None:
    """Keep aiohttp's keep-alive check from closing a connection whose request head has begun
    before ``until`` (its header timeout): it would close it silently, where the lean front
    answers 408 at the header timeout. aiohttp's check reschedules itself while its private
    ``_next_keepalive_close_time`` lies ahead, and sets it again after the request's answer; the
    head-timeout tests fail if a new aiohttp changes this."""
    if handler._next_keepalive_close_time < until:
        handler._next_keepalive_close_time = until + 1.0  # the 408 first, whichever timer runs first


class ConnectionGate:
    """The protocol factory of a listening socket: aiohttp's ``factory`` behind the limits."""

    def __init__(
        self,
        factory: Callable[[], RequestHandler],
        config: ServerConfig,
        notices: Notices | None = None,
    ) -> None:
        self.factory = factory
        self.config = config
        self.limit = config.max_connections or default_max_connections()
        self.notices = notices or Notices()
        self.open: dict[GuardedConnection, None] = {}  # insertion order: oldest first

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self)

    def admit(self, conn: GuardedConnection) -> bool:
        """Make room for ``conn`` (closing the oldest connection waiting for a request head) or
        refuse it when every open connection is busy."""
        if len(self.open) >= self.limit:
            idle = next((c for c in self.open if c.waiting()), None)
            hint = "raise --max-connections (and ulimit -n) if this load is legitimate"
            if idle is None:
                self.notices(
                    logging.WARNING,
                    "refused",
                    f"connection limit reached ({self.limit} open, all busy): refusing new "
                    f"connections with 503; {hint}",
                )
                return False
            self.notices(
                logging.WARNING,
                "evicted",
                f"connection limit reached ({self.limit} open): closing the oldest connections "
                f"that wait for a request to admit new ones; {hint}",
            )
            self.release(idle)
            idle.abort()
        self.open[conn] = None
        return True

    def release(self, conn: GuardedConnection) -> None:
        self.open.pop(conn, None)


class GuardedConnection(asyncio.Protocol):
    """One connection: aiohttp's handler, plus the request-head time and size limits."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None

    def waiting(self) -> bool:
        return self.handler is not None and awaiting_head(self.handler)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it
        self.transport = transport
        if not self.gate.admit(self):
            busy = "ooo: too many connections, retry later"
            transport.write(raw_response(503, "Service Unavailable", busy))
            transport.close()
            return
        self.attach(transport)

    def attach(self, transport: asyncio.Transport) -> None:
        """Serve ``transport``, admitted already, with a new aiohttp handler (the lean front hands
        its connections over this way, ``front.py``)."""
        self.transport = transport
        self.handler = self.gate.factory()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            return
        was_waiting = awaiting_head(handler)
        handler.data_received(data)
        if not was_waiting:
            return
        if not awaiting_head(handler):  # the head is complete
            self._head_done()
            return
        self.head_bytes += len(data)
        cfg = self.gate.config
        if self.head_bytes > cfg.max_head_bytes:
            self._refuse(
                "head-size",
                431,
                "Request Header Fields Too Large",
                f"ooo: request head too large (limit {cfg.max_head_bytes} bytes)",
            )
        elif self.head_timer is None:
            loop = asyncio.get_running_loop()
            self.head_timer = loop.call_later(cfg.header_timeout, self._head_timed_out)
            _hold_keepalive(handler, loop.time() + cfg.header_timeout)

    def _head_done(self) -> None:
        self.head_bytes = 0
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.waiting():
            timeout = self.gate.config.header_timeout
            self._refuse(
                "head-time", 408, "Request Timeout", f"ooo: request head not complete within {timeout:g} s"
            )

    def _refuse(self, kind: str, status: int, reason: str, message: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        self.gate.notices(logging.INFO, kind, f"closed a connection from {peer}: {message}")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw_response(status, reason, message))
        self.abort()

    def abort(self) -> None:
        """Close the connection now (what was written is still sent)."""
        self._head_done()
        if self.handler is not None:
            self.handler.force_close()
        elif self.transport is not None:
            self.transport.close()

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        self.gate.release(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


def body_stalled(timeout: float) -> str:
    """The reason of the 408 that ends a request whose body stalled."""
    return f"ooo: request body stalled (nothing for {timeout:g} s)"


class _BodyWatch:
    """Fires when a request body has received nothing for ``timeout`` seconds (checked four times
    per period): then the connection is closed, which fails the pending read."""

    def __init__(self, request: web.Request, timeout: float, notices: Notices) -> None:
        self.request = request
        self.timeout = timeout
        self.notices = notices
        self.loop = asyncio.get_running_loop()
        self.seen = request.content.total_bytes
        self.progress_at = self.loop.time()
        self.fired = False
        self.handle = self.loop.call_later(timeout / 4, self._check)

    def _check(self) -> None:
        content, now = self.request.content, self.loop.time()
        if content.is_eof():
            return
        if content.total_bytes != self.seen:
            self.seen, self.progress_at = content.total_bytes, now
        elif now - self.progress_at >= self.timeout:
            self.fired = True
            self.notices(
                logging.INFO,
                "body-time",
                f"closed a connection from {self.request.remote}: its request body received "
                f"nothing for {self.timeout:g} s",
            )
            transport = self.request.transport
            if transport is not None:
                # The 408 goes out before the close (which fails the pending read): the handler's
                # own answer would find the connection closed.
                if not transport.is_closing():
                    transport.write(raw_response(408, "Request Timeout", body_stalled(self.timeout)))
                transport.close()
            return
        self.handle = self.loop.call_later(self.timeout / 4, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class ClientShare:
    """Requests in progress per remote address, a websocket for as long as it is open: a client
    asking for more than ``limit`` at once is refused (503, connection closed) until one of its
    own ends. Behind a reverse proxy every client has the proxy's address."""

    def __init__(self, limit: int, notices: Notices) -> None:
        self.limit = limit
        self.notices = notices
        self.busy: dict[str, int] = {}  # only addresses with a request in progress

    def middleware(self) -> Middleware:
        busy, limit = self.busy, self.limit

        @web.middleware
        async def client_share(request: web.Request, handler: Handler) -> web.StreamResponse:
            who = request.remote
            if not who:  # no address (a unix socket): nothing tells its clients apart, no cap
                return await handler(request)
            count = busy.get(who, 0)
            if count >= limit:
                return self._refuse(who)
            busy[who] = count + 1
            try:
                return await handler(request)
            finally:
                if (left := busy[who] - 1) > 0:
                    busy[who] = left
                else:
                    del busy[who]

        return client_share

    def _refuse(self, who: str) -> web.StreamResponse:
        self.notices(
            logging.WARNING,
            "per-client",
            f"{who} keeps {self.limit} connections busy, its limit: refusing its further requests "
            "with 503; raise --max-connections-per-client if many clients share this address (a "
            "reverse proxy)",
        )
        return response_for(Busy(f"ooo: too many busy connections from {who} (limit {self.limit} "
                                 "per client), retry later"))


FREE_BODY_BYTES = 64 * 1024
"""Bodies up to this size take nothing from the :class:`BodyBudget`: small requests are never
refused because of large uploads (what all of them buffer at once is bounded by the connection
limit: 48 MiB for 768 connections)."""


class BodyBudget:
    """Request-body bytes the server buffers at once, over all requests (``max_buffered_body_bytes``).

    A body larger than :data:`FREE_BODY_BYTES` holds what has arrived of it, until its request
    ends: what is buffered, not what is announced. Holding a ``Content-Length`` at once let 30
    connections announcing 10 MiB and sending a byte a second refuse every other large upload for
    as long as they liked; now a client must really send what it holds."""

    def __init__(self, limit: int, notices: Notices) -> None:
        self.limit = limit
        self.notices = notices
        self.used = 0


class BodyHold:
    """What one request holds of the :class:`BodyBudget`; released when the request ends."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes for this body, or raise :class:`Busy` (503) when the budget cannot."""
        if size <= self.held or size <= FREE_BODY_BYTES:
            return
        budget = self.budget
        extra = size - self.held
        if budget.used + extra > budget.limit:
            budget.notices(
                logging.WARNING,
                "body-budget",
                f"request bodies being received hold {budget.used} of {budget.limit} bytes: refusing "
                "larger ones with 503; raise --max-buffered-body-bytes if this load is legitimate",
            )
            raise Busy(f"ooo: server busy receiving other large request bodies (a body of {size} "
                       f"bytes does not fit in the {budget.limit}-byte budget now), retry later")
        budget.used += extra
        self.held = size

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


BODY_HOLD: web.RequestKey[BodyHold] = web.RequestKey("ooo_body_hold", BodyHold)
"""``request.get(BODY_HOLD)``: the request's hold on the body budget (absent when its body had
arrived whole before the handler ran: then it is already in memory, and small)."""


def body_middleware(timeout: float, budget: BodyBudget, notices: Notices) -> Middleware:
    """A middleware for requests whose body is still arriving: it ends those whose body stalls (408
    when the connection can still hear it), and gives each a :class:`BodyHold`, released however
    the request ends (answered, refused, or its client gone).

    Requests whose body is already complete (most) pay one check. Runs inside ``error_middleware``
    so that the failed read becomes that 408 instead of an internal error."""

    @web.middleware
    async def body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content.is_eof():
            return await handler(request)
        watch = _BodyWatch(request, timeout, notices)
        hold = request[BODY_HOLD] = BodyHold(budget)
        try:
            return await handler(request)
        except Exception:
            if watch.fired:
                raise HTTPFailure(408, body_stalled(timeout)) from None
            raise
        finally:
            watch.cancel()
            hold.release()

    return body
