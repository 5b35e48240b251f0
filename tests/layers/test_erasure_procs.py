"""The erasure store under kill -9 and concurrent writer processes (ADAPTERS §5.6 items 12, 13).

Children are forked by the fork server of ``conftest.py`` (:class:`ForkServer`, with this file's
roles): it imported everything once, since a fresh interpreter costs ~350 ms per child, far too
much for dozens of kill rounds. They report on one pipe in JSON lines short enough to be written
atomically, and the test waits on pidfds, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ForkServer, emit, make_value, parse_value

from ooo_storage.errors import StorageError
from ooo_storage.layers.erasure.format import parse_shard_name
from ooo_storage.layers.erasure.store import ErasureStore

N = 6
BIG = (1 << 20) + 300_000  # two stripes, six shard files
SMALL = 200  # three replica files


# -- child roles (run in processes forked by the fork server) -------------------------------------
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


ROLES = {"writer": role_writer, "hammer": role_hammer}  # for ForkServer, with ``emit``


@pytest.fixture(scope="module")
def children() -> Iterator[ForkServer]:
    server = ForkServer(__file__)
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
def test_kill9_during_writes_leaves_old_or_new(children: ForkServer, tmp_path: Path) -> None:
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
                children.next(pid, "ready", timeout=20)
                children.collect(rng.uniform(0.0, 0.08))  # it writes and acks meanwhile
                children.kill(pid, timeout=20)
                for msg in children.drain(pid):
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
def test_concurrent_writer_processes(children: ForkServer, tmp_path: Path) -> None:
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
