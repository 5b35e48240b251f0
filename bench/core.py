"""Core benchmark: Layered over LevelDB vs raw plyvel, in one process and one run.

    .venv/bin/python bench/core.py [--keys 100000] [--cold-keys 200000] [--rounds 3]

Targets (issue 2): set >= 0.25x raw put (also with 64 concurrent tasks), get >= 300k/s,
cold start >= 0.5x raw iteration. Each figure is the best of --rounds runs (least disturbed).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import plyvel

from ooo_storage import Layered, LevelDBLayer, MemoryLayer

PAYLOAD = orjson.dumps({"name": "x" * 80, "age": 42, "tags": ["alpha", "beta", "gamma"], "ok": True, "n": 1})


def best(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


def raw_put_get(base: Path, keys: list[str]) -> tuple[float, float]:
    path = Path(tempfile.mkdtemp(dir=base))
    db = plyvel.DB(str(path), create_if_missing=True)
    bkeys = [k.encode() for k in keys]
    value = b'{"created":1795321475007507216,"updated":0,"index":"1","path":"users/1","data":%b}' % PAYLOAD
    t = time.perf_counter()
    for k in bkeys:
        db.put(k, value)
    put = time.perf_counter() - t
    t = time.perf_counter()
    for k in bkeys:
        db.get(k)
    get = time.perf_counter() - t
    db.close()
    shutil.rmtree(path)
    return put, get


async def store_set_get(base: Path, keys: list[str], data: object, tasks: int) -> tuple[float, float]:
    path = Path(tempfile.mkdtemp(dir=base))
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path))
    await store.start()
    if tasks == 1:
        t = time.perf_counter()
        for k in keys:
            await store.set(k, data)
        put = time.perf_counter() - t
    else:
        chunk = len(keys) // tasks + 1

        async def writer(part: list[str]) -> None:
            for k in part:
                await store.set(k, data)

        t = time.perf_counter()
        await asyncio.gather(*(writer(keys[i : i + chunk]) for i in range(0, len(keys), chunk)))
        put = time.perf_counter() - t
    t = time.perf_counter()
    for k in keys:
        await store.get(k)
    get = time.perf_counter() - t
    await store.close()
    shutil.rmtree(path)
    return put, get


def raw_sync_put(base: Path, keys: list[str]) -> float:
    path = Path(tempfile.mkdtemp(dir=base))
    db = plyvel.DB(str(path), create_if_missing=True)
    t = time.perf_counter()
    for k in keys:
        db.put(k.encode(), PAYLOAD, sync=True)
    dt = time.perf_counter() - t
    db.close()
    shutil.rmtree(path)
    return dt


async def durable_sets(base: Path, keys: list[str], tasks: int) -> tuple[float, float]:
    path = Path(tempfile.mkdtemp(dir=base))
    layer = LevelDBLayer(path, sync=True)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    chunk = len(keys) // tasks + 1

    async def writer(part: list[str]) -> None:
        for k in part:
            await store.set(k, PAYLOAD)

    t = time.perf_counter()
    await asyncio.gather(*(writer(keys[i : i + chunk]) for i in range(0, len(keys), chunk)))
    dt = time.perf_counter() - t
    await store.close()
    shutil.rmtree(path)
    return dt, len(keys) / max(layer.commits, 1)


def build_cold_db(path: Path, n: int) -> None:
    db = plyvel.DB(str(path), create_if_missing=True)
    with db.write_batch() as wb:
        for i in range(n):
            key = f"users/{i}"
            wb.put(
                key.encode(),
                b'{"created":%d,"updated":0,"index":"%d","path":"%b","data":%b}'
                % (1795321475007507216 + i, i, key.encode(), PAYLOAD),
            )
    db.close()


def raw_iterate(path: Path) -> float:
    db = plyvel.DB(str(path))
    t = time.perf_counter()
    for _k, _v in db:
        pass
    dt = time.perf_counter() - t
    db.close()
    return dt


def raw_iterate_into_dict(path: Path) -> float:
    db = plyvel.DB(str(path))
    t = time.perf_counter()
    held = dict(db.iterator())
    dt = time.perf_counter() - t
    assert held
    db.close()
    return dt


async def cold_start(path: Path, n: int) -> float:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path))
    t = time.perf_counter()
    await store.start()
    dt = time.perf_counter() - t
    assert store.memory is not None and len(store.memory) == n
    await store.close()
    return dt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--cold-keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.keys, args.rounds
    keys = [f"users/{i}" for i in range(n)]
    base = Path(tempfile.mkdtemp(prefix="ooo-bench-"))
    try:
        raw = [raw_put_get(base, keys) for _ in range(rounds)]
        raw_put, raw_get = min(r[0] for r in raw), min(r[1] for r in raw)
        rows: list[tuple[str, float, float | None, str]] = [
            ("raw plyvel put", n / raw_put, None, ""),
            ("raw plyvel get", n / raw_get, None, ""),
        ]
        for label, data, tasks in (
            ("bytes JSON, 1 task", PAYLOAD, 1),
            ("dict, 1 task", orjson.loads(PAYLOAD), 1),
            ("bytes JSON, 64 tasks", PAYLOAD, 64),
        ):
            runs = [asyncio.run(store_set_get(base, keys, data, tasks)) for _ in range(rounds)]
            put, get = min(r[0] for r in runs), min(r[1] for r in runs)
            rows.append((f"Layered.set ({label})", n / put, raw_put / put, ">= 0.25x raw put"))
            rows.append((f"Layered.get ({label})", n / get, raw_get / get, ">= 300k/s"))
        durable_keys = keys[: max(n // 5, 1000)]
        d = len(durable_keys)
        rs = best(rounds, lambda: raw_sync_put(base, durable_keys[: d // 4]))
        rows.append(("raw plyvel put(sync=True), 1 writer", (d // 4) / rs, None, ""))
        runs = [asyncio.run(durable_sets(base, durable_keys, 64)) for _ in range(rounds)]
        ds, group = min(runs)
        raw_sync = (d // 4) / rs
        rows.append((f"Layered.set durable (sync=True), 64 tasks, {group:.0f} writes/fsync", d / ds,
                     (d / ds) / raw_sync, "ratio to 1 raw sync writer"))
        cold = base / "cold"
        build_cold_db(cold, args.cold_keys)
        it = best(rounds, lambda: raw_iterate(cold))
        itd = best(rounds, lambda: raw_iterate_into_dict(cold))
        cs = best(rounds, lambda: asyncio.run(cold_start(cold, args.cold_keys)))
        m = args.cold_keys
        rows.append(("raw plyvel iteration", m / it, None, ""))
        rows.append(("raw plyvel iteration into a dict", m / itd, None, ""))
        rows.append(("Layered.start() cold load", m / cs, it / cs, ">= 0.5x raw iteration"))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"\nooo-storage core bench — {platform.python_implementation()} {platform.python_version()}, "
        f"{n} keys ({len(PAYLOAD)} B JSON payload), cold start over {args.cold_keys} keys, "
        f"best of {rounds}\n"
    )
    print("| operation | ops/s | ratio to raw | target |")
    print("|---|---:|---:|---|")
    for name, rate, ratio, target in rows:
        print(f"| {name} | {rate:,.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | {target} |")


if __name__ == "__main__":
    main()
