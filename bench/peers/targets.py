"""The servers compared by bench/peers/peers.py: install, start pinned to the server core, stop, clean up.

Every target listens on 127.0.0.1 on free ports with its data in a temporary directory, and runs
under ``taskset -c <core>``. Processes are stopped by PID (SIGTERM, then SIGKILL after a timeout);
:func:`kill_all` stops whatever is still running (registered with atexit and for SIGINT/SIGTERM).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PEERS = Path(__file__).resolve().parent
BENCH = PEERS.parent
ROOT = BENCH.parent
HOST = "127.0.0.1"

_children: dict[int, subprocess.Popen[bytes] | None] = {}
"""Every child still running, by PID: a Popen, or None for an asyncio subprocess."""


def track(pid: int, process: subprocess.Popen[bytes] | None = None) -> None:
    _children[pid] = process


def untrack(pid: int) -> None:
    _children.pop(pid, None)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; only this PID."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    untrack(process.pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_all() -> None:
    """Stop every child still running (each by its PID)."""
    for pid, process in list(_children.items()):
        with contextlib.suppress(Exception):
            if process is not None:
                stop(process, 5.0)
            else:
                _stop_pid(pid, 5.0)
        untrack(pid)


def install_cleanup() -> None:
    atexit.register(kill_all)

    def on_signal(signum: int, frame: object) -> None:
        kill_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# Installation


def _run(*command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


class Installer:
    """Installs missing peers with apt-get / pip, once; remembers why one could not be installed."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.updated = False

    def apt(self, binary: str, *packages: str) -> str | None:
        """Make ``binary`` available; return None, or why it is not."""
        if shutil.which(binary):
            return None
        if not shutil.which("apt-get"):
            return "apt-get not available"
        env_note = "" if os.geteuid() == 0 else " (not root)"
        if not self.updated:
            self.log("apt-get update")
            _run("apt-get", "update", "-q")
            self.updated = True
        self.log(f"apt-get install -y {' '.join(packages)}")
        done = _run("apt-get", "install", "-y", "-q", *packages)
        if shutil.which(binary):
            return None
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return f"apt-get install {' '.join(packages)} failed{env_note}: {tail[0][:200]}"

    def pip(self, module: str, package: str) -> str | None:
        if importlib.util.find_spec(module) is not None:
            return None
        self.log(f"{sys.executable} -m pip install {package}")
        done = _run(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", package)
        importlib.invalidate_caches()
        if importlib.util.find_spec(module) is not None:
            return None
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return f"pip install {package} failed: {tail[0][:200]}"


def _first_line(*command: str) -> str:
    try:
        return _run(*command, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


# Targets


@dataclass
class Target:
    """A server under test. ``start()`` raises with a reason when it cannot run."""

    name: str
    label: str
    peer: str  # client kind in bench.peers.clients.PEERS
    core: int
    tmp: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    version: str = "?"
    extra_ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        data = self.tmp / self.name
        data.mkdir(parents=True, exist_ok=True)
        log = (self.tmp / f"{self.name}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            ["taskset", "-c", str(self.core), *self.command()], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
        )
        log.close()
        track(self.process.pid, self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with status {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.probe():
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def log_tail(self) -> str:
        path = self.tmp / f"{self.name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1][:200] if lines else "(no output)"

    def cpu_ticks(self) -> int:
        """utime + stime of the server process (all its threads), in clock ticks."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as reply:
        status: int = reply.status
        return status == 200


class OooTarget(Target):
    """``python -m ooo_storage serve`` (the ``ooo-storage`` CLI), optionally ``--sync``."""

    def __init__(self, name: str, label: str, core: int, tmp: Path, sync: bool) -> None:
        super().__init__(name, label, "ooo", core, tmp)
        self.sync = sync
        try:
            version = importlib.metadata.version("ooo-storage")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        commit = _first_line("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
        self.version = f"{version} (git {commit})"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ooo_storage", "serve", "--host", HOST, "--port", str(self.port),
                "--data", str(self.tmp / self.name), "--log-level", "warning",
                *(["--sync"] if self.sync else [])]

    def probe(self) -> bool:
        return _http_ok(f"http://{HOST}:{self.port}/?api=info")


class EtcdTarget(Target):
    def __init__(self, core: int, tmp: Path) -> None:
        super().__init__("etcd", "etcd", "etcd", core, tmp)
        self.version = _first_line("etcd", "--version").removeprefix("etcd Version: ")

    def command(self) -> list[str]:
        peer_port = free_port()
        self.extra_ports = [peer_port]
        client, peer = f"http://{HOST}:{self.port}", f"http://{HOST}:{peer_port}"
        return ["etcd", "--name", "bench", "--data-dir", str(self.tmp / self.name),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}", "--logger", "zap", "--log-level", "warn"]

    def probe(self) -> bool:
        return _http_ok(f"http://{HOST}:{self.port}/health")


class NatsTarget(Target):
    def __init__(self, core: int, tmp: Path) -> None:
        super().__init__("nats", "NATS JetStream KV", "nats", core, tmp)
        self.version = _first_line("nats-server", "--version").removeprefix("nats-server: ")
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            self.version += f" (nats-py {importlib.metadata.version('nats-py')})"

    def command(self) -> list[str]:
        return ["nats-server", "-js", "-sd", str(self.tmp / self.name), "-a", HOST, "-p", str(self.port)]

    def probe(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            return s.recv(4).startswith(b"INFO")
