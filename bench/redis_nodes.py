"""Scale-out benchmark (issue 14): 1, 2 and 3 ``serve --redis`` nodes on one Redis, against one node on
LevelDB.

    .venv/bin/python bench/redis_nodes.py [--seconds 5] [--subscribers 1000] [--writes 200] [--rounds 3]
                                          [--pipeline 16] [--clients c] [--baseline OTHER_CHECKOUT]

Per configuration (``leveldb``: one node with ``--data``; ``redis-N``: N nodes on one local
``redis-server``, ``appendfsync everysec``; ``redis-N@base``: the same from ``--baseline``), nodes
pinned round-robin to the cores with ``taskset``; Redis, wrk and the subscriber processes are not
pinned (on 2 cores there is no free core to give them). On 2 cores the instruments share the cores
with the nodes, so 2 nodes / 1 node is at most 2n / (n + o), n the nodes' CPU per operation and o
everyone else's: the load generators are chosen to keep o small, and their CPU is reported.

- point writes/s: one ``wrk -t1 -c32`` (``--connections``) per node POSTing 150 B documents, each
  connection ``--pipeline`` of them at a time (bench/wrk/pipeline_post_bare.lua: no Lua per
  response; ``--pipeline 1``: one at a time; a LevelDB node commits a pipelined batch together, a
  Redis node one POST after another), for ``--seconds``, all at once; the sum of their
  Requests/sec, and the CPU per write of the nodes (together, /proc), of Redis (``INFO cpu``) and of
  the wrks: the figures that say how the configuration would scale with a core per process,
  whatever else the shared machine runs;
- fan-out deliveries/s: ``--subscribers`` websocket subscribers of ``feed/*`` spread evenly over the
  nodes and over the ``--clients`` processes (default ``c``: one bench/ws_sink.c, an epoll loop
  compiled here with ``cc -O2``: ~1 us of its own per delivery; ``python``: bench/_redis_subs.py on
  uvloop, ~4 us; both also spend the kernel's TCP receive, 3-6 us per segment on loopback, 40% of it
  the ACK and the node's socket taking it; ``c,python``: both on the same writes, compared in a
  table of their own), ``--writes`` POSTs of ``feed/1`` back to back on node 0; subscribers x writes
  / the time until every subscriber has every frame; the nodes' and the subscribers' CPU per
  delivery. Every subscriber process must have counted exactly its frames (the snapshot, every
  write). The other nodes read node 0's writes from the stream in batches and a subscriber's frames
  of one batch share segments: fewer segments per delivery than on node 0, for the node and the
  subscriber, so the CPU per delivery of 2 nodes is below one node's;
- cross-node latency: the same subscribers, one POST at a time on node 0 (20), each waited for by
  every subscriber: p50/p99 of (frame arrival - POST sent) over the subscribers of the OTHER nodes
  (of node 0 itself for one node).

A second table says what the medians of CPU per operation allow against one Redis node: with a
core for each node and nothing else on it (N x one node's CPU per op / the N nodes'), and on this
machine's cores shared with Redis, wrk and the subscribers (each node at most one core): a measured
"vs 1" near the latter is bounded by the cores, not by the nodes.

Configurations alternate within each round and the medians of ``--rounds`` are reported: other work
on the machine hits every configuration alike. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import BENCH, HOST, ROOT, HttpConnection, table  # noqa: E402
from tests.redis_server import free_port, start_redis  # noqa: E402

CORES = os.cpu_count() or 1


SINK_SOURCE = BENCH / "ws_sink.c"
PYTHON_SUBS = BENCH / "_redis_subs.py"
KINDS = ("c", "python")
"""Subscriber processes: bench/ws_sink.c (compiled at run time) or bench/_redis_subs.py (uvloop)."""


def build_sink(work: Path) -> Path:
    """bench/ws_sink.c compiled (``cc -O2``) into ``work``; exits saying what to do without a
    compiler."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        sys.exit("redis_nodes: the C subscriber (bench/ws_sink.c) needs a C compiler on PATH (cc, or "
                 "$CC): install one (apt-get install gcc) or pass --clients python,python")
    binary = work / "ws_sink"
    built = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SINK_SOURCE)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"redis_nodes: {compiler} could not compile {SINK_SOURCE}:\n{built.stderr}")
    return binary


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    """The nodes of one configuration (their ports and PIDs) and the Redis under them."""

    ports: list[int]
    pids: list[int]
    redis_url: str | None

    def nodes_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def redis_cpu(self) -> float:
        """Redis's own CPU seconds (``INFO cpu``), 0 without Redis."""
        if self.redis_url is None:
            return 0.0
        client = redis.Redis.from_url(self.redis_url)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextmanager
