"""One websocket subscriber: a bounded outbox and keepalive, with no task of its own while it keeps up.

A pool builds each websocket frame ONCE (header included: server frames are unmasked, so the
bytes are the same for every subscriber) and :meth:`Connection.send` queues a *reference* to those
bytes; a :class:`Flusher` writes each connection's frames of one event-loop iteration with a
single ``transport.write`` (a burst of events costs one syscall per subscriber, not one per frame).

A subscriber that does not keep up costs no copy of the frames: once its transport is over its
high-water mark (aiohttp pauses writing), frames stay queued here as shared references and a small
pump task hands them to the transport in slices as the socket drains. So a slow or stalled
subscriber holds at most the transport's high-water mark plus one slice of private memory,
whatever the frame sizes. The outbox bound (``outbox_bytes``) is on what waits behind the socket,
not on one frame: a frame larger than the outbox is still delivered to a subscriber that reads.

When more than ``outbox_bytes`` already wait and another frame comes, the subscriber is
*conflated*, not dropped: its queued frames are thrown away (except one already partly handed to
the transport: a websocket frame is written whole), it is marked behind and gets no data frame
(they would patch a state it does not have) until its socket drains; then its
:class:`Conflater` (the pool hub) gives it ONE snapshot frame at the pool's current version, and
patches follow from there. A phone on a bad network catches up instead of looping through
reconnects, and what it costs stays bounded by the outbox plus one frame. A connection without a
conflater (the clock stream) is dropped as before (1008). One whose socket makes no progress for
``write_timeout`` seconds is dropped (1011), behind or not. Nobody ever awaits a subscriber on the
broadcast path, so a slow one never delays the others or the store.

aiohttp's own writes (pongs, the close frame) are synchronous ``transport.write`` calls of whole
frames; ours never leave a frame half written while the pump is idle... except inside a large
frame being sliced, so the close frame is sent only once the pump stopped (see :meth:`_stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import Protocol

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractStreamWriter

from ..protocol.frames import PING_FRAME
from .config import ServerConfig

_SLICE = 64 * 1024
"""Most bytes handed to the transport in one call: what a subscriber may cost beyond the
transport's high-water mark (its frames otherwise stay shared)."""

log = logging.getLogger("ooo_storage.server")

_INT = struct.Struct("i")
_NO_BYTES = bytes(_INT.size)


def unacked(transport: asyncio.Transport) -> int:
    """Bytes the kernel still holds for the transport's socket, not yet acknowledged by the peer
    (Linux ``TIOCOUTQ``/``SIOCOUTQ``); 0 when unknown (no socket, another platform). A kernel send
    buffer autotuned to megabytes is reported writable only once a third of it is free, so a peer
    that reads slowly but steadily moves nothing out of the transport's buffer for a long time:
    what it acknowledges is the progress it makes."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _NO_BYTES))[0])
    except (OSError, ValueError):  # closed meanwhile, or not a TCP socket
        return 0

_UNSENT = 128 * 1024
"""``TCP_NOTSENT_LOWAT`` of a subscriber's socket: the kernel takes no more from us while this
much waits unsent (what is in flight is not limited, so a fast link keeps its speed). Without it
the kernel queues megabytes for a slow reader (a send buffer autotuned up to ``tcp_wmem``), and a
conflated subscriber reads all of them, stale, before its snapshot."""


def limit_unsent(transport: asyncio.Transport) -> None:
    """Bound what the kernel queues unsent for the transport's socket (:data:`_UNSENT`)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None:
        return
    with contextlib.suppress(OSError):  # not TCP (a unix socket), or closed meanwhile
        sock.setsockopt(socket.IPPROTO_TCP, option, _UNSENT)


def is_data(frame: bytes) -> bool:
    """Whether ``frame`` carries data (a snapshot or a patch), not a control frame (ping, pong):
    control frames still go to a subscriber that is behind."""
    return not frame[0] & 0x08


class Conflater(Protocol):
    """Who brings a conflated subscriber back (the pool hub)."""

    def conflated(self, conn: Connection) -> None:
        """``conn``'s queued frames were dropped: it is behind (counted, reported)."""

    def catch_up(self, conn: Connection) -> bytes | None:
        """The snapshot frame ``conn`` gets now that its socket drained; None if it has no pool."""


class Flusher:
    """Writes the frames queued during one event-loop iteration, one write per connection; one per
    server, it also counts what its connections handed to their sockets (``GET /metrics``)."""

    __slots__ = ("_dirty", "_scheduled", "frames_sent", "bytes_sent")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._scheduled = False
        self.frames_sent = 0
        """Our frames (data and pings) handed whole to a subscriber's socket: plain ints, no
        per-frame look-up (aiohttp's own pongs and close frames are not counted)."""
        self.bytes_sent = 0
        """Their bytes, counted as they are handed over (a large frame slice by slice)."""

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


