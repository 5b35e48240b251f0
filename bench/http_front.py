"""HTTP front benchmark (issue 10): requests per second and server CPU per request, with wrk.

    .venv/bin/python bench/http_front.py [--engines aiohttp,lean] [--baseline /work/baseline10]
        [--modes memory,data,sync] [--workloads post,get,list,pipeline] [--rounds 5] [--seconds 5]
        [--no-etcd] [--quick]

Each server runs as a subprocess pinned to core 0 (``taskset -c 0``): ``python -m ooo_storage serve``
from this tree (and from ``--baseline DIR``, for a before column), one per engine (``--http-engine``,
when the tree's ``serve --help`` offers it) and storage mode (``--memory-only``; ``--data`` on a fresh
temporary directory; the same with ``--sync``), and etcd (Debian ``etcd-server``, its v3 JSON gateway)
for the put rate. The load generator is wrk (Debian ``wrk``, C, so it costs far less per request
than the server and does not set the figures), pinned to core 1, one thread, 64 keep-alive
connections, with the Lua scripts of bench/wrk/:

- ``post``: POST of a 150 B JSON document to ``/users/<i>``, i cycling over 100 000 keys;
- ``get``: GET of one existing key;
- ``list``: GET of ``/list/*``, a glob over 100 preloaded keys;
- ``pipeline``: the same POSTs, 16 in flight per connection (pipelined);
- etcd: ``POST /v3/kv/put`` of the same document to ``users/<i>`` (base64), as ``post``.

Reads run in the memory and data modes only: ``--sync`` changes when writes are acknowledged, not
reads. Every server starts once and stays up; after a warm-up run per cell, ``--rounds`` rounds run
every cell once each, the servers' order rotating from round to round (interleaved, so that the
machine's load drifts over all of them alike). A cell reports the medians over its rounds of: req/s
(wrk), server CPU per request (utime + stime of the server's PID from /proc before and after the run,
all its threads, divided by the requests completed; the figure the machine's other load disturbs
least), and wrk's p50/p99 latency (for ``pipeline`` the latency of a batch of 16). wrk's Lua
``response`` hook counts every response outside 2xx: a round with such responses or socket errors is
not a result, it is reported and left out of the medians. The generator's CPU (wrk's rusage) and
the other processes' share of both cores (/proc/stat) are reported too: on a shared machine, req/s
moves with them; CPU per request much less.

``--instructions N`` also counts what machine load cannot disturb: the instructions the server
executes per request (user space, ``valgrind --tool=callgrind`` with counting switched on by
``callgrind_control`` around exactly ``N`` requests per connection on 64 connections, after a warm-up)
and its system calls per request (``perf stat -e raw_syscalls:sys_enter`` around the same load on the
server run without valgrind), for the ``post``, ``get`` and ``pipeline`` workloads of every tree and
mode except ``sync`` (whose fsyncs callgrind does not see). The load comes from this process (a few
raw asyncio connections: only the server is counted).

wrk and etcd are not installed by this script: ``apt-get install -y wrk etcd-server``. Without wrk it
exits with status 1 and says so; without etcd a note says so and the run goes on. The report
(markdown) goes to stdout, progress to stderr. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Import bench/ as a package of the repository root, so that both `python bench/http_front.py` and
# `python -m bench.http_front` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import table  # noqa: E402
from bench.peers.peers import cpu_busy, process_ticks  # noqa: E402
from bench.peers.targets import (  # noqa: E402
    HOST,
    ROOT,
    EtcdTarget,
    OooTarget,
    Target,
    install_cleanup,
    kill_all,
)

WRK_DIR = Path(__file__).resolve().parent / "wrk"
SERVER_CORE, LOAD_CORE = 0, 1
CONNECTIONS = 64
KEYS = 100_000
PIPELINE = 16
LIST_ITEMS = 100
HZ = os.sysconf("SC_CLK_TCK")
DOCUMENT = (b'{"name":"Ada Lovelace","email":"ada@example.com","age":36,"tags":["math","engines"],'
            b'"active":true,"note":"' + b"x" * 42 + b'"}')  # the 150 B document of bench/wrk/common.lua
PYTHON = [sys.executable, "-P"]
"""The interpreter that runs a tree's server, with ``PYTHONPATH`` set to the tree (``tree_env``): ``-P``
keeps ``python -m`` from putting its working directory (this checkout) first on sys.path, which ran
this tree's code whatever PYTHONPATH said."""
MODES = {"memory": ["--memory-only"], "data": ["--data"], "sync": ["--data", "--sync"]}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    script: str
    args: tuple[str, ...]
    writes: bool


