"""Clients of the stores compared by bench/peers/peers.py, behind one small interface.

- ``ooo``: ooo-storage over HTTP/1.1 keep-alive (bench/_load.py's raw ``HttpConnection``) and a raw
  websocket watcher (``GET /<prefix>/*``, binary frames, ``?v=<version>`` to resume).
- ``etcd``: etcd v3's JSON gateway on the client port (``/v3/kv/put``, ``/v3/kv/range``,
  ``/v3/watch``; keys and values base64) over the same raw HTTP connection; a watch is one
  long-lived ``POST /v3/watch`` stream per watcher (newline-separated JSON in a chunked body),
  resumed with ``start_revision``.
- ``nats``: NATS JetStream KV. nats-py (``js.create_key_value``) makes the bucket; the data plane
  is a raw NATS connection (bench/peers/nats_wire.py) sending what nats-py's KV sends: ``put`` publishes
  to ``$KV.bench.<key>`` and awaits the PubAck, ``get`` is a direct get, a watcher is the push
  consumer ``kv.watch`` creates (last value per key, then changes), a list is such a consumer's
  initial values, and a resume is a consumer from the next stream sequence.

Every value is the same 150 B JSON document (see :func:`value`) carrying a ``CLOCK_MONOTONIC``
timestamp, so that a watcher in another process on this machine can measure end-to-end latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench._load import HOST, HttpConnection, split_frames
from bench.peers.nats_wire import NatsWire, ack_info

VALUE_SIZE = 150
NATS_BUCKET = "bench"

OnUpdate = Callable[[Sequence[bytes], bool], None]
"""A watcher's callback: the values (or raw frames holding them) of one delivery, and whether it is
initial state (a snapshot) rather than a change."""

_TS = re.compile(rb'"ts":(\d+)')
_SEQ_KEY = re.compile(rb'"seq":(\d+),"k":"([^"]+)"')


def value(seq: int, key: str) -> bytes:
    """The benchmark's JSON value, padded to exactly ``VALUE_SIZE`` bytes."""
    head = b'{"ts":%d,"seq":%d,"k":"%s","pad":"' % (time.monotonic_ns(), seq, key.encode())
    return head + b"x" * (VALUE_SIZE - len(head) - 2) + b'"}'


def timestamps(raw: bytes) -> list[int]:
    """Every ``ts`` in a value or in a frame holding values."""
    return [int(ts) for ts in _TS.findall(raw)]


def sequences(raw: bytes) -> list[tuple[str, int]]:
    """Every ``(key, seq)`` pair in a value or in a frame holding values."""
    return [(k.decode(), int(seq)) for seq, k in _SEQ_KEY.findall(raw)]


