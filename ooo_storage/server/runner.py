"""Run a :class:`Server` on a host and port and stop it cleanly (CLI, tests, benchmarks).

>>> runner = ServerRunner(store, port=0)          # port 0: any free port
>>> port = await runner.start()
>>> ...
>>> await runner.stop()       # stop listening, close websockets (1001), let in-flight requests end

The store stays open: whoever opened it closes it (after ``stop``). The socket listens through a
:class:`~.limits.ConnectionGate`: the connection limit and the request-head limits of the config
apply to what it serves.

``ssl_context`` (an :class:`ssl.SSLContext` for a server, with its certificate chain loaded) serves
HTTPS and ``wss://`` on the same port. A TLS handshake must end within the config's
``header_timeout``, like a request head, so connections that never finish one do not pile up: they
are not counted by the connection limit until the handshake is done.

With ``http_engine="lean"`` (the default) the plain requests on one key are answered by the lean
front (``front.py``) and the rest handed to aiohttp on the same connection; TLS is aiohttp's alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..layered import Layered
from . import front
from .app import Server
from .errors import BadRequestLogFilter
from .limits import ConnectionGate, GuardedConnection

log = logging.getLogger("ooo_storage.server")


def quiet_bad_requests() -> None:
    """Install :class:`BadRequestLogFilter` on aiohttp's server logger, once per process: requests
    that break aiohttp's header limits would each log an ERROR with a traceback, and bad input
    deserves one INFO line."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLogFilter) for f in logger.filters):
        logger.addFilter(BadRequestLogFilter())


class ServerRunner:
    """One server bound to ``host``:``port``; ``start()`` returns the bound port."""

    def __init__(
        self,
        store: Layered,
        host: str = "127.0.0.1",
        port: int = 8800,
        *,
        server: Server | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        self.server = server or Server(store, **options)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.gate: ConnectionGate | None = None
        """The connections being served (``gate.open``), once started."""

    @property
    def url(self) -> str:
        scheme = "http" if self.ssl_context is None else "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> int:
        quiet_bad_requests()
        runner = web.AppRunner(
            self.server.app, access_log=None, shutdown_timeout=self.server.config.shutdown_timeout
        )
        await runner.setup()
        assert runner.server is not None
        gate = ConnectionGate(runner.server, self.server.config, self.server.notices)
        try:
            tls: dict[str, Any] = {}
            if self.ssl_context is not None:
                tls = {"ssl": self.ssl_context,
                       "ssl_handshake_timeout": self.server.config.header_timeout}
            factory: Callable[[], GuardedConnection] = gate
            if self.ssl_context is None and self.server.config.http_engine == "lean":
                factory = front.lean_factory(self.server, gate)
            listener = await asyncio.get_running_loop().create_server(
                factory, self.host, self.port, reuse_address=True, **tls
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._listener, self.gate = runner, listener, gate
        if listener.sockets:
            self.port = listener.sockets[0].getsockname()[1]
        config = self.server.config
        source = "--max-connections" if config.max_connections else "from ulimit -n"
        log.info("accepting at most %d connections (%s), %d busy per client address", gate.limit,
                 source, self.server.share.limit)
        return self.port

    async def stop(self) -> None:
        """Stop listening, then let aiohttp close websockets (1001) and finish in-flight requests."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self.gate is not None:
            await front.shutdown(self.gate, self.server.config.shutdown_timeout)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ServerRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    store: Layered,
    host: str = "127.0.0.1",
    port: int = 8800,
    *,
    server: Server | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[int], Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> None:
    """Serve until ``stop`` is set or SIGINT/SIGTERM arrives, then shut down cleanly.

    ``ready(port)`` is called once listening. The store is not closed here. ``ssl_context``: see
    :class:`ServerRunner`.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    runner = ServerRunner(store, host, port, server=server, ssl_context=ssl_context, **options)
    try:
        bound = await runner.start()
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
