"""Fan-out benchmark: one write delivered to many websocket subscribers, ours vs bare aiohttp.

    .venv/bin/python bench/fanout.py [--subscribers 1000] [--writes 50] [--rounds 6] [--profile]

(a) Throughput. A bare aiohttp server broadcasting a pre-encoded 150 B binary frame to N websocket
clients on every POST, against ooo-storage delivering each write of ``feed/1`` to N subscribers of
``feed/*`` (a ``replace`` patch frame of about the same size). The writer POSTs ``--writes`` times
back to back; a round lasts until every subscriber has counted every frame; rounds alternate between
the servers so that background load on the machine hits both alike. Two figures per server:

- deliveries/s seen by the subscribers (N x writes / round time), and
- server CPU per delivery (CPU time of the server process during the round / deliveries), whose
  inverse is the delivery capacity of one core.

On a 2-core box the subscribers' process needs as much CPU per frame as a lean server, so observed
deliveries/s is capped by the instrument for a fast server; the capacity ratio is the comparison of
the servers themselves (target ours/baseline >= 0.8) and both are reported.

(b) Memory. In a fresh server process, after 50 warm-up subscribers (kept connected), the RSS (from
/proc) before and after N more idle subscribers connect and get their first frame, divided by N;
target <= 20 KiB per subscriber. For ours both N subscribers of one glob (one pool) and N distinct
keys (N pools).

Servers run in child processes; the subscribers and the writer share this one (127.0.0.1 only).
``--profile`` samples our server with py-spy during the throughput rounds (bench/out/).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Import bench/ as a package of the repository root, so that both `python bench/<script>.py` and
# `python -m bench.<script>` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import (  # noqa: E402
    BENCH,
    FrameCounter,
    HttpConnection,
    Target,
    close_subscribers,
    connect_subscribers,
    hot_frames,
    profiled,
    replace_section,
    serve,
    table,
)

WARM = 50


@dataclass
class Setup:
    """One kind of server and how the benchmark talks to it."""

    label: str
    mode: str
    sub_path: str
    write_path: str
    idle_paths: dict[str, list[str]]

    async def prepare(self, target: Target) -> None:
        if self.mode == "ooo":  # the glob's list holds the item every write replaces
            conn = await HttpConnection.open(target.port)
            await conn.request("POST", self.write_path, b'{"seq":0}')
            conn.close()


@dataclass
class Result:
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per delivery, per round
    frame_bytes: float = 0.0
    rss_per_sub_kib: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def capacity(self) -> float:
        return 1e6 / statistics.median(self.cpu_us)


async def measure_memory(setup: Setup, result: Result) -> None:
    for label, paths in setup.idle_paths.items():
        with serve(setup.mode) as target:
            await setup.prepare(target)
            counter = FrameCounter()
            subscribers = await connect_subscribers(target.port, [setup.sub_path] * WARM, counter)
            await counter.wait_for(WARM, timeout=60)
            await asyncio.sleep(0.2)  # let the server finish post-send bookkeeping before sampling
            before = target.rss_kib()
            subscribers += await connect_subscribers(target.port, paths, counter)
            await counter.wait_for(WARM + len(paths), timeout=60)
            await asyncio.sleep(0.2)
            result.rss_per_sub_kib[label] = (target.rss_kib() - before) / len(paths)
            await close_subscribers(subscribers)


class Fanout:
    """N subscribers and a writer connected to one running server."""

    def __init__(self, setup: Setup, target: Target, n: int) -> None:
        self.setup, self.target, self.n = setup, target, n
        self.counter = FrameCounter()

    async def open(self) -> None:
        await self.setup.prepare(self.target)
        self.subscribers = await connect_subscribers(self.target.port, [self.setup.sub_path] * self.n,
                                                     self.counter)
        await self.counter.wait_for(self.n, timeout=60)
        self.writer = await HttpConnection.open(self.target.port)
        self.mark = (self.counter.frames, self.counter.bytes)

    async def round(self, writes: int, result: Result) -> None:
        """POST ``writes`` times back to back and wait until every subscriber has every frame."""
        expected = self.counter.frames + self.n * writes
        cpu, start = self.target.cpu_seconds(), time.perf_counter()
        for seq in range(writes):
            status, body = await self.writer.request("POST", self.setup.write_path,
                                                     b'{"seq":%d}' % seq)
            if status != 200:
                raise RuntimeError(f"{self.setup.label}: write failed: {status} {body[:200]!r}")
        await self.counter.wait_for(expected, timeout=120)
        elapsed = time.perf_counter() - start
        result.rates.append(self.n * writes / elapsed)
        result.cpu_us.append((self.target.cpu_seconds() - cpu) * 1e6 / (self.n * writes))

    async def close(self, result: Result) -> None:
        frames, size = self.mark
        result.frame_bytes = (self.counter.bytes - size) / (self.counter.frames - frames)
        self.writer.close()
        await close_subscribers(self.subscribers)


async def run(args: argparse.Namespace, setups: Sequence[Setup]) -> tuple[list[Result], float]:
    """Memory per server, then alternating throughput rounds; also returns the bench process's
    CPU use during the rounds (a fraction of one core)."""
    results = [Result() for _ in setups]
    for setup, result in zip(setups, results, strict=True):
        await measure_memory(setup, result)
    with serve(setups[0].mode) as first, serve(setups[1].mode) as second:
        fanouts = [Fanout(s, t, args.subscribers) for s, t in zip(setups, (first, second), strict=True)]
        for fanout in fanouts:
            await fanout.open()
        cpu, wall = time.process_time(), time.perf_counter()
        profile = BENCH / "out" / "fanout-ooo.collapsed" if args.profile else None
        with profiled(second, profile):
            for r in range(args.rounds):
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    await fanouts[i].round(args.writes, results[i])
        busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
        for fanout, result in zip(fanouts, results, strict=True):
            await fanout.close(result)
    if profile is not None:
        print(f"Hot frames of our server (py-spy, {profile}):\n\n{hot_frames(profile)}\n")
    return results, busy


def report(args: argparse.Namespace, baseline: Result, ours: Result, busy: float) -> str:
    def row(name: str, r: Result) -> list[str]:
        return [name, f"{r.rate:,.0f}", f"{statistics.median(r.cpu_us):.1f}", f"{r.capacity:,.0f}",
                f"{r.frame_bytes:.0f}"]

    ratio = ours.capacity / baseline.capacity
    observed = statistics.median(o / b for o, b in zip(ours.rates, baseline.rates, strict=True))
    throughput = table(
        ["server", "deliveries/s seen", "server CPU µs/delivery", "capacity deliveries/s/core",
         "frame bytes"],
        [row("bare aiohttp broadcast", baseline), row("ooo-storage, one glob", ours),
         ["**ratio ours/baseline** (target >= 0.8)", f"{observed:.2f}", "", f"**{ratio:.2f}**", ""]],
    )
    memory = table(
        ["server", "subscribers of", "RSS per idle subscriber (target <= 20 KiB)"],
        [["bare aiohttp", label, f"{kib:.1f} KiB"] for label, kib in baseline.rss_per_sub_kib.items()]
        + [["ooo-storage", label, f"{kib:.1f} KiB"] for label, kib in ours.rss_per_sub_kib.items()],
    )
    n = args.subscribers
    return (
        f"{n} subscribers per server, {args.writes} writes per round, {args.rounds} rounds "
        f"alternating between the servers (medians shown); each server in a child process, "
        f"subscribers and writer in the bench process, 127.0.0.1, 2 cores shared with other work. "
        f"The bench process was {busy:.0%} busy during the rounds; it spends about as much CPU per "
        f"frame as a lean server, so observed deliveries/s partly measure the instrument and the "
        f"servers are compared by CPU per delivery.\n\n{throughput}\n\n{memory}\n\n"
        f"Command: `.venv/bin/python bench/fanout.py --subscribers {n} --writes {args.writes} "
        f"--rounds {args.rounds}`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--profile", action="store_true", help="py-spy our server (bench/out/)")
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    n = args.subscribers
    setups = [
        Setup("baseline", "ws-baseline", "/feed", "/feed", {"one path": ["/feed"] * n}),
        Setup("ours", "ooo", "/feed/*", "/feed/1", {
            "one glob": ["/feed/*"] * n,
            "distinct keys": [f"/idle/{i}" for i in range(n)],
        }),
    ]
    (baseline, ours), busy = asyncio.run(run(args, setups))
    text = report(args, baseline, ours, busy)
    print("## Server: fan-out\n\n" + text)
    if not args.no_results:
        replace_section(BENCH / "RESULTS.md", "Server: fan-out", text)


if __name__ == "__main__":
    main()
