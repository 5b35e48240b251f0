"""Conflation under load (issue 11): one subscriber stops reading for 10 s while 100 000 writes flow.

    .venv/bin/python bench/conflation.py [--writes 100000] [--rate 10000] [--stall 10] [--pad 200]
                                         [--readers 4] [--rounds 3]

Each round starts a fresh ``python -m ooo_storage serve --memory-only`` (default outbox 8 MiB,
write timeout 15 s), 10 keys ``c/0..9`` and ``--readers`` subscribers of ``c/*`` that keep
reading, in a child process of their own (``--role readers``), which time every frame: receive time
minus the writer's ``CLOCK_MONOTONIC`` stamp in the value (so the latency includes the POST's commit).
The writer pipelines POSTs over 4 keep-alive connections, paced at ``--rate``. Rounds alternate:

- ``stalled``: one more subscriber of ``c/*``, on a raw socket with a 4 KiB receive buffer, reads
  nothing for ``--stall`` seconds from the first write, then reads and applies every frame until
  its state equals ``GET /c/*``. It must end with that state without being disconnected;
- ``baseline``: the same without it.

Reported per round and as medians: the readers' p50/p99/max latency and frames received (every
write must reach each of them), the write rate achieved, the server's RSS (from /proc: before the
writes, peak while they flow, after), ``?api=state`` conflations and slow disconnects, and for the
stalled subscriber the frames it got, its snapshots and how long it took to catch up after the
stall. Everything runs on 127.0.0.1; the server, the readers, the stalled subscriber and the writer
each have a process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import HOST, ROOT, split_frames  # noqa: E402
from ooo_storage.protocol.jsonpatch import apply_patch  # noqa: E402

KEYS = 10
GLOB = "c/*"
PAD = ["x" * 200]  # the padding of every value (--pad)


# -- the server ------------------------------------------------------------------------------------
@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: list[str] = field(default_factory=list)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _drain(stream: IO[bytes], log: list[str]) -> None:
    """Keep the server's stderr pipe empty (a full pipe would block its logging)."""
    log.extend(line.decode() for line in stream)


def start_server() -> Server:
    """``ooo-storage serve --memory-only --port 0``; its stderr is drained by a thread (the log)."""
    command = [sys.executable, "-m", "ooo_storage", "serve", "--memory-only", "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode()
        if not line:
            raise RuntimeError("serve exited before serving")
        if found := re.search(r"serving on http://[\d.]+:(\d+)", line):
            server = Server(process, int(found.group(1)))
            threading.Thread(target=_drain, args=(process.stderr, server.log), daemon=True).start()
            return server
    raise RuntimeError("serve did not start in 30 s")


# -- HTTP ------------------------------------------------------------------------------------------
async def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"{method} /{path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head[9:12]), payload


def post_bytes(n: int) -> bytes:
    body = orjson.dumps({"t": time.monotonic_ns(), "n": n, "pad": PAD[0]})
    return b"POST /c/%d HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        n % KEYS,
        HOST.encode(),
        len(body),
        body,
    )


