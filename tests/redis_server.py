"""A real ``redis-server`` for the tests: started on a free 127.0.0.1 port in a temporary directory,
stopped by its PID. A test that needs Redis and cannot start it FAILS saying how to install it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; ``restart()`` keeps its data (append-only file, fsync always)."""

    def __init__(self, directory: Path, port: int | None = None, fsync: str = "always") -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.fail(
                "this test needs a real redis-server (7.x): `apt-get install redis-server` "
                "(.ci/run installs it); none found on PATH or at /usr/bin/redis-server"
            )
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no",
            "--protected-mode", "no", "--logfile", str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.02)  # polling a child process's port: there is no event to await

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis(directory: Path | None = None, fsync: str = "always") -> RedisServer:
    server = RedisServer(directory or Path(tempfile.mkdtemp(prefix="ooo-redis-")), fsync=fsync)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the session; each test uses its own namespace. ``appendfsync no``: these tests
    are about behaviour, not durability (an fsync per write would cost ~4 ms here)."""
    server = start_redis(fsync="no")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def serve_redis(directory: Path, fsync: str = "always") -> Iterator[RedisServer]:
    """For a fixture of a test's own Redis (to stop, kill or restart): ``yield from`` it."""
    directory.mkdir()
    server = start_redis(directory, fsync)
    try:
        yield server
    finally:
        server.stop()


# -- the shared storage suite on RedisLayer ----------------------------------------------------------
REDIS_BACKENDS: dict[str, bool] = {"redis": False, "memory+redis": True}
"""Backend name -> has a memory mirror, for tests/test_layered.py's parametrisation."""


def root_conftest() -> ModuleType:
    """tests/conftest.py as a module (``import conftest`` gives whichever conftest pytest loaded
    last, tests/server's one when that directory was collected first)."""
    path = str(Path(__file__).with_name("conftest.py"))
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == path:
            return module
    spec = importlib.util.spec_from_file_location("tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def redis_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A ``conftest.StoreFactory`` for ``request.param``: a RedisLayer (in a namespace of the test's
    own, so that a restart test reopens the same data) for the Redis backends, else as conftest."""
    from ooo_storage.layers import RedisLayer

    StoreFactory = root_conftest().StoreFactory  # noqa: N806 (a class)

    if request.param not in REDIS_BACKENDS:
        return StoreFactory(request.param, tmp_path)
    server: RedisServer = request.getfixturevalue("redis_server")
    namespace = f"t{uuid.uuid4().hex[:12]}"
    factory = StoreFactory.__new__(StoreFactory)
    factory.backend, factory.path, factory.opened = request.param, tmp_path, []
    factory.has_memory = REDIS_BACKENDS[request.param]
    factory.persistent = lambda _path: RedisLayer(server.url, namespace)
    return factory
