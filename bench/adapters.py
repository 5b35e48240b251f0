"""Adapter benchmark: SOS set/get at 1 KiB, 64 KiB and 1 MiB beside the raw file-system limit.

    .venv/bin/python bench/adapters.py [--rounds 2] [--dir DIR]

The raw limit is measured in the same process and run, on the same filesystem: a plain
temp file + write + fsync + rename per set, open + read + close per get, synchronous, no event loop.
Target: SOS >= 0.7x raw. Rows:

* ``raw fan-out`` — the same raw loop in the SOS layout (temp files in ``.tmp``, objects in
  ``xx/yy/<60 hex>``): what the layout itself costs, before any SOS code runs;

* ``sos full`` — defaults (durability "full": + directory fsync; read_mode "link": + link/unlink),
  one operation in flight, so every operation pays one executor round trip;
* ``sos data`` — durability "data": exactly the raw syscall sequence plus the record header;
* ``sos full x16`` — 16 operations in flight (a server with many clients);
* ``sos direct`` (gets only) — read_mode "direct" (local filesystems): no hard link per read;
* ``sos mget x64`` (gets only) — 64 keys per executor round trip;
* ``sos core, no hop`` — the store's synchronous per-operation code (defaults) called directly:
  the distance to ``sos full`` is the worker-pool round trip, the distance to raw is SOS's work
  (record header and CRC-32C, hard link of link-mode reads, directory fsync).

Sets overwrite keys written once beforehand (steady state: directories exist, every set replaces
a file, as the raw loop does). Each figure is the best of ``--rounds`` interleaved runs. If
``bench/adapters_ec.py`` exists, its ``main()`` runs after this section.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ooo_storage.layers import SimpleObjectStore  # noqa: E402
from ooo_storage.layers._files import fanout_path  # noqa: E402

SIZES = [(1024, "1 KiB", 500), (64 * 1024, "64 KiB", 300), (1024 * 1024, "1 MiB", 100)]


def best(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


# -- raw limit ---------------------------------------------------------------------------------


def _raw_paths(base: Path, value: bytes, n: int, fanout: bool) -> tuple[Path, list[str], str]:
    """A fresh directory holding ``n`` files (flat, or in the SOS fan-out with a ``.tmp`` dir)."""
    d = Path(tempfile.mkdtemp(dir=base))
    if fanout:
        names = [str(d / fanout_path(f"bench/{i}".encode())) for i in range(n)]
        tmp = d / ".tmp"
    else:
        names = [str(d / f"obj{i}") for i in range(n)]
        tmp = d
    for name in names:  # create once, so the timed loop replaces files like the SOS loop
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(value)
    tmp.mkdir(exist_ok=True)
    return d, names, str(tmp)


def raw_set(base: Path, value: bytes, n: int, fanout: bool = False) -> float:
    """Seconds for ``n`` crash-safe replaces (temp, write, fsync, rename) of ``n`` files."""
    d, names, tmp_dir = _raw_paths(base, value, n, fanout)
    t = time.perf_counter()
    for i, name in enumerate(names):
        tmp = f"{tmp_dir}/t{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, value)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, name)
    elapsed = time.perf_counter() - t
    shutil.rmtree(d)
    return elapsed


def raw_get(base: Path, value: bytes, n: int, fanout: bool = False) -> float:
    d, names, _ = _raw_paths(base, value, n, fanout)
    t = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_RDONLY)
        os.read(fd, os.fstat(fd).st_size)
        os.close(fd)
    elapsed = time.perf_counter() - t
    shutil.rmtree(d)
    return elapsed


# -- SOS ---------------------------------------------------------------------------------------


async def _timed(ops: list[Callable[[], Awaitable[Any]]], inflight: int) -> float:
    async def lane(j: int) -> None:
        for op in ops[j::inflight]:
            await op()

    t = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(inflight)))
    return time.perf_counter() - t


class Variant(NamedTuple):
    label: str
    durability: str = "full"
    read_mode: str = "link"
    inflight: int = 1  # operations in flight
    batch: int = 1  # gets per executor round trip (mget)
    sets: bool = True  # measure sets too
    core: bool = False  # call the synchronous core on this thread: SOS minus the thread hop


VARIANTS = [
    Variant("sos full"),
    Variant("sos data", durability="data"),
    Variant("sos full x16", inflight=16),
    Variant("sos direct", read_mode="direct", sets=False),
    Variant("sos mget x64", batch=64, sets=False),
    Variant("sos core, no hop", core=True),
]


def sos_run(base: Path, value: bytes, n: int, v: Variant) -> tuple[float, float]:
    """Seconds for ``n`` sets then ``n`` gets of one variant."""

    async def main() -> tuple[float, float]:
        root = tempfile.mkdtemp(dir=base)
        keys = [f"bench/{i}" for i in range(n)]
        prefill = SimpleObjectStore(root, durability="none")  # untimed: no fsync needed
        await prefill.start()
        for key in keys:
            await prefill.store(key, value)
        await prefill.close()
        store = SimpleObjectStore(root, durability=v.durability, read_mode=v.read_mode)  # type: ignore[arg-type]
        await store.start()
        if v.core:
            set_s, get_s = _core_run(store, keys, value)
        else:
            sets = [lambda k=k: store.store(k, value) for k in keys]
            if v.batch > 1:
                gets = [lambda c=keys[i : i + v.batch]: store.mget(c) for i in range(0, n, v.batch)]
            else:
                gets = [lambda k=k: store.get(k) for k in keys]
            set_s = await _timed(sets, v.inflight) if v.sets else 0.0
            get_s = await _timed(gets, v.inflight)
        await store.destroy()
        return set_s, get_s

    return asyncio.run(main())


def _core_run(store: SimpleObjectStore, keys: list[str], value: bytes) -> tuple[float, float]:
    """The store's per-operation work without the worker-pool round trip (internal API: this
    row only explains the distance between the SOS rows and raw)."""
    encoded = [k.encode() for k in keys]
    t = time.perf_counter()
    for key in encoded:
        store._store_sync(key, value)
    set_s = time.perf_counter() - t
    t = time.perf_counter()
    for key in encoded:
        store._load(key, store.path(key))
    return set_s, time.perf_counter() - t


def fmt_row(size: str, op: str, label: str, n: int, seconds: float, nbytes: int, raw: float) -> str:
    ops = n / seconds
    return f"| {size} | {op} | {label} | {ops:,.0f} | {ops * nbytes / 1e6:,.1f} | {raw / seconds:.2f}x |"


def measure(base: Path, nbytes: int, n: int, rounds: int) -> dict[str, list[float]]:
    """Best ``[set, get]`` seconds per variant; rounds interleave the variants, so a slow phase
    of the (noisy, shared) disk hits all of them rather than one."""
    value = os.urandom(nbytes)
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        results = {
            "raw": (raw_set(base, value, n), raw_get(base, value, n)),
            "raw fan-out": (raw_set(base, value, n, True), raw_get(base, value, n, True)),
        }
        results.update({v.label: sos_run(base, value, n, v) for v in VARIANTS})
        for label, (set_s, get_s) in results.items():
            old = best.setdefault(label, [float("inf"), float("inf")])
            best[label] = [min(old[0], set_s), min(old[1], get_s)]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the filesystem to measure")
    parser.add_argument("--sos-only", action="store_true", help="skip bench/adapters_ec.py")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ooo-bench-adapters-", dir=args.dir))
    print(f"## Adapters: SOS\n\n{platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, directory {base}, best of {args.rounds}\n")  # fmt: skip
    print("| size | op | variant | ops/s | MB/s | vs raw |")
    print("|---|---|---|---:|---:|---:|")
    try:
        for nbytes, size, n in SIZES:
            best = measure(base, nbytes, n, args.rounds)
            raw = best["raw"]
            for i, op in enumerate(("set", "get")):
                for label in ("raw", "raw fan-out"):
                    print(fmt_row(size, op, label, n, best[label][i], nbytes, raw[i]))
                for v in VARIANTS:
                    if op == "get" or v.sets:
                        print(fmt_row(size, op, v.label, n, best[v.label][i], nbytes, raw[i]))
            sys.stdout.flush()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ec = Path(__file__).with_name("adapters_ec.py")
    if ec.exists() and not args.sos_only:
        spec = importlib.util.spec_from_file_location("adapters_ec", ec)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print()
        module.main()


if __name__ == "__main__":
    main()
