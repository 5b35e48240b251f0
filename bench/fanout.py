"""Fan-out benchmark: one write delivered to many websocket subscribers, ours vs bare aiohttp.

    .venv/bin/python bench/fanout.py [--subscribers 1000] [--writes 50] [--rounds 6]
        [--servers lean,aiohttp] [--baseline DIR] [--profile] [--no-results]

Servers, each compared with a bare aiohttp server broadcasting a pre-encoded 150 B binary frame to N
websocket clients on every POST (bench/_load_targets.py ``ws-baseline``, always run):

- ``lean``, ``aiohttp`` (``--servers``): ``python -m ooo_storage serve --memory-only --http-engine
  ENGINE`` from this tree. Under ``lean`` a websocket upgrade reaches the lean front first, which
  hands the connection over to aiohttp: what that costs per subscriber shows here;
- ``app``: the library's ``create_app`` over a memory layer, served by aiohttp (``ooo`` in
  bench/_load_targets.py: the server of the figures recorded before issue 10);
- ``--baseline DIR``: ``serve`` from another checkout too, with each engine of ``--servers`` it
  offers (its only one, aiohttp, when its ``serve`` has no ``--http-engine``).

ooo-storage delivers each write of ``feed/1`` to N subscribers of ``feed/*`` (a ``replace`` patch
frame of about the same size as the bare server's). Servers are pinned to core 0 and this process
(subscribers and writer) to core 1 on a machine with two cores or more; 127.0.0.1 only.

(a) Throughput. Every server runs at once with its N subscribers; in each of ``--rounds`` rounds each
server in turn (the order rotated from round to round, so that background load hits all alike) gets
``--writes`` POSTs back to back, and the round lasts until every subscriber has counted every frame.
Per server, medians over the rounds (min–max) of:

- deliveries/s seen by the subscribers (N x writes / round time), and
- server CPU per delivery (CPU time of the server process during the round / deliveries), whose
  inverse is the delivery capacity of one core; the ratio to the bare broadcast is the median of
  the per-round ratios (target >= 0.8).

The subscribers' process needs about as much CPU per frame as a lean server, so observed
deliveries/s is capped by the instrument for a fast server: the servers are compared by CPU.

(b) Memory and set-up, in ``--rounds`` rounds too, each server a fresh process: after 50 warm-up
subscribers (kept connected), the RSS (from /proc) before and after N more idle subscribers connect
and get their first frame, divided by N (target <= 20 KiB per subscriber; for ooo-storage both N
subscribers of one glob, one pool, and N distinct keys, N pools), and the server CPU time those N
connections took until their first frame, divided by N: what one websocket set-up costs the server
(handshake, subscription, first frame).

The machine's load during the throughput rounds is reported: the load average before and after,
and the share of the cores that processes other than these servers and this one took.
``--profile`` samples the first ooo-storage server with py-spy during the throughput rounds
(bench/out/).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
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
from bench.http_front import LOAD_CORE, SERVER_CORE, OooServer, http_engines, spread  # noqa: E402
from bench.peers.peers import cpu_busy  # noqa: E402
from bench.peers.targets import ROOT, install_cleanup  # noqa: E402

WARM = 50
HZ = os.sysconf("SC_CLK_TCK")
SERVERS = ("app", "lean", "aiohttp")
PINNED = (os.cpu_count() or 1) > max(SERVER_CORE, LOAD_CORE)


def pin(pid: int, core: int) -> None:
    """Keep ``pid`` on ``core`` (nothing on a one-core machine)."""
    if PINNED:
        os.sched_setaffinity(pid, {core})


@contextmanager
def serve_pinned(mode: str) -> Iterator[Target]:
    """A bench/_load_targets.py server (``serve``) on the server core."""
    with serve(mode) as target:
        pin(target.pid, SERVER_CORE)
        yield target


@contextmanager
def serve_tree(label: str, tree: Path, engine: str, flag: bool) -> Iterator[Target]:
    """``python -m ooo_storage serve --memory-only`` from ``tree`` on the server core (``flag``:
    pass ``--http-engine engine``; False for a tree whose serve has only aiohttp)."""
    with tempfile.TemporaryDirectory(prefix="fanout_") as tmp:
        server = OooServer(label, tree, engine, flag, "memory", Path(tmp))
        server.start()
        try:
            assert server.process is not None
            yield Target(server.name, server.process, server.port)
        finally:
            server.stop()


@dataclass
class Setup:
    """One kind of server: how to start a fresh one, and whether it is ooo-storage (else the bare
    aiohttp broadcast, which answers any path)."""

    label: str
    start: Callable[[], AbstractContextManager[Target]]
    ooo: bool = True

    @property
    def sub_path(self) -> str:
        return "/feed/*" if self.ooo else "/feed"

    @property
    def write_path(self) -> str:
        return "/feed/1" if self.ooo else "/feed"

    def idle_paths(self, n: int) -> dict[str, list[str]]:
        if not self.ooo:
            return {"one path": ["/feed"] * n}
        return {"one glob": ["/feed/*"] * n, "distinct keys": [f"/idle/{i}" for i in range(n)]}

    async def prepare(self, target: Target) -> None:
        if self.ooo:  # the glob's list holds the item every write replaces
            conn = await HttpConnection.open(target.port)
            await conn.request("POST", self.write_path, b'{"seq":0}')
            conn.close()


@dataclass
class Result:
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per delivery, per round
    frame_bytes: float = 0.0
    rss_per_sub_kib: dict[str, list[float]] = field(default_factory=dict)  # per idle kind, per round
    setup_cpu_us: dict[str, list[float]] = field(default_factory=dict)  # ... CPU per connection set-up

    @property
    def capacity(self) -> float:
        return 1e6 / statistics.median(self.cpu_us)


@dataclass
class Load:
    """What else ran on the machine during the throughput rounds."""

    bench_busy: float = 0.0  # this process's share of one core
    others: float = 0.0  # other processes' share of all cores
    loadavg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


def rotated(n: int, shift: int) -> list[int]:
    """0..n-1 starting at ``shift`` (mod n): each round starts with another server."""
    return [(shift + i) % n for i in range(n)]


async def measure_memory(setup: Setup, result: Result, n: int) -> None:
    """RSS and server CPU per idle subscriber, each idle kind in a fresh server process."""
    for label, paths in setup.idle_paths(n).items():
        with setup.start() as target:
            await setup.prepare(target)
            counter = FrameCounter()
            subscribers = await connect_subscribers(target.port, [setup.sub_path] * WARM, counter)
            await counter.wait_for(WARM, timeout=60)
            await asyncio.sleep(0.2)  # let the server finish post-send bookkeeping before sampling
            before, cpu = target.rss_kib(), target.cpu_seconds()
            subscribers += await connect_subscribers(target.port, paths, counter)
            await counter.wait_for(WARM + len(paths), timeout=60)
            spent = target.cpu_seconds() - cpu
            await asyncio.sleep(0.2)
            result.rss_per_sub_kib.setdefault(label, []).append((target.rss_kib() - before) / len(paths))
            result.setup_cpu_us.setdefault(label, []).append(spent * 1e6 / len(paths))
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


async def throughput(args: argparse.Namespace, setups: Sequence[Setup], results: Sequence[Result],
                     load: Load) -> None:
    """Every server up with its subscribers; rounds of writes, the servers' order rotated."""
    with ExitStack() as stack:
        targets = [stack.enter_context(setup.start()) for setup in setups]
        fanouts = [Fanout(s, t, args.subscribers) for s, t in zip(setups, targets, strict=True)]
        for fanout in fanouts:
            await fanout.open()
        profile = BENCH / "out" / "fanout-ooo.collapsed" if args.profile else None
        spied = next((t for s, t in zip(setups, targets, strict=True) if s.ooo), targets[0])
        load.loadavg = (os.getloadavg()[0], 0.0)
        busy, servers = sum(cpu_busy()), sum(t.cpu_seconds() for t in targets)
        cpu, wall = time.process_time(), time.perf_counter()
        with profiled(spied, profile):
            for r in range(args.rounds):
                for i in rotated(len(setups), r):
                    await fanouts[i].round(args.writes, results[i])
        wall = time.perf_counter() - wall
        own = time.process_time() - cpu
        servers = sum(t.cpu_seconds() for t in targets) - servers
        load.bench_busy = own / wall
        load.others = max(0.0, (sum(cpu_busy()) - busy) / HZ - servers - own) / wall / (os.cpu_count() or 1)
        load.loadavg = (load.loadavg[0], os.getloadavg()[0])
        for fanout, result in zip(fanouts, results, strict=True):
            await fanout.close(result)
    if profile is not None:
        print(f"Hot frames of {spied.name} (py-spy, {profile}):\n\n{hot_frames(profile)}\n")


