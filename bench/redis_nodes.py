"""Scale-out benchmark (issue 14): 1, 2 and 3 ``serve --redis`` nodes on one Redis, against one node on
LevelDB.

    .venv/bin/python bench/redis_nodes.py [--seconds 5] [--subscribers 1000] [--writes 30] [--rounds 3]

Per configuration (``leveldb``: one node with ``--data``; ``redis-N``: N nodes on one local
``redis-server``, ``appendfsync everysec``), nodes pinned round-robin to the cores with ``taskset``
(Redis, wrk and this process are not pinned):

- point writes/s: one ``wrk -t1 -c32`` per node POSTing 150 B documents (bench/wrk/post.lua) for
  ``--seconds``, all at once; the sum of their Requests/sec;
- fan-out deliveries/s: ``--subscribers`` websocket subscribers of ``feed/*`` spread evenly over the
  nodes, ``--writes`` POSTs of ``feed/1`` back to back on node 0; subscribers x writes / the time
  until every subscriber has every frame;
- cross-node latency: the same subscribers, one POST at a time on node 0, each waited for by every
  subscriber: p50/p99 of (frame arrival - POST sent) over the subscribers of the OTHER nodes (of
  node 0 itself for one node).

Configurations alternate within each round and the medians of ``--rounds`` are reported: other work
on the machine hits every configuration alike. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import (  # noqa: E402
    BENCH,
    HOST,
    ROOT,
    FrameCounter,
    HttpConnection,
    close_subscribers,
    connect_subscribers,
    table,
)
from tests.redis_server import free_port, start_redis  # noqa: E402

CORES = os.cpu_count() or 1


class TimedCounter(FrameCounter):
    """A FrameCounter that also keeps each frame's arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def add(self, size: int) -> None:
        self.times.append(time.perf_counter())
        super().add(size)


@contextmanager
def node(index: int, *storage: str) -> Iterator[int]:
    """One ``ooo-storage serve`` pinned to core ``index % CORES``; yields its port once it answers."""
    port = free_port()
    command = ["taskset", "-c", str(index % CORES), sys.executable, "-P", "-m", "ooo_storage", "serve",
               "--port", str(port), "--log-level", "warning", *storage]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{HOST}:{port}/?api=info", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {index} did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def cluster(config: str, work: Path) -> Iterator[list[int]]:
    with ExitStack() as stack:
        if config == "leveldb":
            data = work / f"leveldb-{time.monotonic_ns()}"
            yield [stack.enter_context(node(0, "--data", str(data)))]
            return
        count = int(config.rpartition("-")[2])
        server = start_redis(Path(tempfile.mkdtemp(dir=work)), fsync="everysec")
        stack.callback(server.stop)
        url = server.url
        yield [stack.enter_context(node(i, "--redis", url, "--namespace", "bench")) for i in range(count)]


def writes_per_second(ports: Sequence[int], seconds: float) -> float:
    script = str(BENCH / "wrk" / "post.lua")
    runs = [
        subprocess.Popen(["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-s", script, f"http://{HOST}:{port}",
                          "--", "100000"], stdout=subprocess.PIPE, text=True)
        for port in ports
    ]
    total = 0.0
    for run in runs:
        out, _ = run.communicate()
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if found is None or "Non-2xx" in out:
            raise RuntimeError(f"wrk: {out}")
        total += float(found.group(1))
    return total


async def fanout(ports: Sequence[int], subscribers: int, writes: int) -> tuple[float, float, float]:
    """Deliveries/s, then cross-node p50 and p99 in ms."""
    counters = [TimedCounter() for _ in ports]
    subs = []
    share = subscribers // len(ports)
    for port, counter in zip(ports, counters, strict=True):
        subs += await connect_subscribers(port, ["/feed/*"] * share, counter)
    try:
        for counter in counters:
            await counter.wait_for(share, 60)  # the first snapshots
        writer = await HttpConnection.open(ports[0])
        body = b'{"text":"' + b"x" * 120 + b'"}'
        start = time.perf_counter()
        for n in range(writes):
            await writer.request("POST", "/feed/1", body + b" " * (n % 2))
        for counter in counters:
            await counter.wait_for(share * (1 + writes), 120)
        rate = share * len(ports) * writes / (time.perf_counter() - start)
        latencies: list[float] = []
        far = counters[1:] or counters
        for n in range(20):
            marks = [len(c.times) for c in far]
            sent = time.perf_counter()
            await writer.request("POST", "/feed/1", body + b" " * (n % 2 + 2))
            for counter in counters:
                await counter.wait_for(share * (2 + writes + n), 60)
            latencies += [(t - sent) * 1000 for c, m in zip(far, marks, strict=True) for t in c.times[m:]]
        writer.close()
        cuts = statistics.quantiles(latencies, n=100)
        return rate, cuts[49], cuts[98]
    finally:
        await close_subscribers(subs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="leveldb,redis-1,redis-2,redis-3")
    args = parser.parse_args()
    for tool in ("wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"redis_nodes: needs {tool} on PATH")
    configs = args.configs.split(",")
    results: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in configs}
    work = Path(tempfile.mkdtemp(prefix="ooo-bench-nodes-"))
    try:
        for round_ in range(args.rounds):
            for config in configs:
                with cluster(config, work) as ports:
                    writes = writes_per_second(ports, args.seconds)
                    rate, p50, p99 = asyncio.run(fanout(ports, args.subscribers, args.writes))
                results[config].append((writes, rate, p50, p99))
                print(f"round {round_ + 1} {config}: {writes:.0f} writes/s, {rate:.0f} deliveries/s, "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    base = {i: statistics.median(r[i] for r in results.get("redis-1", results[configs[0]])) for i in range(2)}
    for config in configs:
        med = [statistics.median(r[i] for r in results[config]) for i in range(4)]
        rows.append([config, f"{med[0]:.0f}", f"{med[0] / base[0]:.2f}x", f"{med[1]:.0f}",
                     f"{med[1] / base[1]:.2f}x", f"{med[2]:.1f}", f"{med[3]:.1f}"])
    print(table(["nodes", "writes/s", "vs redis-1", "deliveries/s", "vs redis-1", "p50 ms", "p99 ms"], rows))


if __name__ == "__main__":
    main()