WORKLOADS = {
    "post": Workload("post", "POST 150 B to /users/<i>", "post.lua", (str(KEYS),), True),
    "get": Workload("get", "GET one key", "get.lua", ("/bench/one",), False),
    "list": Workload("list", f"GET /list/* ({LIST_ITEMS} items)", "get.lua", ("/list/*",), False),
    "pipeline": Workload("pipeline", f"POST pipelined ×{PIPELINE}", "pipeline_post.lua",
                         (str(KEYS), str(PIPELINE)), True),
}
ETCD_PUT = Workload("post", "etcd put", "etcd_put.lua", (str(KEYS),), True)


def log(message: str) -> None:
    print(f"[http_front {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def git_commit(tree: Path) -> str:
    """HEAD's short hash, and whether ``ooo_storage/`` differs from it (what the server runs)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "ooo_storage")
    return (git("rev-parse", "--short", "HEAD") or "?") + (" + uncommitted changes" if dirty else "")


# Servers


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that runs ``ooo_storage`` from ``tree``, whatever the venv's install points at."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def check_tree(tree: Path) -> None:
    """Exit unless ``PYTHON`` imports ``ooo_storage`` from ``tree``."""
    done = subprocess.run([*PYTHON, "-c", "import ooo_storage; print(ooo_storage.__file__)"],
                          capture_output=True, text=True, env=tree_env(tree), cwd=ROOT, timeout=60,
                          check=False)
    found = Path(done.stdout.strip() or "?").resolve()
    if not found.is_relative_to(tree):
        sys.exit(f"ooo_storage imports from {found}, not from {tree}: {done.stderr.strip()[-200:]}")


def http_engines(tree: Path) -> list[str] | None:
    """The choices of ``serve --http-engine`` in ``tree``, or None when its serve has no such flag."""
    done = subprocess.run([*PYTHON, "-m", "ooo_storage", "serve", "--help"], capture_output=True,
                          text=True, env=tree_env(tree), cwd=ROOT, timeout=60, check=False)
    found = re.search(r"--http-engine\s*\{([^}]*)\}", done.stdout)
    if found:
        return found.group(1).split(",")
    return [] if "--http-engine" in done.stdout else None


class OooServer(OooTarget):
    """``python -m ooo_storage serve`` from ``tree`` with one engine and one storage mode."""

    def __init__(self, tree_label: str, tree: Path, engine: str, flag: bool, mode: str, tmp: Path) -> None:
        """``flag``: pass ``--http-engine engine`` (False: a tree whose serve has only aiohttp)."""
        name = f"{tree_label}-{engine}-{mode}"
        super().__init__(name, name, SERVER_CORE, tmp, sync=mode == "sync")
        self.tree, self.tree_label, self.engine, self.flag, self.mode = tree, tree_label, engine, flag, mode
        self.version = f"git {git_commit(tree)}"

    def command(self) -> list[str]:
        storage = [arg if arg != "--data" else f"--data={self.tmp / self.name}" for arg in MODES[self.mode]]
        engine = ["--http-engine", self.engine] if self.flag else []
        # env re-sets PYTHONPATH and execs, as taskset does: the PID read in /proc is the server's.
        return ["env", f"PYTHONPATH={self.tree}", *PYTHON, "-m", "ooo_storage", "serve",
                "--host", HOST, "--port", str(self.port), *storage, *engine, "--log-level", "warning"]

    def preload(self) -> None:
        """The key the ``get`` workload reads and the ``LIST_ITEMS`` keys the ``list`` glob returns."""
        for path in ["bench/one", *(f"list/{i}" for i in range(LIST_ITEMS))]:
            request = urllib.request.Request(f"http://{HOST}:{self.port}/{path}", data=DOCUMENT,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"preload POST /{path}: status {reply.status}")


# One wrk run


@dataclass
class Run:
    """One wrk run against one server, with the CPU it and the server used."""

    requests: int = 0
    seconds: float = 0.0  # wrk's measured duration
    wall: float = 1.0  # the CPU accounting window: wrk's whole run
    server_cpu: float = 0.0  # seconds
    wrk_cpu: float = 0.0  # seconds
    foreign: tuple[float, float] = (0.0, 0.0)  # other processes' share of the server / the load core
    p50_us: int = 0
    p99_us: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.errors and self.requests > 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.requests * 1e6


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_command(target: Target, workload: Workload, seconds: int) -> list[str]:
    return ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout",
            "10s", "-s", str(WRK_DIR / workload.script), f"http://{HOST}:{target.port}/", "--",
            *workload.args]


def measure(target: Target, workload: Workload, seconds: int) -> Run:
    """Run wrk once; server CPU from /proc/<pid>/stat, wrk's from the rusage of waited children."""
    busy, ticks, wrk_before, started = cpu_busy(), process_ticks(target.pid), children_cpu(), time.monotonic()
    done = subprocess.run(wrk_command(target, workload, seconds), capture_output=True, text=True,
                          cwd=WRK_DIR, timeout=seconds + 60, check=False)
    wall = time.monotonic() - started
    run = Run(wall=wall, server_cpu=(process_ticks(target.pid) - ticks) / HZ,
              wrk_cpu=children_cpu() - wrk_before)
    server_share = run.server_cpu / wall
    cores = [(after - before) / HZ / wall for before, after in zip(busy, cpu_busy(), strict=True)]
    run.foreign = (max(0.0, cores[SERVER_CORE] - server_share),
                   max(0.0, cores[LOAD_CORE] - run.wrk_cpu / wall) if len(cores) > LOAD_CORE else 0.0)
    if target.process is not None and target.process.poll() is not None:
        run.failure = f"server exited ({target.process.returncode}): {target.log_tail()}"
        return run
    found = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        run.failure = f"wrk: {tail[0][:200]}"
        return run
    parse_result(run, json.loads(found.group(1)))
    return run


def parse_result(run: Run, result: dict[str, object]) -> None:
    """Fill ``run`` from the WRK_RESULT line of bench/wrk/common.lua."""
    def number(name: str) -> int:
        value = result[name]
        assert isinstance(value, int | float)
        return int(value)

    run.requests, run.seconds = number("requests"), number("duration_us") / 1e6
    run.p50_us, run.p99_us = number("p50_us"), number("p99_us")
    statuses = result.get("statuses") or {}
    assert isinstance(statuses, dict)
    run.errors = {f"HTTP {status}": int(count) for status, count in sorted(statuses.items())}
    for kind in ("connect", "read", "write", "timeout"):
        if number(kind):
            run.errors[f"socket {kind}"] = number(kind)


# The run


@dataclass
class Cell:
    workload: Workload
    target: Target
    runs: list[Run] = field(default_factory=list)

    @property
    def good(self) -> list[Run]:
        return [run for run in self.runs if run.ok]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def plan(workloads: Sequence[str], servers: Sequence[OooServer], etcd: Target | None) -> list[Cell]:
    cells = []
    for name in workloads:
        workload = WORKLOADS[name]
        for server in servers:
            if workload.writes or server.mode != "sync":
                cells.append(Cell(workload, server))
        if name == "post" and etcd is not None:
            cells.append(Cell(ETCD_PUT, etcd))
    return cells


def run_rounds(cells: Sequence[Cell], rounds: int, seconds: int, warmup: int) -> None:
    """A warm-up run per cell, then ``rounds`` rounds over every cell, each workload's servers in an
    order rotated by one from round to round."""
    by_workload: dict[str, list[Cell]] = {}
    for cell in cells:
        by_workload.setdefault(cell.workload.name, []).append(cell)
    if warmup:
        for cell in cells:
            log(f"warm-up {cell.workload.name} on {cell.target.label}")
            measure(cell.target, cell.workload, warmup)
    for index in range(rounds):
        for group in by_workload.values():
            shift = index % len(group)
            for cell in group[shift:] + group[:shift]:
                run = measure(cell.target, cell.workload, seconds)
                cell.runs.append(run)
                note = run.failure or (f"errors {run.errors}" if run.errors else "")
                log(f"round {index + 1}/{rounds} {cell.workload.name} on {cell.target.label}: "
                    f"{run.rate if run.requests else 0:,.0f} req/s"
                    f"{f', {run.cpu_us:.1f} µs CPU/req' if run.requests else ''} {note}")


# Instructions and system calls per request (--instructions)

COUNTED = ("post", "get", "pipeline")


def counted_request(workload: str, connection: int, n: int) -> bytes:
    """The ``n``-th request of a connection: what the wrk script of ``workload`` sends."""
    if workload == "get":
        return b"GET /bench/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    return (b"POST /users/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (connection * KEYS + n, len(DOCUMENT), DOCUMENT))