async def run(args: argparse.Namespace, setups: Sequence[Setup]) -> tuple[list[Result], Load]:
    """Memory and set-up rounds (fresh processes), then the throughput rounds."""
    results = [Result() for _ in setups]
    for r in range(args.rounds):
        for i in rotated(len(setups), r):
            await measure_memory(setups[i], results[i], args.subscribers)
    load = Load()
    await throughput(args, setups, results, load)
    return results, load


def ratio_to(result: Result, reference: Result) -> float:
    """Median over rounds of the reference's CPU per delivery over ``result``'s (same round)."""
    return statistics.median(b / o for o, b in zip(result.cpu_us, reference.cpu_us, strict=True))


def report(args: argparse.Namespace, setups: Sequence[Setup], results: Sequence[Result], load: Load,
           command: str) -> str:
    bare = results[0]
    rows = [[setup.label, spread(r.rates), spread(r.cpu_us, 1), f"{r.capacity:,.0f}",
             f"{ratio_to(r, bare):.2f}" if r is not bare else "1", f"{r.frame_bytes:.0f}"]
            for setup, r in zip(setups, results, strict=True)]
    throughput_table = table(
        ["server", "deliveries/s seen (min–max)", "server CPU µs/delivery (min–max)",
         "capacity deliveries/s/core", "capacity ratio to bare (target >= 0.8)", "frame bytes"], rows)
    memory = table(
        ["server", "subscribers of", "RSS per idle subscriber KiB (min–max; target <= 20)",
         "server CPU µs per subscriber set-up (min–max)"],
        [[setup.label, label, spread(kib, 1), spread(r.setup_cpu_us[label], 0)]
         for setup, r in zip(setups, results, strict=True) for label, kib in r.rss_per_sub_kib.items()],
    )
    n = args.subscribers
    pinning = (f"servers pinned to core {SERVER_CORE}, subscribers and writer (this process) to core "
               f"{LOAD_CORE}" if PINNED else "nothing pinned (one core)")
    return (
        f"{n} subscribers per server, {args.writes} writes per round, {args.rounds} rounds, the "
        f"servers' order rotated from round to round (medians, min–max); {pinning}; 127.0.0.1. "
        f"During the throughput rounds the bench process was {load.bench_busy:.0%} busy (it spends "
        f"about as much CPU per frame as a lean server, so observed deliveries/s partly measure the "
        f"instrument and the servers are compared by CPU per delivery); other processes took "
        f"{load.others:.0%} of the {os.cpu_count()} cores; load average {load.loadavg[0]:.2f} before, "
        f"{load.loadavg[1]:.2f} after.\n\n{throughput_table}\n\n{memory}\n\n"
        f"Command: `{command}`."
    )


