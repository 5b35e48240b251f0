"""The load generator of bench/peers/peers.py: one workload against one store, in its own process.

    python bench/peers/load.py '{"peer": "etcd", "port": 2379, "workload": "write", ...}'

bench/peers/peers.py runs it pinned to the load-generator core. It prints ``MARK start`` and ``MARK end``
around the measured window (so that the caller can sample CPU use exactly there) and finally one line
``RESULT <json>``; a failure is ``RESULT {"error": "..."}``. Workloads (parameters in the JSON):

- ``setup``: create what the reads need: ``r/0..999`` and the lists ``a100/*`` (100 items) and
  ``b1000/*`` (1 000 items).
- ``write`` / ``read``: ``clients`` connections, each with one request in flight, for ``seconds``
  after ``warmup``; writes cycle over 1 000 keys ``w/<i>``, reads pick ``r/<i>`` at random.
- ``list``: ``clients`` connections reading the whole ``prefix`` list over and over.
- ``fanout``: ``watchers`` watchers of ``fan/*`` opened, then one writer issues ``rate`` writes/s to
  ``fan/<i mod 10>`` for ``seconds``; end-to-end latency is receive time minus the value's timestamp.
- ``resume``: one watcher of ``res/*``; a writer at ``rate`` writes/s over ``res/<i mod 10>``; the
  watcher goes away for ``offline`` seconds while the writes continue, the writer stops, and the
  watcher comes back from its last position. Counts what the resume delivers and checks the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Import bench/ as a package of the repository root (a script's own directory is otherwise first
    # on sys.path); bench/hostile.py imports this module too, and its sys.path is its own business.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.peers.clients import PEERS, Conn, Peer, Watcher, sequences, timestamps, value  # noqa: E402

READ_KEYS = 1000
WRITE_KEYS = 1000
LISTS = {"a100": 100, "b1000": 1000}
FAN_KEYS = 10


phase = "start"
"""What the generator is doing, for the error message if it fails."""


def enter(what: str) -> None:
    global phase
    phase = what


def mark(what: str) -> None:
    print(f"MARK {what}", flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"p50_ms": samples[0] if samples else 0.0, "p99_ms": samples[0] if samples else 0.0}
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": cuts[49], "p99_ms": cuts[98]}


async def connect(peer: Peer, n: int) -> list[Conn]:
    conns: list[Conn] = []
    for first in range(0, n, 32):
        conns += await asyncio.gather(*(peer.connect() for _ in range(first, min(n, first + 32))))
    return conns


async def close_all(conns: Sequence[Conn | Watcher]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def setup(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    await peer.prepare()
    conns = await connect(peer, 16)
    keys = [peer.key("r", i) for i in range(READ_KEYS)]
    keys += [peer.key(name, i) for name, size in LISTS.items() for i in range(size)]

    async def fill(c: int) -> None:
        for i in range(c, len(keys), len(conns)):
            await conns[c].put(keys[i], value(i, keys[i]))

    try:
        await asyncio.gather(*(fill(c) for c in range(len(conns))))
        for name, size in LISTS.items():
            if (got := await conns[0].list(name)) != size:
                raise RuntimeError(f"list {name}: {got} items, expected {size}")
    finally:
        await close_all(conns)
    return {"keys": len(keys)}


async def closed_loop(
    conns: Sequence[Conn], op: Callable[[Conn, int, int], Awaitable[object]], seconds: float, warmup: float
) -> dict[str, Any]:
    """Every connection runs ``op(conn, c, n)`` back to back; count what completes in the window."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + seconds
    latencies: list[float] = []
    marked = False

    async def worker(c: int) -> None:
        nonlocal marked
        n = 0
        while (now := loop.time()) < stop:
            if now >= start and not marked:
                marked = True
                mark("start")
            await op(conns[c], c, n)
            n += 1
            if now >= start:
                latencies.append((loop.time() - now) * 1000)

    cpu = 0.0

    async def sample_cpu() -> None:
        nonlocal cpu
        await asyncio.sleep(max(0.0, start - loop.time()))
        before = cpu_seconds()
        await asyncio.sleep(max(0.0, stop - loop.time()))
        cpu = (cpu_seconds() - before) / seconds
        mark("end")

    await asyncio.gather(sample_cpu(), *(worker(c) for c in range(len(conns))))
    return {"ops": len(latencies), "rate": len(latencies) / seconds, "gen_cpu": cpu, **percentiles(latencies)}