class Conn(ABC):
    """One client connection issuing one request at a time."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def list(self, prefix: str) -> int:
        """Read every item under ``prefix``; return how many there are."""

    @abstractmethod
    async def close(self) -> None: ...


class Watcher(ABC):
    """A live subscription to every key under a prefix."""

    position: Any = None
    """What to resume from: the last version (ooo), revision (etcd) or stream sequence (NATS)."""

    @abstractmethod
    async def close(self) -> None: ...


class Peer(ABC):
    """How to reach one store: connections, watchers and its key syntax."""

    sep = "/"

    def __init__(self, port: int) -> None:
        self.port = port

    def key(self, *parts: object) -> str:
        return self.sep.join(str(p) for p in parts)

    async def prepare(self) -> None:
        """One-time setup before the first workload (a NATS bucket); nothing by default."""
        return None

    @abstractmethod
    async def connect(self) -> Conn: ...

    @abstractmethod
    async def watch(self, prefix: str, on_update: OnUpdate, resume: Any = None) -> Watcher:
        """Watch every key under ``prefix`` (``key(prefix, ...)``), resuming after ``resume``."""

    async def close(self) -> None:
        """Release the connections shared by watchers; none by default."""
        return None


class Http(HttpConnection):
    """bench/_load.py's keep-alive connection, also reading chunked bodies (etcd's larger replies)."""

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        if b"transfer-encoding: chunked" not in head:
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            return status, await self.reader.readexactly(length) if length else b""
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readuntil(b"\r\n")  # no trailers
        return status, b"".join(parts)


def _check(status: int, body: bytes) -> bytes:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return body


# ooo-storage


class OooConn(Conn):
    def __init__(self, http: Http) -> None:
        self.http = http

    async def put(self, key: str, data: bytes) -> None:
        _check(*await self.http.request("POST", f"/{key}", data))

    async def get(self, key: str) -> bytes:
        return _check(*await self.http.request("GET", f"/{key}"))

    async def list(self, prefix: str) -> int:
        return len(orjson.loads(_check(*await self.http.request("GET", f"/{prefix}/*"))))

    async def close(self) -> None:
        self.http.close()


class _Stream(asyncio.Protocol):
    """Raw HTTP/1.1 client for one long-lived response: sends ``request``, hands on body bytes."""

    def __init__(self, request: bytes, expect: bytes) -> None:
        self.request, self.expect = request, expect
        self.head_done = False
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed before the response"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.head_done:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buffer
                return
            if not head.startswith(self.expect):
                self.ready.set_exception(RuntimeError(f"refused: {head.splitlines()[0]!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.head_done = True
            self.ready.set_result(None)
            buffer = rest
        self.buffer = self.body(buffer)

    def body(self, buffer: bytes) -> bytes:
        """Consume what it can of ``buffer``; return the rest."""
        raise NotImplementedError

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _WsStream(_Stream):
    """A websocket subscriber handing every data frame to ``on_frame``; answers pings."""

    def __init__(self, path: str, port: int, on_frame: Callable[[bytes], None]) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        super().__init__(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
            b"HTTP/1.1 101",
        )
        self.on_frame = on_frame

    def body(self, buffer: bytes) -> bytes:
        frames, pos = split_frames(buffer)
        for opcode, start, length in frames:
            if opcode in (1, 2):
                self.on_frame(buffer[start : start + length])
            elif opcode == 9 and self.transport is not None and length < 126:
                # a masked pong; a zero mask keeps the payload as is
                pong = bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + buffer[start : start + length]
                self.transport.write(pong)
        return buffer[pos:]


class OooWatcher(Watcher):
    def __init__(self, on_update: OnUpdate, resume: str | None) -> None:
        self.on_update = on_update
        self.position = resume
        self.stream: _WsStream | None = None

    def on_frame(self, frame: bytes) -> None:
        # {"snapshot":<bool>,"version":"<hex>","data":...}: fixed key order, docs/protocol.md §5.2
        snapshot = frame[12] == 0x74  # t
        start = 28 if snapshot else 29
        self.position = frame[start : frame.index(b'"', start)].decode()
        self.on_update((frame,), snapshot)

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class OooPeer(Peer):
    async def connect(self) -> Conn:
        return OooConn(await Http.open(self.port))

    async def watch(self, prefix: str, on_update: OnUpdate, resume: Any = None) -> Watcher:
        watcher = OooWatcher(on_update, resume)
        path = f"/{prefix}/*" + (f"?v={resume}" if resume else "")
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_connection(
            lambda: _WsStream(path, self.port, watcher.on_frame), HOST, self.port
        )
        watcher.stream = stream
        await stream.ready
        return watcher


# etcd


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_range(prefix: str) -> dict[str, str]:
    """etcd's range covering every key starting with ``prefix``/."""
    start = prefix + "/"
    end = start[:-1] + chr(ord(start[-1]) + 1)
    return {"key": _b64(start), "range_end": _b64(end)}