def setups_for(servers: Sequence[str], baseline: Path | None) -> list[Setup]:
    """The bare broadcast first, then ``servers`` from this tree, then the baseline tree's."""
    setups = [Setup("bare aiohttp broadcast", partial(serve_pinned, "ws-baseline"), ooo=False)]
    for name in servers:
        if name == "app":
            setups.append(Setup("ooo-storage create_app (aiohttp)", partial(serve_pinned, "ooo")))
        else:
            setups.append(Setup(f"serve --http-engine {name}",
                                partial(serve_tree, "main", ROOT, name, True)))
    if baseline is not None:
        offered = http_engines(baseline)
        engines = [name for name in servers if name in (offered or ["aiohttp"]) and name != "app"]
        flag = offered is not None
        for engine in engines:
            label = f"baseline serve --http-engine {engine}" if flag else f"baseline serve ({engine})"
            setups.append(Setup(label, partial(serve_tree, "baseline", baseline, engine, flag)))
    return setups


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--servers", default="lean,aiohttp",
                        help=f"comma-separated, of {', '.join(SERVERS)} (default lean,aiohttp)")
    parser.add_argument("--baseline", type=Path, help="another checkout whose serve runs too")
    parser.add_argument("--profile", action="store_true", help="py-spy our first server (bench/out/)")
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.servers.split(",") if name not in SERVERS]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)} (choose from {', '.join(SERVERS)})")
    return args


def fanout_text(args: argparse.Namespace, command: str) -> str:
    """Run the benchmark (this process pinned to the load core) and return its report, which names
    ``command`` as the one that made it."""
    if PINNED:
        os.sched_setaffinity(0, {LOAD_CORE})
    setups = setups_for(args.servers.split(","), args.baseline.resolve() if args.baseline else None)
    results, load = asyncio.run(run(args, setups))
    return report(args, setups, results, load, command)


def main() -> None:
    args = parse_args()
    install_cleanup()
    text = fanout_text(args, shlex.join([".venv/bin/python", "bench/fanout.py", *sys.argv[1:]]))
    print("## Server: fan-out\n\n" + text)
    if not args.no_results:
        replace_section(BENCH / "RESULTS.md", "Server: fan-out", text)


if __name__ == "__main__":
    main()