def node(index: int, tree: Path, *storage: str) -> Iterator[tuple[int, int]]:
    """One ``ooo-storage serve`` of ``tree`` pinned to core ``index % CORES``; yields its port and
    PID once it answers."""
    port = free_port()
    command = ["taskset", "-c", str(index % CORES), sys.executable, "-P", "-m", "ooo_storage", "serve",
               "--port", str(port), "--log-level", "warning", *storage]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # -P: not the cwd, and the venv's install is ROOT's
    with tempfile.TemporaryFile() as log:  # warnings and a refused start: read only when it fails
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://{HOST}:{port}/?api=info", timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        said = log.read().decode(errors="replace").strip()[-2000:] or "no message"
                        raise RuntimeError(f"node {index} ({tree}) did not start: {said}") from None
                    time.sleep(0.05)  # polling a child's port: there is no event to await
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def cluster(config: str, work: Path, baseline: Path | None) -> Iterator[Cluster]:
    """``leveldb``, ``redis-N`` or ``redis-N@base`` (the nodes run from the ``--baseline`` tree)."""
    name, _, base = config.partition("@")
    tree = baseline if base and baseline is not None else ROOT
    with ExitStack() as stack:
        if name == "leveldb":
            data = work / f"leveldb-{time.monotonic_ns()}"
            port, pid = stack.enter_context(node(0, tree, "--data", str(data)))
            yield Cluster([port], [pid], None)
            return
        count = int(name.rpartition("-")[2])
        server = start_redis(Path(tempfile.mkdtemp(dir=work)), fsync="everysec")
        stack.callback(server.stop)
        url = server.url
        started = [stack.enter_context(node(i, tree, "--redis", url, "--namespace", "bench"))
                   for i in range(count)]
        yield Cluster([p for p, _ in started], [pid for _, pid in started], url)


@dataclass
class Writes:
    rate: float
    node_us: float
    """Nodes' CPU per write (all nodes together), microseconds."""
    redis_us: float
    wrk_us: float


def point_writes(nodes: Cluster, seconds: float, connections: int, pipeline: int) -> Writes:
    """One wrk per node, each connection ``pipeline`` POSTs at a time (bench/wrk/pipeline_post_bare.lua:
    no Lua per response, so that wrk takes little of the cores the nodes share with it)."""
    script = str(BENCH / "wrk" / "pipeline_post_bare.lua")
    before = nodes.nodes_cpu(), nodes.redis_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    runs = [
        subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", script, f"http://{HOST}:{port}",
                          "--", "100000", str(pipeline)], stdout=subprocess.PIPE, text=True)
        for port in nodes.ports
    ]
    total = done = 0.0
    for run in runs:
        out, _ = run.communicate()
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        count = re.search(r"(\d+) requests in", out)
        if found is None or count is None or "Non-2xx" in out:
            raise RuntimeError(f"wrk: {out}")
        total += float(found.group(1))
        done += int(count.group(1))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the wrks (the nodes are not reaped yet)
    wrk = usage.ru_utime + usage.ru_stime - before[2].ru_utime - before[2].ru_stime
    return Writes(total, (nodes.nodes_cpu() - before[0]) / done * 1e6,
                  (nodes.redis_cpu() - before[1]) / done * 1e6, wrk / done * 1e6)


