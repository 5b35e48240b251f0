"""A minimal NATS client connection for the load generator of bench/peers/peers.py.

nats-py costs the measuring process several times what the NATS server spends per message, so with
one load-generator core it, not the server, would set every NATS figure. This speaks just enough of
the NATS text protocol (CONNECT, PUB, SUB, UNSUB, MSG, HMSG, PING/PONG) to send exactly the messages
nats-py's JetStream KV sends: ``kv.put`` is a PUB to ``$KV.<bucket>.<key>`` answered by a PubAck,
``kv.get`` is a direct get, ``kv.watch`` is a push consumer on ``$KV.<bucket>.<prefix>.>``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable

from bench._load import HOST

OnMessage = Callable[[bytes, bytes, bytes, bytes], None]
"""``(subject, reply, headers, payload)`` of one delivered message (``headers`` empty for MSG)."""


class NatsWire(asyncio.Protocol):
    """One NATS connection: publish, subscribe, and request/reply over a wildcard inbox."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.subs: dict[int, OnMessage] = {}
        self.sids = itertools.count(2)
        self.inbox = f"_INBOX.{os.urandom(8).hex()}"
        self.tokens = itertools.count()
        self.requests: dict[bytes, asyncio.Future[tuple[bytes, bytes]]] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    @classmethod
    async def open(cls, port: int) -> NatsWire:
        _, wire = await asyncio.get_running_loop().create_connection(cls, HOST, port)
        await asyncio.wait_for(wire.ready, 10)
        return wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # sid 1: replies to every request of this connection
        transport.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
            b'"protocol":1,"lang":"python-raw","version":"0"}\r\n'
            + f"SUB {self.inbox}.* 1\r\nPING\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        failure = ConnectionError(self.error or f"connection lost: {exc}")
        if not self.ready.done():
            self.ready.set_exception(failure)
        for future in self.requests.values():
            if not future.done():
                future.set_exception(failure)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos, end = 0, len(buffer)
        while (eol := buffer.find(b"\r\n", pos)) >= 0:
            op = buffer[pos : pos + 4]
            if op == b"MSG " or op == b"HMSG":
                parts = buffer[pos:eol].split(b" ")
                size = int(parts[-1])
                if end < eol + 2 + size + 2:
                    break
                block = buffer[eol + 2 : eol + 2 + size]
                header_size = int(parts[-2]) if op == b"HMSG" else 0
                reply = parts[3] if len(parts) == (6 if op == b"HMSG" else 5) else b""
                self._deliver(parts[1], int(parts[2]), reply, block[:header_size], block[header_size:])
                pos = eol + 2 + size + 2
                continue
            if op == b"PING":
                assert self.transport is not None
                self.transport.write(b"PONG\r\n")
            elif op == b"PONG" and not self.ready.done():
                self.ready.set_result(None)
            elif op == b"-ERR":
                self.error = buffer[pos:eol].decode(errors="replace")
            pos = eol + 2
        self.buffer = buffer[pos:]

    def _deliver(self, subject: bytes, sid: int, reply: bytes, headers: bytes, payload: bytes) -> None:
        if sid == 1:
            future = self.requests.pop(subject.rpartition(b".")[2], None)
            if future is not None and not future.done():
                future.set_result((headers, payload))
            return
        callback = self.subs.get(sid)
        if callback is not None:
            callback(subject, reply, headers, payload)

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        assert self.transport is not None
        self.transport.write(b"PUB %s %s %d\r\n%s\r\n" % (
            subject.encode(), reply.encode(), len(payload), payload
        ) if reply else b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 10.0) -> tuple[bytes, bytes]:
        """Publish with a reply inbox and return the reply's ``(headers, payload)``."""
        token = b"%d" % next(self.tokens)
        future = asyncio.get_running_loop().create_future()
        self.requests[token] = future
        self.publish(subject, payload, f"{self.inbox}.{token.decode()}")
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.requests.pop(token, None)

    def subscribe(self, subject: str, callback: OnMessage) -> int:
        assert self.transport is not None
        sid = next(self.sids)
        self.subs[sid] = callback
        self.transport.write(f"SUB {subject} {sid}\r\n".encode())
        return sid

    def unsubscribe(self, sid: int) -> None:
        self.subs.pop(sid, None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"UNSUB {sid}\r\n".encode())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def ack_info(reply: bytes) -> tuple[int, int]:
    """``(stream sequence, pending)`` from a JetStream delivery's ``$JS.ACK...`` reply subject."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[10])