async def exact_load(port: int, workload: str, each: int, first: int) -> None:
    """Exactly ``each`` requests on each of ``CONNECTIONS`` connections (``PIPELINE`` at a time for
    ``pipeline``, else one), every answer read and checked."""
    depth = PIPELINE if workload == "pipeline" else 1

    async def connection(c: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for start in range(first, first + each, depth):
                count = min(depth, first + each - start)
                writer.write(b"".join(counted_request(workload, c, start + k) for k in range(count)))
                for _ in range(count):
                    head = await reader.readuntil(b"\r\n\r\n")
                    if head[9:12] not in (b"200", b"204"):
                        raise RuntimeError(f"{workload}: {head[:60]!r}")
                    length = re.search(rb"Content-Length: (\d+)", head)
                    await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    await asyncio.gather(*(connection(c) for c in range(CONNECTIONS)))


def counted_server(server: OooServer, wrapper: list[str]) -> subprocess.Popen[bytes]:
    """``server``'s command under ``wrapper`` (valgrind, or nothing), pinned to the server core, once
    it answers; the key of the ``get`` workload preloaded."""
    command = server.command()
    process = subprocess.Popen(["taskset", "-c", str(SERVER_CORE), *wrapper, *command[2:]],
                               env=tree_env(server.tree), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while True:
        try:
            server.preload()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{server.name} did not start under {wrapper or 'no wrapper'}") from None
            time.sleep(0.5)


def instructions(server: OooServer, each: int, out: Path) -> dict[str, float]:
    """Instructions per request of ``server`` for each of :data:`COUNTED` (one callgrind run: its
    counts zeroed before and dumped after each workload's exact load)."""
    counts: dict[str, float] = {}
    process = counted_server(server, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                      f"--callgrind-out-file={out}"])
    try:
        for index, workload in enumerate(COUNTED):
            asyncio.run(exact_load(server.port, workload, PIPELINE, 10_000 * index))  # warm-up
            for switch in (["-z"], ["-i", "on"]):
                subprocess.run(["callgrind_control", *switch, str(process.pid)], check=True,
                               capture_output=True)
            asyncio.run(exact_load(server.port, workload, each, 10_000 * index + PIPELINE))
            for switch in (["-i", "off"], ["-d"]):
                subprocess.run(["callgrind_control", *switch, str(process.pid)], check=True,
                               capture_output=True)
            dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda path: path.stat().st_mtime)
            found = re.search(r"^totals: (\d+)", dumps[-1].read_text(), re.MULTILINE)
            assert found is not None, dumps[-1]
            counts[workload] = int(found.group(1)) / (each * CONNECTIONS)
            log(f"{server.name} {workload}: {counts[workload] / 1e3:,.1f} k instructions/request")
    finally:
        process.terminate()
        process.wait(timeout=300)
    return counts