class Connection:
    """A subscriber's socket: its outbox, its keepalive and its close."""

    __slots__ = (
        "ws",
        "request",
        "config",
        "closed",
        "close_reason",
        "last_seen",
        "_transport",
        "_written",
        "_delivered_at_check",
        "_ping_timer",
        "_write_timer",
        "_on_drop",
        "_flusher",
        "_pending",
        "_pending_bytes",
        "_head",
        "_closing",
        "_protocol",
        "_writer",
        "_pump",
        "_behind",
        "conflater",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        config: ServerConfig,
        flusher: Flusher,
        writer: AbstractStreamWriter,
        on_drop: Callable[[Connection, bool], None] | None = None,
    ) -> None:
        self.ws = ws
        self.request = request
        self.config = config
        self.closed = False
        self.close_reason = ""
        self.last_seen = asyncio.get_running_loop().time()
        self._transport: asyncio.Transport | None = request.transport
        if self._transport is not None:
            limit_unsent(self._transport)
        self._written = 0  # bytes handed to the transport
        self._delivered_at_check: int | None = None  # at the last progress check (None: not armed)
        self._ping_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._on_drop = on_drop  # (conn, slow): leave the pool at once, not when the socket is gone
        self._closing: asyncio.Task[None] | None = None
        self._flusher = flusher
        self._pending: list[bytes] = []  # frames (shared bytes) not yet fully handed to the transport
        self._pending_bytes = 0
        self._head = 0  # bytes of _pending[0] already handed over
        self._protocol = request.protocol  # aiohttp's: ``writing_paused`` is its flow control
        self._writer = writer  # what ``ws.prepare`` returned: ``drain()`` waits for the socket
        self._pump: asyncio.Task[None] | None = None
        self._behind = False  # conflated: no data frame until the snapshot that catches it up
        self.conflater: Conflater | None = None  # set by whoever sends it data frames

    @property
    def queued_bytes(self) -> int:
        """Bytes not yet handed to the kernel (queued here plus the transport's buffer)."""
        transport = self._transport
        buffered = 0 if transport is None else transport.get_write_buffer_size()
        return buffered + self._pending_bytes

    # -- sending (synchronous: called from the broadcast path) ----------------------------------
    @property
    def gone(self) -> bool:
        """Closed by us, or its socket closed by the peer (nobody reads what it would be sent)."""
        transport = self._transport
        return self.closed or transport is None or transport.is_closing()

    @property
    def behind(self) -> bool:
        """Conflated and waiting for its socket to drain (then it gets a fresh snapshot)."""
        return self._behind

    def send(self, frame: bytes) -> None:
        """Queue one complete websocket frame; when too much already waits, conflate (or drop
        a connection that has no conflater)."""
        if self.closed:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self.drop(WSCloseCode.GOING_AWAY, "connection lost")
            return
        data = is_data(frame)
        if self._behind and data:
            return  # it would patch a state the subscriber does not have
        if self._pending_bytes > self.config.outbox_bytes:
            if self.conflater is None:
                self.drop(WSCloseCode.POLICY_VIOLATION, "slow consumer: outbox full", slow=True)
                return
            if self._behind:
                return  # a large frame is being finished: not even a pong is kept (memory bound)
            self._conflate(self.conflater)
            if data:
                return
        if not self._pending and self._pump is None:
            self._flusher.mark(self)
        self._pending.append(frame)
        self._pending_bytes += len(frame)

    def flush(self) -> None:
        """Hand the queued frames to the transport: in one write when they are few and the socket
        keeps up, else in slices until the transport pauses, the rest by the pump."""
        pending = self._pending
        if self.closed or not pending:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self.drop(WSCloseCode.GOING_AWAY, "connection lost")
            return
        if not self._protocol.writing_paused:
            if self._head == 0 and self._pending_bytes <= _SLICE:
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                flusher = self._flusher
                flusher.frames_sent += len(pending)
                flusher.bytes_sent += len(data)
                pending.clear()
                self._pending_bytes = 0
                transport.write(data)
                self._written += len(data)
            else:
                self._write_slices(transport)
        if pending:
            self._start_pump()
        self._watch_progress(transport)

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._drain_pending())

    def _watch_progress(self, transport: asyncio.Transport) -> None:
        """Arm the write timeout while something waits for the socket."""
        if self._write_timer is None and (self._pending or transport.get_write_buffer_size()):
            self._write_timer = asyncio.get_running_loop().call_later(
                self.config.write_timeout, self._check_progress
            )

    def _conflate(self, conflater: Conflater) -> None:
        """Drop the queued frames but one partly handed over, and catch up once the socket drains."""
        pending = self._pending
        if self._head:
            head = pending[0]
            pending[1:] = []
            self._pending_bytes = len(head) - self._head
        else:
            pending.clear()
            self._pending_bytes = 0
        self._behind = True
        conflater.conflated(self)
        self._start_pump()

    def _catch_up(self, transport: asyncio.Transport) -> None:
        """The socket drained: queue the pool's current snapshot (patches follow from its version)."""
        self._behind = False
        frame = None if self.conflater is None else self.conflater.catch_up(self)
        if frame is not None:
            self._pending.append(frame)
            self._pending_bytes += len(frame)
            self._watch_progress(transport)

    def _write_slices(self, transport: asyncio.Transport) -> None:
        pending = self._pending
        flusher = self._flusher
        while pending and not self._protocol.writing_paused:
            head = pending[0]
            piece = memoryview(head)[self._head : self._head + _SLICE]
            transport.write(piece)
            self._written += len(piece)
            flusher.bytes_sent += len(piece)
            self._pending_bytes -= len(piece)
            self._head += len(piece)
            if self._head == len(head):
                pending.pop(0)
                self._head = 0
                flusher.frames_sent += 1

    async def _drain_pending(self) -> None:
        """The pump of a subscriber that does not keep up: write more each time the socket drains;
        one that is behind gets its snapshot once everything before it was handed over."""
        try:
            while (self._pending or self._behind) and not self.closed:
                await self._writer.drain()
                transport = self._transport
                if self.closed or transport is None or transport.is_closing():
                    break
                if self._behind and not self._pending:
                    self._catch_up(transport)
                self._write_slices(transport)
        except (ConnectionError, RuntimeError):
            self.drop(WSCloseCode.GOING_AWAY, "connection lost")
        finally:
            self._pump = None

    def _check_progress(self) -> None:
        self._write_timer = None
        if self.closed:
            return
        transport = self._transport
        buffered = 0 if transport is None else transport.get_write_buffer_size()
        if not buffered and not self._pending:
            self._delivered_at_check = None
            return
        # Acknowledged by the peer, not merely handed to the kernel (see :func:`unacked`); one
        # ioctl per check. aiohttp's own frames (pongs) lower it: only a rise is progress.
        delivered = self._written - buffered - (0 if transport is None else unacked(transport))
        last = self._delivered_at_check
        if last is not None and delivered <= last:
            self.drop(WSCloseCode.INTERNAL_ERROR, "write timeout", slow=True)
            return
        self._delivered_at_check = delivered
        self._write_timer = asyncio.get_running_loop().call_later(
            self.config.write_timeout, self._check_progress
        )

    # -- keepalive ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the keepalive (ping every ``ping_interval``, drop after ``pong_timeout``)."""
        self._ping_timer = asyncio.get_running_loop().call_later(self.config.ping_interval, self._keepalive)

    def seen(self) -> None:
        """The peer sent something (any frame proves it alive, a pong included)."""
        self.last_seen = asyncio.get_running_loop().time()

    def _keepalive(self) -> None:
        if self.closed:
            return
        cfg = self.config
        loop = asyncio.get_running_loop()
        silent = loop.time() - self.last_seen
        if silent >= cfg.pong_timeout:
            self.drop(WSCloseCode.POLICY_VIOLATION, "pong timeout")
            return
        self.send(PING_FRAME)
        self._ping_timer = loop.call_later(min(cfg.ping_interval, cfg.pong_timeout - silent), self._keepalive)

    # -- closing --------------------------------------------------------------------------------
    def drop(self, code: int, reason: str, slow: bool = False) -> None:
        """Stop sending and close the socket in the background (aborting a stalled handshake)."""
        if self.closed:
            return
        self._stop(reason)
        if self._on_drop is not None:
            self._on_drop(self, slow)
        self._closing = asyncio.get_running_loop().create_task(self._close(code, reason))

    def _stop(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._pending.clear()
        self._pending_bytes = 0
        for timer in (self._ping_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        if self._head:
            # A frame is half written: a close frame after it would corrupt the stream.
            self._head = 0
            if self._transport is not None:
                self._transport.abort()

    async def close(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "server shutdown") -> None:
        """Close (e.g. on shutdown or when the handler ends) and wait until it is done."""
        if not self.closed:
            self._stop(reason)
            await self._close(code, reason)
        elif self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = self._transport
            if transport is not None:
                transport.abort()
        except Exception:  # closing must never raise into the broadcast path
            log.debug("close failed", exc_info=True)
