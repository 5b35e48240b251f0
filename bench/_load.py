"""Shared load-generator pieces of the server benchmarks (bench/fanout.py, bench/http_writes.py).

The load generators are deliberately thin: raw asyncio protocols that speak just enough HTTP/1.1 and
RFC 6455 to count what arrives, so that the measuring process costs far less per message than the
server under test and the ratio between two servers reflects the servers, not the instrument. The
servers always run in their own process (see bench/_load_targets.py); only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Self, cast

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def split_frames(buffer: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """The complete (unmasked, server-to-client) websocket frames at the start of ``buffer``:
    ``[(opcode, payload start, payload length)]``, and the offset where the incomplete rest begins."""
    frames: list[tuple[int, int, int]] = []
    pos, end = 0, len(buffer)
    while end - pos >= 2:
        opcode, length = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            start, length = pos + 4, int.from_bytes(buffer[pos + 2 : pos + 4])
        elif length == 127:
            start, length = pos + 10, int.from_bytes(buffer[pos + 2 : pos + 10])
        if end < start + length:
            break
        frames.append((opcode, start, length))
        pos = start + length
    return frames, pos


# Server processes


@dataclass
class Target:
    """A server under test, running in a child process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """Resident set size of the server process, from /proc, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")


@contextmanager
def serve(mode: str, *args: str, ready_timeout: float = 30.0) -> Iterator[Target]:
    """Run ``bench/_load_targets.py MODE ARGS...`` and yield it once it listens; stop it afterwards."""
    command = [sys.executable, "-m", "bench._load_targets", mode, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        port = _await_ready(process, ready_timeout)
        yield Target(mode, process, port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _await_ready(process: subprocess.Popen[bytes], timeout: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        buffer += process.stdout.read() or b""
        for line in buffer.splitlines():
            if line.startswith(b"READY "):
                return int(line.split()[1])
        time.sleep(0.02)
    raise RuntimeError("server did not report READY in time")


# Websocket subscribers


class Subscriber(asyncio.Protocol):
    """A minimal websocket client that only counts the data frames it receives.

    Server frames are unmasked; pings are answered so that a long run is not dropped.
    """

    def __init__(self, host: str, port: int, path: str, counter: FrameCounter) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.counter = counter
        self.buffer = b""
        self.upgraded = False
        self.frames = 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buffer
                return
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {head.splitlines()[0]!r}")
            self.upgraded = True
            buffer = rest
        frames, pos = split_frames(buffer)
        for opcode, start, length in frames:
            if opcode in (1, 2):
                self.frames += 1
                self.counter.add(length)
            elif opcode == 9:
                self._send(0xA, buffer[start : start + length])
        self.buffer = buffer[pos:]

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames must be masked; a zero mask keeps the payload as is.
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FrameCounter:
    """Counts data frames across all subscribers and wakes a waiter at a target total."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self._target = 0
        self._reached: asyncio.Event = asyncio.Event()

    def add(self, size: int) -> None:
        self.frames += 1
        self.bytes += size
        if self.frames == self._target:
            self._reached.set()

    async def wait_for(self, total: int, timeout: float) -> None:
        """Return once ``total`` frames have been counted since creation."""
        if self.frames >= total:
            return
        self._target, self._reached = total, asyncio.Event()
        await asyncio.wait_for(self._reached.wait(), timeout)


async def connect_subscribers(
    port: int, paths: Sequence[str], counter: FrameCounter, *, batch: int = 100
) -> list[Subscriber]:
    """Open one subscriber per path, ``batch`` handshakes at a time (a listen backlog is finite)."""
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    for first in range(0, len(paths), batch):
        made = await asyncio.gather(*(
            loop.create_connection(partial(Subscriber, HOST, port, path, counter), HOST, port)
            for path in paths[first : first + batch]
        ))
        subscribers.extend(protocol for _, protocol in made)
    return subscribers


async def close_subscribers(subscribers: Sequence[Subscriber], timeout: float = 10.0) -> None:
    """Close the subscribers, then give the server a moment to notice and clean up."""
    for subscriber in subscribers:
        subscriber.close()
    await asyncio.wait_for(asyncio.gather(*(s.closed for s in subscribers)), timeout)
    await asyncio.sleep(0.5)


# HTTP


class HttpConnection:
    """One keep-alive HTTP/1.1 connection issuing one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Self:
        return cls(*await asyncio.open_connection(HOST, port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


@dataclass
class HttpLoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    server_cpu: float  # CPU seconds the server used in the counted window
    bench_cpu: float  # ... and this process

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server CPU per request, in microseconds."""
        return self.server_cpu * 1e6 / self.requests

    def percentile(self, p: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[int(p) - 1]


async def http_load(
    target: Target,
    request: Callable[[int, int], tuple[str, str, bytes]],
    *,
    connections: int,
    seconds: float,
    warmup: float = 1.0,
) -> HttpLoadResult:
    """Keep ``connections`` connections busy for ``warmup + seconds``; count the requests started
    after the warm-up. ``request(connection, n)`` gives the method, path and body of a connection's
    n-th request; any status but 200/204 aborts the run."""
    conns = [await HttpConnection.open(target.port) for _ in range(connections)]
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + seconds
    latencies: list[float] = []
    cpu: list[float] = []
    loop.call_at(start, lambda: cpu.extend((target.cpu_seconds(), time.process_time())))

    async def worker(c: int) -> None:
        n = 0
        while (now := loop.time()) < stop:
            status, body = await conns[c].request(*request(c, n))
            if status not in (200, 204):
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            n += 1
            if now >= start:
                latencies.append((loop.time() - now) * 1000)

    try:
        await asyncio.gather(*(worker(c) for c in range(connections)))
    finally:
        for conn in conns:
            conn.close()
    return HttpLoadResult(len(latencies), seconds, latencies, target.cpu_seconds() - cpu[0],
                          time.process_time() - cpu[1])


@contextmanager
def profiled(target: Target, out: Path | None) -> Iterator[None]:
    """Sample ``target`` with py-spy (collapsed stacks written to ``out``) while the block runs."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([spy, "record", "-p", str(target.pid), "-r", "250", "--format", "raw",
                                "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches asynchronously
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def hot_frames(collapsed: Path, top: int = 15) -> str:
    """The frames where most samples were taken (self time), from py-spy's raw collapsed output."""
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        frame = stack.rpartition(";")[2]
        own[re.sub(r"\(/\S*/(site-packages|python3\.\d+|work/main)/", "(", frame)] += int(count)
    rows = [[f"{n / total:.1%}", f"`{frame}`"] for frame, n in own.most_common(top)]
    return table(["self", "frame"], rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a markdown file, leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"## {title}"
    lines = text.splitlines()
    try:
        first = lines.index(heading)
    except ValueError:
        new = text.rstrip("\n") + f"\n\n{heading}\n\n{body.strip()}\n"
    else:
        last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith("## ")),
                    len(lines))
        new_lines = lines[:first] + [heading, "", body.strip(), ""] + lines[last:]
        new = "\n".join(new_lines).rstrip("\n") + "\n"
    path.write_text(new)
