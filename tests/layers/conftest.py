"""Fixtures for the SOS tests: self-checking values and a fork server for real child processes.

Starting a Python interpreter and importing the store costs ~350 ms, far too much for hundreds of
kill -9 rounds; the fork server imports everything once and forks a child per request in a few
milliseconds. Children report to the test through one pipe (JSON lines, each written with one
``os.write`` below PIPE_BUF, so lines of different children never interleave), and the test waits
for a child's death on a pidfd rather than sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ooo_storage.layers.sos import SimpleObjectStore

REPO = str(Path(__file__).resolve().parents[2])


# -- self-checking values ------------------------------------------------------------------------


def make_value(gen: int, size: int, tag: str = "") -> bytes:
    """``<tag>:<gen>:`` + filler + CRC-32 of everything before it (independent of the store's CRC)."""
    head = f"{tag}:{gen}:".encode()
    filler = (gen.to_bytes(8, "little") * (size // 8 + 1))[: max(0, size - len(head))]
    body = head + filler
    return body + zlib.crc32(body).to_bytes(4, "little")


def parse_value(value: bytes) -> tuple[str, int]:
    """``(tag, gen)`` of a :func:`make_value` value; AssertionError if it is torn or foreign."""
    body, crc = value[:-4], value[-4:]
    assert len(value) >= 4 and zlib.crc32(body).to_bytes(4, "little") == crc, "torn value"
    tag, gen, _ = body.split(b":", 2)
    return tag.decode(), int(gen)


# -- child roles (run in processes forked by the fork server) -------------------------------------


def emit(kind: str, **data: Any) -> None:
    os.write(1, json.dumps({"pid": os.getpid(), "kind": kind, **data}).encode() + b"\n")


def _store(root: str, **options: Any) -> SimpleObjectStore:
    return SimpleObjectStore(root, **options)


def role_writer(root: str, key: str, base: int, count: int, big: int) -> None:
    """Store generations base.. of ``key``, alternating small and big values; ack each one."""

    async def main() -> None:
        s = _store(root)
        await s.start()
        emit("ready")
        for i in range(count):
            await s.store(key, make_value(base + i, big if i % 2 else 100))
            emit("ack", gen=base + i)

    asyncio.run(main())


class _StuckReader:
    """A reader for ``store_from`` that hands over one chunk, announces it, then never returns."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, n: int) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"partial" * 1000
        emit("inwrite")
        time.sleep(60)
        return b""


def role_stuck_writer(root: str, key: str) -> None:
    async def main() -> None:
        s = _store(root)
        await s.start()
        await s.store_from(key, _StuckReader())

    asyncio.run(main())


def role_getter(root: str, key: str, stuck: bool) -> None:
    """Loop ``get`` (link mode); with ``stuck``, freeze right after the read hard link exists."""
    if stuck:
        real_open = os.open

        def frozen_open(path: Any, *args: Any, **kw: Any) -> int:
            if str(path).endswith(".r"):
                emit("linked")
                time.sleep(60)
            return real_open(path, *args, **kw)

        os.open = frozen_open  # type: ignore[assignment]

    async def main() -> None:
        s = _store(root)
        await s.start()
        emit("ready")
        while True:
            parse_value(await s.get(key) or make_value(0, 1))

    asyncio.run(main())


def role_hammer(
    root: str,
    key: str,
    mode: str,
    seconds: float,
    start_at: float,
    sizes: tuple[int, int] = (100, 20_000),
) -> None:
    """Writer, reader or deleter of one key until a shared deadline; report what it saw.

    Writers cycle through 7 value sizes ``sizes[0] + i * sizes[1]``."""

    async def main() -> None:
        s = _store(root, durability="data")
        await s.start()
        tag = f"p{os.getpid()}"
        stats: dict[str, Any] = defaultdict(int)
        deadline = start_at + seconds * (0.6 if mode == "deleter" else 1.0)
        seq = 0
        while time.time() < deadline:
            try:
                if mode == "writer":
                    seq += 1
                    await s.store(key, make_value(seq, sizes[0] + (seq % 7) * sizes[1], tag))
                elif mode == "deleter":
                    await s.delete(key)
                else:
                    value = await s.get(key)
                    if value is None:
                        stats["none"] += 1
                    else:
                        parse_value(value)
                        stats["values"] += 1
            except AssertionError:
                stats["torn"] += 1
            except Exception as exc:  # reported, the test decides
                stats[f"error:{type(exc).__name__}"] += 1
        final = None
        if mode == "writer":
            final = make_value(seq + 1, 64, tag).hex()
            await s.store(key, bytes.fromhex(final))
        await s.close()
        emit("done", stats=dict(stats), final=final)

    asyncio.run(main())


def role_churn(root: str, prefix: str, n: int, seconds: float) -> None:
    """Create and delete keys ``prefix/<i>`` (i < n) at random until the deadline."""
    import random

    async def main() -> None:
        s = _store(root, durability="none")
        await s.start()
        emit("ready")
        deadline = time.time() + seconds
        ops = 0
        while time.time() < deadline:
            key = f"{prefix}/{random.randrange(n)}"
            if random.random() < 0.5:
                await s.store(key, b"v")
            else:
                await s.delete(key)
            ops += 1
        emit("done", ops=ops)

    asyncio.run(main())


def role_exclusive(root: str, keys: list[str], op: str) -> None:
    """``take``: get_and_delete every key; ``claim``: store_if_absent every key. Report the wins."""

    async def main() -> None:
        s = _store(root, durability="data")
        await s.start()
        won = []
        for key in keys:
            if op == "take":
                if await s.get_and_delete(key) is not None:
                    won.append(key)
            elif await s.store_if_absent(key, str(os.getpid()).encode()):
                won.append(key)
        emit("done", won=won)

    asyncio.run(main())


def role_mutate(root: str, key: str, value: str) -> None:
    async def main() -> None:
        s = _store(root)
        await s.start()
        await s.store(key, bytes.fromhex(value))
        await s.delete(key)
        emit("done")

    asyncio.run(main())


ROLES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("role_")}

_SERVER = r"""
import importlib.util, json, os, signal, sys
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[1])]  # the repo; the roles file's siblings
spec = importlib.util.spec_from_file_location("fork_roles", sys.argv[1])
roles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(roles)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
roles.emit("server")
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            roles.ROLES[cmd["role"]](**cmd["args"])
        except BaseException as exc:
            roles.emit("crash", error=repr(exc))
            code = 1
        finally:
            os._exit(code)
    roles.emit("spawned", child=pid, req=cmd["req"])
"""


class ForkServer:
    """Parent side of the fork server: spawn role children, read their messages, await death.

    ``roles_file`` is the Python file the server imports once; it must define ``ROLES`` (name →
    function run in the child) and ``emit`` (this module's, or one writing the same JSON lines), so
    other layers' tests can reuse the server with their own roles. The server can import the
    roles file's siblings, such as ``conftest`` (as the tests do, ``from conftest import ...``).
    """

    def __init__(self, roles_file: str = __file__) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, roles_file, REPO],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        self._buf = b""
        self._inbox: dict[int, deque[dict[str, Any]]] = defaultdict(deque)
        self._req = 0
        self.children: list[int] = []
        self.next(self.proc.pid, "server", timeout=30)

    def spawn(self, role: str, **args: Any) -> int:
        self._req += 1
        cmd = json.dumps({"role": role, "args": args, "req": self._req}).encode() + b"\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd)
        self.proc.stdin.flush()
        msg = self.next(self.proc.pid, "spawned", timeout=10)
        assert msg["req"] == self._req
        self.children.append(msg["child"])
        return int(msg["child"])

    def _pump(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return False
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise RuntimeError("fork server exited")
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            self._inbox[msg["pid"]].append(msg)
        return True

    def next(self, pid: int, kind: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next message of ``pid`` (of ``kind``: others before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            box = self._inbox[pid]
            while box:
                msg = box.popleft()
                if msg["kind"] == "crash":
                    raise AssertionError(f"child {pid} crashed: {msg['error']}")
                if kind is None or msg["kind"] == kind:
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind!r} message from {pid}")
            self._pump(left)

    def collect(self, seconds: float) -> None:
        """Read the children's messages for ``seconds`` of wall time while they keep running."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._pump(left)

    def drain(self, pid: int) -> list[dict[str, Any]]:
        """Every message ``pid`` has written so far (call after it died: all are in the pipe)."""
        while self._pump(0):
            pass
        box = self._inbox.pop(pid, deque())
        return list(box)

    def kill(self, pid: int, timeout: float = 10) -> None:
        """SIGKILL ``pid`` and wait until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.wait_exit(pid, timeout)

    @staticmethod
    def wait_exit(pid: int, timeout: float = 10) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                raise TimeoutError(f"child {pid} still running")
        finally:
            os.close(pidfd)

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def temp_entries(root: Path | str) -> list[str]:
    """Names in ``root/.tmp`` (the store's temp directory)."""
    try:
        return sorted(os.listdir(os.path.join(root, ".tmp")))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise


def temp_pids(root: Path | str) -> set[int]:
    """Pids that own entries in ``root/.tmp``."""
    return {int(n.rsplit(".", 4)[1]) for n in temp_entries(root) if n.count(".") >= 4}


@pytest.fixture
async def sos(tmp_path: Path) -> Any:
    store = SimpleObjectStore(tmp_path / "sos")
    await store.start()
    yield store
    await store.close()