async def write(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    clients = spec["clients"]
    keys = [peer.key("w", i) for i in range(WRITE_KEYS)]

    async def op(conn: Conn, c: int, n: int) -> None:
        i = (n * clients + c) % len(keys)
        await conn.put(keys[i], value(n, keys[i]))

    enter("connecting")
    conns = await connect(peer, clients)
    enter("running")
    try:
        return await closed_loop(conns, op, spec["seconds"], spec["warmup"])
    finally:
        await close_all(conns)


async def read(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    keys = [peer.key("r", i) for i in range(READ_KEYS)]
    rng = random.Random(1)

    async def op(conn: Conn, c: int, n: int) -> None:
        await conn.get(rng.choice(keys))

    conns = await connect(peer, spec["clients"])
    try:
        return await closed_loop(conns, op, spec["seconds"], spec["warmup"])
    finally:
        await close_all(conns)


async def list_(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    prefix = spec["prefix"]
    expected = LISTS[prefix]

    async def op(conn: Conn, c: int, n: int) -> None:
        if (got := await conn.list(prefix)) != expected:
            raise RuntimeError(f"list {prefix}: {got} items, expected {expected}")

    conns = await connect(peer, spec["clients"])
    try:
        result = await closed_loop(conns, op, spec["seconds"], spec["warmup"])
    finally:
        await close_all(conns)
    return {**result, "items_rate": result["rate"] * expected}


async def open_watchers(peer: Peer, prefix: str, n: int,
                        on_update: Callable[[Sequence[bytes], bool], None]) -> list[Watcher]:
    watchers: list[Watcher] = []
    for first in range(0, n, 50):
        watchers += await asyncio.gather(*(
            peer.watch(prefix, on_update) for _ in range(first, min(n, first + 50))
        ))
    return watchers


class Writer:
    """Writes ``rate`` values/s to ``prefix/<i mod keys>`` on a fixed schedule, over ``lanes``
    connections so that a slow write does not delay the next one's start. Writes still queued when
    it stops are dropped: ``sent`` counts the writes that reached the server."""

    def __init__(self, peer: Peer, prefix: str, rate: float, keys: int = FAN_KEYS, lanes: int = 8) -> None:
        self.peer, self.prefix, self.rate, self.lanes = peer, prefix, rate, lanes
        self.keys = [peer.key(prefix, i) for i in range(keys)]
        self.sent = 0
        self.last: dict[str, int] = {}  # key -> seq of its last completed write
        self.stopping = False
        self.conns: list[Conn] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.conns = await connect(self.peer, self.lanes)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        queue: asyncio.Queue[int] = asyncio.Queue()
        errors: list[BaseException] = []

        async def lane(conn: Conn) -> None:
            while not self.stopping:
                seq = await queue.get()
                if self.stopping:
                    break
                key = self.keys[seq % len(self.keys)]
                self.sent += 1
                try:
                    await conn.put(key, value(seq, key))
                except Exception as exc:  # noqa: BLE001 - re-raised by _run
                    errors.append(exc)
                    return
                self.last[key] = max(seq, self.last.get(key, -1))

        lanes = [asyncio.create_task(lane(c)) for c in self.conns]
        try:
            seq = 0
            while not self.stopping and not errors:
                await asyncio.sleep(max(0.0, t0 + seq / self.rate - loop.time()))
                queue.put_nowait(seq)
                seq += 1
            for _ in lanes:
                queue.put_nowait(-1)  # wake idle lanes; they see ``stopping``
            await asyncio.wait_for(asyncio.gather(*lanes), 30)
        finally:
            for task in lanes:
                task.cancel()
        if errors:
            raise errors[0]

    async def stop(self) -> None:
        self.stopping = True
        assert self.task is not None
        try:
            await asyncio.wait_for(self.task, 40)
        finally:
            await close_all(self.conns)


async def fanout(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    n, rate, seconds = spec["watchers"], spec["rate"], spec["seconds"]
    latencies: list[float] = []
    first_ns = time.monotonic_ns()
    last_ns = first_ns
    done = asyncio.Event()
    expected = 0

    def on_update(raws: Sequence[bytes], snapshot: bool) -> None:
        nonlocal last_ns
        if snapshot:
            return
        now = time.monotonic_ns()
        for raw in raws:
            for ts in timestamps(raw):
                if ts >= first_ns:
                    latencies.append((now - ts) / 1e6)
                    last_ns = now
        if expected and len(latencies) >= expected:
            done.set()

    await peer.prepare()
    enter(f"opening {n} watchers")
    watchers = await open_watchers(peer, "fan", n, on_update)
    try:
        await asyncio.sleep(1.0)  # every watch registered (etcd confirms after the 200 head)
        writer = Writer(peer, "fan", rate)
        first_ns = time.monotonic_ns()
        enter("writing")
        mark("start")
        cpu0, t0 = cpu_seconds(), time.monotonic()
        await writer.start()
        await asyncio.sleep(seconds)
        enter("stopping the writer")
        await writer.stop()
        cpu = (cpu_seconds() - cpu0) / (time.monotonic() - t0)
        mark("end")
        expected = writer.sent * n
        enter("waiting for deliveries")
        deadline = time.monotonic() + spec.get("grace", 5.0)
        while len(latencies) < expected and time.monotonic() < deadline:
            if time.monotonic_ns() - last_ns > 1e9:  # quiet for 1 s: nothing more is coming
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.1)
        span = max(1e-9, (last_ns - first_ns) / 1e9)
        return {
            "writes": writer.sent, "write_rate": writer.sent / seconds, "expected": expected,
            "delivered": len(latencies), "delivered_pct": 100 * len(latencies) / max(1, expected),
            "rate": len(latencies) / span, "gen_cpu": cpu, **percentiles(latencies),
        }
    finally:
        await close_all(watchers)
        await peer.close()


async def resume(peer: Peer, spec: dict[str, Any]) -> dict[str, Any]:
    rate, offline = spec["rate"], spec["offline"]
    state: dict[str, int] = {}
    final: dict[str, int] = {}  # key -> seq the server holds once the writer has stopped
    received = {"updates": 0, "values": 0, "bytes": 0}
    caught_up = asyncio.Event()
    writer = Writer(peer, "res", rate)

    def on_update(raws: Sequence[bytes], snapshot: bool) -> None:
        received["updates"] += 1
        for raw in raws:
            received["bytes"] += len(raw)
            for key, seq in sequences(raw):
                received["values"] += 1
                state[key] = max(seq, state.get(key, -1))
        if final and all(state.get(k, -1) >= seq for k, seq in final.items()):
            caught_up.set()

    await peer.prepare()
    enter("watching")
    watcher = await peer.watch("res", on_update)
    await writer.start()
    await asyncio.sleep(1.0)
    position = watcher.position
    await watcher.close()
    sent_before = writer.sent
    await asyncio.sleep(offline)
    await writer.stop()
    missed = writer.sent - sent_before
    # What the server holds now (concurrent writes to one key may have landed out of order).
    enter("reading the final state")
    reader = (await connect(peer, 1))[0]
    try:
        for key in writer.keys:
            final.update(dict(sequences(await reader.get(key))))
    finally:
        await reader.close()
    received.update(updates=0, values=0, bytes=0)
    mark("start")
    enter("resuming")
    t0 = time.perf_counter()
    again = await peer.watch("res", on_update, resume=position)
    try:
        if not all(state.get(k, -1) >= seq for k, seq in final.items()):
            await asyncio.wait_for(caught_up.wait(), 15)
        catch_up = (time.perf_counter() - t0) * 1000
        await asyncio.sleep(0.5)  # anything more that a resume sends
        mark("end")
        return {
            "missed": missed, "resent_values": received["values"], "resent_updates": received["updates"],
            "resent_bytes": received["bytes"], "catch_up_ms": catch_up, "state_ok": state == final,
            "position": str(position),
        }
    finally:
        await again.close()
        await peer.close()


WORKLOADS: dict[str, Callable[[Peer, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "setup": setup, "write": write, "read": read, "list": list_, "fanout": fanout, "resume": resume,
}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    peer = PEERS[spec["peer"]](spec["port"])
    return await WORKLOADS[spec["workload"]](peer, spec)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        result = asyncio.run(main(spec))
    except Exception as exc:  # noqa: BLE001 - reported to the caller as the cell's text
        result = {"error": f"{type(exc).__name__} while {phase}: {exc}".strip(": ")[:300]}
    print("RESULT " + json.dumps(result), flush=True)
