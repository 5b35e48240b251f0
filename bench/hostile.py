"""Hostile-client benchmark (issue 8 item 4): what one anonymous client does to a real server.

    .venv/bin/python bench/hostile.py [--code DIR] [--only NAME ...] [--quick] [--repeat N]
                                      [--server-arg=--option ...] [--logs DIR]

Each scenario starts a fresh ``ooo-storage serve --port 0 --data <temp dir>`` from the source tree
``--code`` (default: the repository this file is in; ``--code /work/baseline`` gives the "before"
figures), pinned to core 0, prefills what it needs, attacks it from 127.0.0.1 and prints one markdown
row: what the victims saw, the server's RSS (VmRSS from /proc: before the attack, **peak** during it,
and after it ended), the parameters, and anything abnormal (a crash, a stop that needed SIGKILL,
5xx replies, ERROR/WARNING/traceback lines in the server's log). Load generators needing CPU run in
their own processes (bench/_hostile_clients.py) pinned to core 1, the passive attackers as sockets of
this process (bench/_hostile_raw.py). Victims are 4 keep-alive connections of their own process,
each with a small GET due every 20 ms; a GET's latency counts from when it was due, so a stall shows
in the percentiles as long as it lasts (GETs that got no reply count with their wait so far), and
"req/s served" shows how much service the victims got; "idle" figures are the same victims before
the attack starts.

Scenarios (full size; ``--quick`` shrinks them for a smoke run):

- patch-big: one attacker loops PATCH of a ~9.3 MB JSON document (two variants in turn, so every
  merge changes it) while victims GET small keys.
- glob-loop: 200 000 keys under ``items/``; 4 connections loop ``GET /*/*``.
- glob-noread: same keys; 40 connections send ``GET /*/*`` and never read; they hang up after 15 s.
- header-flood: 500 connections each send one more 8 000 B header line every 10 ms, up to 120 (the
  most aiohttp's own caps let through: 128 headers of 8 190 B; more gets a 400 and a close), never
  ending the head, held for 20 s; a normal client (new connection) probes every 5 s (5 s timeout).
- slowloris: the server under ``RLIMIT_NOFILE`` 1024; 1100 connections send a partial request head and
  nothing more; probes (10 s timeout) right after, and at 30 s and 60 s, when it also counts the
  slowloris connections the client still has open and those the server still holds.
- glob-pools: point-write throughput (``POST /users/<i>``, 4 connections pipelined 16 deep, 5 s),
  then 5 000 idle websocket subscribers of distinct globs ``g<i>/*``, then the same writes again.
  The globs have as many segments as the written keys on purpose: the server already files its
  pools by segment count, so ``g/<i>/*`` would never be looked at for ``users/<i>``.
- noread-subs: 200 websocket subscribers of one key that never read after the upgrade; one client
  POSTs ~100 KiB values to that key for 20 s; RSS growth per subscriber and when the server dropped
  them (seen from its side: /proc/net/tcp), waiting up to 20 s more.

Servers that lack a limit being measured simply run with their defaults; ``--server-arg`` passes
options (e.g. a new limit) to every server. Everything has a timeout; Ctrl-C stops every child and
removes the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

# Import bench/ as a package of the repository root, so that both `python bench/<script>.py` and
# `python -m bench.<script>` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._hostile_clients import Client, run_client  # noqa: E402
from bench._hostile_raw import (  # noqa: E402
    DeafSubscriber,
    Http,
    Idle,
    held_by_server,
    open_many,
    probe,
    probe_text,
)
from bench._hostile_server import (  # noqa: E402
    Memory,
    ServerUnderTest,
    check_code,
    cores,
    kernel_tcp_kib,
    noteworthy,
    serve_code,
)
from bench._load import (  # noqa: E402
    HOST,
    ROOT,
    FrameCounter,
    close_subscribers,
    connect_subscribers,
    table,
)
from bench.peers.targets import install_cleanup  # noqa: E402

VICTIMS = [f"/victim/{i}" for i in range(4)]
VICTIM_INTERVAL = 0.02
FLOOD_LINE, FLOOD_LINES = 8000, 120


@dataclass
class Row:
    scenario: str
    run: int
    result: str
    params: str
    memory: Memory = field(default_factory=Memory)
    notes: list[str] = field(default_factory=list)
    load: str = ""

    def cells(self) -> list[str]:
        return [self.scenario, str(self.run), self.result, self.memory.cell(), self.params, self.load,
                "; ".join(self.notes)]


HEADERS = ["scenario", "run", "victims / outcome", "server RSS MiB: before → **peak** → after",
           "parameters", "load avg", "notes"]


@dataclass
class Context:
    """What every scenario shares: the tree under test, sizes, the temporary directory."""

    code: Path
    tmp: Path
    quick: bool
    extra: Sequence[str]
    logs: Path | None
    run: int = 1
    templates: dict[int, Path] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @asynccontextmanager
    async def server(self, name: str, row: Row, *, keys: int = 0,
                     nofile: int | None = None) -> AsyncIterator[ServerUnderTest]:
        """A fresh server for one scenario run (with ``keys`` items prefilled); on the way out its
        notes, log findings and RSS figures go into ``row``."""
        base = self.tmp / f"{name}-{self.run}"
        if keys:
            shutil.copytree(await self.template(keys), base / "data")
        log = base / "server.log"
        base.mkdir(parents=True, exist_ok=True)
        server: ServerUnderTest | None = None
        try:
            async with serve_code(self.code, base / "data", log, extra=self.extra,
                                  nofile=nofile) as server:
                await put_victims(server.port)
                yield server
        finally:
            if server is not None:
                row.memory, row.notes = server.memory, row.notes + server.notes
            row.notes += log_findings(log)
            if self.logs is not None and log.exists():
                self.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, self.logs / f"{name}-{self.run}.log")
            shutil.rmtree(base / "data", ignore_errors=True)

    async def template(self, keys: int) -> Path:
        """A data directory holding ``items/0 .. items/<keys-1>`` (written once over HTTP, then copied
        for every scenario that needs it)."""
        if keys not in self.templates:
            data, log = self.tmp / f"template-{keys}" / "data", self.tmp / f"template-{keys}" / "server.log"
            say(f"prefilling {keys:,} keys over HTTP (once per run of the harness)")
            async with serve_code(self.code, data, log, extra=self.extra) as server:
                done = await run_client(600, role="writer", port=server.port, prefix="items/",
                                        count=keys, connections=8, depth=32, timeout=550)
            if done.get("writes") != keys or set(done.get("statuses", {})) != {"200"}:
                raise RuntimeError(f"prefill failed: {done}")
            say(f"prefilled at {done['rate']:,.0f} writes/s")
            self.templates[keys] = data
        return self.templates[keys]


def say(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def log_findings(log: Path) -> list[str]:
    count, lines = noteworthy(log)
    if not count:
        return []
    text = f"server log: {count} ERROR/WARNING/traceback lines"
    if any("WARNING" not in line for line in lines):
        text = f"**{text}**"
    return [f"{text}, e.g. " + " / ".join(f"`{line}`" for line in lines)]


async def http(port: int, method: str, path: str, body: bytes = b"", timeout: float = 60) -> int:
    conn = await asyncio.wait_for(Http.open(port), timeout)
    try:
        status, reply = await asyncio.wait_for(conn.request(method, path, body), timeout)
    finally:
        conn.close()
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {reply[:200]!r}")
    return status


async def put_victims(port: int) -> None:
    for i, path in enumerate(VICTIMS):
        await http(port, "POST", path, b'{"victim":%d,"name":"small"}' % i)


# Reporting what the clients saw


def ms(result: dict[str, Any]) -> str:
    """p50 / p99 latency of a client's requests and their rate, or why there are none."""
    if "error" in result:
        return f"error: {result['error']}"
    text = f"{result['p50_ms']:,.1f} / {result['p99_ms']:,.1f} ms, {result['rate']:,.0f} req/s served"
    if result["unanswered"]:
        text += f", {result['unanswered']:,} unanswered (counted as their wait)"
    return text


