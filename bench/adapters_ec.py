"""Erasure-coded adapter benchmark: ErasureStore 4+2 set/get beside the raw limit of the same run.

    .venv/bin/python bench/adapters_ec.py [--rounds 3] [--dir DIR]

(also run by ``bench/adapters.py`` after its SOS section, with the same arguments).

The raw limit is measured in the same process, on the same filesystem, synchronously with no event
loop: a set is one pyeclib encode plus six shard files written temp + write + fsync + rename, one
after the other; a get reads k = 4 shard files and decodes them. Rows:

* ``ec full`` — defaults (durability "full": + fsync of each key directory; shards written in
  parallel, one executor task per drive), one operation in flight;
* ``ec data`` — durability "data": the raw syscall sequence plus the shard header and CRCs;
* ``ec full x8`` — 8 operations in flight (a server with many clients);
* ``ec degraded`` (gets only) — the ``ec full`` store with 2 of its 6 drive folders gone, so every
  read decodes from parity; "vs raw" is then relative to the intact ``ec full`` get.

1 KiB values are below ``inline_threshold`` (8 KiB): the store writes m + 1 = 3 whole copies
instead of 6 coded shards, which is why it can beat the raw 6-shard limit there. Sets overwrite
keys written once beforehand (steady state). Each figure is the best of ``--rounds`` interleaved
runs. Targets: 1 MiB ``ec full`` set >= 0.5x raw; degraded get >= 0.7x intact get.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapters import _timed, fmt_row  # noqa: E402  (the SOS section's helpers: same table)

from ooo_storage.layers.erasure import ErasureStore  # noqa: E402
from ooo_storage.layers.erasure_codec import Codec, tune_malloc  # noqa: E402

K, M = 4, 2
SIZES = [(1024, "1 KiB", 300), (64 * 1024, "64 KiB", 200), (1024 * 1024, "1 MiB", 60)]


class Variant(NamedTuple):
    label: str
    durability: str = "full"
    inflight: int = 1
    degraded: bool = False  # also measure gets with m drives gone


VARIANTS = [Variant("ec full", degraded=True), Variant("ec data", "data"), Variant("ec full x8", inflight=8)]


# -- raw limit ---------------------------------------------------------------------------------
def raw_run(base: Path, value: bytes, n: int) -> tuple[float, float]:
    """Seconds for ``n`` encode + 6 crash-safe shard replaces, then ``n`` reads of 4 shards + decode."""
    codec = Codec(K, M)
    drives = [Path(tempfile.mkdtemp(dir=base)) for _ in range(K + M)]
    names = [[str(d / f"obj{i}") for d in drives] for i in range(n)]
    shards = [b"".join(parts) for parts in codec.encode(value)]
    for row in names:  # create once, so the timed loop replaces files like the store does
        for name, shard in zip(row, shards, strict=True):
            Path(name).write_bytes(shard)
    tmps = [str(d / "tmp") for d in drives]
    t = time.perf_counter()
    for row in names:
        for name, tmp, parts in zip(row, tmps, codec.encode(value), strict=True):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.writev(fd, parts)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, name)
    set_s = time.perf_counter() - t
    t = time.perf_counter()
    for row in names:
        got = {}
        for i, name in enumerate(row[:K]):
            fd = os.open(name, os.O_RDONLY)
            got[i] = os.read(fd, os.fstat(fd).st_size)
            os.close(fd)
        codec.decode(got, len(value))
    get_s = time.perf_counter() - t
    for d in drives:
        shutil.rmtree(d)
    return set_s, get_s


# -- the store ---------------------------------------------------------------------------------
def ec_run(base: Path, value: bytes, n: int, v: Variant) -> tuple[float, float, float]:
    """Seconds for ``n`` sets, ``n`` gets and (if asked) ``n`` degraded gets of one variant."""

    async def main() -> tuple[float, float, float]:
        root = Path(tempfile.mkdtemp(dir=base))
        drives = [str(root / f"drive{i}") for i in range(K + M)]
        store = ErasureStore(drives, k=K, m=M, durability=v.durability, repair="off")
        await store.start()
        keys = [f"bench/{i}" for i in range(n)]
        for key in keys:
            await store.store(key, value)
        await store.flush()
        t = time.perf_counter()
        await _timed([lambda k=k: store.store(k, value) for k in keys], v.inflight)
        await store.flush()  # the garbage collection of the timed sets is part of their cost
        set_s = time.perf_counter() - t
        gets = [lambda k=k: store.get(k) for k in keys]
        get_s = await _timed(gets, v.inflight)
        degraded_s = 0.0
        if v.degraded:
            for d in drives[:M]:
                os.rename(d, d + ".gone")
            degraded_s = await _timed(gets, v.inflight)
        await store.close()
        shutil.rmtree(root)
        return set_s, get_s, degraded_s

    return asyncio.run(main())


def measure(base: Path, nbytes: int, n: int, rounds: int) -> dict[str, list[float]]:
    """Best ``[set, get, degraded get]`` seconds per row; rounds interleave the variants."""
    value = os.urandom(nbytes)
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        results = {"raw": (*raw_run(base, value, n), 0.0)}
        results.update({v.label: ec_run(base, value, n, v) for v in VARIANTS})
        for label, times in results.items():
            old = best.setdefault(label, [float("inf")] * 3)
            best[label] = [min(a, b) for a, b in zip(old, times, strict=True)]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the filesystem to measure")
    args, _ = parser.parse_known_args()  # bench/adapters.py passes its own arguments through
    tune_malloc()  # what ErasureStore.start() does; also for the raw loop
    base = Path(tempfile.mkdtemp(prefix="ooo-bench-ec-", dir=args.dir))
    print(f"## Adapters: erasure-coded\n\n{platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {base}, 4+2 isa_l_rs_cauchy, best of {args.rounds}\n")  # fmt: skip
    print("| size | op | variant | ops/s | MB/s | vs raw |")
    print("|---|---|---|---:|---:|---:|")
    try:
        for nbytes, size, n in SIZES:
            best = measure(base, nbytes, n, args.rounds)
            raw = best["raw"]
            for i, op in enumerate(("set", "get")):
                print(fmt_row(size, op, "raw", n, raw[i], nbytes, raw[i]))
                for v in VARIANTS:
                    print(fmt_row(size, op, v.label, n, best[v.label][i], nbytes, raw[i]))
            intact = best["ec full"][1]
            print(fmt_row(size, "get", "ec degraded (vs intact)", n, best["ec full"][2], nbytes, intact))
            sys.stdout.flush()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