def syscalls(server: OooServer, each: int) -> dict[str, float]:
    """System calls per request of ``server`` for each of :data:`COUNTED` (perf's tracepoint)."""
    counts: dict[str, float] = {}
    process = counted_server(server, [])
    try:
        for index, workload in enumerate(COUNTED):
            asyncio.run(exact_load(server.port, workload, PIPELINE, 10_000 * index))  # warm-up
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                                     str(process.pid)], stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)  # perf attached
            asyncio.run(exact_load(server.port, workload, each, 10_000 * index + PIPELINE))
            perf.send_signal(2)
            report_line = perf.communicate(timeout=60)[1].strip().splitlines()[-1]
            counts[workload] = int(report_line.split(",")[0]) / (each * CONNECTIONS)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return counts


def counted_table(servers: Sequence[OooServer], each: int, tmp: Path) -> str:
    """The table of instructions and system calls per request of every server but ``--sync`` ones."""
    rows = []
    for server in servers:
        if server.mode == "sync":
            continue
        cg = instructions(server, each, tmp / f"{server.name}.callgrind")
        calls = syscalls(server, each) if shutil.which("perf") else {}
        for workload in COUNTED:
            rows.append([WORKLOADS[workload].title, f"`{server.name}`", f"{cg[workload] / 1e3:,.1f} k",
                         f"{calls[workload]:.2f}" if workload in calls else "n/a"])
    rows.sort(key=lambda row: (row[0], row[1]))
    return table(["workload", "server", "instructions/request (callgrind)", "syscalls/request (perf)"],
                 rows)