def client_notes(who: str, result: dict[str, Any]) -> list[str]:
    """Anything but 2xx replies, and failed requests (timeouts, resets)."""
    notes = []
    odd = {s: n for s, n in result.get("statuses", {}).items() if not s.startswith("2")}
    if odd:
        notes.append(f"**{who}: HTTP {', '.join(f'{s} ×{n}' for s, n in odd.items())}**")
    if result.get("failures"):
        notes.append(f"**{who}: {', '.join(f'{k} ×{n}' for k, n in result['failures'].items())}**")
    if "error" in result:
        notes.append(f"**{who}: {result['error']}**")
    return notes


def victims(port: int, seconds: float) -> Awaitable[dict[str, Any]]:
    return run_client(seconds + 60, role="loop", port=port, paths=VICTIMS, connections=4,
                      interval=VICTIM_INTERVAL, seconds=seconds, timeout=10)


async def victims_under(server: ServerUnderTest, attacker: dict[str, Any], seconds: float,
                        row: Row) -> tuple[dict[str, Any], dict[str, Any]]:
    """Victims alone, then the attacker and the victims together for ``seconds``: (victims idle,
    under attack); the attacker's result and anything odd go into ``row``."""
    idle = await victims(server.port, min(3.0, seconds))
    server.begin_attack()
    client = await Client.start(port=server.port, seconds=seconds + 1, **attacker)
    await client.wait_started()
    under = await victims(server.port, seconds)
    attack = await client.finish(seconds + 120)
    server.end_attack()
    await asyncio.sleep(2)
    server.after_attack()
    row.notes += client_notes("victims", idle) + client_notes("victims", under)
    row.notes += client_notes("attacker", attack)
    row.result = f"victims GET p50 / p99: **{ms(under)}** (idle {ms(idle)})"
    return attack, under


