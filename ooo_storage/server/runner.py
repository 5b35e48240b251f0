"""Run a :class:`Server` on a host and port and stop it cleanly (CLI, tests, benchmarks).

>>> runner = ServerRunner(store, port=0)          # port 0: any free port
>>> port = await runner.start()
>>> ...
>>> await runner.stop()       # stop listening, close websockets (1001), let in-flight requests end

The store stays open: whoever opened it closes it (after ``stop``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..layered import Layered
from .app import Server


class ServerRunner:
    """One server bound to ``host``:``port``; ``start()`` returns the bound port."""

    def __init__(
        self,
        store: Layered,
        host: str = "127.0.0.1",
        port: int = 8800,
        *,
        server: Server | None = None,
        **options: Any,
    ) -> None:
        self.server = server or Server(store, **options)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        runner = web.AppRunner(
            self.server.app, access_log=None, shutdown_timeout=self.server.config.shutdown_timeout
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.host,
            self.port,
            reuse_address=True,
        )
        await site.start()
        self._runner = runner
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
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
    **options: Any,
) -> None:
    """Serve until ``stop`` is set or SIGINT/SIGTERM arrives, then shut down cleanly.

    ``ready(port)`` is called once listening. The store is not closed here.
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
    runner = ServerRunner(store, host, port, server=server, **options)
    try:
        bound = await runner.start()
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
