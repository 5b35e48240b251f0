"""The erasure store under kill -9 and concurrent writer processes (ADAPTERS §5.6 items 12, 13).

Children are forked by a small fork server that imported everything once (a fresh interpreter
costs ~350 ms per child, far too much for dozens of kill rounds). They report on one pipe in JSON
lines short enough to be written atomically, and the test waits on pidfds, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
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

from ooo_storage.errors import StorageError
from ooo_storage.layers.erasure import ErasureStore
from ooo_storage.layers.erasure_format import parse_shard_name

REPO = str(Path(__file__).resolve().parents[2])
N = 6
BIG = (1 << 20) + 300_000  # two stripes, six shard files
SMALL = 200  # three replica files


def make_value(gen: int, size: int, tag: str = "") -> bytes:
    """``tag:gen:`` + filler + CRC-32 of it all: checkable independently of the store's CRCs."""
    body = f"{tag}:{gen}:".encode()
    body += (gen.to_bytes(8, "little") * (size // 8 + 1))[: max(0, size - len(body))]
    return body + zlib.crc32(body).to_bytes(4, "little")


def parse_value(raw: bytes) -> tuple[str, int]:
    body, crc = raw[:-4], raw[-4:]
    assert zlib.crc32(body).to_bytes(4, "little") == crc, "torn value"
    tag, gen, _ = body.split(b":", 2)
    return tag.decode(), int(gen)


# -- child roles ----------------------------------------------------------------------------------
def emit(kind: str, **data: Any) -> None:
    os.write(1, json.dumps({"pid": os.getpid(), "kind": kind, **data}).encode() + b"\n")


def role_writer(drives: list[str], keys: list[str], base: int) -> None:
    """Write generations base, base+1, ... to ``keys`` round-robin (small and big); ack each."""

    async def main() -> None:
        async with ErasureStore(drives, repair="off") as ec:
            emit("ready")
            for i in range(10**6):
                key = keys[i % len(keys)]
                await ec.store(key, make_value(base + i, BIG if (i // len(keys)) % 2 else SMALL))
                emit("ack", key=key, gen=base + i)

    asyncio.run(main())


def role_hammer(drives: list[str], key: str, mode: str, seconds: float, start_at: float) -> None:
    """Writer or reader of one key until a shared deadline; report what it saw."""

    async def main() -> None:
        async with ErasureStore(drives, repair="off", durability="data") as ec:
            tag = f"p{os.getpid()}"
            stats: dict[str, int] = defaultdict(int)
            seen: set[str] = set()
            seq = 0
            while time.time() < start_at + seconds:
                try:
                    if mode == "writer":
                        seq += 1
                        await ec.store(key, make_value(seq, SMALL if seq % 3 else 150_000, tag))
                    else:
                        raw = await ec.get(key)
                        if raw is None:
                            stats["none"] += 1
                        else:
                            seen.add(parse_value(raw)[0])
                            stats["values"] += 1
                except AssertionError:
                    stats["torn"] += 1
                except StorageError as exc:
                    stats[f"typed:{type(exc).__name__}"] += 1
                except Exception as exc:  # the test fails on these
                    stats[f"error:{type(exc).__name__}:{exc}"] += 1
            final = None
            if mode == "writer":
                final = make_value(seq + 1, 64, tag).hex()
                await ec.store(key, bytes.fromhex(final))
            emit("done", stats=dict(stats), final=final, seen=sorted(seen))

    asyncio.run(main())


ROLES = {"writer": role_writer, "hammer": role_hammer}

_SERVER = r"""
import importlib.util, json, os, signal, sys
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("erasure_roles", sys.argv[1])
roles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(roles)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
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
    roles.emit("spawned", child=pid)
"""


class Children:
    """Parent side: spawn role children through the fork server, read their lines, kill them."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, __file__, REPO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._buf = b""
        self._inbox: dict[int, deque[dict[str, Any]]] = defaultdict(deque)
        self.pids: list[int] = []
        self.next(self.proc.pid, "server", timeout=60)

    def spawn(self, role: str, **args: Any) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"role": role, "args": args}).encode() + b"\n")
        self.proc.stdin.flush()
        pid = int(self.next(self.proc.pid, "spawned")["child"])
        self.pids.append(pid)
        return pid

    def _pump(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, timeout))[0]:
            return False
        chunk = os.read(fd, 1 << 16)
        assert chunk, "fork server exited"
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            self._inbox[msg["pid"]].append(msg)
        return True

    def next(self, pid: int, kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            box = self._inbox[pid]
            while box:
                msg = box.popleft()
                assert msg["kind"] != "crash", msg["error"]
                if msg["kind"] == kind:
                    return msg
            if not self._pump(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise TimeoutError(f"no {kind!r} from {pid}")

    def acks_within(self, pid: int, timeout: float) -> None:
        """Let ``pid`` run for ``timeout`` seconds of wall time while collecting its messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())

    def kill(self, pid: int) -> list[dict[str, Any]]:
        """SIGKILL ``pid``, wait for its death on a pidfd, return every message it wrote."""
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
            os.kill(pid, signal.SIGKILL)
            assert select.select([pidfd], [], [], 20)[0], f"{pid} survived SIGKILL"
            os.close(pidfd)
        while self._pump(0):
            pass
        return list(self._inbox.pop(pid, ()))

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    server = Children()
    yield server
    server.close()


def generations_per_key(drives: list[str]) -> dict[str, set[int]]:
    """key dir -> generations present on any drive."""
    out: dict[str, set[int]] = defaultdict(set)
    for d in drives:
        for f in Path(d, "objects").rglob("*"):
            parsed = parse_shard_name(f.name)
            if parsed:
                out[f.parent.name].add(parsed[0])
    return out


def temp_files(drives: list[str]) -> list[str]:
    return [name for d in drives for name in os.listdir(Path(d, ".tmp"))]


# -- §5.6.12: kill -9 during multi-drive writes -------------------------------------------------------
def test_kill9_during_writes_leaves_old_or_new(children: Children, tmp_path: Path) -> None:
    """40 writer children killed at random points of their multi-drive writes: every key reads
    back a complete value, either the last acknowledged one or the single write in flight."""
    drives = [str(tmp_path / f"d{i}") for i in range(N)]
    keys = ["crash/a", "crash/b", "crash/c"]
    rng = random.Random(4)
    acked: dict[str, int] = {}
    newer = 0  # kills that landed after a commit but before its ack (reported on failure)
    leftovers: list[int] = []

    async def check(ec: ErasureStore, base: int) -> None:
        nonlocal newer
        for j, key in enumerate(keys):
            raw = await ec.get(key)
            if raw is None:
                assert key not in acked, f"{key} lost its acknowledged value"
                continue
            tag, gen = parse_value(raw)
            last = acked.get(key)
            in_flight = base + j if last is None or last < base else last + len(keys)
            assert gen in (last, in_flight), (key, gen, last, in_flight)
            if gen != last:
                newer += 1
                acked[key] = gen

    async def rounds() -> None:
        async with ErasureStore(drives, repair="off") as ec:
            for round_ in range(1, 41):
                base = round_ * 1_000_000
                pid = children.spawn("writer", drives=drives, keys=keys, base=base)
                children.next(pid, "ready")
                children.acks_within(pid, rng.uniform(0.0, 0.08))
                for msg in children.kill(pid):
                    if msg["kind"] == "ack":
                        acked[msg["key"]] = msg["gen"]
                leftovers.append(len(temp_files(drives)))  # > 0: killed inside a shard write
                await check(ec, base)

    asyncio.run(rounds())
    assert len(acked) == len(keys)
    assert sum(map(bool, leftovers)) >= 5, f"too few kills inside a shard write: {leftovers}, {newer}"

    async def recover() -> None:
        async with ErasureStore(drives, repair="off", grace=0) as ec:
            assert temp_files(drives) == []  # dead writers' temp files are cleaned at start
            await check(ec, 0)
            report = await ec.repair()
            assert report["lost"] == 0 and report["degraded"] == 0
            # Failed generations (fewer than k shards) are collected; one generation per key remains.
            assert all(len(gens) == 1 for gens in generations_per_key(drives).values())
            await check(ec, 0)
            assert (await ec.scrub())["degraded"] == 0

    asyncio.run(recover())


# -- §5.6.13: concurrent writers of one key -------------------------------------------------------
def test_concurrent_writer_processes(children: Children, tmp_path: Path) -> None:
    """3 writers and 2 readers of one key for ~3 s: readers only see complete values some writer
    wrote; afterwards the value is one of the final writes and the drives converge."""
    drives = [str(tmp_path / f"d{i}") for i in range(N)]

    async def init() -> None:
        async with ErasureStore(drives) as ec:
            await ec.store("hot", make_value(0, 10, "init"))

    asyncio.run(init())
    start_at = time.time() + 0.5
    modes = ["writer"] * 3 + ["reader"] * 2
    pids = [
        children.spawn("hammer", drives=drives, key="hot", mode=mode, seconds=2.5, start_at=start_at)
        for mode in modes
    ]
    done = {pid: children.next(pid, "done", timeout=60) for pid in pids}
    writers = {f"p{pid}" for pid, mode in zip(pids, modes, strict=True) if mode == "writer"}
    finals = {done[pid]["final"] for pid, mode in zip(pids, modes, strict=True) if mode == "writer"}
    total_reads = 0
    for pid, mode in zip(pids, modes, strict=True):
        stats = done[pid]["stats"]
        assert not [s for s in stats if s.startswith("error:") or s == "torn"], stats
        assert not any("Corrupt" in s for s in stats), stats
        if mode == "reader":
            total_reads += stats.get("values", 0)
            assert set(done[pid]["seen"]) <= writers | {"init"}
            assert stats.get("none", 0) == 0
    assert total_reads > 50

    async def settle() -> None:
        async with ErasureStore(drives, repair="off", grace=0) as ec:
            final = await ec.get("hot")
            assert final is not None and final.hex() in finals
            await ec.repair()
            assert [len(g) for g in generations_per_key(drives).values()] == [1]
            assert await ec.get("hot") == final
            assert temp_files(drives) == []

    asyncio.run(settle())
