"""The :class:`Server` (filters, hooks, pools) and its aiohttp application.

One catch-all route dispatches on method and path: docs/protocol.md §4 wants ``//`` paths and globs
answered with 400, characters outside ``[A-Za-z0-9*/._-]`` with 404 and unknown methods with 405,
which aiohttp's router would not give us. The raw request path is used, so nothing (``.``
segments, percent-decoding) is normalised away before the key is checked. ``HEAD`` on a key is
answered like ``GET``, without the body.

A request whose body is refused before it is read whole closes its connection at once: aiohttp
would otherwise keep reading (and decompressing, on the event loop) what follows for up to 10 s
("lingering"), which let a stream of small gzip bombs stall the server although each got its 413.
A request that announces a body over ``max_body_bytes`` with ``Expect: 100-continue`` is refused
before the client is told to send it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler, Middleware

from ..layered import Layered, WatchHandle
from ..protocol import keys
from ..protocol.access import Policy
from ..protocol.filters import (
    AfterWriteFn,
    DeleteFn,
    Filters,
    Limit,
    ReadListFn,
    ReadObjectFn,
    WriteFn,
)
from ..protocol.origins import OriginPolicy
from . import backup, explorer, followup, rest, streams, txn
from .accesslog import AccessLog
from .auth import Guard, decide, principal_of
from .clocks import Clocks
from .config import ServerConfig
from .connection import Flusher
from .context import Context
from .errors import FAILURE_INTERVAL, Notices, error_middleware, response_for, text_response
from .health import HEALTHZ, READYZ, endpoints, healthz, readyz
from .hub import Pools
from .limits import BodyBudget, ClientShare, body_middleware, per_client_limit
from .metrics import Metrics, observe
from .streams import wants_websocket

log = logging.getLogger("ooo_storage.server")

SERVER_KEY: web.AppKey[Server] = web.AppKey("ooo_server")
_KeyHandler = Callable[[Context, web.Request, str], Awaitable[web.StreamResponse]]
_KEY_METHODS: dict[str, _KeyHandler] = {
    "GET": rest.get,
    "POST": rest.post,
    "PATCH": rest.patch,
    "DELETE": rest.delete,
    "HEAD": rest.get,  # aiohttp sends the head of the response only
}
_KEY_ALLOW = ", ".join([*_KEY_METHODS, "OPTIONS"])
_ROOT_ALLOW = "GET, HEAD, POST, OPTIONS"  # POST: ?api=txn and ?api=backup
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HOST_CACHE = 256  # distinct (Host, local address) verdicts remembered; an attacker only churns it


class Server:
    """An ooo-storage server over ``store``. Options: the fields of :class:`ServerConfig`
    (``auth=Policy`` for access control, swapped at run time with :meth:`set_policy`).

    It registers filters and hooks and builds the aiohttp application; its request handlers get
    :attr:`context`, built once here (``context.py``).
    """

    def __init__(self, store: Layered, **options: Any) -> None:
        self.store = store
        self.config = ServerConfig(**options)
        self.origins = OriginPolicy.of(self.config.allowed_origins, self.config.allowed_hosts)
        self.notices = Notices()
        self.failures = Notices(FAILURE_INTERVAL)
        self.share = ClientShare(per_client_limit(self.config), self.notices)
        self.budget = BodyBudget(self.config.body_budget, self.notices)
        self.filters = Filters(static=self.config.static)
        self.pools = Pools(store, self.filters, self.config)
        self.guard = Guard(store, self.config.auth)
        self.context = Context(
            store=store,
            config=self.config,
            filters=self.filters,
            pools=self.pools,
            clocks=Clocks(self.config.tick),
            flusher=Flusher(),
            after_write=functools.partial(followup.after_write, store, self.filters),
            guard=self.guard,
        )
        self._app: web.Application | None = None
        self._watch: WatchHandle | None = None
        # The server's own endpoints and what observes requests (health.py, metrics.py, accesslog.py)
        self.endpoints = endpoints(self.config)
        self.guard.endpoints = {name: self._need_of(name) for name in self.endpoints}
        self.metrics = Metrics(self.context) if self.config.metrics else None
        if self.metrics is not None:  # refusals below the handlers and storage failures, counted
            self.metrics.notices, self.metrics.failures = self.notices, self.failures
        access = self.config.access_log
        self.access = access if isinstance(access, AccessLog) else AccessLog() if access else None

    # -- filters and hooks (docs/protocol.md §6) --------------------------------------------------
    def write_filter(self, path: str, fn: WriteFn) -> None:
        self.filters.add("write", path, fn)

    def read_object_filter(self, path: str, fn: ReadObjectFn) -> None:
        self.filters.add("read_object", path, fn)

    def read_list_filter(self, path: str, fn: ReadListFn) -> None:
        self.filters.add("read_list", path, fn)

    def delete_filter(self, path: str, fn: DeleteFn) -> None:
        self.filters.add("delete", path, fn)

    def after_write_filter(self, path: str, fn: AfterWriteFn) -> None:
        self.filters.add("after_write", path, fn)

    def open_filter(self, path: str) -> None:
        """Allow write, delete and read on ``path`` (and what it matches), unchanged."""
        for kind in ("write", "delete", "read_object", "read_list"):
            self.filters.add(kind, path)

    def limit_filter(
        self,
        path: str,
        limit: int | None = None,
        max_age: float | None = None,
        order: Literal["desc", "asc"] = "desc",
    ) -> None:
        """Open ``path`` (a glob) and keep only its ``limit`` newest items younger than ``max_age``
        seconds: older ones are deleted silently after each write and disappear from GET and from
        streams (subscribers see ``remove`` + ``add``). ``order`` is the order lists are shown in."""
        if "*" not in path:
            raise ValueError("limit_filter needs a glob path")
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        if order not in ("desc", "asc"):
            raise ValueError("order must be 'desc' or 'asc'")
        spec = Limit(limit, max_age, order)
        for kind in ("write", "delete", "read_object"):
            self.filters.add(kind, path)
        self.filters.add("read_list", path, limit=spec)
        self.filters.add("after_write", path, limit=spec)

    @property
    def on_subscribe(self) -> Callable[[str], Any] | None:
        return self.filters.on_subscribe

    @on_subscribe.setter
    def on_subscribe(self, fn: Callable[[str], Any] | None) -> None:
        """``fn(key)`` may refuse a subscription by returning False or raising (→ 400)."""
        self.filters.on_subscribe = fn

    @property
    def on_unsubscribe(self) -> Callable[[str], Any] | None:
        return self.filters.on_unsubscribe

    @on_unsubscribe.setter
    def on_unsubscribe(self, fn: Callable[[str], Any] | None) -> None:
        self.filters.on_unsubscribe = fn

    # -- access control (auth.py) --------------------------------------------------------------
    @property
    def policy(self) -> Policy | None:
        """The access policy in force (None: no access control)."""
        return self.guard.policy

    def set_policy(self, policy: Policy | None) -> int:
        """Use ``policy`` from now on (the CLI's SIGHUP reload), atomically: a request already past
        authentication finishes under the policy it started with, every new one gets the new one.
        Open streams are checked again as if they subscribed now (their token authenticated again,
        expiry included): those the new policy refuses are closed with 1008 and the reason.
        Returns how many were closed. ``None`` turns access control off (everyone may do
        everything): the server must have been built with a policy or without, it works both ways."""
        self.guard.swap(policy)
        return self.guard.recheck([*self.pools.connections(), *self.context.clocks.members])

    def _need_of(self, endpoint: str) -> Literal["admin"] | None:
        """What an access policy asks of a request to ``endpoint`` (health.py): nothing, but
        ``admin`` for ``/metrics`` with ``metrics_auth``."""
        return "admin" if endpoint == "metrics" and self.config.metrics_auth else None

    # -- application ----------------------------------------------------------------------------
    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self._build()
        return self._app

    def _build(self) -> web.Application:
        cfg = self.config
        observed = self.metrics is not None or self.access is not None
        app = web.Application(
            middlewares=[
                *([observe(self.metrics, self.access, self.endpoints)] if observed else []),
                self.share.middleware(),
                self._origin_middleware(),
                error_middleware(self.failures),
                self.guard.middleware(),
                body_middleware(cfg.body_timeout, self.budget, self.notices),
                *cfg.middlewares,
            ],
            client_max_size=cfg.max_body_bytes + 1,
            handler_args={  # aiohttp's per-connection limits, however the application is served
                "keepalive_timeout": cfg.keepalive_timeout,
                "max_line_size": cfg.max_line_size,
                "max_field_size": cfg.max_field_size,
                "max_headers": cfg.max_headers,
                "lingering_time": 0,  # a body not read whole closes the connection (module doc)
            },
        )
        app[SERVER_KEY] = self
        app.router.add_route("*", "/{tail:.*}", self._dispatch, expect_handler=self._expect)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    def _origin_middleware(self) -> Middleware:
        """Refuse (403) a request whose Host or Origin is not allowed (``protocol/origins.py``)
        before any other middleware or handler runs, answer preflights, and add the CORS header
        that lets an allowed cross-origin page read the answer."""
        cfg, policy = self.config, self.origins
        host_refusal = functools.lru_cache(_HOST_CACHE)(policy.host_refusal)
        preflight = {
            "Access-Control-Allow-Methods": cfg.cors_methods,
            "Access-Control-Allow-Headers": cfg.cors_headers,
        }

        @web.middleware
        async def origins(request: web.Request, handler: Handler) -> web.StreamResponse:
            host, origin = request.headers.get("Host"), request.headers.get("Origin")
            refusal = host_refusal(host, _local_address(request)) or policy.origin_refusal(origin, host)
            if refusal is not None:
                log.info("%s %.200s refused: 403 %.300r", request.method, request.path, refusal)
                return text_response(403, refusal)
            allow = policy.cors_origin(origin)
            cors = {} if allow is None else {"Access-Control-Allow-Origin": allow, "Vary": "Origin"}
            if request.method == "OPTIONS":
                return web.Response(status=204, headers={**cors, **preflight} if cors else None)
            if not cors:
                return await handler(request)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers.update(cors)
                raise
            if not response.prepared:
                response.headers.update(cors)
            return response

        return origins

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        ctx = self.context
        key = rest.request_key(request)
        if key is None:
            return text_response(404, "ooo: not found")
        method = request.method
        if not key:
            if method == "POST" and request.query.get("api") == "backup":
                return await backup.backup(ctx, request)
            if method == "POST" and request.query.get("api") == "txn":
                return await txn.handle(ctx, request)
            if method != "GET":
                return _not_allowed(_ROOT_ALLOW)
            if wants_websocket(request):
                return await streams.clock(ctx, request)
            return await explorer.root(ctx, request)
        if key in self.endpoints and method in ("GET", "HEAD") and not wants_websocket(request):
            return self._own(key)
        handler = _KEY_METHODS.get(method)
        if handler is None:
            return _not_allowed(_KEY_ALLOW)
        if method == "GET" and wants_websocket(request):
            return await streams.subscribe(ctx, request, key)
        if method == "HEAD":
            self._authorize_head(request, key)
        return await handler(ctx, request, key)

    def _own(self, endpoint: str) -> web.Response:
        """The answer of one of the server's own endpoints (health.py)."""
        if endpoint == HEALTHZ:
            return healthz()
        if endpoint == READYZ:
            return readyz(self.store)
        assert self.metrics is not None  # "metrics" is an endpoint only then
        return self.metrics.response()

    def _authorize_head(self, request: web.Request, key: str) -> None:
        """A HEAD reads (status, length): it needs ``read`` like a GET. The guard's
        ``auth.required_right`` knows GET only and lets other methods through for the handler to
        refuse, so HEAD is checked here."""
        policy, principal = self.guard.policy, principal_of(request)
        if policy is not None and principal is not None and keys.is_valid(key):
            decide(policy, principal, "read", key)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a POST or PATCH announcing a body over ``max_body_bytes`` gets
        its 413 now, not after being told to send the body; others get ``100 Continue`` (aiohttp's
        default). Runs before the middlewares, like aiohttp's own."""
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            return text_response(417, f"ooo: unknown Expect: {expect:.100}")
        length, cap = request.content_length, self.config.max_body_bytes
        if request.method in ("POST", "PATCH") and length is not None and length > cap:
            refusal = rest.too_large(cap)
            log.info("%s %.200s refused: %d %.300r", request.method, request.path, refusal.status,
                     refusal.message)
            return response_for(refusal)
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the response proper starts after it (as aiohttp does)
        return None

    async def _startup(self, app: web.Application) -> None:
        # In commit order, inside each write: pool versions are exact revisions.
        self._watch = self.store.on_commit(self.pools.on_event)
        if self.metrics is not None:
            self.metrics.start()
        self.context.clocks.start()
        await self.guard.start()

    async def _shutdown(self, app: web.Application) -> None:
        """Close every websocket with 1001 so their handlers return and the runner can finish."""
        conns = [*self.pools.connections(), *self.context.clocks.members]
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def _cleanup(self, app: web.Application) -> None:
        await self.context.clocks.stop()
        await self.guard.stop()
        if self._watch is not None:
            self._watch.cancel()
        if self.metrics is not None:
            self.metrics.stop()


def _local_address(request: web.Request) -> tuple[str, int] | None:
    """The (address, port) the request's connection arrived on; None if not a TCP socket."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return (sockname[0], sockname[1]) if isinstance(sockname, tuple) else None


def create_app(store: Layered, **options: Any) -> web.Application:
    """The aiohttp application of a new :class:`Server`; reach it with ``app[SERVER_KEY]``.
    ``create_app(store, auth=Policy.load("auth.toml"))`` enforces an access policy."""
    return Server(store, **options).app


def server_of(app: web.Application) -> Server:
    return app[SERVER_KEY]


def _not_allowed(allow: str) -> web.Response:
    """A 405 names the methods the path takes (``Allow``, which RFC 9110 requires with a 405)."""
    response = text_response(405, "ooo: method not allowed")
    response.headers["Allow"] = allow
    return response