class Pipe:
    """One keep-alive connection with pipelined POSTs; counts the answers as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0
        self.answered = 0
        self.failed = 0
        self.progress = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        tail = b""
        while chunk := await self.reader.read(1 << 16):
            data = tail + chunk
            self.answered += data.count(b"HTTP/1.1 ")
            self.failed += data.count(b"HTTP/1.1 ") - data.count(b"HTTP/1.1 200")
            tail = data[-8:] if b"HTTP/1.1 " not in data[-8:] else b""
            self.progress.set()

    def send(self, n: int) -> None:
        self.writer.write(post_bytes(n))
        self.sent += 1


async def write_load(port: int, writes: int, rate: float, in_flight: int = 400) -> float:
    """``writes`` POSTs paced at ``rate`` per second (fewer when the server lags: at most
    ``in_flight`` unanswered per connection); returns the seconds from first to last answer."""
    pipes = [Pipe(*await asyncio.open_connection(HOST, port)) for _ in range(4)]
    start = time.monotonic()
    n = 0
    while n < writes:
        due = min(writes, int((time.monotonic() - start) * rate) + 1)
        while n < due:
            pipe = pipes[n % KEYS % len(pipes)]  # one connection per key: per-key order
            if pipe.sent - pipe.answered >= in_flight:
                pipe.progress.clear()
                await pipe.progress.wait()
                continue
            pipe.send(n)
            n += 1
        await asyncio.sleep(0.005)  # pacing: the rate is a target, not a synchronisation
    for pipe in pipes:
        while pipe.answered < pipe.sent:
            pipe.progress.clear()
            await pipe.progress.wait()
    elapsed = time.monotonic() - start
    failed = sum(pipe.failed for pipe in pipes)
    for pipe in pipes:
        pipe.writer.close()
        pipe.task.cancel()
    if failed:
        raise RuntimeError(f"{failed} POSTs were not answered 200")
    return elapsed


# -- subscribers -----------------------------------------------------------------------------------
def upgrade(path: str, port: int) -> bytes:
    return (
        f"GET /{path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def stamps(value: Any, path: str = "") -> int:
    """The newest writer stamp ``t`` in a patch op's value (or the value itself at ``.../t``)."""
    if isinstance(value, dict):
        found = [stamps(v, k) for k, v in value.items()]
        return max(found, default=0)
    if isinstance(value, list):
        return max((stamps(v) for v in value), default=0)
    return value if path == "t" and isinstance(value, int) else 0


