"""Load-generator processes of bench/hostile.py: victims and the attackers that need CPU.

    python -m bench._hostile_clients '{"role": "loop", "port": 8800, ...}'     # from the repo root

Each runs in its own process, pinned to the load core, so that an attacker busy reading 28 MB glob
replies or writing header lines does not delay the victims' event loop (which would be counted as
server latency). A child prints ``MARK start`` when its connections are open and its measured window
begins, then one line ``RESULT <json>`` (``{"error": ...}`` on failure). Roles:

- ``loop``: ``connections`` keep-alive connections, each repeating ``method`` on its ``paths[c %
  len]`` for ``seconds``, with one of ``bodies`` (files, used in turn): one request due every
  ``interval`` seconds per connection, latencies corrected for the requests that fell due while
  one was stuck (victims: small GETs), or back to back with ``interval`` 0 (the PATCH and glob
  attackers, the big-value writer).
  A request that takes over ``timeout`` seconds is counted as a timeout, with its connection replaced.
- ``writer``: point writes ``POST <prefix><i>`` pipelined ``depth`` deep on each of ``connections``
  connections, for ``seconds`` or until ``count`` writes are acknowledged (prefills).
- ``flood``: ``connections`` connections that start a request head, then send one more header
  line every ``interval`` seconds (up to ``lines`` of them), and never end the head.

:class:`Client` is the parent's handle on such a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make bench/ importable as a package of the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._hostile_raw import Http, open_many
from bench._hostile_server import cores, pinning
from bench._load import HOST
from bench.peers.load import percentiles
from bench.peers.targets import ROOT, track, untrack

# The child side


def mark(what: str) -> None:
    print(f"MARK {what}", flush=True)


async def _open(port: int, timeout: float) -> Http:
    return await asyncio.wait_for(Http.open(port), timeout)


async def loop_role(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests on keep-alive connections; latency percentiles include the requests that got no
    reply (timed out), as their wait until they were given up."""
    port, method, paths = spec["port"], spec.get("method", "GET"), spec["paths"]
    bodies = [Path(p).read_bytes() for p in spec.get("bodies", [])] or [b""]
    interval, timeout = spec.get("interval", 0.0), spec.get("timeout", 10.0)
    conns: list[Http | None] = [await _open(port, timeout) for _ in range(spec["connections"])]
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop_at = start + spec["seconds"]
    latencies: list[float] = []
    unanswered: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    received = 0
    mark("start")

    async def issue(c: int, n: int, since: float) -> bool:
        """Request ``n`` of connection ``c``, its latency counted from ``since``; False without a reply."""
        nonlocal received
        path, body = paths[(c + n * len(conns)) % len(paths)], bodies[n % len(bodies)]
        try:
            conn = conns[c] or await _open(port, timeout)
            conns[c] = conn
            status, reply = await asyncio.wait_for(conn.request(method, path, body), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures["timeout" if isinstance(exc, TimeoutError) else type(exc).__name__] += 1
            unanswered.append((loop.time() - since) * 1000)
            broken, conns[c] = conns[c], None
            if broken is not None:
                broken.close()
            return False
        latencies.append((loop.time() - since) * 1000)
        statuses[status] += 1
        received += len(reply)
        return True

    async def paced(c: int) -> None:
        # A GET is due every ``interval``. While one is stuck, the GETs falling due are not sent (one
        # request in flight per connection) but recorded with the wait they would have had, up to
        # when the stuck one ended (HdrHistogram's correction for coordinated omission): a stall
        # weighs in the percentiles by its length, not as one sample, and no backlog builds up.
        due, n = start + interval * c / len(conns), 0
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - loop.time()))
            answered = await issue(c, n, due)
            n += 1
            ended = loop.time()
            due += interval
            while due < min(ended, stop_at):
                (latencies if answered else unanswered).append((ended - due) * 1000)
                due += interval

    async def back_to_back(c: int) -> None:
        n = 0
        while (now := loop.time()) < stop_at:
            await issue(c, n, now)
            n += 1

    try:
        await asyncio.gather(*((paced if interval else back_to_back)(c) for c in range(len(conns))))
    finally:
        for conn in conns:
            if conn is not None:
                conn.close()
    served = sum(statuses.values())  # requests that got a reply (latencies also holds corrected slots)
    return {"requests": served, "rate": served / spec["seconds"], "bytes": received,
            "unanswered": len(unanswered), "statuses": dict(statuses), "failures": dict(failures),
            **percentiles(latencies + unanswered)}


_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class Writer:
    """Pipelined point writes ``POST <prefix><i>`` with a small JSON body, ``i`` counting up, until
    ``count`` are sent or the loop time reaches ``stop_at``."""

    def __init__(self, prefix: str, count: int | None, first: int = 0) -> None:
        self.prefix, self.count, self.first = prefix, count, first
        self.stop_at = float("inf")
        self.sent = self.done = self.in_window = 0
        self.statuses: Counter[int] = Counter()

    def requests(self, n: int) -> list[bytes]:
        """Up to ``n`` more requests."""
        if asyncio.get_running_loop().time() >= self.stop_at:
            return []
        if self.count is not None:
            n = min(n, self.count - self.sent)
        out = []
        for i in range(self.first + self.sent, self.first + self.sent + n):
            body = b'{"n":%d,"name":"item-%d"}' % (i, i)
            out.append(b"POST /%s%d HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (self.prefix.encode(), i, HOST.encode(),
                                                            len(body), body))
        self.sent += len(out)
        return out