class EtcdConn(Conn):
    def __init__(self, http: Http) -> None:
        self.http = http

    async def put(self, key: str, data: bytes) -> None:
        body = b'{"key":"%s","value":"%s"}' % (_b64(key).encode(), base64.b64encode(data))
        _check(*await self.http.request("POST", "/v3/kv/put", body))

    async def get(self, key: str) -> bytes:
        reply = orjson.loads(_check(*await self.http.request(
            "POST", "/v3/kv/range", b'{"key":"%s"}' % _b64(key).encode()
        )))
        return base64.b64decode(reply["kvs"][0]["value"])

    async def list(self, prefix: str) -> int:
        reply = orjson.loads(_check(*await self.http.request(
            "POST", "/v3/kv/range", orjson.dumps(_prefix_range(prefix))
        )))
        return len([base64.b64decode(kv["value"]) for kv in reply.get("kvs", ())])

    async def close(self) -> None:
        self.http.close()


class _EtcdWatchStream(_Stream):
    """One ``POST /v3/watch`` stream: de-chunks the body and hands on each JSON message."""

    def __init__(self, create: bytes, port: int, on_message: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(
            f"POST /v3/watch HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(create)}\r\n\r\n".encode() + create,
            b"HTTP/1.1 200",
        )
        self.on_message = on_message
        self.text = b""

    def body(self, buffer: bytes) -> bytes:
        pos, end = 0, len(buffer)
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end], 16)
            if end < line_end + 2 + size + 2:
                break
            self.text += buffer[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
        *messages, self.text = self.text.split(b"\n")
        for message in messages:
            if message.strip():
                self.on_message(orjson.loads(message))
        return buffer[pos:]


class EtcdWatcher(Watcher):
    def __init__(self, on_update: OnUpdate, resume: int | None) -> None:
        self.on_update = on_update
        self.position = resume
        self.stream: _EtcdWatchStream | None = None

    def on_message(self, message: dict[str, Any]) -> None:
        result = message.get("result") or {}
        events = result.get("events")
        if not events:
            return
        self.position = int(events[-1]["kv"]["mod_revision"])
        self.on_update([base64.b64decode(e["kv"].get("value", "")) for e in events], False)

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class EtcdPeer(Peer):
    async def connect(self) -> Conn:
        return EtcdConn(await Http.open(self.port))

    async def watch(self, prefix: str, on_update: OnUpdate, resume: Any = None) -> Watcher:
        watcher = EtcdWatcher(on_update, resume)
        request: dict[str, Any] = _prefix_range(prefix)
        if resume is not None:
            request["start_revision"] = resume + 1
        create = orjson.dumps({"create_request": request})
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_connection(
            lambda: _EtcdWatchStream(create, self.port, watcher.on_message), HOST, self.port
        )
        watcher.stream = stream
        await stream.ready
        return watcher


# NATS JetStream KV

NATS_STREAM = f"KV_{NATS_BUCKET}"


class NatsConn(Conn):
    def __init__(self, wire: NatsWire) -> None:
        self.wire = wire

    async def put(self, key: str, data: bytes) -> None:
        _, ack = await self.wire.request(f"$KV.{NATS_BUCKET}.{key}", data)
        if b'"error"' in ack:
            raise RuntimeError(f"put {key}: {ack[:200]!r}")

    async def get(self, key: str) -> bytes:
        headers, data = await self.wire.request(
            f"$JS.API.DIRECT.GET.{NATS_STREAM}.$KV.{NATS_BUCKET}.{key}")
        if not headers.startswith(b"NATS/1.0\r\n"):  # a status line: 404 and the like
            raise RuntimeError(f"get {key}: {headers.splitlines()[0]!r}")
        return data

    async def list(self, prefix: str) -> int:
        items: list[bytes] = []
        done = asyncio.get_running_loop().create_future()

        def on_update(values: Sequence[bytes], initial: bool) -> None:
            items.extend(values)

        watcher = await watch_nats(self.wire, prefix, on_update, None, on_initial_done=done)
        try:
            await asyncio.wait_for(done, 30)
        finally:
            await watcher.close()
        return len(items)

    async def close(self) -> None:
        self.wire.close()


class NatsWatcher(Watcher):
    def __init__(self, wire: NatsWire, own: bool) -> None:
        self.wire, self.own = wire, own
        self.sid = 0
        self.consumer = ""

    async def close(self) -> None:
        self.wire.unsubscribe(self.sid)
        if self.consumer and not self.own:
            # a shared connection stays up: delete the consumer, as a stopped kv.watch does
            with contextlib.suppress(Exception):
                await self.wire.request(f"$JS.API.CONSUMER.DELETE.{NATS_STREAM}.{self.consumer}")
        if self.own:
            self.wire.close()


async def watch_nats(
    wire: NatsWire, prefix: str, on_update: OnUpdate, resume: int | None, *, own: bool = False,
    on_initial_done: asyncio.Future[None] | None = None,
) -> NatsWatcher:
    """The push consumer kv.watch creates (ephemeral, no acks, in memory), delivering the last value of
    every key then each change; from stream sequence ``resume + 1`` instead when resuming."""
    watcher = NatsWatcher(wire, own)
    initial = resume is None

    def on_message(subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> None:
        nonlocal initial
        if not reply:  # an idle heartbeat or flow-control status: no data
            return
        watcher.position, pending = ack_info(reply)
        on_update((payload,), initial)
        if initial and pending == 0:
            initial = False
            if on_initial_done is not None and not on_initial_done.done():
                on_initial_done.set_result(None)

    inbox = f"_DELIVER.{os.urandom(8).hex()}"
    watcher.sid = wire.subscribe(inbox, on_message)
    config: dict[str, Any] = {
        "deliver_subject": inbox, "ack_policy": "none", "replay_policy": "instant",
        "filter_subject": f"$KV.{NATS_BUCKET}.{prefix}.>", "mem_storage": True,
        "inactive_threshold": 30_000_000_000, "num_replicas": 1,
    }
    if resume is None:
        config["deliver_policy"] = "last_per_subject"
    else:
        config.update(deliver_policy="by_start_sequence", opt_start_seq=resume + 1)
    _, reply = await wire.request(f"$JS.API.CONSUMER.CREATE.{NATS_STREAM}",
                                  orjson.dumps({"stream_name": NATS_STREAM, "config": config}))
    info = orjson.loads(reply)
    if "error" in info:
        wire.unsubscribe(watcher.sid)
        raise RuntimeError(f"consumer create: {info['error']}")
    watcher.consumer = info["name"]
    if info.get("num_pending", 0) == 0 and initial:
        initial = False
        if on_initial_done is not None and not on_initial_done.done():
            on_initial_done.set_result(None)
    return watcher


class NatsPeer(Peer):
    """Raw NATS connections (bench/peers/nats_wire.py); nats-py only creates the KV bucket."""

    sep = "."

    async def prepare(self) -> None:
        # nats-py is installed by bench/peers/peers.py only when NATS is measured: usually absent.
        import nats  # type: ignore[import-not-found]
        from nats.js.api import KeyValueConfig, StorageType  # type: ignore[import-not-found]

        nc = await nats.connect(f"nats://{HOST}:{self.port}", max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=10)
            try:
                await js.key_value(NATS_BUCKET)
            except Exception:  # noqa: BLE001 - nats-py raises BucketNotFoundError or NotFoundError
                await js.create_key_value(KeyValueConfig(
                    bucket=NATS_BUCKET, history=1, storage=StorageType.FILE, direct=True
                ))
        finally:
            await nc.close()

    async def connect(self) -> Conn:
        return NatsConn(await NatsWire.open(self.port))

    async def watch(self, prefix: str, on_update: OnUpdate, resume: Any = None) -> Watcher:
        wire = await NatsWire.open(self.port)
        try:
            return await watch_nats(wire, prefix, on_update, resume, own=True)
        except BaseException:
            wire.close()
            raise


PEERS: dict[str, type[Peer]] = {"ooo": OooPeer, "etcd": EtcdPeer, "nats": NatsPeer}
