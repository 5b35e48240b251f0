"""No regression elsewhere (issue 10): fan-out, memory per subscriber, cold start and latencies at a
moderate rate next to the throughput, for the lean front, aiohttp and the server before the front.

    .venv/bin/python bench/front_regress.py --baseline /work/baseline10 [--rounds 3]
        [--parts fanout,cold,http] [--subscribers 1000] [--writes 50] [--keys 200000]
        [--rate 2000] [--seconds 8] [--warmup 2] [--quick]

Servers: ``python -m ooo_storage serve`` from this tree with ``--http-engine lean`` (the default)
and ``--http-engine aiohttp``, and from ``--baseline DIR`` (a checkout from before the front: its
only engine, aiohttp, without the flag), each pinned to core 0; this process and wrk on core 1.
Every part runs ``--rounds`` rounds, the servers' order rotated from round to round (interleaved,
so that the machine's load drifts over all of them alike); medians are reported with min–max.

- ``fanout``: bench/fanout.py (``--servers lean,aiohttp --baseline DIR``): deliveries/s, server CPU
  per delivery and its ratio to a bare aiohttp broadcast, RSS and server CPU per idle subscriber
  (its websocket set-up). Its servers run ``--memory-only``.
- ``cold``: a LevelDB directory of ``--keys`` objects is written once (bench/core.py's
  ``build_cold_db``) and copied afresh before each start, outside the timing. Timed: from the
  ``Popen`` of the server to the first 200 of ``GET /readyz`` (a tree without it: ``GET /users/0``,
  a stored key, which the server answers only once the store is loaded), polled every 5 ms; also the
  server's CPU time by then. The last key is then read back (200) to check the store is complete.
  The copy sits in the page cache: this is a warm-cache start, the case a restart meets.
- ``http``: wrk (bench/http_front.py's runs, ``--data`` mode: LevelDB, no fsync) with 64 keep-alive
  connections, POST of 150 B to ``/users/<i>`` and GET of one key, twice: paced at about ``--rate``
  requests/s in all (bench/wrk/paced.lua: each connection pauses a random 0..2x mean after each
  answer; wrk has no constant-rate mode, wrk2 is not packaged), where the latencies are a lightly
  loaded server's; and saturated (no pause), for the throughput and server CPU per request next to
  them. A run's first requests go out together (64 at once, well under 1 % of a paced run's
  requests, so p99 does not see them).

The machine's load average before and after each part is reported, and per run the share of cores
0 and 1 that other processes took. The report (markdown) goes to stdout, progress to stderr. Every
process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Import bench/ as a package of the repository root (see bench/http_front.py).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import table  # noqa: E402
from bench.core import build_cold_db  # noqa: E402
from bench.fanout import PINNED, fanout_text, rotated  # noqa: E402
from bench.http_front import (  # noqa: E402
    CONNECTIONS,
    HZ,
    LOAD_CORE,
    SERVER_CORE,
    WORKLOADS,
    Cell,
    OooServer,
    Workload,
    cell_row,
    check_tree,
    git_commit,
    log,
    median,
    ratio,
    run_rounds,
    servers_for,
    spread,
)
from bench.peers.peers import process_ticks  # noqa: E402
from bench.peers.targets import HOST, ROOT, free_port, install_cleanup, kill_all, stop, track  # noqa: E402

ENGINES = ["lean", "aiohttp"]
PARTS = ("fanout", "cold", "http")
POLL = 0.005


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# Cold start


@dataclass
class ColdStarts:
    server: OooServer
    walls: list[float] = field(default_factory=list)  # seconds from Popen to ready, per round
    cpus: list[float] = field(default_factory=list)  # the server's CPU seconds by then


def ready_path(tree: Path) -> str:
    """``/readyz`` where the tree serves it, else a stored key (answered once the store is loaded)."""
    return "/readyz" if (tree / "ooo_storage" / "server" / "health.py").exists() else "/users/0"


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def cold_start(server: OooServer, master: Path, keys: int) -> tuple[float, float]:
    """Start ``server`` on a fresh copy of ``master``: seconds to ready, and its CPU seconds by then."""
    data = server.tmp / server.name
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(master, data)
    server.port = free_port()
    url = f"http://{HOST}:{server.port}"
    with (server.tmp / f"{server.name}.log").open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(["taskset", "-c", str(SERVER_CORE), *server.command()], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    track(process.pid, process)
    try:
        while not answers_200(url + ready_path(server.tree)):
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(f"{server.name} not ready: {server.log_tail()}")
            time.sleep(POLL)
        wall, cpu = time.perf_counter() - started, process_ticks(process.pid) / HZ
        if not answers_200(f"{url}/users/{keys - 1}"):
            raise RuntimeError(f"{server.name}: the last key is missing after the start")
    finally:
        stop(process)
        shutil.rmtree(data, ignore_errors=True)
    return wall, cpu


def paired(values: Sequence[float], reference: Sequence[float]) -> float:
    """The median of the per-round ratios of ``values`` to ``reference``."""
    return median([a / b for a, b in zip(values, reference, strict=True)])


def cold_part(trees: Sequence[tuple[str, Path]], args: argparse.Namespace, tmp: Path,
              notes: list[str]) -> str:
    master = tmp / "cold-master"
    log(f"writing {args.keys} keys to {master}")
    build_cold_db(master, args.keys)
    starts = [ColdStarts(server) for server in servers_for(trees, ENGINES, ["data"], tmp, notes)]
    before = load_average()
    for index in range(args.rounds):
        for i in rotated(len(starts), index):
            wall, cpu = cold_start(starts[i].server, master, args.keys)
            starts[i].walls.append(wall)
            starts[i].cpus.append(cpu)
            log(f"round {index + 1}/{args.rounds} cold start {starts[i].server.name}: {wall:.3f} s, "
                f"CPU {cpu:.2f} s")
    base = next((s for s in starts if s.server.tree_label == "baseline"), None)
    rows = []
    for s in starts:
        against = "" if base is None or s is base else f"{paired(s.walls, base.walls):.2f}×"
        rows.append([f"`{s.server.name}`", spread(s.walls, 3), spread(s.cpus, 2),
                     f"{args.keys / median(s.walls):,.0f}", against])
    probes = "; ".join(f"{label}: `GET {ready_path(tree)}`" for label, tree in trees)
    return "\n".join([
        f"Cold start over {args.keys:,} keys (LevelDB, warm page cache), {args.rounds} rounds, load "
        f"average {before} before and {load_average()} after. Ready = first 200 of {probes}.", "",
        table(["server", "s to ready (min–max)", "server CPU s (min–max)", "keys/s",
               "time vs baseline (per-round ratio)"], rows)])


# HTTP: latency at a moderate rate, and throughput


def paced(workload: Workload, rate: int) -> Workload:
    """``workload`` through bench/wrk/paced.lua at about ``rate`` requests/s over the connections."""
    pause = f"{CONNECTIONS * 1000 / rate:g}"
    return Workload(f"{workload.name}-paced", f"{workload.title}, paced ~{rate:,}/s",
                    f"paced_{workload.script}", (pause, *workload.args), workload.writes)


def http_part(trees: Sequence[tuple[str, Path]], args: argparse.Namespace, tmp: Path,
              notes: list[str]) -> str:
    servers = servers_for(trees, ENGINES, ["data"], tmp, notes)
    base = [WORKLOADS["post"], WORKLOADS["get"]]
    workloads = [*(paced(w, args.rate) for w in base), *base]
    cells = [Cell(workload, server) for workload in workloads for server in servers]
    before = load_average()
    try:
        for server in servers:
            server.start()
            log(f"started {server.label} (pid {server.pid}): {shlex.join(server.command())}")
            server.preload()
        run_rounds(cells, args.rounds, args.seconds, args.warmup)
    finally:
        for server in servers:
            server.stop()
    headers = ["workload", "server", "req/s (min–max)", "server µs CPU/req (min–max)", "req/s/core",
               "p50 / p99 ms", "server core", "wrk core", "bad rounds", "others core 0 / 1", "rounds"]
    return "\n".join([
        f"wrk, {CONNECTIONS} keep-alive connections, `--data` (LevelDB, no fsync), {args.rounds} "
        f"rounds × {args.seconds} s after {args.warmup} s of warm-up per cell; load average {before} "
        f"before and {load_average()} after.", "",
        table(headers, [cell_row(cell) for cell in cells]), "",
        "Against the baseline (median of per-round ratios, this tree's figure over the baseline's: "
        "below 1 is better for latencies and CPU/req, above 1 for req/s):", "",
        table(["workload", "server", "p50 ×", "p99 ×", "req/s ×", "CPU/req ×"], against_baseline(cells))])


def against_baseline(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        server = cell.target
        assert isinstance(server, OooServer)
        base = next((c for c in cells if c.workload is cell.workload and isinstance(c.target, OooServer)
                     and c.target.tree_label == "baseline"), None)
        if server.tree_label != "main" or base is None or not (cell.good and base.good):
            continue
        rows.append([cell.workload.title, f"`{server.name}`",
                     f"{ratio(cell, base, lambda run: run.p50_us):.2f}",
                     f"{ratio(cell, base, lambda run: run.p99_us):.2f}",
                     f"{ratio(cell, base, lambda run: run.rate):.2f}",
                     f"{ratio(cell, base, lambda run: run.cpu_us):.2f}"])
    return rows


# The run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", type=Path, help="a checkout from before the front (before column)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {','.join(PARTS)} (default all)")
    parser.add_argument("--subscribers", type=int, default=1000, help="fan-out: per server (1000)")
    parser.add_argument("--writes", type=int, default=50, help="fan-out: writes per round (50)")
    parser.add_argument("--keys", type=int, default=200_000, help="cold start: keys stored (200 000)")
    parser.add_argument("--rate", type=int, default=2000, help="http: paced requests/s in all (2000)")
    parser.add_argument("--seconds", type=int, default=8, help="http: per run (8)")
    parser.add_argument("--warmup", type=int, default=2, help="http: seconds of warm-up per cell (2)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round, 200 subscribers, 20 000 keys, 2 s runs, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.subscribers, args.keys, args.seconds, args.warmup = 1, 200, 20_000, 2, 0
    unknown = [part for part in args.parts.split(",") if part not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if shutil.which("wrk") is None and "http" in args.parts.split(","):
        parser.error("the http part needs wrk: apt-get install -y wrk")
    return args


def main() -> None:
    args = parse_args()
    command = shlex.join([".venv/bin/python", "bench/front_regress.py", *sys.argv[1:]])
    trees = [("main", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for _, tree in trees:
        check_tree(tree)
    install_cleanup()
    if PINNED:
        os.sched_setaffinity(0, {LOAD_CORE})
    parts = args.parts.split(",")
    notes: list[str] = []
    out = [f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; "
           f"`{command}`",
           "Versions: " + "; ".join(f"{label} = {tree} (git {git_commit(tree)})" for label, tree in trees)
           + "."]
    with tempfile.TemporaryDirectory(prefix="front_regress_") as name:
        tmp = Path(name)
        try:
            if "fanout" in parts:
                fanout_args = argparse.Namespace(subscribers=args.subscribers, writes=args.writes,
                                                 rounds=args.rounds, servers=",".join(ENGINES),
                                                 baseline=args.baseline, profile=False)
                out += ["", "**Fan-out** (`--memory-only`): " + fanout_text(fanout_args, command)]
            if "cold" in parts:
                out += ["", "**Cold start**: " + cold_part(trees, args, tmp, notes)]
            if "http" in parts:
                out += ["", "**Latency and throughput**: " + http_part(trees, args, tmp, notes)]
        finally:
            kill_all()
    out += [f"- {note}" for note in sorted(set(notes))]
    print("\n".join(out))


if __name__ == "__main__":
    main()
