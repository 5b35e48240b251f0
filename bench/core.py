"""Core benchmark: Layered over LevelDB vs raw plyvel, in one process and one run.

    .venv/bin/python bench/core.py [--keys 100000] [--cold-keys 200000] [--rounds 3]
    .venv/bin/python bench/core.py --instructions [--sets 20000] [--uvloop]

Targets (issue 2): set >= 0.25x raw put (also with 64 concurrent tasks), get >= 300k/s,
cold start >= 0.5x raw iteration. Each figure is the best of --rounds runs (least disturbed).

``--instructions`` counts CPU instructions per operation instead (callgrind, which machine load does
not disturb): each case runs twice under valgrind, with a few and with ``--sets`` more operations,
and the difference is divided by ``--sets``. Kernel work (LevelDB's write() per put) is not
counted. Run it with ``PYTHONPATH=<other checkout>`` to count another version of the store.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import subprocess
import sys
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


# -- instruction counts (callgrind) -----------------------------------------------------------

CASES = {
    "raw": "raw plyvel put",
    "set": "Layered.set (bytes JSON, 1 task)",
    "set-dict": "Layered.set (dict, 1 task)",
    "set-iso": "Layered.set (bytes JSON, 1 task, one set per loop iteration)",
    "set-64": "Layered.set (bytes JSON, 64 tasks per loop iteration, 1 set each)",
    "set-history": "Layered.set (bytes JSON, 1 task, with an event history)",
    "set-iso-history": "Layered.set (bytes JSON, 1 task, one set per loop iteration, with an event history)",
}


async def _cg_sets(case: str, n: int, base: Path) -> None:
    history = None
    if case.endswith("-history"):  # imported here: the rest runs against stores without history
        from ooo_storage.layered import HistoryOptions

        history, case = HistoryOptions(base / "history"), case.removesuffix("-history")
    memory, embedded = MemoryLayer(), LevelDBLayer(base / "db")
    # Without history, called as older stores (PYTHONPATH=<baseline>) can be.
    store = Layered(memory, embedded) if history is None else Layered(memory, embedded, history=history)
    await store.start()
    keys = [f"users/{i}" for i in range(n)]
    data = orjson.loads(PAYLOAD) if case == "set-dict" else PAYLOAD
    if case == "set-64":
        loop = asyncio.get_running_loop()
        for i in range(0, n, 64):
            tasks = [loop.create_task(store.set(k, data)) for k in keys[i : i + 64]]
            for task in tasks:
                await task
    elif case == "set-iso":
        for k in keys:
            await store.set(k, data)
            await asyncio.sleep(0)  # (the sleep is counted too, with the old store as well)
    else:
        for k in keys:
            await store.set(k, data)
    await store.close()


def _cg_child(case: str, n: int, use_uvloop: bool) -> None:
    """The measured process: ``n`` operations of ``case``."""
    base = Path(tempfile.mkdtemp(prefix="ooo-cg-"))
    try:
        if case == "raw":
            db = plyvel.DB(str(base / "db"), create_if_missing=True)
            value = b'{"created":1,"updated":0,"index":"1","path":"users/1","data":%b}' % PAYLOAD
            for k in [f"users/{i}".encode() for i in range(n)]:
                db.put(k, value)
            db.close()
        elif use_uvloop:
            import uvloop

            uvloop.run(_cg_sets(case, n, base))
        else:
            asyncio.run(_cg_sets(case, n, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _instructions(case: str, n: int, use_uvloop: bool) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           __file__, "--cg-child", case, str(n)] + (["--uvloop"] if use_uvloop else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(f"callgrind gave no count:\n{out}")
    return int(found.group(1))


def instructions(sets: int, use_uvloop: bool, cases: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    import ooo_storage

    print(f"\ninstructions per operation (callgrind), {sets} operations, "
          f"{'uvloop' if use_uvloop else 'asyncio'} loop, store from {Path(ooo_storage.__file__).parent}\n")
    print("| operation | instructions/op | ratio raw/op |")
    print("|---|---:|---:|")
    raw = 0.0
    for case, label in CASES.items():
        if case not in cases:
            continue
        per_op = (_instructions(case, 1000 + sets, use_uvloop) - _instructions(case, 1000, use_uvloop)) / sets
        raw = per_op if case == "raw" else raw
        ratio = f"{raw / per_op:.2f}x" if raw else ""
        print(f"| {label} | {per_op / 1000:.1f} k | {ratio} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--cold-keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", action="store_true", help="count instructions (callgrind)")
    parser.add_argument("--sets", type=int, default=20_000, help="operations counted per case")
    parser.add_argument("--uvloop", action="store_true", help="run the store under uvloop")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="count only these")
    parser.add_argument("--cg-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cg_child:
        _cg_child(args.cg_child[0], int(args.cg_child[1]), args.uvloop)
        return
    if args.instructions:
        instructions(args.sets, args.uvloop, args.case or list(CASES))
        return
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
