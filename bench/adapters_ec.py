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

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapters import Timings, _timed, arg_parser, fmt_row, print_section, raw_replace  # noqa: E402

from ooo_storage.layers.erasure.codec import Codec, tune_malloc
from ooo_storage.layers.erasure.store import ErasureStore

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
            raw_replace(tmp, name, parts)
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


ROWS = {op: ["raw", *(v.label for v in VARIANTS)] for op in ("set", "get")}


def one_round(base: Path, value: bytes, n: int) -> dict[str, tuple[float, float, float]]:
    """``[set, get, degraded get]`` seconds of every row, once."""
    results = {"raw": (*raw_run(base, value, n), 0.0)}
    results.update({v.label: ec_run(base, value, n, v) for v in VARIANTS})
    return results


def degraded_row(size: str, nbytes: int, n: int, best: Timings) -> list[str]:
    full = best["ec full"]
    return [fmt_row(size, "get", "ec degraded (vs intact)", n, full[2], nbytes, full[1])]


def main() -> None:
    args, _ = arg_parser(__doc__).parse_known_args()  # bench/adapters.py passes its own arguments through
    tune_malloc()  # what ErasureStore.start() does; also for the raw loop
    print_section(
        args,
        SIZES,
        one_round,
        ROWS,
        title="erasure-coded",
        prefix="ooo-bench-ec-",
        where="{base}, 4+2 isa_l_rs_cauchy",
        more=degraded_row,
    )


if __name__ == "__main__":
    main()