@dataclass
class Instrument:
    """One kind of subscriber process's figures (of all its processes)."""

    client_us: float
    """CPU per delivery, microseconds."""
    p50: float
    p99: float
    """Cross-node latency, milliseconds."""


@dataclass
class Fanout:
    rate: float
    node_us: float
    """Nodes' CPU per delivery, microseconds."""
    client_us: float
    """The subscriber processes' CPU per delivery."""
    p50: float
    p99: float
    kinds: dict[str, Instrument]


@dataclass
class Dump:
    """What one subscriber process reported at the end."""

    kind: str
    far: list[list[float]]
    """Arrival times of each far subscriber's frames."""
    frames: int
    cpu: float


class Clients:
    """The subscriber processes (bench/ws_sink.c or bench/_redis_subs.py, one per ``kinds``, each
    with the same share of every node's subscribers), driven line by line."""

    def __init__(self, procs: list[asyncio.subprocess.Process], kinds: Sequence[str], each: int) -> None:
        self.procs = procs
        self.kinds = kinds
        self.each = each
        """Subscribers per process."""

    @classmethod
    async def start(cls, ports: Sequence[int], subscribers: int, kinds: Sequence[str],
                    sink: Path | None) -> Clients:
        share = subscribers // len(ports) // len(kinds)
        far = set(ports[1:] or ports)
        specs = [f"{port}:{share}" + (":far" if port in far else "") for port in ports]
        commands = {"c": [str(sink)], "python": [sys.executable, str(PYTHON_SUBS)]}
        procs = [await asyncio.create_subprocess_exec(
            *commands[kind], "/feed/*", *specs,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
            for kind in kinds]  # limit: the dump's line holds every far frame's time
        clients = cls(procs, kinds, share * len(ports))
        try:
            for line in await clients.lines(60):
                if line != b"ready":
                    raise RuntimeError(f"subscribers: {line!r}")
        except BaseException:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            raise
        return clients

    async def lines(self, timeout: float) -> list[bytes]:
        async def one(proc: asyncio.subprocess.Process) -> bytes:
            assert proc.stdout is not None
            return (await proc.stdout.readline()).strip()
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*(one(p) for p in self.procs)))

    async def tell(self, command: str, timeout: float = 120) -> list[bytes]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command.encode() + b"\n")
        return await self.lines(timeout)

    async def reach(self, frames: int) -> float:
        """When every subscriber had ``frames`` frames (the last process to get there)."""
        return max(float(line.split()[1]) for line in await self.tell(f"reach {frames}"))

    async def close(self) -> list[Dump]:
        dumps = []
        for kind, line in zip(self.kinds, await self.tell("dump"), strict=True):
            dumped = orjson.loads(line)
            dumps.append(Dump(kind, dumped["far"], dumped["frames"], dumped["cpu"]))
        for proc in self.procs:
            await proc.wait()
        return dumps


LATENCY_WRITES = 20


