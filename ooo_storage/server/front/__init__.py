"""The lean HTTP/1.1 front (issue 10): the hot key routes without aiohttp's request machinery.

``GET``, ``POST``, ``PATCH`` and ``DELETE`` on one key (``GET`` of a page of a glob list, and
``POST /?api=txn``, a transaction, answered by ``txn.run``) cost
about twice as much CPU through aiohttp (its request objects, the middleware chain, the catch-all
dispatch, response building) as the work they do. A :class:`Front` serves each connection of the
listening socket itself, with keep-alive and pipelining (answers in request order), parsing each
request head with ``httptools`` and doing the work with the very functions the aiohttp handlers
call (``rest.py``, ``lists.read``), so stores, filters, hooks, events and revisions are the same,
and errors become the same answers (``errors.py``).

It serves only the plain case, the one aiohttp's middlewares let through untouched (Host and
Origin allowed, with the CORS headers of an allowed origin; the access policy's authentication,
decision and usage count, ``auth.py``'s functions; the per-client share): a request it does not
fully reproduce (any other method or path, a query string other than a glob GET's plain
``limit``/``cursor``, HTTP/1.0, ``Upgrade``, ``Expect``, ``Transfer-Encoding``,
``Content-Encoding``, a Host or Origin refused, an access policy that refuses, a body over 64 KiB
or over the limit, a head that does not parse or is large, an object or a page of a list that
``chunked.py`` would send at the reader's pace...) hands the connection over to aiohttp for the
rest of its life: the bytes from that request's first byte on are fed to a new aiohttp handler,
behind the same :class:`~.limits.GuardedConnection` limits, after every earlier answer was written.
It decides before anything has an effect (from the request head, or after a read, which has
none; the request's usage is counted only once it is known to be served here), so aiohttp sees
the request as if it had served the connection from its start, and answers it with its own bytes
(a malformed head gets aiohttp's 400).

Limits are the gate's: a :class:`Front` is one of its connections (``max_connections``); an idle
connection is closed after ``keepalive_timeout``; a request head still incomplete after
``header_timeout`` is handed over and gets aiohttp's 408 at once; a body still incomplete a
sixteenth of ``body_timeout`` after its head is handed over with what arrived, for aiohttp's body
watch to time (a stalled body is closed after about ``body_timeout``, as under aiohttp); a client
that does not read makes the front stop reading once 16 requests wait (pipelining) or the socket's
buffer is full, so memory stays bounded.

``wire.py`` reads request heads and writes answers; ``connection.py`` is one connection.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..limits import ConnectionGate, GuardedConnection
from ..metrics import Series, route_of
from .connection import MAX_PENDING, Front
from .wire import MAX_BODY, METHODS, Dates

if TYPE_CHECKING:
    from ..app import Server

__all__ = ["MAX_PENDING", "Front", "Lean", "lean_factory", "shutdown"]

_HOST_CACHE = 256


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
        self.dates = Dates()
        self.endpoints = server.endpoints  # the server's own paths (health.py): aiohttp's
        self.access = server.access
        # The metrics series of the requests served here, by method, for a key and for a glob
        # (found with one dict look-up per request instead of metrics.route_of's tests)
        self.key_series: dict[str, Series] | None = None
        self.glob_series: dict[str, Series] | None = None
        self.root_series: dict[str, Series] | None = None  # POST /?api=txn
        if server.metrics is not None:
            requests, none = server.metrics.requests, frozenset[str]()
            self.key_series = {m: requests.of(route_of(m, "k", False, none), m) for m in METHODS}
            self.glob_series = {m: requests.of(route_of(m, "*", False, none), m) for m in METHODS}
            self.root_series = {"POST": requests.of(route_of("POST", "", False, none), "POST")}
        self.observed = server.metrics is not None or self.access is not None
        # Every layer of the store synchronous: a read or a plain write needs no task of its own
        # until it waits for another (connection.py ``Front._inline``)
        store = self.store = server.store
        self.inline = store.embedded is None or not store.embedded.asynchronous
        self.inline_reads = self.inline or store.mirrored  # a memory mirror answers every read
        self.silent: dict[Front, None] = {}  # connections that sent nothing yet, oldest first
        self.sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> Front:
        return Front(self)

    def unheard(self, front: Front) -> None:
        """Close ``front`` if it sends nothing for ``keepalive_timeout``, as aiohttp does: one timer
        for every such connection, not one each (a websocket is handed over with its first bytes,
        and a timer of its own was armed and cancelled for nothing)."""
        self.silent[front] = None
        if self.sweep is None:
            self.sweep = front.loop.call_later(self.gate.config.keepalive_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections silent since ``keepalive_timeout`` ago; again when the next is due."""
        self.sweep = None
        loop = asyncio.get_running_loop()
        now, timeout = loop.time(), self.gate.config.keepalive_timeout
        for front in list(self.silent):
            due = front.active_at + timeout
            if due > now:
                self.sweep = loop.call_at(due, self._sweep)
                return
            del self.silent[front]
            front.abort()


async def shutdown(gate: ConnectionGate, timeout: float) -> None:
    """Close the connections the front serves itself when the server stops (aiohttp closes those it
    was handed): idle ones now, busy ones once their queued requests are answered, or after
    ``timeout`` seconds."""
    busy: list[asyncio.Future[None]] = []
    for conn in list(gate.open):
        if not isinstance(conn, Front) or conn.handler is not None:
            continue
        worker = conn.stop()
        if worker is not None:
            busy.append(worker)
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