# Report


def errors_text(cell: Cell) -> str:
    bad = [run for run in cell.runs if not run.ok]
    if not bad:
        return "0"
    totals: dict[str, int] = {}
    for run in bad:
        for kind, count in run.errors.items():
            totals[kind] = totals.get(kind, 0) + count
    reasons = [f"{kind} ×{count}" for kind, count in totals.items()]
    reasons += sorted({run.failure for run in bad if run.failure})
    return f"{len(bad)}/{len(cell.runs)} rounds: {'; '.join(reasons)}"


def spread(values: Sequence[float], digits: int = 0) -> str:
    return f"{median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def latency_ms(values: Sequence[int]) -> str:
    """The median of wrk's percentiles; 0 is wrk's "no answer" (bench/wrk/common.lua), left out."""
    known = [value for value in values if value > 0]
    return f"{median(known) / 1e3:.1f}" if known else "n/a"


def cell_row(cell: Cell) -> list[str]:
    good = cell.good
    label = cell.target.label if cell.target.name == "etcd" else f"`{cell.target.name}`"
    if not good:
        return [cell.workload.title, label, *["n/a"] * 6, errors_text(cell), "", ""]
    cpu = [run.cpu_us for run in good]
    return [
        cell.workload.title, label, spread([run.rate for run in good]), spread(cpu, 1),
        f"{1e6 / median(cpu):,.0f}",
        f"{latency_ms([r.p50_us for r in good])} / {latency_ms([r.p99_us for r in good])}",
        f"{median([run.server_cpu / run.wall for run in good]):.0%}",
        f"{median([run.wrk_cpu / run.wall for run in good]):.0%}", errors_text(cell),
        f"{median([run.foreign[0] for run in good]):.0%} / {median([run.foreign[1] for run in good]):.0%}",
        str(len(good)),
    ]


def ratio(a: Cell, b: Cell, metric: Callable[[Run], float]) -> float:
    """Median over rounds of metric(a) / metric(b), both rounds good (same round: same machine load)."""
    return median([metric(x) / metric(y) for x, y in zip(a.runs, b.runs, strict=False) if x.ok and y.ok])


def counterparts(cell: Cell, cells: Sequence[Cell]) -> list[Cell]:
    """What a cell of this tree is compared with: the baseline's same workload and mode (same engine,
    or its only one), this tree's aiohttp engine for another engine, and etcd for the plain POSTs."""
    server = cell.target
    assert isinstance(server, OooServer)
    out = []
    for other in cells:
        peer = other.target
        if other.workload.name != cell.workload.name:
            continue
        if isinstance(peer, OooServer) and peer.mode == server.mode and peer is not server:
            before = peer.tree_label == "baseline" and (peer.engine == server.engine or not peer.flag)
            engine = peer.tree_label == "main" and peer.engine == "aiohttp" and server.engine != "aiohttp"
            if before or engine:
                out.append(other)
        elif peer.name == "etcd" and other.good:
            out.append(other)
    return out


