"""Shared directories (issue 11): how long a write made by one process takes to reach another.

    .venv/bin/python bench/shared_dirs.py [--writes 600] [--rounds 2]

Two processes on one SOS root (``SOSLayer(root, shared=SharedOptions(indexer=...),
durability="none")``, each with a memory mirror): a writer child sets ``k/<n % 10>`` ``--writes``
times, 10-40 ms apart, and prints the CLOCK_MONOTONIC time at which each set returned; this
process records when each arrives through ``on_commit``. The latency is the difference (from the
writer's acknowledgement to the reader's event), for ``indexer="auto"`` (inotify plus polling) and
``indexer="poll"`` (polling every ``indexer_rate`` = 0.1 s, as over NFS), alternating per round.
Every write must arrive once, in each key's order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path[0] = str(Path(__file__).resolve().parents[1])

from ooo_storage import Layered, MemoryLayer  # noqa: E402
from ooo_storage.layers.shared import SharedOptions  # noqa: E402
from ooo_storage.layers.sos import SOSLayer  # noqa: E402
from ooo_storage.protocol.objects import Event  # noqa: E402

WRITER = r"""
import asyncio, random, sys, time
from ooo_storage import Layered, MemoryLayer
from ooo_storage.layers.shared import SharedOptions
from ooo_storage.layers.sos import SOSLayer

async def main(root, indexer, writes):
    layer = SOSLayer(root, shared=SharedOptions(indexer=indexer), durability="none")
    async with Layered(memory=MemoryLayer(), embedded=layer) as store:
        print("READY", flush=True)
        sys.stdin.readline()
        rng = random.Random(7)
        for n in range(writes):
            await store.set(f"k/{n % 10}", {"n": n})
            print(n, time.monotonic_ns(), flush=True)
            await asyncio.sleep(rng.uniform(0.01, 0.04))  # pacing: writes a few tens of ms apart
        print("DONE", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def one_round(indexer: str, writes: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="ooo-bench-shared-") as root:
        layer = SOSLayer(root, shared=SharedOptions(indexer=indexer), durability="none")
        arrived: dict[int, int] = {}
        order: dict[str, list[int]] = {}
        done = asyncio.Event()

        def seen(event: Event) -> None:
            assert event.object is not None
            n = orjson.loads(event.object.data)["n"]
            assert n not in arrived, f"write {n} arrived twice"
            arrived[n] = time.monotonic_ns()
            order.setdefault(event.key, []).append(n)
            if len(arrived) == writes:
                done.set()

        async with Layered(memory=MemoryLayer(), embedded=layer) as store:
            store.on_commit(seen)
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, root, indexer, str(writes),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": sys.path[0]},
            )  # fmt: skip
            assert child.stdin is not None and child.stdout is not None
            assert await child.stdout.readline() == b"READY\n"
            child.stdin.write(b"go\n")
            acked: dict[int, int] = {}
            while (line := await child.stdout.readline()) != b"DONE\n":
                n, at = map(int, line.split())
                acked[n] = at
            await asyncio.wait_for(done.wait(), 30)
            await child.wait()
        for key, ns in order.items():
            assert ns == sorted(ns), f"{key}: out of order"
        return [(arrived[n] - acked[n]) / 1e6 for n in range(writes)]


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"auto": [], "poll": []}
    for r in range(args.rounds):
        for indexer in ("auto", "poll") if r % 2 == 0 else ("poll", "auto"):
            results[indexer].extend(await one_round(indexer, args.writes))
    print(f"{args.writes} writes x {args.rounds} rounds, writer ack -> reader on_commit, ms:")
    print("| indexer | median | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for indexer, latencies in results.items():
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        print(f"| {indexer} | {cuts[49]:.1f} | {cuts[89]:.1f} | {cuts[98]:.1f} | {max(latencies):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
