"""The server under attack in bench/hostile.py: a real ``ooo-storage serve`` from a chosen source tree.

``python -m ooo_storage serve --port 0 --data <fresh dir>`` runs with ``PYTHONPATH=<tree>`` (so the
same harness measures /work/baseline for the "before" figures and the working tree for "after"),
pinned to its own core, optionally under a lower ``RLIMIT_NOFILE``, with its log in a file. The port
it picked is read from /proc (its listening socket), not from its log, so the harness does not depend
on the wording of a log line that the code under test may change. A thread samples its RSS so that
each scenario can report the peak during the attack, not just two snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench._load import HttpConnection, Target
from bench.peers.targets import stop, track

SERVER_CORE, LOAD_CORE = 0, 1
STOP_TIMEOUT = 20.0
"""How long a SIGTERM'd server may take to stop before it is killed (its own shutdown_timeout is 10 s)."""


def pinning(core: int | None, nofile: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` pinning the child to ``core`` (as ``taskset -c`` does) and capping its fds."""

    def apply() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return apply


def cores() -> tuple[int | None, int | None]:
    """(server core, load core), or no pinning on a one-core machine."""
    if len(os.sched_getaffinity(0)) < 2:
        return None, None
    return SERVER_CORE, LOAD_CORE


def check_code(code: Path) -> str:
    """Fail unless ``PYTHONPATH=code`` imports ooo_storage from ``code``; describe the tree."""
    probe = subprocess.run(
        [sys.executable, "-c", "import ooo_storage; print(ooo_storage.__file__)"],
        env={**os.environ, "PYTHONPATH": str(code)}, cwd="/", capture_output=True, text=True,
        timeout=60, check=False,
    )
    where = probe.stdout.strip()
    if probe.returncode != 0 or not Path(where).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"PYTHONPATH={code} does not import ooo_storage from it: "
                         f"{where or probe.stderr.strip()[-300:]}")
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True,
                              timeout=30, check=False).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ooo_storage")
    return f"{code} (git {rev}{', with uncommitted changes in ooo_storage/' if dirty else ''})" if rev \
        else str(code)


# /proc readings


def socket_inodes(pid: int) -> set[str]:
    """The inodes of every socket the process holds open."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def listening_port(pid: int) -> int | None:
    """The TCP port the process listens on, from /proc/net/tcp{,6}; None while it does not listen."""
    inodes = socket_inodes(pid)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    return int(fields[1].rpartition(":")[2], 16)
    return None


def status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), 0 once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def kernel_tcp_kib() -> int:
    """Memory the kernel holds in TCP buffers, machine-wide (/proc/net/sockstat), in KiB: where the
    bytes go that a client does not read, beyond the server's RSS."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds in a daemon thread and keeps the peak."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period = pid, period
        self.peak_kib = self.last_kib = status_kib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            kib = status_kib(self.pid, "VmRSS")
            if kib:
                self.last_kib = kib
                self.peak_kib = max(self.peak_kib, kib)

    def reset_peak(self) -> int:
        """Start a new peak window from the current RSS, which is returned."""
        self.last_kib = self.peak_kib = status_kib(self.pid, "VmRSS") or self.last_kib
        return self.last_kib

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


@dataclass
class Memory:
    """Server RSS around one attack: before it, the peak during it, and once it is over."""

    start_kib: int = 0
    peak_kib: int = 0
    after_kib: int = 0

    def cell(self) -> str:
        def mib(kib: int) -> str:
            return f"{kib / 1024:,.0f}" if kib else "?"

        return f"{mib(self.start_kib)} → **{mib(self.peak_kib)}** → {mib(self.after_kib)}"


# The server process


@dataclass
class ServerUnderTest:
    """A running ``ooo-storage serve``; ``notes`` collects what it did that a reader must know."""

    target: Target
    log: Path
    sampler: RssSampler
    memory: Memory = field(default_factory=Memory)
    notes: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def pid(self) -> int:
        return self.target.pid

    def begin_attack(self) -> None:
        self.memory.start_kib = self.sampler.reset_peak()

    def end_attack(self) -> None:
        self.memory.peak_kib = max(self.sampler.peak_kib, self.sampler.last_kib)

    def after_attack(self) -> None:
        self.memory.after_kib = status_kib(self.pid, "VmRSS") or self.sampler.last_kib

    def socket_fds(self) -> int:
        """Sockets the server holds: its listening socket plus every connection it has accepted."""
        return len(socket_inodes(self.pid))

    def alive(self) -> bool:
        return self.target.process.poll() is None


@asynccontextmanager
async def serve_code(
    code: Path, data: Path, log: Path, *, extra: Sequence[str] = (), nofile: int | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[ServerUnderTest]:
    """Run ``ooo-storage serve`` from the tree ``code`` over ``data`` until the block ends, then stop it
    with SIGTERM and note how it ended (exit status, a stop that needed SIGKILL)."""
    data.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ooo_storage", "serve", "--host", "127.0.0.1", "--port", "0",
               "--data", str(data), *extra]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=data.parent,
            env={**os.environ, "PYTHONPATH": str(code)}, preexec_fn=pinning(cores()[0], nofile),
            start_new_session=True,  # Ctrl-C reaches the harness only; it stops the server itself
        )
    track(process.pid, process)
    sampler: RssSampler | None = None
    server: ServerUnderTest | None = None
    try:
        port = await _await_listening(process, log, ready_timeout)
        sampler = RssSampler(process.pid)
        server = ServerUnderTest(Target("ooo-storage", process, port), log, sampler)
        yield server
    finally:
        if sampler is not None:
            sampler.close()
        note = _stop(process)
        if server is not None and note:
            server.notes.append(note)


async def _await_listening(process: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """Wait until the server listens and answers one request; return its port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}: {tail(log)}")
        port = listening_port(process.pid)
        if port is not None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                conn = await asyncio.wait_for(HttpConnection.open(port), 2)
                try:
                    await asyncio.wait_for(conn.request("GET", "/hostile-probe"), 5)
                    return port
                finally:
                    conn.close()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server not answering after {timeout:.0f} s: {tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> str:
    """Stop the server; describe anything abnormal (it died before, exited non-zero, needed a kill)."""
    if process.poll() is not None:
        stop(process)
        return f"**server died during the run (exit status {process.returncode})**"
    start = time.monotonic()
    stop(process, STOP_TIMEOUT)
    took = time.monotonic() - start
    if took >= STOP_TIMEOUT:
        return f"**SIGTERM did not stop the server in {STOP_TIMEOUT:.0f} s: killed**"
    if process.returncode not in (0, -15):
        return f"**exit status {process.returncode} after SIGTERM**"
    return f"stopping took {took:.1f} s" if took > 5 else ""


def tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1][:300] if lines else "(no output)"


_NOTEWORTHY = re.compile(r"Traceback|\b(ERROR|CRITICAL|WARNING|Exception|Error)\b")


def noteworthy(log: Path, limit: int = 4) -> tuple[int, list[str]]:
    """How many log lines look like trouble, and the first few distinct ones (timestamps cut)."""
    count, seen = 0, list[str]()
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if _NOTEWORTHY.search(line):
                count += 1
                text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line).strip()[:240]
                if text not in seen and len(seen) < limit:
                    seen.append(text)
    return count, seen