def comparisons(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        if isinstance(cell.target, OooServer) and cell.target.tree_label == "main" and cell.good:
            rows += [comparison_row(cell, other) for other in counterparts(cell, cells) if other.good]
    return rows


def comparison_row(cell: Cell, other: Cell) -> list[str]:
    faster = ratio(cell, other, lambda run: run.rate)
    cheaper = ratio(other, cell, lambda run: run.cpu_us)
    label = other.target.label if other.target.name == "etcd" else f"`{other.target.name}`"
    return [cell.workload.title, f"`{cell.target.name}`", label, f"{faster:.2f}×", f"{cheaper:.2f}×"]


def find(cells: Sequence[Cell], workload: str, tree: str, engine: str | None, mode: str) -> Cell | None:
    """The good cell of that workload and server (``tree`` "etcd": etcd's put)."""
    for cell in cells:
        server = cell.target
        if cell.workload.name != workload or not cell.good:
            continue
        if tree == "etcd" and server.name == "etcd":
            return cell
        if isinstance(server, OooServer) and (server.tree_label, server.engine, server.mode) == (
                tree, engine, mode):
            return cell
    return None


def per_core(cell: Cell) -> float:
    return 1e6 / median([run.cpu_us for run in cell.good])


def target_rows(cells: Sequence[Cell], engine: str) -> list[list[str]]:
    """The issue's targets for this tree's ``engine``, on LevelDB without fsync (``--data``, as
    bench/peers' ``ooo``) and with ``--sync``: absolute rates as server CPU per request (req/s per
    core), relative ones as the median of per-round req/s ratios in this run."""
    rows = []

    def absolute(what: str, workload: str, mode: str, goal: float) -> None:
        cell = find(cells, workload, "main", engine, mode)
        if cell is not None:
            rate = per_core(cell)
            rows.append([what, f"`{cell.target.name}`", f"{rate:,.0f}/s per core "
                         f"({median([r.cpu_us for r in cell.good]):.1f} µs)", yes(rate >= goal)])

    def relative(what: str, workload: str, mode: str, against: tuple[str, str | None, str],
                 goal: float) -> None:
        cell, other = find(cells, workload, "main", engine, mode), find(cells, workload, *against)
        if cell is not None and other is None and against[0] == "baseline":
            other = find(cells, workload, "baseline", "aiohttp", mode)
        if cell is not None and other is not None:
            times = ratio(cell, other, lambda run: run.rate)
            rows.append([what, f"`{cell.target.name}`", f"{times:.2f}× `{other.target.name}`",
                         yes(times >= goal)])

    absolute("POST ≥ 25 000/s (≤ 40 µs CPU)", "post", "data", 25_000)
    relative("POST ≥ 2.5× today's serve", "post", "data", ("baseline", engine, "data"), 2.5)
    relative("POST ≥ 3× etcd", "post", "data", ("etcd", None, ""), 3.0)
    relative("POST --sync ≥ 2× etcd", "post", "sync", ("etcd", None, ""), 2.0)
    absolute("GET one key ≥ 55 000/s", "get", "data", 55_000)
    relative("GET /list/* ≥ 2× today's lists/s", "list", "data", ("baseline", engine, "data"), 2.0)
    absolute("pipelined POST ≥ 40 000/s", "pipeline", "data", 40_000)
    return rows


def yes(met: bool) -> str:
    return "met" if met else "**not met**"


LEGEND = [
    "Cells: medians over the rounds without errors (min–max). req/s/core = 1e6 / server µs CPU per "
    "request: the rate one core would serve at that cost. server core / wrk core: the share of a core "
    "each used during the run; others: the share of cores 0 / 1 other processes took (the machine is "
    "shared), which moves req/s far more than CPU per request.",
    f"Pipelined latencies are per batch of {PIPELINE} requests; n/a where wrk gave none (its "
    "percentiles are 0 once its coordinated-omission correction falls below the minimum).",
]


def report(cells: Sequence[Cell], notes: Sequence[str], header: Sequence[str]) -> str:
    headers = ["workload", "server", "req/s (min–max)", "server µs CPU/req (min–max)", "req/s/core",
               "p50 / p99 ms", "server core", "wrk core", "bad rounds", "others core 0 / 1", "rounds"]
    parts = [*header, "", table(headers, [cell_row(cell) for cell in cells])]
    rows = comparisons(cells)
    if rows:
        parts += ["", "Ratios, median of per-round ratios (same round, same machine load): "
                      "req/s of the first over the second, and CPU/req of the second over the first.", "",
                  table(["workload", "server", "against", "req/s ×", "CPU/req ×"], rows)]
    engines = sorted({c.target.engine for c in cells if isinstance(c.target, OooServer)
                      and c.target.tree_label == "main"})
    goals = [row for engine in engines for row in target_rows(cells, engine)]
    if goals:
        parts += ["", "Issue 10's targets (absolute rates from server CPU per request, i.e. per core; "
                      "ratios of req/s in the same rounds):", "",
                  table(["target", "server", "measured", ""], goals)]
    parts += ["", *(f"- {note}" for note in [*LEGEND, *notes])]
    return "\n".join(parts)


# Setup


def servers_for(trees: Sequence[tuple[str, Path]], engines: Sequence[str], modes: Sequence[str],
                tmp: Path, notes: list[str]) -> list[OooServer]:
    """One server per tree, engine the tree's serve offers, and mode; what is missing goes to notes."""
    out = []
    for label, tree in trees:
        offered = http_engines(tree)
        flag = offered is not None
        if offered is None:
            offered = ["aiohttp"]
            notes.append(f"{label} ({tree}): `serve` has no --http-engine flag: its only engine, aiohttp, "
                         "runs without it")
        missing = [engine for engine in engines if engine not in offered]
        if missing:
            notes.append(f"{label} ({tree}): not measured, its serve does not offer --http-engine "
                         f"{', '.join(missing)}")
        chosen = [engine for engine in engines if engine in offered]
        out += [OooServer(label, tree, engine, flag, mode, tmp) for engine in chosen for mode in modes]
    return out


def start_all(servers: Sequence[OooServer], etcd: EtcdTarget | None, notes: list[str]) -> EtcdTarget | None:
    for server in servers:
        server.start()
        log(f"started {server.label} (pid {server.pid}): {shlex.join(server.command())}")
        server.preload()
    if etcd is None:
        return None
    try:
        etcd.start()
    except RuntimeError as error:
        notes.append(f"etcd did not start: {error}")
        return None
    return etcd


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engines", default="aiohttp,lean",
                        help="comma-separated --http-engine values (default aiohttp,lean)")
    parser.add_argument("--baseline", type=Path, help="another tree to run the server from (before column)")
    parser.add_argument("--modes", default="memory,data,sync", help="of memory,data,sync (default all)")
    parser.add_argument("--workloads", default="post,get,list,pipeline",
                        help="of post,get,list,pipeline (default all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per run (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell (default 2)")
    parser.add_argument("--etcd", action=argparse.BooleanOptionalAction, default=True,
                        help="run etcd's put rate alongside the POSTs (default on)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, no warm-up: a smoke run")
    parser.add_argument("--instructions", type=int, default=0, metavar="N",
                        help="also count instructions (callgrind) and syscalls (perf) per request over N "
                             "requests per connection (0: not counted; 64 is a few minutes per server)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1, 0
    for option, allowed in (("modes", MODES), ("workloads", WORKLOADS)):
        unknown = [x for x in getattr(args, option).split(",") if x not in allowed]
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return args


def header_lines(args: argparse.Namespace, versions: list[str], etcd: Target | None) -> list[str]:
    """Date, machine, command, versions (``versions``: the trees', read when their servers started)."""
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_version = ((wrk.stdout or wrk.stderr).splitlines() or ["wrk ?"])[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    if etcd is not None:
        versions = [*versions, f"etcd {etcd.version}"]
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} cores; "
        f"`{shlex.join(['.venv/bin/python', 'bench/http_front.py', *sys.argv[1:]])}`",
        f"Versions: {'; '.join(versions)}; {wrk_version.split(' Copyright')[0]}.",
        f"Servers pinned to core {SERVER_CORE}, wrk to core {LOAD_CORE} (1 thread, {CONNECTIONS} keep-alive "
        f"connections); {args.rounds} interleaved rounds × {args.seconds} s after {args.warmup} s of warm-up "
        "per cell; medians over the rounds without errors.",
    ]


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/http_front.py needs wrk, the HTTP load generator: apt-get install -y wrk "
                 "(Debian package wrk)")
    trees = [("main", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for _, tree in trees:
        check_tree(tree)
    versions = [f"{label} = {tree} (git {git_commit(tree)})" for label, tree in trees]
    install_cleanup()
    notes: list[str] = []
    etcd: EtcdTarget | None = None
    with tempfile.TemporaryDirectory(prefix="http_front_") as name:
        tmp = Path(name)
        servers = servers_for(trees, args.engines.split(","), args.modes.split(","), tmp, notes)
        if args.etcd and "post" in args.workloads.split(","):
            if shutil.which("etcd") is None:
                notes.append("etcd not measured: no `etcd` binary (apt-get install -y etcd-server)")
            else:
                etcd = EtcdTarget(SERVER_CORE, tmp)
        try:
            etcd = start_all(servers, etcd, notes)
            cells = plan(args.workloads.split(","), servers, etcd)
            run_rounds(cells, args.rounds, args.seconds, args.warmup)
        finally:
            kill_all()
        counted = ""
        if args.instructions:
            counted = counted_table(servers, args.instructions, tmp)
    print(report(cells, notes, header_lines(args, versions, etcd)))
    if counted:
        print(f"\nPer request, counted over {args.instructions} requests on each of {CONNECTIONS} "
              "connections (counts machine load does not change; user-space instructions only):"
              f"\n\n{counted}")


if __name__ == "__main__":
    main()