async def fanout(nodes: Cluster, subscribers: int, writes: int, kinds: Sequence[str],
                 sink: Path | None) -> Fanout:
    """Deliveries/s and the nodes' and subscribers' CPU per delivery (``writes`` POSTs of feed/1
    back to back on node 0), then cross-node latency (20 POSTs one at a time)."""
    clients = await Clients.start(nodes.ports, subscribers, kinds, sink)
    count = clients.each * len(kinds)
    writer = await HttpConnection.open(nodes.ports[0])
    try:
        body = b'{"text":"' + b"x" * 120 + b'"}'
        cpu = nodes.nodes_cpu()
        start = time.perf_counter()
        for n in range(writes):
            await writer.request("POST", "/feed/1", body + b" " * (n % 2))
        done = await clients.reach(1 + writes)
        node_us = (nodes.nodes_cpu() - cpu) / (count * writes) * 1e6
        rate = count * writes / (done - start)
        sent = []
        for n in range(LATENCY_WRITES):
            sent.append(time.perf_counter())
            await writer.request("POST", "/feed/1", body + b" " * (n % 2 + 2))
            await clients.reach(2 + writes + n)
    finally:
        writer.close()
        dumps = await clients.close()
    frames = 1 + writes + LATENCY_WRITES  # the snapshot, the writes, the latency writes
    for dump in dumps:
        if dump.frames != clients.each * frames:
            raise RuntimeError(f"{dump.kind} subscribers: {dump.frames} frames, not {clients.each} x "
                               f"{frames}: a frame lost or twice")
    both = instrument(dumps, clients.each * frames, writes, sent)
    return Fanout(rate, node_us, both.client_us, both.p50, both.p99,
                  {kind: instrument([d for d in dumps if d.kind == kind], clients.each * frames, writes, sent)
                   for kind in dict.fromkeys(kinds)})


def instrument(dumps: Sequence[Dump], deliveries: int, writes: int, sent: Sequence[float]) -> Instrument:
    """CPU per delivery of the processes ``dumps`` (``deliveries`` each) and the latency of their far
    subscribers' frames of the writes ``sent`` (after the snapshot and the ``writes``)."""
    latencies = [(times[1 + writes + n] - at) * 1000 for dump in dumps for times in dump.far
                 for n, at in enumerate(sent)]
    cuts = statistics.quantiles(latencies, n=100)
    cpu = sum(dump.cpu for dump in dumps)
    return Instrument(cpu / (deliveries * len(dumps)) * 1e6, cuts[49], cuts[98])


FIELDS = ("writes/s", "node us/w", "redis us/w", "wrk us/w", "deliveries/s", "node us/d",
          "client us/d", "p50 ms", "p99 ms")


def measure(config: str, work: Path, args: argparse.Namespace) -> tuple[list[float], dict[str, Instrument]]:
    """The FIELDS of one configuration, and the figures of each kind of subscriber process."""
    with cluster(config, work, args.baseline) as nodes:
        w = point_writes(nodes, args.seconds, args.connections, args.pipeline)
        f = asyncio.run(fanout(nodes, args.subscribers, args.writes, args.clients, args.sink))
    return [w.rate, w.node_us, w.redis_us, w.wrk_us, f.rate, f.node_us, f.client_us, f.p50, f.p99], f.kinds


def report(results: dict[str, list[list[float]]]) -> str:
    """Medians per configuration; writes and deliveries also against one Redis node of the same
    tree (``redis-1`` or ``redis-1@base``)."""
    med = {c: [statistics.median(r[i] for r in rows) for i in range(len(FIELDS))]
           for c, rows in results.items()}
    lines = []
    for config, m in med.items():
        one = med.get("redis-1@base" if config.endswith("@base") else "redis-1", m)
        lines.append([config, f"{m[0]:.0f}", f"{m[0] / one[0]:.2f}x", *(f"{v:.0f}" for v in m[1:4]),
                      f"{m[4]:.0f}", f"{m[4] / one[4]:.2f}x", *(f"{v:.1f}" for v in m[5:])])
    headers = ["nodes", FIELDS[0], "vs 1", *FIELDS[1:5], "vs 1", *FIELDS[5:]]
    return table(headers, lines) + "\n" + report_bounds(med)


def nodes_of(config: str) -> int:
    name = config.partition("@")[0]
    return 1 if name == "leveldb" else int(name.rpartition("-")[2])


def bound(nodes: int, node_us: float, other_us: float) -> float:
    """Operations/s that the CPU per operation allows: each node one core at most (the nodes share
    ``node_us`` alike), and all of it, with Redis's and the instruments' ``other_us``, on CORES."""
    return min(nodes / node_us, CORES / (node_us + other_us)) * 1e6