class _Pipeline(asyncio.Protocol):
    """One connection keeping up to ``depth`` writes in flight; counts replies by parsing their heads,
    and closes once it has nothing more to send and nothing in flight."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.buffer = b""
        self.in_flight = 0
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, n: int) -> None:
        assert self.transport is not None
        requests = self.writer.requests(n)
        if requests:
            self.in_flight += len(requests)
            self.transport.write(b"".join(requests))
        elif self.in_flight == 0:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer, pos, done = self.buffer + data, 0, 0
        while (head_end := buffer.find(b"\r\n\r\n", pos)) >= 0:
            length = _LENGTH.search(buffer, pos, head_end)
            end = head_end + 4 + (int(length[1]) if length else 0)
            if end > len(buffer):
                break
            self.writer.statuses[int(buffer[pos + 9 : pos + 12])] += 1
            pos, done = end, done + 1
        self.buffer = buffer[pos:]
        self.in_flight -= done
        self.writer.done += done
        if asyncio.get_running_loop().time() < self.writer.stop_at:
            self.writer.in_window += done
        if done:
            self.send(done)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def writer_role(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    count, seconds = spec.get("count"), spec.get("seconds")
    writer = Writer(spec["prefix"], count, spec.get("first", 0))
    pipes: list[_Pipeline] = [
        (await asyncio.wait_for(loop.create_connection(lambda: _Pipeline(writer), HOST, spec["port"]), 10))[1]
        for _ in range(spec["connections"])
    ]
    start = loop.time()
    if seconds:
        writer.stop_at = start + seconds
    mark("start")
    for pipe in pipes:
        pipe.send(spec.get("depth", 16))
    try:
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in pipes)), spec.get("timeout", 600))
    except TimeoutError:
        pass  # reported: fewer writes than asked for, or a low rate
    finally:
        for pipe in pipes:
            if pipe.transport is not None:
                pipe.transport.abort()
    elapsed = loop.time() - start
    return {"writes": writer.done, "seconds": elapsed,
            "rate": (writer.in_window / seconds) if seconds else writer.done / elapsed,
            "statuses": dict(writer.statuses)}


class _Flooder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply = b""
        self.lines = 0
        self.lost_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"GET /victim/0 HTTP/1.1\r\nHost: %s\r\n" % HOST.encode())

    def ready(self, limit: int) -> bool:
        """Open, below its line count, and not backed up (a server that stops reading must not make
        this process buffer the flood instead)."""
        return (self.lost_at is None and self.lines < limit and self.transport is not None
                and self.transport.get_write_buffer_size() < 65536)

    def data_received(self, data: bytes) -> None:
        self.reply = (self.reply + data)[:64]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = asyncio.get_running_loop().time()


async def flood_role(spec: dict[str, Any]) -> dict[str, Any]:
    """Each connection sends up to ``lines`` header lines of ``line_bytes``, one per ``interval``, then
    holds the unfinished head open until ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    flooders: list[_Flooder] = await open_many(spec["port"], spec["connections"], _Flooder)
    filler = b"a" * max(1, spec["line_bytes"] - 16)
    limit = spec.get("lines") or sys.maxsize
    start = loop.time()
    stop_at, sent = start + spec["seconds"], 0
    mark("start")
    while loop.time() < stop_at:
        for f in flooders:
            if f.ready(limit):
                assert f.transport is not None
                line = b"X-F%d: %s\r\n" % (f.lines, filler)
                f.transport.write(line)
                f.lines += 1
                sent += len(line)
        await asyncio.sleep(spec["interval"])
    closed = [f.lost_at - start for f in flooders if f.lost_at is not None]
    replies = Counter(f.reply[9:12].decode(errors="replace") for f in flooders if f.reply)
    for f in flooders:
        if f.transport is not None:
            f.transport.abort()
    return {"connected": len(flooders), "bytes_sent": sent, "lines": sum(f.lines for f in flooders),
            "closed_by_server": len(closed), "replies": dict(replies),
            "first_close_s": min(closed, default=None)}


ROLES: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "loop": loop_role, "writer": writer_role, "flood": flood_role,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result: dict[str, Any]
    try:
        result = asyncio.run(ROLES[spec["role"]](spec))
    except Exception as exc:  # reported to the parent, which decides
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)


# The parent side


class Client:
    """A running load-generator process: wait for its start mark, then for its result."""

    def __init__(self, process: asyncio.subprocess.Process, role: str) -> None:
        self.process, self.role = process, role
        self.started = asyncio.Event()
        self.result: dict[str, Any] | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, **spec: Any) -> Client:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._hostile_clients", json.dumps(spec), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=pinning(cores()[1]),
            start_new_session=True,
        )
        track(process.pid)
        return cls(process, spec["role"])

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "MARK start":
                self.started.set()
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])

    async def wait_started(self, timeout: float = 60.0) -> None:
        done, _ = await asyncio.wait([asyncio.ensure_future(self.started.wait()), self._reader],
                                     timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self.started.is_set():
            await self.kill()
            raise RuntimeError(f"{self.role} client did not start: {self.result or 'no result'}")

    async def finish(self, timeout: float) -> dict[str, Any]:
        """The client's result; it is killed if it has none within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            await self.kill()
            return {"error": f"{self.role} client gave no result in {timeout:.0f} s (killed)"}
        finally:
            untrack(self.process.pid)
        return self.result or {"error": f"{self.role} client exited {self.process.returncode} "
                                        "without a result"}

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
        self._reader.cancel()
        untrack(self.process.pid)


async def run_client(limit: float, /, **spec: Any) -> dict[str, Any]:
    """Start a client, and return its result (``limit`` seconds bound the whole run)."""
    client = await Client.start(**spec)
    return await client.finish(limit)


if __name__ == "__main__":
    main()
