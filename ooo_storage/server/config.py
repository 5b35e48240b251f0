"""Server configuration: one dataclass, every default documented (docs/protocol.md §4–5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

    from ..protocol.access import Policy
    from .accesslog import AccessLog


@dataclass
class ServerConfig:
    """Options of :func:`~ooo_storage.server.create_app` (passed as keyword arguments)."""

    static: bool = False
    """Refuse every operation that has no matching filter of its kind (§6)."""
    no_patch: bool = False
    """Send every change as a snapshot instead of a JSON patch."""
    max_body_bytes: int = 10 * 1024 * 1024
    """Largest accepted POST/PATCH body; larger → 413."""
    max_buffered_body_bytes: int = 256 * 1024 * 1024
    """Most request-body bytes buffered at once over all requests. Bodies up to 64 KiB take nothing
    from it; a larger body that does not fit now is refused with 503 and ``Retry-After``
    (limits.py). A value below ``max_body_bytes`` counts as ``max_body_bytes``: a body of the
    largest size must fit."""
    allowed_origins: Sequence[str] = ()
    """Web page origins (``scheme://host[:port]``) that may use the server from a browser, over HTTP
    (CORS) and websockets alike; ``*`` allows any. A request with another ``Origin`` gets 403;
    same-origin requests and requests without ``Origin`` pass (protocol/origins.py)."""
    allowed_hosts: Sequence[str] = ()
    """``Host`` names answered besides the address a connection arrived on (and, on a loopback
    address, ``localhost`` and any loopback IP): ``name`` for any port, ``name:port``, ``*`` for any
    host. Other Hosts get 403: this is what defeats DNS rebinding (protocol/origins.py)."""
    max_connections: int | None = None
    """Most connections open at once, websockets included; None derives it from ``RLIMIT_NOFILE``,
    keeping a quarter of the descriptors (at least 128, or half of a tiny limit) for files: 768
    under ``ulimit -n 1024``. At the limit the oldest connection waiting for a request is closed, or
    the new one refused (503) if all are busy. Applies when served by ``ServerRunner`` / ``serve``
    (limits.py), like ``header_timeout`` and ``max_head_bytes``; the other limits apply however the
    application is served."""
    max_connections_per_client: int | None = None
    """Most connections one client (one remote address) may keep busy, each open websocket and each
    request in progress counting; more are refused with 503 (idle connections need no cap: the
    connection limit closes them to make room). None: three quarters of ``max_connections``, so
    that other clients always keep a quarter. Behind a reverse proxy every client has the proxy's
    address: raise it there."""
    header_timeout: float = 10.0
    """Seconds a request head may take from its first byte; then 408 and the connection is closed."""
    max_head_bytes: int = 32 * 1024
    """Largest request head (request line plus all headers); larger → 431 and the connection closed."""
    body_timeout: float = 30.0
    """A request body that receives nothing for this many seconds ends its connection (408)."""
    keepalive_timeout: float = 75.0
    """Seconds a connection may stay idle before its first request or between two requests."""
    max_line_size: int = 8190
    """Longest request line (aiohttp's limit; longer → 400)."""
    max_field_size: int = 8190
    """Longest header name or value (aiohttp's limit; longer → 400)."""
    max_headers: int = 100
    """Most headers in one request (aiohttp's limit; more → 400)."""
    tick: float = 1.0
    """Seconds between two frames of the clock stream on ``/``."""
    ping_interval: float = 60.0
    """Seconds between websocket pings."""
    pong_timeout: float = 150.0
    """A connection silent (no pong, no frame) for this long is dropped."""
    write_timeout: float = 15.0
    """A subscriber whose socket takes nothing for this long is dropped (close code 1011); a glob
    GET whose reader takes nothing for this long is cut."""
    outbox_bytes: int = 8 * 1024 * 1024
    """Bytes that may wait for one subscriber that does not keep up (shared frames, counted per
    subscriber); one more frame then conflates it: its queued frames are dropped and it gets one
    fresh snapshot when its socket drains (a clock stream is dropped, 1008). A single frame larger
    than this is still delivered to a subscriber that reads (connection.py)."""
    close_timeout: float = 2.0
    """How long a close handshake may take before the transport is aborted."""
    shutdown_timeout: float = 10.0
    """How long in-flight requests may run on shutdown."""
    cors_methods: str = "GET, POST, DELETE, PATCH"
    """Methods a preflight (``OPTIONS``) from an allowed origin is told it may use."""
    cors_headers: str = "Authorization, Content-Type"
    """Request headers a preflight from an allowed origin is told it may send."""
    max_msg_size: int = 1024 * 1024
    """Largest client→server websocket message (such frames are ignored anyway)."""
    middlewares: Sequence[Middleware] = field(default_factory=tuple)
    """Extra aiohttp middlewares; they run for every route, websocket upgrades included."""
    list_limit: int = 1000
    """Most items one glob GET returns, and the largest ``?limit=``; more → a cursor (lists.py)."""
    max_subscription_items: int = 100_000
    """Most items a glob subscription may hold: a glob matching more is refused (413) rather than
    kept in memory and sent whole (hub.py); read such a glob with GET pages."""
    backup_dir: str | None = None
    """The directory ``POST /?api=backup&target=NAME`` writes its snapshots into (``backup.py``):
    a target must resolve inside it. None: backups over HTTP are off (403), so that no client can
    make the server write a database wherever its user may write."""
    auth: Policy | None = None
    """Who may do what (``protocol/access.py``; ``Policy.load(path)`` or ``Policy.from_dict``),
    checked for every route, websockets included, before filters run and before a body is read
    (``auth.py``). None: everyone may do everything, as before. This is the policy the server
    starts with; ``Server.set_policy`` replaces it at run time."""

    http_engine: Literal["lean", "aiohttp"] = "lean"
    """Who serves HTTP when run by ``ServerRunner`` / ``serve``: ``lean`` answers the plain
    requests on one key (GET, POST, PATCH, DELETE) with its own HTTP/1.1 front and hands every
    other connection to aiohttp from the first request it does not serve (``front.py``); with
    ``middlewares`` or TLS aiohttp serves everything. ``aiohttp``: aiohttp serves everything (the
    old path, for comparison and as a fallback)."""

    metrics: bool = True
    """Serve ``GET /metrics`` (Prometheus text format, ``metrics.py``) and count requests and writes
    for it (a few integer updates per request). False: ``GET /metrics`` reads the key ``metrics``."""
    metrics_auth: bool = False
    """Under an access policy, ``GET /metrics`` needs ``admin`` (like ``GET /``); by default it
    needs no token, like the health endpoints."""
    health: bool = True
    """Serve ``GET /healthz`` (live) and ``GET /readyz`` (the store open and writable, else 503 with
    the reason), never behind access control (``health.py``). False: they read the keys
    ``healthz`` and ``readyz``."""
    access_log: bool | AccessLog = False
    """Log one line per request (``accesslog.py``): method, path, status, body bytes,
    microseconds, remote address. True: as INFO records of the ``ooo_storage.access`` logger; an
    :class:`~.accesslog.AccessLog` of your own (``serve`` gives a ``DirectAccessLog``, cheaper):
    through it. Off by default: a record per request costs about as much CPU as a POST."""

    def __post_init__(self) -> None:
        if self.max_connections_per_client is not None and self.max_connections_per_client < 1:
            raise ValueError("max_connections_per_client must be at least 1")
        if self.http_engine not in ("lean", "aiohttp"):
            raise ValueError(f"http_engine must be 'lean' or 'aiohttp', not {self.http_engine!r}")

    @property
    def body_budget(self) -> int:
        """``max_buffered_body_bytes``, at least ``max_body_bytes``."""
        return max(self.max_buffered_body_bytes, self.max_body_bytes)
