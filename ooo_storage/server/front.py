"""The lean HTTP/1.1 front (issue 10): the hot key routes without aiohttp's request machinery.

``GET``, ``POST``, ``PATCH`` and ``DELETE`` on one key cost about twice as much CPU through aiohttp
(its request objects, the middleware chain, the catch-all dispatch, response building) as the work
they do. A :class:`Front` serves each connection of the listening socket itself, with keep-alive
and pipelining (answers in request order), parsing each request head with ``httptools`` and doing
the work with the very functions the aiohttp handlers call (``rest.py``), so stores, filters,
hooks, events and revisions are the same, and errors become the same answers (``errors.py``).

It serves only the plain case, the one aiohttp's middlewares let through untouched (Host and
Origin allowed, with the CORS headers of an allowed origin; the access policy's authentication,
decision and usage count, ``auth.py``'s functions; the per-client share): a request it does not
fully reproduce (any other method or path, a query string, a glob GET, HTTP/1.0, ``Upgrade``,
``Expect``, ``Transfer-Encoding``, ``Content-Encoding``, a Host or Origin refused, an access policy
that refuses, a body over 64 KiB or over the limit, a head that does not parse or is large...)
hands the connection over to
aiohttp for the rest of its life: the bytes from that request's first byte on are fed to a new
aiohttp handler, behind the same :class:`~.limits.GuardedConnection` limits, after every earlier
answer was written. It decides from the request head alone, before anything has an effect, so
aiohttp sees the request as if it had served the connection from its start, and answers it with
its own bytes (a malformed head gets aiohttp's 400).

Limits are the gate's: a :class:`Front` is one of its connections (``max_connections``); an idle
connection is closed after ``keepalive_timeout``; a request head or body still incomplete after
``header_timeout`` / ``body_timeout`` is handed over (a head gets aiohttp's 408 at once); a client
that does not read makes the front stop reading once 16 requests wait (pipelining) or the socket's
buffer is full, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import functools
import http
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from ..errors import HTTPFailure
from . import chunked, rest
from .auth import decide, required_right
from .errors import ClientGone, log_error, status_of
from .limits import ConnectionGate, GuardedConnection, raw_response
from .streams import BEARER

if TYPE_CHECKING:
    from .app import Server

MAX_BODY = 64 * 1024
"""Largest request body served here; larger ones go to aiohttp (its body budget and timeouts)."""
MAX_PENDING = 16
"""Requests parsed ahead of their answers (pipelining) before the front stops reading."""
MAX_BUFFERED = 256 * 1024
"""Bytes of parsed requests waiting for their answers before the front stops reading."""
FLUSH_BYTES = 64 * 1024
"""Answers of pipelined requests are written together up to this size."""
_HOST_CACHE = 256
_METHODS = frozenset({b"GET", b"POST", b"PATCH", b"DELETE"})
_KEY_URL = re.compile(r"/[A-Za-z0-9*/._-]+").fullmatch
"""A path naming a key (``rest.request_key``'s characters), without a query string."""
_OUR_HEADERS = frozenset(
    {b"host", b"content-length", b"connection", b"origin", b"upgrade", b"expect",
     b"transfer-encoding", b"content-encoding", b"authorization", b"sec-websocket-protocol"}
)
"""Headers that decide whether and how a request is served here (all others are ignored, as by
the aiohttp handlers)."""
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class _Handover(Exception):
    """The request at hand is aiohttp's (raised before anything had an effect)."""


class _Request:
    """One parsed request, waiting for its answer."""

    __slots__ = ("method", "key", "body", "size", "host", "origin", "token")

    def __init__(self, method: str, key: str, body: bytes, size: int, host: str,
                 origin: str | None, token: str | None) -> None:
        self.method = method
        self.key = key
        self.body = body
        self.size = size  # bytes of head and body: what to drop from the buffer once answered
        self.host = host
        self.origin = origin
        self.token = token


class _Head:
    """``httptools`` callbacks for one request head: the URL and the headers the front reads."""

    __slots__ = ("url", "headers", "bad")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.bad = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _OUR_HEADERS:
            if name in self.headers:
                self.bad = True  # a repeated header: aiohttp's own reading decides
            self.headers[name] = value


class Lean:
    """The protocol factory of a listening socket served by the lean front: one :class:`Front` per
    connection, sharing the server's rules and the gate's limits."""

    def __init__(self, server: Server, gate: ConnectionGate) -> None:
        self.server = server
        self.gate = gate
        self.context = server.context
        cfg = server.config
        self.max_body = min(MAX_BODY, cfg.max_body_bytes)
        self.max_head = min(cfg.max_head_bytes, cfg.max_line_size, cfg.max_field_size)
        self.max_headers = cfg.max_headers
        self.host_refusal = functools.lru_cache(_HOST_CACHE)(server.origins.host_refusal)
        self._date = ("", b"")

    def __call__(self) -> Front:
        return Front(self)

    def date(self) -> bytes:
        """The ``Date`` header line, as aiohttp writes it (computed once per second)."""
        text = rfc822_formatted_time()
        if text is not self._date[0]:
            self._date = (text, f"Date: {text}\r\n".encode())
        return self._date[1]


class Front(GuardedConnection):
    """One connection: served here while its requests qualify, then by aiohttp (``self.handler``
    set by :meth:`GuardedConnection.attach`, every call forwarded)."""

    def __init__(self, lean: Lean) -> None:
        super().__init__(lean.gate)
        self.lean = lean
        self.buf = bytearray()
        self.scan = 0  # bytes of ``buf`` parsed into ``queue`` (the rest: an incomplete request)
        self.queue: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.local: tuple[str, int] | None = None
        self.remote = ""
        self.hand_over = False  # a request that is not ours waits behind ``queue``
        self.reading = True
        self.writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self.lost = False
        self.closing = False  # the answer being written ends the connection
        self.out: list[bytes] = []  # answers not written yet (pipelined requests: one write)
        self.out_bytes = 0
        self.flush_soon = False
        self.stopping = False  # the server stops: answer what is queued, then close
        self.partial: _Request | None = None  # a request whose body is still arriving
        self.active_at = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if not self.gate.admit(self):
            busy = "ooo: too many connections, retry later"
            transport.write(raw_response(503, "Service Unavailable", busy))
            transport.close()
            return
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1]) if isinstance(sockname, tuple) else None
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        loop = asyncio.get_running_loop()
        self.active_at = loop.time()
        self.idle_timer = loop.call_later(self.gate.config.keepalive_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            super().data_received(data)
            return
        self.buf += data
        if self.worker is None and not self.queue:
            self._parse()
            if self.queue and self.worker is None:
                self.worker = asyncio.get_running_loop().create_task(self._work())
        else:
            self._parse()

    def eof_received(self) -> None:
        if self.handler is not None:
            super().eof_received()
        # None: the transport closes, as under aiohttp

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.queue.clear()
        partial = self.partial
        if partial is not None and self.handler is None:  # one INFO line, as from rest.read_body
            failures = self.lean.server.failures
            log_error(failures, partial.method, "/" + partial.key, self.remote, ClientGone())
        self._cancel_timers()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            super().pause_writing()
        elif self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.handler is not None:
            super().resume_writing()
            return
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- the gate's view -----------------------------------------------------------------------
    def waiting(self) -> bool:
        if self.handler is not None:
            return super().waiting()
        return not self.queue and self.worker is None

    def abort(self) -> None:
        if self.handler is not None:
            super().abort()
            return
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    # -- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        """Parse every complete request of the buffer into the queue, until one is not ours."""
        buf = self.buf
        while not self.hand_over:
            if len(self.queue) >= MAX_PENDING or self.scan >= MAX_BUFFERED:
                self._pause_reading()
                return
            start = self.scan
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                self._incomplete(start, head=True)
                return
            head = bytes(buf[start : end + 4])
            try:
                request = self._read_head(head)
            except _Handover:
                self._hand_over_soon()
                return
            body_end = end + 4 + request.size
            if len(buf) < body_end:
                self.partial = request
                self._incomplete(start, head=False)
                return
            self.partial = None
            if request.size:
                request.body = bytes(buf[end + 4 : body_end])
            request.size = body_end - start
            self.scan = body_end
            self.queue.append(request)
            if self.stall_timer is not None:
                self.stall_timer.cancel()
                self.stall_timer = None

    def _read_head(self, head: bytes) -> _Request:
        """The request of a complete ``head`` (its ``size`` the body's length), or _Handover."""
        lean = self.lean
        if len(head) > lean.max_head or not head.isascii():
            raise _Handover()
        cb = _Head()
        parser = httptools.HttpRequestParser(cb)
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            raise _Handover() from None
        method = parser.get_method()
        headers = cb.headers
        if (
            cb.bad
            or method not in _METHODS
            or parser.get_http_version() != "1.1"
            or head.count(b"\r\n") - 2 > lean.max_headers
            or b"upgrade" in headers
            or b"expect" in headers
            or b"transfer-encoding" in headers
            or b"content-encoding" in headers
            or b"sec-websocket-protocol" in headers
            or headers.get(b"connection", b"keep-alive").strip().lower() != b"keep-alive"
        ):
            raise _Handover()
        url = cb.url.decode()
        if _KEY_URL(url) is None or (method == b"GET" and "*" in url):
            raise _Handover()  # query strings, "/", globs to list: aiohttp's
        length = headers.get(b"content-length")
        size = 0
        if length is not None:
            length = length.strip()
            if not length.isdigit() or len(length) > 7:
                raise _Handover()
            size = int(length)
            if size > lean.max_body or (size and method in (b"GET", b"DELETE")):
                raise _Handover()
        elif method in (b"POST", b"PATCH"):
            raise _Handover()
        host, origin, token = headers.get(b"host"), headers.get(b"origin"), headers.get(b"authorization")
        if host is None:
            raise _Handover()  # aiohttp refuses an HTTP/1.1 request without one
        return _Request(
            method.decode(), url[1:], b"", size,
            host.strip().decode(),
            None if origin is None else origin.strip().decode(),
            None if token is None else token.strip().decode(),
        )

    def _incomplete(self, start: int, head: bool) -> None:
        """The request at ``start`` is not all here: wait for the rest, within the config's time."""
        buf = self.buf
        if start == len(buf):
            return
        if head and (len(buf) - start > self.lean.max_head or buf.find(b"\n\n", start) >= 0):
            self._hand_over_soon()  # too large, or lines ended by a bare LF: aiohttp's to refuse
            return
        if self.stall_timer is not None:
            return
        cfg = self.gate.config
        timeout = cfg.header_timeout if head else cfg.body_timeout
        self.stall_timer = asyncio.get_running_loop().call_later(timeout, self._stalled, head)

    def _stalled(self, head: bool) -> None:
        self.stall_timer = None
        if self.handler is None and self.scan < len(self.buf):
            self._hand_over_soon()
            if head and self.handler is not None:
                self._head_done()
                self._head_timed_out()  # aiohttp's handler waits for this head: 408, as it would

    # -- answering -----------------------------------------------------------------------------
    async def _work(self) -> None:
        """Answer the queued requests in order (one task per burst of requests)."""
        queue, buf = self.queue, self.buf
        try:
            while queue and not self.lost:
                request = queue[0]
                try:
                    answer = await self._answer(request)
                except _Handover:
                    self.hand_over = True
                    break
                if self.lost:
                    break
                queue.popleft()
                del buf[: request.size]
                self.scan -= request.size
                self.out.append(answer)
                self.out_bytes += len(answer)
                if self.closing:
                    self._flush()
                    assert self.transport is not None
                    self.transport.close()
                    return
                if not queue and not self.hand_over and not self.stopping:
                    self._resume_reading()
                    self._parse()
                if not queue or self.writable is not None or self.out_bytes >= FLUSH_BYTES:
                    self._flush()
                    if self.writable is not None:
                        await self.writable
                elif not self.flush_soon:  # answers of pipelined requests go out together, unless
                    self.flush_soon = True  # a request makes the worker wait: then at once
                    asyncio.get_running_loop().call_soon(self._flush_soon)
        finally:
            self.worker = None
            self.active_at = asyncio.get_running_loop().time()
        if self.stopping:
            self.abort()
            return
        if self.hand_over and not self.lost:
            self._hand_over()

    async def _answer(self, request: _Request) -> bytes:
        """The complete answer to ``request`` (_Handover before any effect when it is aiohttp's)."""
        lean = self.lean
        server, ctx = lean.server, lean.context
        if lean.host_refusal(request.host, self.local) is not None:
            raise _Handover()
        cors: bytes = b""
        if request.origin is not None:
            if server.origins.origin_refusal(request.origin, request.host) is not None:
                raise _Handover()
            allow = server.origins.cors_origin(request.origin)
            if allow is not None:
                cors = f"Access-Control-Allow-Origin: {allow}\r\nVary: Origin\r\n".encode()
        method, key = request.method, request.key
        share, who = server.share, self.remote
        busy = share.busy.get(who, 0)
        if busy >= share.limit:
            raise _Handover()
        if server.guard.policy is not None:
            self._admit(request)
        share.busy[who] = busy + 1
        try:
            if method == "GET":
                rest.check_key(key)
                ctx.filters.permit_read(key)
                if ctx.filters.object_fn(key) is not None:
                    raise _Handover()  # it may need aiohttp's sending of a large object
                obj = await rest.read_object(ctx, key)
                if len(obj.data) > chunked.CHUNK_BYTES:
                    raise _Handover()  # sent at the reader's pace by aiohttp (the read was free)
                return lean_json(lean, obj.to_json(), cors)
            if method == "POST":
                entry = rest.post_entry(ctx, key)
                return lean_json(lean, await rest.post_body(ctx, key, entry, request.body), cors)
            if method == "PATCH":
                entry = rest.patch_entry(ctx, key)
                return lean_json(lean, await rest.patch_body(ctx, key, entry, request.body), cors)
            await rest.remove(ctx, key)
            return b"HTTP/1.1 204 No Content\r\n%s%s%s\r\n" % (cors, lean.date(), _SERVER)
        except _Handover:
            raise
        except Exception as exc:
            log_error(server.failures, method, "/" + key, who, exc)
            self.closing = isinstance(exc, HTTPFailure) and exc.close
            return lean_failure(lean, exc, cors)
        finally:
            if (left := share.busy[who] - 1) > 0:
                share.busy[who] = left
            else:
                del share.busy[who]

    def _flush(self) -> None:
        """Write the answers not written yet, in one call."""
        out, transport = self.out, self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self.out_bytes = 0

    def _flush_soon(self) -> None:
        self.flush_soon = False
        self._flush()

    def _admit(self, request: _Request) -> None:
        """What ``auth.Guard``'s middleware does for a request it lets in (the same functions, the
        same usage count); _Handover when it would refuse, for aiohttp to answer, log and count."""
        guard = self.lean.server.guard
        policy = guard.policy
        assert policy is not None
        method, key = request.method, request.key
        need = required_right(method, key, False)
        try:
            principal = policy.authenticate(_bearer(request.token))
            decide(policy, principal, need, key)
        except Exception:
            raise _Handover() from None
        usage = guard.usage
        if usage is not None and need is not None:
            usage.count_request(key)

    # -- handing over to aiohttp ---------------------------------------------------------------
    def _hand_over_soon(self) -> None:
        """Hand the connection over once every queued request is answered."""
        self.hand_over = True
        if not self.queue and self.worker is None:
            self._hand_over()

    def _hand_over(self) -> None:
        transport = self.transport
        if self.handler is not None or transport is None or transport.is_closing():
            return
        self._cancel_timers()
        self._flush()  # every earlier answer goes before aiohttp's
        rest_bytes = bytes(self.buf)
        self.buf.clear()
        self.queue.clear()
        self._resume_reading()
        writable = self.writable
        self.writable = None
        self.attach(transport)
        if writable is not None and self.handler is not None:
            self.handler.pause_writing()  # still paused: aiohttp's writes wait like ours did
        if rest_bytes:
            super().data_received(rest_bytes)

    # -- flow control and timers ---------------------------------------------------------------
    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()

    def _idle_check(self) -> None:
        """Close a connection idle for ``keepalive_timeout`` (no request, nothing pending)."""
        self.idle_timer = None
        if self.handler is not None or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        timeout = self.gate.config.keepalive_timeout
        idle = not self.queue and self.worker is None and not self.buf
        due = self.active_at + timeout
        if idle and loop.time() >= due:
            self.transport.close()
            return
        self.idle_timer = loop.call_at(max(due, loop.time() + 0.5) if idle else loop.time() + timeout,
                                       self._idle_check)

    def _cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.stall_timer = None


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as ``streams.bearer_token`` reads it
    (requests with ``Sec-WebSocket-Protocol`` are aiohttp's)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == BEARER and token:
        return token.strip()
    return None


def lean_json(lean: Lean, body: bytes, cors: bytes = b"") -> bytes:
    """A 200 answer with a JSON body, as aiohttp's ``rest.json_response`` goes on the wire."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n%s%s\r\n%s" % (
        cors, len(body), lean.date(), _SERVER, body
    )


def lean_failure(lean: Lean, exc: BaseException, cors: bytes = b"") -> bytes:
    """The answer ``errors.response_for(exc)`` puts on the wire (its headers, its close)."""
    status, message = status_of(exc)
    body = message.encode()
    extra = b""
    close = b""
    if isinstance(exc, HTTPFailure):
        if exc.headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in exc.headers.items()).encode()
        if exc.close:
            close = b"Connection: close\r\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n%s%sContent-Length: %d\r\n"
        b"%s%s%s\r\n%s"
    ) % (status, _REASONS.get(status, "").encode(), extra, cors, len(body), lean.date(), _SERVER,
         close, body)


async def shutdown(gate: ConnectionGate, timeout: float) -> None:
    """Close the connections the front serves itself when the server stops (aiohttp closes those it
    was handed): idle ones now, busy ones once their queued requests are answered, or after
    ``timeout`` seconds."""
    busy: list[asyncio.Task[None]] = []
    for conn in list(gate.open):
        if not isinstance(conn, Front) or conn.handler is not None:
            continue
        if conn.worker is None:
            conn.abort()
        else:
            conn.stopping = True
            conn._pause_reading()
            busy.append(conn.worker)
    if busy:
        await asyncio.wait(busy, timeout=timeout)
    for conn in list(gate.open):
        if isinstance(conn, Front) and conn.handler is None:
            conn.abort()


def lean_factory(server: Server, gate: ConnectionGate) -> Callable[[], GuardedConnection]:
    """The protocol factory for ``server`` on a listening socket: the lean front, or aiohttp's
    gate alone when library middlewares must see every request."""
    if server.config.middlewares:
        return gate
    return Lean(server, gate)
