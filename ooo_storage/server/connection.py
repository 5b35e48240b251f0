"""One websocket subscriber: a bounded outbox drained by its own writer task, and keepalive.

Broadcasting never awaits: :meth:`Connection.send` appends the (shared) frame bytes to the outbox
and wakes the writer. A subscriber that cannot keep up is dropped when its outbox exceeds its byte
budget, or when one write takes longer than ``write_timeout``; the others never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web

from .config import ServerConfig

log = logging.getLogger("ooo_storage.server")

_PING: Any = object()  # outbox marker: send a ping (control frames go through the writer too)


class Connection:
    """A subscriber's socket. ``pool`` is set while it is a member of a stream pool."""

    __slots__ = (
        "ws",
        "request",
        "config",
        "pool",
        "closed",
        "close_reason",
        "last_seen",
        "_outbox",
        "_queued",
        "_wake",
        "_writer",
        "_timer",
        "_on_slow",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        config: ServerConfig,
        on_slow: Callable[[Connection], None] | None = None,
    ) -> None:
        self.ws = ws
        self.request = request
        self.config = config
        self.pool: Any = None
        self.closed = False
        self.close_reason = ""
        self._outbox: deque[bytes] = deque()
        self._queued = 0
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_slow = on_slow
        self.last_seen = asyncio.get_running_loop().time()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    # -- producing (synchronous: called from the broadcast path) -------------------------------
    def send(self, frame: bytes) -> None:
        """Queue ``frame``; drop the connection if its outbox would exceed its budget."""
        if self.closed:
            return
        self._queued += len(frame)
        if self._queued > self.config.outbox_bytes:
            if self._on_slow is not None:
                self._on_slow(self)
            self.drop(WSCloseCode.POLICY_VIOLATION, "slow consumer: outbox full")
            return
        self._enqueue(frame)

    def _enqueue(self, item: bytes) -> None:
        self._outbox.append(item)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start writing (frames queued before this are sent first) and the keepalive timer."""
        self._writer = asyncio.create_task(self._write_loop())
        self._schedule_keepalive(self.config.ping_interval)

    def seen(self) -> None:
        """The peer sent something (any frame proves it alive, a pong included)."""
        self.last_seen = asyncio.get_running_loop().time()

    def _schedule_keepalive(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._keepalive)

    def _keepalive(self) -> None:
        if self.closed:
            return
        cfg = self.config
        silent = asyncio.get_running_loop().time() - self.last_seen
        if silent >= cfg.pong_timeout:
            self.drop(WSCloseCode.POLICY_VIOLATION, "pong timeout")
            return
        self._enqueue(_PING)
        self._schedule_keepalive(min(cfg.ping_interval, cfg.pong_timeout - silent))

    async def _write_loop(self) -> None:
        ws, outbox, timeout = self.ws, self._outbox, self.config.write_timeout
        loop = asyncio.get_running_loop()
        try:
            while not self.closed:
                if not outbox:
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                frame = outbox.popleft()
                async with asyncio.timeout(timeout):
                    if frame is _PING:
                        await ws.ping()
                    else:
                        self._queued -= len(frame)
                        await ws.send_bytes(frame)
        except TimeoutError:
            self.drop(WSCloseCode.INTERNAL_ERROR, "write timeout")
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-write; the reader side notices and cleans up.
            self.drop(WSCloseCode.GOING_AWAY, f"write failed: {exc}")

    def drop(self, code: int, reason: str) -> None:
        """Stop sending and close the socket (aborting it if the close handshake stalls)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._outbox.clear()
        self._queued = 0
        if self._timer is not None:
            self._timer.cancel()
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def close(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "server shutdown") -> None:
        """Close for good (e.g. on shutdown) and wait for it."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            if self._timer is not None:
                self._timer.cancel()
            if self._writer is not None:
                self._writer.cancel()
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()
        except Exception:  # a close must never raise into the broadcast path
            log.debug("close failed", exc_info=True)

    async def wait_writer(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
