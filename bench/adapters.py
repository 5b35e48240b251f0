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
import functools
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ooo_storage.layers import SimpleObjectStore
from ooo_storage.layers.fs import fanout_path

SIZES = [(1024, "1 KiB", 500), (64 * 1024, "64 KiB", 300), (1024 * 1024, "1 MiB", 100)]


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


def raw_replace(tmp: str, name: str, parts: Sequence[bytes]) -> None:
    """One crash-safe replace of file ``name``, synchronously: temp, write, fsync, rename."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.writev(fd, parts)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, name)


def raw_set(base: Path, value: bytes, n: int, fanout: bool = False) -> float:
    """Seconds for ``n`` crash-safe replaces (temp, write, fsync, rename) of ``n`` files."""
    d, names, tmp_dir = _raw_paths(base, value, n, fanout)
    t = time.perf_counter()
    for i, name in enumerate(names):
        raw_replace(f"{tmp_dir}/t{i}", name, (value,))
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


# -- the tables (shared with bench/adapters_ec.py) -------------------------------------------

Timings = dict[str, list[float]]  # row label -> best seconds per measured operation


def best_of(rounds: int, one_round: Callable[[], Mapping[str, Sequence[float]]]) -> Timings:
    """Per label, the smallest of each figure over ``rounds`` calls of ``one_round``. A round
    measures every variant once, so a slow phase of the (noisy, shared) disk hits all of them
    rather than one."""
    best: Timings = {}
    for _ in range(rounds):
        for label, times in one_round().items():
            old = best.setdefault(label, [float("inf")] * len(times))
            best[label] = [min(a, b) for a, b in zip(old, times, strict=True)]
    return best


def fmt_row(size: str, op: str, label: str, n: int, seconds: float, nbytes: int, raw: float) -> str:
    ops = n / seconds
    return f"| {size} | {op} | {label} | {ops:,.0f} | {ops * nbytes / 1e6:,.1f} | {raw / seconds:.2f}x |"


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options both scripts take (``doc``'s first line is the description)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the filesystem to measure")
    return parser


def print_section(
    args: argparse.Namespace,
    sizes: list[tuple[int, str, int]],
    one_round: Callable[[Path, bytes, int], Mapping[str, Sequence[float]]],
    labels: dict[str, list[str]],
    *,
    title: str,
    prefix: str,
    where: str,
    more: Callable[[str, int, int, Timings], Iterable[str]] | None = None,
) -> None:
    """One markdown section: heading, setup line, then the table, printed a size at a time.

    Per size, ``one_round(base, value, n)`` times ``n`` operations of every row on a random
    ``value`` (seconds per op, in the order of ``labels``: set, get, ...), best of
    ``args.rounds``. ``base`` is a fresh directory (named ``prefix``..., in ``args.dir``, removed
    at the end) that ``where`` names in the setup line (``{base}`` is replaced). The table has
    ``labels[op]``'s rows of each op against its ``raw`` row, then the rows ``more`` adds.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=args.dir))
    print(f"## Adapters: {title}\n\n{platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {where.format(base=base)}, best of {args.rounds}\n")  # fmt: skip
    print("| size | op | variant | ops/s | MB/s | vs raw |")
    print("|---|---|---|---:|---:|---:|")
    try:
        for nbytes, size, n in sizes:
            value = os.urandom(nbytes)
            best = best_of(args.rounds, functools.partial(one_round, base, value, n))
            for i, (op, rows) in enumerate(labels.items()):
                for label in rows:
                    print(fmt_row(size, op, label, n, best[label][i], nbytes, best["raw"][i]))
            for row in more(size, nbytes, n, best) if more else ():
                print(row)
            sys.stdout.flush()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- this section ------------------------------------------------------------------------------

ROWS = {
    op: ["raw", "raw fan-out", *(v.label for v in VARIANTS if op == "get" or v.sets)] for op in ("set", "get")
}


def one_round(base: Path, value: bytes, n: int) -> dict[str, tuple[float, float]]:
    """``[set, get]`` seconds of every row, once."""
    results = {
        "raw": (raw_set(base, value, n), raw_get(base, value, n)),
        "raw fan-out": (raw_set(base, value, n, True), raw_get(base, value, n, True)),
    }
    results.update({v.label: sos_run(base, value, n, v) for v in VARIANTS})
    return results


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--sos-only", action="store_true", help="skip bench/adapters_ec.py")
    args = parser.parse_args()
    print_section(
        args, SIZES, one_round, ROWS, title="SOS", prefix="ooo-bench-adapters-", where="directory {base}"
    )
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