class Reader(asyncio.Protocol):
    """A subscriber that keeps reading and times each data frame."""

    def __init__(self, port: int, latencies: list[float]) -> None:
        self.port = port
        self.latencies = latencies
        self.buffer = b""
        self.upgraded = False
        self.frames = 0
        self.untimed = 0
        self.closed = False
        self.first = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(upgrade(GLOB, self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            head, sep, buffer = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = head
                return
            assert head.startswith(b"HTTP/1.1 101"), head
            self.upgraded = True
        frames, pos = split_frames(buffer)
        for opcode, start, length in frames:
            if opcode == 9 and not self.transport.is_closing():  # a ping: pong with a zero mask
                self.transport.write(
                    bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + buffer[start : start + length]
                )
            if opcode != 2:
                continue
            if not self.first.done():
                self.first.set_result(None)  # the first snapshot
                continue
            self.frames += 1
            frame = orjson.loads(buffer[start : start + length])
            t = max(
                (stamps(op.get("value"), op["path"].rpartition("/")[2]) for op in frame["data"]), default=0
            )
            if frame["snapshot"] or not t:
                self.untimed += 1
            else:
                self.latencies.append((now - t) / 1e6)
        self.buffer = buffer[pos:]


async def readers_role(port: int, count: int, expect: int) -> None:
    """The ``--role readers`` child: ``count`` readers; READY once subscribed; on a line of stdin,
    wait (up to 60 s) until each reader has ``expect`` data frames, print the summary as JSON."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    readers = []
    for _ in range(count):
        _, reader = await loop.create_connection(lambda: Reader(port, latencies), HOST, port)
        readers.append(reader)
    await asyncio.gather(*(r.first for r in readers))
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    deadline = loop.time() + 60
    while any(r.frames < expect and not r.closed for r in readers) and loop.time() < deadline:
        await asyncio.sleep(0.05)  # frames still in flight to a reader that lags
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(
        json.dumps(
            {
                "p50": cuts[49],
                "p99": cuts[98],
                "max": max(latencies, default=0.0),
                "frames": [r.frames for r in readers],
                "untimed": sum(r.untimed for r in readers),
                "closed": sum(r.closed for r in readers),
            }
        ),
        flush=True,
    )


class Stalled:
    """The subscriber that stops reading: a raw socket with a 4 KiB receive buffer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((HOST, port))
        self.sock.sendall(upgrade(GLOB, port))
        self.sock.setblocking(False)
        self.buffer = b""
        self.upgraded = False
        self.state: Any = None
        self.frames = 0
        self.snapshots = 0
        self.snapshot_at: list[tuple[float, int]] = []  # (when, frames before it) of each snapshot
        self.closed: str | None = None
        self.changed = asyncio.Event()

    async def read_once(self) -> None:
        loop = asyncio.get_running_loop()
        chunk = await loop.sock_recv(self.sock, 1 << 18)
        if not chunk:
            self.closed = "connection ended"
            raise ConnectionError(self.closed)
        buffer = self.buffer + chunk
        if not self.upgraded:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buffer
                return
            assert head.startswith(b"HTTP/1.1 101"), head
            self.upgraded, buffer = True, rest
        frames, pos = split_frames(buffer)
        for opcode, start, length in frames:
            payload = buffer[start : start + length]
            if opcode == 8:
                self.closed = f"close {int.from_bytes(payload[:2])} {payload[2:]!r}"
                raise ConnectionError(self.closed)
            if opcode == 9:
                self.sock.send(bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + payload)
            if opcode != 2:
                continue
            frame = orjson.loads(payload)
            self.frames += 1
            if frame["snapshot"]:
                self.snapshots += 1
                self.snapshot_at.append((time.monotonic(), self.frames))
                self.state = frame["data"]
            else:
                self.state = apply_patch(self.state, frame["data"])
        self.buffer = buffer[pos:]
        self.changed.set()

    async def until(self, done: Any) -> None:
        while not done(self.state):
            await self.read_once()

    async def read_on(self) -> None:
        """Read and apply frames until cancelled (or the connection ends)."""
        while True:
            await self.read_once()

    async def wait_for(self, expected: Any, timeout: float) -> None:
        """Until the state read by :meth:`read_on` equals ``expected``."""
        async with asyncio.timeout(timeout):
            while self.state != expected:
                self.changed.clear()
                await self.changed.wait()


# -- one round -------------------------------------------------------------------------------------
async def stalled_role(port: int, stall: float) -> None:
    """The ``--role stalled`` child: subscribes (READY after its first snapshot); on a line of stdin
    (the writes start) reads nothing for ``stall`` seconds, then reads again; on a second line (the
    writes are done) waits until its state equals GET and prints its summary as JSON."""
    loop = asyncio.get_running_loop()
    stalled = Stalled(port)
    await stalled.until(lambda state: state is not None)  # its first snapshot
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    started = time.monotonic()
    await asyncio.sleep(stall)  # the stall itself: it reads nothing meanwhile
    resumed = time.monotonic()
    reading = asyncio.create_task(stalled.read_on())  # reads again while the writes go on
    await loop.run_in_executor(None, sys.stdin.readline)
    writes_after = time.monotonic() - resumed
    expected = orjson.loads((await request(port, "GET", GLOB))[1])
    try:
        await stalled.wait_for(expected, 120)
    finally:
        reading.cancel()
    late = [
        (at - resumed, stalled.frames - before - 1) for at, before in stalled.snapshot_at if at >= resumed
    ]
    # when the catch-up snapshot arrived, and the frames after it (live again); none if the stall
    # fitted in the outbox and socket buffers (no conflation)
    caught_up, after_catch_up = late[0] if late else (0.0, stalled.frames)
    summary = {
        "stalled_for": resumed - started,
        "stalled_frames": stalled.frames,
        "stalled_snapshots": stalled.snapshots,
        "catch_up_s": caught_up,
        "frames_after_catch_up": after_catch_up,
        "writes_after_stall_s": writes_after,
        "stalled_correct": stalled.state == expected,
        "stalled_closed": stalled.closed,
    }
    print(json.dumps(summary), flush=True)
    stalled.sock.close()


def child(role: str, args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    """This script in a child process, in ``role``, talking over its stdin/stdout."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        role,
        "--port",
        str(port),
        "--readers",
        str(args.readers),
        "--expect",
        str(args.writes),
        "--stall",
        str(args.stall),
    ]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)  # fmt: skip


def tell(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()


def answer(process: subprocess.Popen[bytes]) -> bytes:
    assert process.stdout is not None
    return process.stdout.readline()


async def one_round(args: argparse.Namespace, stalled_on: bool) -> dict[str, Any]:
    server = start_server()
    children = [child("readers", args, server.port)]
    if stalled_on:
        children.append(child("stalled", args, server.port))
    try:
        for k in range(KEYS):
            assert (await request(server.port, "POST", f"c/{k}", b'{"n":-1}'))[0] == 200
        for process in children:
            assert answer(process) == b"READY\n"
        rss_before = server.rss_kib()
        peak = rss_before
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, server.rss_kib())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        for process in children[1:]:
            tell(process)  # the stall starts with the writes
        seconds = await write_load(server.port, args.writes, args.rate)
        stalled: dict[str, Any] = {}
        for process in children[1:]:
            tell(process)  # the writes are done
            stalled = json.loads(answer(process))
        sampling = False
        await sampler
        expected = orjson.loads((await request(server.port, "GET", GLOB))[1])
        assert all(item["data"]["n"] >= args.writes - KEYS for item in expected), "writes missing"
        state = orjson.loads((await request(server.port, "GET", "?api=state"))[1])
        readers = children[0]
        tell(readers)  # report once every write arrived
        summary = json.loads(answer(readers))
        return {
            "case": "stalled" if stalled_on else "baseline",
            "write_rate": args.writes / seconds,
            "write_seconds": seconds,
            **summary,
            **stalled,
            "rss_before_mib": rss_before / 1024,
            "rss_peak_mib": peak / 1024,
            "rss_after_mib": server.rss_kib() / 1024,
            "conflations": state["conflations"],
            "slow_disconnects": state["slowDisconnects"],
        }
    finally:
        for process in children:
            process.kill()
            process.wait()
        server.stop()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.writes} writes at a target {args.rate}/s to {KEYS} keys, {args.readers} readers of "
        f"{GLOB}, values padded with {args.pad} B, stall {args.stall} s; per round:"
    )
    for r in results:
        line = (
            f"  {r['case']:8} writes/s {r['write_rate']:7.0f}  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms"
            f"  max {r['max']:7.1f} ms  reader frames {min(r['frames'])}-{max(r['frames'])}"
            f"  RSS {r['rss_before_mib']:.0f} -> {r['rss_peak_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB"
            f"  conflations {r['conflations']}  slow disconnects {r['slow_disconnects']}"
        )
        if r["case"] == "stalled":
            line += (
                f"\n           stalled {r['stalled_for']:.1f} s: {r['stalled_frames']} frames, "
                f"{r['stalled_snapshots']} snapshots, catch-up snapshot {r['catch_up_s']:.2f} s "
                f"after it read again (writes went on {r['writes_after_stall_s']:.1f} s), "
                f"{r['frames_after_catch_up']} frames after it, "
                f"state == GET: {r['stalled_correct']}, closed: {r['stalled_closed']}"
            )
        print(line)
    print("medians:")
    for case in ("baseline", "stalled"):
        rows = [r for r in results if r["case"] == case]
        if rows:
            med = {
                k: statistics.median(r[k] for r in rows)
                for k in ("write_rate", "p50", "p99", "max", "rss_peak_mib", "rss_after_mib")
            }
            print(f"  {case:8} " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))


async def main_async(args: argparse.Namespace) -> None:
    results = []
    for n in range(args.rounds):
        for stalled_on in (False, True) if n % 2 == 0 else (True, False):  # interleaved
            result = await one_round(args, stalled_on)
            print(json.dumps(result), flush=True)
            results.append(result)
    report(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--stall", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--pad", type=int, default=200, help="bytes of padding in every value")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=["bench", "readers", "stalled"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0, help="(readers) data frames each must get")
    args = parser.parse_args()
    PAD[0] = "x" * args.pad
    if args.role == "readers":
        asyncio.run(readers_role(args.port, args.readers, args.expect))
    elif args.role == "stalled":
        asyncio.run(stalled_role(args.port, args.stall))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