# Scenarios


def document(size: int, variant: int) -> bytes:
    """A JSON object of about ``size`` bytes: ``{"items": {"k0000000": {...}, ...}}``."""
    entry = '"k%07d":{"id":%d,"name":"item-%d","tags":["alpha","beta"],"score":%d.5}'
    parts, total, i = [], 12, 0
    while total < size:
        parts.append(entry % (i, i, i, variant))
        total, i = total + len(parts[-1]) + 1, i + 1
    return ('{"items":{' + ",".join(parts) + "}}").encode()


async def patch_big(ctx: Context, row: Row) -> None:
    size, seconds = ctx.size(9_300_000, 2_000_000), ctx.size(15, 5)
    bodies = [ctx.tmp / f"patch-{v}.json" for v in (1, 2)]
    for v, path in enumerate(bodies):
        path.write_bytes(document(size, v))
    row.params = (f'{size / 1e6:.1f} MB document ({{"items": {{...}}}} of small objects), '
                  f"1 attacker, 4 victims, {seconds} s")
    async with ctx.server("patch-big", row) as server:
        await http(server.port, "POST", "/big/doc", bodies[0].read_bytes())
        attack, _ = await victims_under(server, {
            "role": "loop", "method": "PATCH", "paths": ["/big/doc"], "bodies": [str(p) for p in bodies],
            "connections": 1, "timeout": 60}, seconds, row)
        if "error" not in attack:
            row.result += f"; PATCH {attack['rate']:.2f}/s, p50 {attack['p50_ms']:,.0f} ms"


async def glob_loop(ctx: Context, row: Row) -> None:
    keys, seconds = ctx.size(200_000, 20_000), ctx.size(15, 5)
    row.params = f"{keys:,} keys, 4 attacker connections, 4 victims, {seconds} s"
    async with ctx.server("glob-loop", row, keys=keys) as server:
        attack, _ = await victims_under(server, {
            "role": "loop", "paths": ["/*/*"], "connections": 4, "timeout": 60}, seconds, row)
    if "error" not in attack and attack["requests"]:
        row.result += (f"; attackers {attack['rate']:.2f} lists/s of "
                       f"{attack['bytes'] / attack['requests'] / 1e6:.1f} MB")


async def glob_noread(ctx: Context, row: Row) -> None:
    keys, n, hold = ctx.size(200_000, 20_000), 40, ctx.size(15, 5)
    row.params = (f"{keys:,} keys, {n} connections never reading for {hold} s, 4 victims; "
                  f"'after' is 5 s after they hung up")
    async with ctx.server("glob-noread", row, keys=keys) as server:
        idle = await victims(server.port, 3)
        server.begin_attack()
        request = b"GET /*/* HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode()
        attackers = await open_many(server.port, n, partial(Idle, request, read=False))
        under = await victims(server.port, hold)
        server.end_attack()
        held = held_by_server(server.pid, server.port, [a.port for a in attackers])
        for attacker in attackers:
            attacker.close()
        await asyncio.sleep(5)
        server.after_attack()
    row.notes += client_notes("victims", idle) + client_notes("victims", under)
    row.result = (f"victims GET p50 / p99: **{ms(under)}** (idle {ms(idle)}); server held "
                  f"{held}/{len(attackers)} of the non-reading connections when they hung up")


