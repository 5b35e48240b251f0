"""Fan-out benchmark: one write delivered to many websocket subscribers, ours vs bare aiohttp.

    .venv/bin/python bench/fanout.py [--subscribers 1000] [--writes 100] [--rounds 3]

(a) Throughput. A bare aiohttp server broadcasting a pre-encoded 150 B binary frame to N websocket
clients on every POST, against ooo-storage delivering each write of ``feed/1`` to N subscribers of
``feed/*`` (a ``replace`` patch frame of about the same size). The writer POSTs ``--writes`` times
back to back; a round lasts until every subscriber has counted every frame. Deliveries/s =
N x writes / round time, median of the rounds; target ratio ours/baseline >= 0.8.

(b) Memory. The server process's RSS (from /proc) before and after N idle subscribers connect and
get their first frame, divided by N; target <= 20 KiB per subscriber. Measured for N subscribers of
one glob (one pool) and of N distinct keys (N pools), after a warm-up connection batch.

Each server runs in its own process; the subscribers and the writer share this one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import (  # noqa: E402
    BENCH,
    FrameCounter,
    HttpConnection,
    Target,
    close_subscribers,
    connect_subscribers,
    replace_section,
    serve,
    table,
)

COMMAND = "make bench  # or: .venv/bin/python bench/fanout.py"


@dataclass
class Setup:
    """One server under test and how the benchmark talks to it."""

    label: str
    target: Target
    sub_path: str
    write_path: str
    idle_paths: dict[str, list[str]]


@dataclass
class FanoutResult:
    rates: list[float] = field(default_factory=list)
    frame_bytes: float = 0.0
    rss_per_sub_kib: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


async def idle_rss(target: Target, paths: list[str]) -> int:
    """Server RSS in KiB once a subscriber per path is connected and has its first frame."""
    counter = FrameCounter()
    subscribers = await connect_subscribers(target.port, paths, counter)
    await counter.wait_for(len(paths), timeout=60)
    await asyncio.sleep(0.2)  # let the server finish its post-send bookkeeping before sampling
    after = target.rss_kib()
    await close_subscribers(subscribers)
    return after


async def measure_memory(setup: Setup, result: FanoutResult) -> None:
    # Warm-up: the first connections pay for lazily imported code and first-time allocations.
    await idle_rss(setup.target, [setup.sub_path] * 50)
    for label, paths in setup.idle_paths.items():
        before = setup.target.rss_kib()
        result.rss_per_sub_kib[label] = (await idle_rss(setup.target, paths) - before) / len(paths)


async def write_round(setup: Setup, counter: FrameCounter, writer: HttpConnection, n: int,
                      writes: int) -> float:
    """POST ``writes`` times back to back; deliveries/s until every subscriber has every frame."""
    expected = counter.frames + n * writes
    start = time.perf_counter()
    for seq in range(writes):
        status, body = await writer.request("POST", setup.write_path, b'{"seq":%d}' % seq)
        if status != 200:
            raise RuntimeError(f"{setup.label}: write failed: {status} {body[:200]!r}")
    await counter.wait_for(expected, timeout=120)
    return n * writes / (time.perf_counter() - start)


async def measure(setups: list[Setup], *, n: int, writes: int, rounds: int) -> list[FanoutResult]:
    """Memory of each server, then throughput rounds alternating between the servers, so that a
    change in the machine's background load during the run hits both alike."""
    results = [FanoutResult() for _ in setups]
    for setup, result in zip(setups, results, strict=True):
        await measure_memory(setup, result)
    counters = [FrameCounter() for _ in setups]
    subscribers = []
    writers = []
    for setup, counter in zip(setups, counters, strict=True):
        subscribers.append(await connect_subscribers(setup.target.port, [setup.sub_path] * n, counter))
        await counter.wait_for(n, timeout=60)
        writers.append(await HttpConnection.open(setup.target.port))
    marks = [(c.frames, c.bytes) for c in counters]
    for r in range(rounds):
        order = range(len(setups)) if r % 2 == 0 else reversed(range(len(setups)))
        for i in order:
            results[i].rates.append(await write_round(setups[i], counters[i], writers[i], n, writes))
    for i, (frames, size) in enumerate(marks):
        results[i].frame_bytes = (counters[i].bytes - size) / (counters[i].frames - frames)
        writers[i].close()
        await close_subscribers(subscribers[i])
    return results


async def run(args: argparse.Namespace) -> list[FanoutResult]:
    n = args.subscribers
    with serve("ws-baseline") as baseline, serve("ooo") as ours:
        setup = await HttpConnection.open(ours.port)
        await setup.request("POST", "/feed/1", b'{"seq":0}')
        setup.close()
        return await measure(
            [
                Setup("baseline", baseline, "/feed", "/feed", {"one path": ["/feed"] * n}),
                Setup("ours", ours, "/feed/*", "/feed/1", {
                    "one glob": ["/feed/*"] * n,
                    "distinct keys": [f"/idle/{i}" for i in range(n)],
                }),
            ],
            n=n, writes=args.writes, rounds=args.rounds,
        )


def report(args: argparse.Namespace, baseline: FanoutResult, ours: FanoutResult) -> str:
    ratio = statistics.median(o / b for o, b in zip(ours.rates, baseline.rates, strict=True))
    n = args.subscribers
    throughput = table(
        ["server", "deliveries/s (median)", "rounds", "frame bytes"],
        [
            ["bare aiohttp broadcast", f"{baseline.rate:,.0f}",
             " / ".join(f"{r:,.0f}" for r in baseline.rates), f"{baseline.frame_bytes:.0f}"],
            ["ooo-storage, one glob", f"{ours.rate:,.0f}",
             " / ".join(f"{r:,.0f}" for r in ours.rates), f"{ours.frame_bytes:.0f}"],
            ["**ratio** (median of per-round ratios; target >= 0.8)", f"**{ratio:.2f}**", "", ""],
        ],
    )
    memory = table(
        ["server", "subscribers of", "RSS per idle subscriber (target <= 20 KiB)"],
        [["bare aiohttp", label, f"{kib:.1f} KiB"] for label, kib in baseline.rss_per_sub_kib.items()]
        + [["ooo-storage", label, f"{kib:.1f} KiB"] for label, kib in ours.rss_per_sub_kib.items()],
    )
    return (
        f"{n} subscribers per server, {args.writes} writes per round, {args.rounds} rounds alternating "
        f"between the servers; each server in a child process, subscribers and writer in the bench "
        f"process (2 cores, 127.0.0.1).\n\n"
        f"{throughput}\n\n{memory}\n\nCommand: `{COMMAND}` "
        f"(`--subscribers {n} --writes {args.writes} --rounds {args.rounds}`)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    baseline, ours = asyncio.run(run(args))
    text = report(args, baseline, ours)
    print("## Server: fan-out\n\n" + text)
    if not args.no_results:
        replace_section(BENCH / "RESULTS.md", "Server: fan-out", text)


if __name__ == "__main__":
    main()
