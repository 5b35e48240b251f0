"""ooo-storage next to etcd and NATS JetStream KV for "store JSON, watch it live", on one machine.

    .venv/bin/python bench/peers/peers.py [--quick] [--reps 3] [--no-results]     # or: make bench-peers

Installs what is missing (Debian ``etcd-server``, ``nats-server``; PyPI ``nats-py``, ``py-spy``), starts
every target on 127.0.0.1 with a temporary data directory, each server pinned to core 0 and every
load generator (bench/peers/load.py, one process per measurement) pinned to core 1, and runs the
workloads W1–W5 with the targets interleaved (A B C, A B C, ...). Each cell is the median of the
repetitions with min–max; a repetition is marked contended when something other than the server and
the generator used more than 15 % of either core during its window (from /proc/stat and
/proc/<pid>/stat). A target that fails shows ``error: <reason>`` in its cells; the run goes on.
Results go to the section "Peers: etcd / NATS KV (issue 5)" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Import bench/ as a package of the repository root, so that both `python bench/peers/peers.py` and
# `python -m bench.peers.peers` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench._load import replace_section  # noqa: E402
from bench.peers import report  # noqa: E402
from bench.peers.targets import (  # noqa: E402
    BENCH,
    PEERS,
    EtcdTarget,
    Installer,
    NatsTarget,
    OooTarget,
    Target,
    install_cleanup,
    kill_all,
    track,
    untrack,
)

SECTION = "Peers: etcd / NATS KV (issue 5)"
SERVER_CORE, LOAD_CORE = 0, 1
CONTENDED = 0.15  # foreign share of a core above which a repetition is marked contended
HZ = os.sysconf("SC_CLK_TCK")
PROFILE_SECONDS = 5


@dataclass
class Step:
    """One measurement: a workload with its parameters, run against each of ``targets``."""

    id: str
    workload: str
    variant: str
    spec: dict[str, Any]
    targets: list[str]
    timeout: float


@dataclass
class Rep:
    """One repetition of a step on one target."""

    result: dict[str, Any]
    server_cpu: float = 0.0
    foreign: tuple[float, float] = (0.0, 0.0)  # other load on the server core, the generator core

    @property
    def error(self) -> str | None:
        return self.result.get("error")

    @property
    def contended(self) -> bool:
        return max(self.foreign) > CONTENDED


@dataclass
class Outcome:
    """Everything the report needs."""

    args: argparse.Namespace
    targets: dict[str, Target]
    unavailable: dict[str, str]
    steps: list[Step]
    reps: dict[tuple[str, str], list[Rep]] = field(default_factory=dict)
    profiles: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    tmp: str = ""


def steps(quick: bool) -> list[Step]:
    s = 1.0 if quick else 3.0
    warm = 0.5 if quick else 1.0
    ours = ["ooo", "ooo-sync"]
    peers = ["etcd", "nats"]
    out = [
        Step("W1", "write", "64 clients", {"clients": 64, "seconds": s, "warmup": warm},
             [*ours, *peers], 60),
        Step("W2", "read", "64 clients", {"clients": 64, "seconds": s, "warmup": warm},
             ["ooo", *peers], 60),
    ]
    for prefix, size in (("a100", 100), ("b1000", 1000)):
        out.append(Step("W3", "list", f"{size} items", {"prefix": prefix, "clients": 8, "seconds": s,
                                                         "warmup": 0.5}, ["ooo", *peers], 60))
    out.append(Step("W5", "resume", "5 s offline", {"rate": 100, "offline": 2.0 if quick else 5.0},
                    ["ooo", *peers], 60))
    for watchers in (100,) if quick else (100, 1000):
        out.append(Step("W4", "fanout", f"{watchers} watchers",
                        {"watchers": watchers, "rate": 200, "seconds": 2.0 if quick else 3.0, "grace": 5.0},
                        ["ooo", *peers], 90))
    return out


# CPU accounting


def cpu_busy() -> list[int]:
    """Busy clock ticks of each CPU since boot (everything but idle and iowait)."""
    busy = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            ticks = [int(x) for x in line.split()[1:]]
            busy.append(sum(ticks) - ticks[3] - ticks[4])
    return busy


def process_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


@dataclass
class Sample:
    at: float
    busy: list[int]
    server: int
    generator: int
    own: int

    @classmethod
    def take(cls, server: int, generator: int) -> Sample:
        return cls(time.monotonic(), cpu_busy(), process_ticks(server), process_ticks(generator),
                   process_ticks(os.getpid()))


def usage(a: Sample, b: Sample) -> tuple[float, tuple[float, float]]:
    """Server CPU (cores) and the foreign share of the server and the generator core."""
    seconds = max(1e-6, b.at - a.at)
    server = (b.server - a.server) / HZ / seconds
    generator = (b.generator - a.generator) / HZ / seconds
    own = (b.own - a.own) / HZ / seconds
    core = [(y - x) / HZ / seconds for x, y in zip(a.busy, b.busy, strict=True)]
    foreign_server = core[SERVER_CORE] - server if len(core) > SERVER_CORE else 0.0
    foreign_load = core[LOAD_CORE] - generator - own if len(core) > LOAD_CORE else 0.0
    return server, (max(0.0, foreign_server), max(0.0, foreign_load))


# Running one measurement


async def generate(target: Target, workload: str, spec: dict[str, Any], timeout: float,
                   on_start: Callable[[], Coroutine[Any, Any, None]] | None = None) -> Rep:
    """Run bench/peers/load.py for one workload against ``target``, pinned to the load core;
    ``on_start`` runs when the measured window opens."""
    full = {"peer": target.peer, "port": target.port, "workload": workload, **spec}
    process = await asyncio.create_subprocess_exec(
        "taskset", "-c", str(LOAD_CORE), sys.executable, str(PEERS / "load.py"), json.dumps(full),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    track(process.pid)
    samples: list[Sample] = []
    result: dict[str, Any] = {"error": "no result"}
    hooks: list[asyncio.Task[None]] = []

    async def read() -> None:
        nonlocal result
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode().strip()
            if line.startswith("MARK "):
                samples.append(Sample.take(target.pid, process.pid))
                if on_start is not None and line == "MARK start":
                    hooks.append(asyncio.create_task(on_start()))
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])

    try:
        await asyncio.wait_for(read(), timeout)
        await asyncio.wait_for(process.wait(), 10)
        await asyncio.gather(*hooks)
    except TimeoutError:
        result = {"error": f"timeout after {timeout:.0f} s"}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        untrack(process.pid)
    if "error" in result and process.stderr is not None and result["error"] == "no result":
        err = (await process.stderr.read()).decode(errors="replace").strip().splitlines()
        result = {"error": (err[-1] if err else f"exit status {process.returncode}")[:200]}
    if target.process is not None and target.process.poll() is not None:
        result = {"error": f"server exited ({target.process.returncode}): {target.log_tail()}"}
    rep = Rep(result)
    if len(samples) >= 2:
        rep.server_cpu, rep.foreign = usage(samples[0], samples[-1])
    return rep


# The run


def log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(tmp: Path, only: set[str], profile: bool) -> tuple[dict[str, Target], dict[str, str]]:
    """Install what the targets in ``only`` (and the profiles, if wanted) miss, and start those
    targets; return the running ones and why others are not."""
    installer = Installer(log)
    unavailable: dict[str, str] = {}
    missing: dict[str, str | None] = {}
    if "etcd" in only:
        missing["etcd"] = installer.apt("etcd", "etcd-server", "etcd-client")
    if "nats" in only:
        missing["nats"] = installer.apt("nats-server", "nats-server") or installer.pip("nats", "nats-py")
    if profile and not shutil.which("py-spy") and not (Path(sys.executable).parent / "py-spy").exists():
        installer.pip("py_spy", "py-spy")  # a binary, no module; optional: only the profiles need it
    candidates: list[tuple[str, Any]] = [
        ("ooo", lambda: OooTarget("ooo", "ooo-storage", SERVER_CORE, tmp, sync=False)),
        ("ooo-sync", lambda: OooTarget("ooo-sync", "ooo-storage --sync", SERVER_CORE, tmp, sync=True)),
        ("etcd", lambda: EtcdTarget(SERVER_CORE, tmp)),
        ("nats", lambda: NatsTarget(SERVER_CORE, tmp)),
    ]
    targets: dict[str, Target] = {}
    for name, make in candidates:
        if name not in only:
            continue
        reason = missing.get(name)
        if reason:
            unavailable[name] = reason
            continue
        target = make()
        try:
            target.start()
        except Exception as exc:  # noqa: BLE001 - the run continues without this target
            unavailable[name] = str(exc)
            log(f"{name}: {exc}")
            continue
        log(f"{name}: pid {target.pid}, port {target.port}, {target.version}")
        targets[name] = target
    return targets, unavailable


async def run(args: argparse.Namespace, tmp: Path) -> Outcome:
    started = time.monotonic()
    deadline = started + args.budget
    targets, unavailable = prepare(tmp, set(args.targets.split(",")), profile=not args.no_profile)
    plan = steps(args.quick)
    outcome = Outcome(args, targets, unavailable, plan, tmp=str(tmp))
    for name, target in list(targets.items()):
        rep = await generate(target, "setup", {}, 120)
        if rep.error:
            unavailable[name] = f"setup failed: {rep.error}"
            target.stop()
            del targets[name]
    for step in plan:
        runnable = [t for t in step.targets if t in targets]
        for r in range(args.reps):
            for name in runnable:
                key = (f"{step.id} {step.variant}", name)
                if time.monotonic() > deadline:
                    outcome.reps.setdefault(key, []).append(Rep({"error": "skipped: time budget"}))
                    continue
                rep = await generate(targets[name], step.workload, step.spec, step.timeout)
                outcome.reps.setdefault(key, []).append(rep)
                log(f"{key[0]} rep {r + 1} {name}: " + report.brief(rep.result)
                    + (" (contended)" if rep.contended else ""))
    if not args.no_profile and time.monotonic() < deadline + 60:
        outcome.profiles = await profile(outcome)
    outcome.seconds = time.monotonic() - started
    return outcome


async def profile(outcome: Outcome) -> list[tuple[str, str]]:
    """py-spy the ooo-storage server under the workloads where a target was missed or we lost."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return [("profile", "py-spy not available")]
    found: list[tuple[str, str]] = []
    for title, target_name, step_key in report.profile_wanted(outcome):
        target = outcome.targets.get(target_name)
        step = next((s for s in outcome.steps if f"{s.id} {s.variant}" == step_key), None)
        if target is None or step is None:
            continue
        out = Path(outcome.tmp) / f"profile-{len(found)}.txt"

        async def record(pid: int = target.pid, out: Path = out) -> None:
            spy_proc = await asyncio.create_subprocess_exec(
                "taskset", "-c", str(LOAD_CORE), spy, "record", "--pid", str(pid), "-d", str(PROFILE_SECONDS),
                "-f", "raw", "-o", str(out), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            track(spy_proc.pid)
            try:
                await asyncio.wait_for(spy_proc.wait(), PROFILE_SECONDS + 20)
            except TimeoutError:
                spy_proc.kill()
                await spy_proc.wait()
            untrack(spy_proc.pid)

        spec = {**step.spec, "seconds": PROFILE_SECONDS + 1.0}
        rep = await generate(target, step.workload, spec, step.timeout + 30, on_start=record)
        text = out.read_text() if out.exists() else ""
        summary = report.summarise_profile(text, PROFILE_SECONDS) if text else "py-spy produced nothing"
        if rep.error:
            summary += f" (load: error: {rep.error})"
        found.append((title, summary))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 1 repetition, 100 watchers only")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds after which remaining measurements are skipped")
    parser.add_argument("--targets", default="ooo,ooo-sync,etcd,nats",
                        help="comma-separated subset of ooo,ooo-sync,etcd,nats")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    if len(os.sched_getaffinity(0)) < 2 or os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        log("fewer than 2 cores: server and load generator will share a core")
    os.sched_setaffinity(0, {LOAD_CORE if (os.cpu_count() or 1) > LOAD_CORE else 0})
    install_cleanup()
    command = "make bench-peers  # or: .venv/bin/python bench/peers/peers.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="ooo-peers-") as tmp:
        try:
            outcome = asyncio.run(run(args, Path(tmp)))
        finally:
            kill_all()
    text = report.render(outcome, command=command.rstrip(),
                               when=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                               machine=f"{platform.machine()}, {os.cpu_count()} cores, "
                                       f"Python {platform.python_version()}")
    print(f"## {SECTION}\n\n{text}")
    if not args.no_results:
        replace_section(BENCH / "RESULTS.md", SECTION, text)
        log("bench/RESULTS.md updated")


if __name__ == "__main__":
    main()