async def header_flood(ctx: Context, row: Row) -> None:
    n, seconds, every = ctx.size(500, 100), ctx.size(20, 6), ctx.size(5, 2)
    row.params = (f"{n} connections, each +1 header line of {FLOOD_LINE:,} B every 10 ms, up to "
                  f"{FLOOD_LINES} lines (under aiohttp's 128 × 8190 B caps), head never ended, {seconds} s")
    async with ctx.server("header-flood", row) as server:
        server.begin_attack()
        client = await Client.start(role="flood", port=server.port, connections=n, interval=0.01,
                                    line_bytes=FLOOD_LINE, lines=FLOOD_LINES, seconds=seconds)
        await client.wait_started()
        probes = []
        for _ in range(seconds // every):
            await asyncio.sleep(every)
            probes.append(await probe(server.port, timeout=5))
        flood = await client.finish(seconds + 120)
        server.end_attack()
        await asyncio.sleep(3)
        server.after_attack()
    answered = [p for p in probes if p[0] is not None]
    worst = max(probes, key=lambda p: (p[0] is None, p[1]))
    row.result = (f"normal GET within 5 s: **{len(answered)}/{len(probes)}** probes (worst: "
                  f"{probe_text(worst, 5)})")
    if "error" in flood:
        row.notes.append(f"**flood client: {flood['error']}**")
        return
    row.result += (f"; {flood['bytes_sent'] / 1e6:,.0f} MB of header lines sent on "
                   f"{flood['connected']} connections, server closed {flood['closed_by_server']}")
    if flood["replies"]:
        row.result += f" (replies: {flood['replies']})"


async def slowloris(ctx: Context, row: Row) -> None:
    nofile, n = ctx.size(1024, 256), ctx.size(1100, 300)
    checkpoints = ctx.size(30, 10), ctx.size(60, 20)
    row.params = (f"server RLIMIT_NOFILE {nofile}, {n} partial heads, probes with a 10 s timeout, "
                  f"checks at {checkpoints[0]} s / {checkpoints[1]} s")
    head = b"GET /victim/0 HTTP/1.1\r\nHost: %s\r\n" % HOST.encode()
    async with ctx.server("slowloris", row, nofile=nofile) as server:
        server.begin_attack()
        attackers = await open_many(server.port, n, partial(Idle, head), timeout=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        ports = [a.port for a in attackers]
        seen = [f"{len(attackers)} connected, server holds "
                f"{held_by_server(server.pid, server.port, ports)}; probe: "
                f"**{probe_text(await probe(server.port, timeout=10), 10)}**"]
        for at in checkpoints:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            open_ = sum(not a.lost for a in attackers)
            seen.append(f"at {at} s: {open_} open, server holds "
                        f"{held_by_server(server.pid, server.port, ports)}; probe: "
                        f"**{probe_text(await probe(server.port, timeout=10), 10)}**")
        server.end_attack()
        for attacker in attackers:
            attacker.close()
        await asyncio.sleep(2)
        server.after_attack()
        seen.append(f"after they hang up: probe {probe_text(await probe(server.port, timeout=10), 10)}")
    row.result = "; ".join(seen)


async def glob_pools(ctx: Context, row: Row) -> None:
    n, seconds = ctx.size(5000, 1000), ctx.size(5, 3)
    row.params = (f"{n:,} idle subscribers of g<i>/*; POST /users/<i>, 4 connections × 16 "
                  f"pipelined, {seconds} s")

    def writes(server: ServerUnderTest, first: int) -> Awaitable[dict[str, Any]]:
        return run_client(seconds + 120, role="writer", port=server.port, prefix="users/", first=first,
                          seconds=seconds, connections=4, depth=16, timeout=seconds + 90)

    async with ctx.server("glob-pools", row) as server:
        before = await writes(server, 0)
        server.begin_attack()
        counter = FrameCounter()
        subscribers = await connect_subscribers(server.port, [f"/g{i}/*" for i in range(n)], counter)
        await counter.wait_for(n, timeout=300)
        during = await writes(server, 10_000_000)
        server.end_attack()
        await close_subscribers(subscribers, timeout=60)
        server.after_attack()
    row.notes += client_notes("writes without subscribers", before)
    row.notes += client_notes("writes with subscribers", during)
    row.result = (f"point writes/s: **{before.get('rate', 0):,.0f} → {during.get('rate', 0):,.0f}** "
                  f"with the subscribers")


async def noread_subs(ctx: Context, row: Row) -> None:
    n, seconds, grace = ctx.size(200, 50), ctx.size(20, 8), 20
    values = [ctx.tmp / f"value-{v}.json" for v in "xy"]
    for path in values:  # every write replaces the whole blob: each patch frame is ~100 KiB
        path.write_bytes(b'{"blob":"%s"}' % (path.stem[-1].encode() * 100 * 1024))
    row.params = (f"{n} subscribers of feed/big never reading; 100 KiB values POSTed back to back "
                  f"for {seconds} s")
    async with ctx.server("noread-subs", row) as server:
        await http(server.port, "POST", "/feed/big", values[0].read_bytes())
        counter = FrameCounter()
        deaf = await open_many(server.port, n,
                               partial(DeafSubscriber, HOST, server.port, "/feed/big", counter))
        await wait_until(lambda: all(s.upgraded for s in deaf), 60)
        ports = [s.port for s in deaf]
        server.begin_attack()
        writer = await Client.start(role="loop", port=server.port, method="POST", paths=["/feed/big"],
                                    bodies=[str(p) for p in values], connections=1, seconds=seconds,
                                    timeout=30)
        await writer.wait_started()
        kernel = kernel_tcp_kib()
        drops, kernel_peak = await watch_drops(server, ports, seconds + grace)
        wrote = await writer.finish(120)
        server.end_attack()
        for s in deaf:
            s.close()
        await asyncio.sleep(2)
        server.after_attack()
    growth = (server.memory.peak_kib - server.memory.start_kib) / n
    row.notes += client_notes("writer", wrote)
    writes = f"{wrote.get('requests', 0)} writes ({wrote.get('rate', 0):.1f}/s)"
    row.result = (f"RSS **+{growth / 1024:,.2f} MiB per subscriber** at the peak (kernel TCP buffers, "
                  f"machine-wide: +{(kernel_peak - kernel) / 1024 / n:,.2f} MiB per subscriber); {writes}; "
                  f"{drops}")


async def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout:g} s")
        await asyncio.sleep(0.05)


async def watch_drops(server: ServerUnderTest, ports: list[int], seconds: float) -> tuple[str, int]:
    """When the server closed its side of the subscribers' connections, polled every 0.25 s for
    ``seconds`` (less once it holds none); also the peak of the kernel's TCP buffer memory."""
    loop = asyncio.get_running_loop()
    start, n = loop.time(), len(ports)
    first = all_ = None
    held, kernel = n, 0
    while loop.time() - start < seconds:
        held = held_by_server(server.pid, server.port, ports)
        kernel = max(kernel, kernel_tcp_kib())
        if held < n and first is None:
            first = loop.time() - start
        if held == 0:
            all_ = loop.time() - start
            break
        await asyncio.sleep(0.25)
    if first is None:
        return f"**none dropped in {seconds:g} s**", kernel
    text = f"first dropped after {first:.1f} s, "
    return text + (f"all {n} after {all_:.1f} s" if all_ is not None else
                   f"**{held} of {n} still held after {seconds:g} s**"), kernel


SCENARIOS: dict[str, Callable[[Context, Row], Awaitable[None]]] = {
    "patch-big": patch_big,
    "glob-loop": glob_loop,
    "glob-noread": glob_noread,
    "header-flood": header_flood,
    "slowloris": slowloris,
    "glob-pools": glob_pools,
    "noread-subs": noread_subs,
}


async def run_all(ctx: Context, names: Sequence[str], repeat: int) -> list[Row]:
    rows = []
    for run in range(1, repeat + 1):
        ctx.run = run
        for name in names:
            say(f"{name} (run {run})")
            row = Row(name, run, "", "", load=f"{os.getloadavg()[0]:.1f}")
            try:
                await asyncio.wait_for(SCENARIOS[name](ctx, row), 900)
            except Exception as exc:  # one failed scenario must not hide the others' figures
                row.notes.append(f"**harness error: {type(exc).__name__}: {exc}**")
            print("| " + " | ".join(row.cells()) + " |", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def raise_fd_limit() -> None:
    """The attackers of one process hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 8192:
        say(f"warning: RLIMIT_NOFILE {hard}: scenarios with thousands of connections will be short")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="source tree to serve (default: this one)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"scenarios to run (default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (a smoke test)")
    parser.add_argument("--repeat", type=int, default=1, help="run the scenario list N times")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra `serve` argument for every server (repeatable; --server-arg=--x=1)")
    parser.add_argument("--logs", type=Path, help="keep each server's log in this directory")
    args = parser.parse_args()
    install_cleanup()
    raise_fd_limit()
    server_core, load_core = cores()
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    code = check_code(args.code.resolve())
    names = args.only or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="ooo-hostile-") as tmp:
        ctx = Context(args.code.resolve(), Path(tmp), args.quick, args.server_arg, args.logs)
        rows = asyncio.run(run_all(ctx, names, args.repeat))
    pinned = (f"server pinned to core {server_core}, load and harness to core {load_core}"
              if load_core is not None else "no pinning (one core)")
    command = " ".join(["bench/hostile.py", *sys.argv[1:]])
    print(f"Code under test: {code}. {datetime.date.today()}, {os.cpu_count()} cores, {pinned}, "
          f"127.0.0.1.\n\n{table(HEADERS, [row.cells() for row in rows])}\n\n"
          f"Command: `.venv/bin/python {command}`.")


if __name__ == "__main__":
    main()