def report_bounds(med: dict[str, list[float]]) -> str:
    """Against one Redis node of the same tree, what the measured CPU per operation allows: with a
    core for each node and nothing else on it (N x the one node's CPU per op / the N nodes'), and on
    this machine's CORES shared with Redis and the instruments (:func:`bound`). A measured "vs 1"
    near the second is bounded by the cores; the first is how the nodes themselves scale."""
    lines = []
    for config, m in med.items():
        one = med.get("redis-1@base" if config.endswith("@base") else "redis-1", m)
        n = nodes_of(config)
        lines.append([config, f"{n * one[1] / m[1]:.2f}x",
                      f"{bound(n, m[1], m[2] + m[3]) / bound(1, one[1], one[2] + one[3]):.2f}x",
                      f"{n * one[5] / m[5]:.2f}x", f"{bound(n, m[5], m[6]) / bound(1, one[5], one[6]):.2f}x"])
    return table(["nodes", "writes: core each", f"writes: {CORES} cores", "deliveries: core each",
                  f"deliveries: {CORES} cores"], lines)


def report_kinds(results: dict[tuple[str, str], list[Instrument]]) -> str:
    """Medians per configuration and kind of subscriber process: the instruments side by side."""
    lines = [[config, kind, *(f"{statistics.median(getattr(i, f) for i in rows):.1f}"
                              for f in ("client_us", "p50", "p99"))]
             for (config, kind), rows in results.items()]
    return table(["nodes", "subscribers", "client us/d", "p50 ms", "p99 ms"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=200,
                        help="POSTs back to back for the deliveries/s (each one frame to every subscriber)")
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections per node: each write waits for 4 process wake-ups (wrk, "
                             "node, Redis, node), so on a loaded machine 32 can bound a node below its CPU")
    parser.add_argument("--pipeline", type=int, default=16,
                        help="POSTs in flight per wrk connection (1: one at a time). A Redis node commits "
                             "a connection's POSTs one after another and answers each in a segment of its "
                             "own, so wrk still reads once per write (~15 us against ~25 at 1); a LevelDB "
                             "node commits them together (leveldb is not comparable across --pipeline)")
    parser.add_argument("--clients", default="c",
                        help="subscriber processes, comma-separated, each with the same share of every "
                             "node's subscribers: c (bench/ws_sink.c) or python (bench/_redis_subs.py); "
                             "c,python compares the instruments on the same writes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="leveldb,redis-1,redis-2,redis-3")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout: its redis-1 and redis-2 run in the same rounds (@base)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"redis_nodes: needs {tool} on PATH")
    args.clients = args.clients.split(",")
    if not set(args.clients) <= set(KINDS) or args.pipeline < 1:
        parser.error(f"--clients takes {' or '.join(KINDS)}, comma-separated; --pipeline at least 1")
    configs = args.configs.split(",")
    if args.baseline is not None:
        configs += [f"{c}@base" for c in configs if c in ("redis-1", "redis-2")]
    results: dict[str, list[list[float]]] = {c: [] for c in configs}
    by_kind: dict[tuple[str, str], list[Instrument]] = {}
    work = Path(tempfile.mkdtemp(prefix="ooo-bench-nodes-"))
    loads = []
    try:
        args.sink = build_sink(work) if "c" in args.clients else None
        for round_ in range(args.rounds):
            for config in configs:
                row, kinds = measure(config, work, args)
                results[config].append(row)
                for kind, figures in kinds.items():
                    by_kind.setdefault((config, kind), []).append(figures)
                loads.append(os.getloadavg()[0])
                shown = ", ".join(f"{name} {v:.1f}" for name, v in zip(FIELDS, row, strict=True))
                print(f"round {round_ + 1} {config}: {shown} (load {loads[-1]:.1f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if len(set(args.clients)) > 1:
        print(report_kinds(by_kind))
    print(f"load average (1 min) after each configuration: {min(loads):.1f}-{max(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, on {CORES} cores")


if __name__ == "__main__":
    main()
