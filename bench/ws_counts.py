"""Instructions per websocket set-up and per delivery (callgrind), for each engine and a baseline.

    .venv/bin/python bench/ws_counts.py [--engines lean,aiohttp] [--baseline DIR] [--quick]

The load-free side of bench/front_regress.py's fan-out figures: CPU time on a shared machine moves
with the others' load, instruction counts do not. Each case is one process holding the server (a
memory store, ``ServerRunner`` with ``http_engine=ENGINE``; a tree without that option: its only
engine) and its clients (bench/_load.py's subscribers and writer) on asyncio's loop, run twice
under ``valgrind --tool=callgrind``, and the difference is divided by what was added:

- set-up, one glob / distinct keys: 400 against 100 subscribers (of ``feed/*``, or of ``idle/<i>``
  each), per subscriber: its connection, handshake, subscription and first frame;
- delivery: 50 against 10 POSTs of ``feed/1`` to 200 subscribers of ``feed/*``, per delivery (so it
  holds 1/200 of a POST too).

The clients' share is in every figure and the same for every server: compare differences, not
ratios of small parts. ``--quick`` uses 20/40 subscribers and 2/4 POSTs (a smoke run: start-up
noise then weighs more). valgrind is not installed by this script (apt-get install -y valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Import bench/ as a package of the repository root (see bench/http_front.py).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import (  # noqa: E402
    FrameCounter,
    HttpConnection,
    close_subscribers,
    connect_subscribers,
    table,
)
from bench.http_front import git_commit, http_engines  # noqa: E402
from bench.peers.targets import ROOT  # noqa: E402

CASES = {  # name: title
    "glob": "websocket set-up, subscribers of one glob",
    "distinct": "websocket set-up, distinct keys",
    "delivery": "one delivery (+1/200 of a POST)",
}
SUBSCRIBERS = 200  # of the delivery case


def sizes(case: str, quick: bool) -> tuple[int, int]:
    """The two sizes a case runs with: subscribers (set-up) or POSTs (delivery)."""
    if case == "delivery":
        return (2, 4) if quick else (10, 50)
    return (20, 40) if quick else (100, 400)


# The measured process


async def child(engine: str, case: str, size: int) -> None:
    from ooo_storage import Layered, MemoryLayer  # from the tree first on sys.path (main())
    from ooo_storage.server import Server
    from ooo_storage.server.runner import ServerRunner

    store = Layered(memory=MemoryLayer())
    await store.start()
    options = {} if engine == "-" else {"http_engine": engine}
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, **options))
    port = await runner.start()
    await store.set("feed/1", {"seq": 0})
    counter = FrameCounter()
    n = SUBSCRIBERS if case == "delivery" else size
    paths = [f"/idle/{i}" for i in range(n)] if case == "distinct" else ["/feed/*"] * n
    subscribers = await connect_subscribers(port, paths, counter)
    await counter.wait_for(n, 60)
    if case == "delivery":
        writer = await HttpConnection.open(port)
        for seq in range(size):
            status, body = await writer.request("POST", "/feed/1", b'{"seq":%d}' % seq)
            if status != 200:
                raise RuntimeError(f"POST /feed/1: {status} {body[:200]!r}")
        await counter.wait_for(n + n * size, 120)
        writer.close()
    await close_subscribers(subscribers, timeout=60)
    await runner.stop()
    await store.close()


# The parent


def instructions(tree: Path, engine: str, case: str, size: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-P",
               __file__, "--child", str(tree), engine, case, str(size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind gave no count for {tree} {engine} {case}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_unit(tree: Path, engine: str, case: str, quick: bool) -> float:
    small, large = sizes(case, quick)
    units = (large - small) * (SUBSCRIBERS if case == "delivery" else 1)
    counts = [instructions(tree, engine, case, size) for size in (small, large)]
    print(f"  {tree} {engine} {case}: {counts}", file=sys.stderr, flush=True)
    return (counts[1] - counts[0]) / units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engines", default="lean,aiohttp", help="of this tree (default lean,aiohttp)")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured with its only engine")
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {','.join(CASES)} (default all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tree, engine, case, size = args.child
        sys.path.insert(0, tree)  # bench._load came from this checkout already; ooo_storage from tree
        asyncio.run(child(engine, case, int(size)))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/ws_counts.py needs valgrind: apt-get install -y valgrind")
    servers = [(f"main {engine}", ROOT, engine) for engine in args.engines.split(",")]
    if args.baseline is not None:
        base = args.baseline.resolve()
        offered = http_engines(base)
        servers += ([(f"baseline {e}", base, e) for e in args.engines.split(",") if e in offered]
                    if offered else [("baseline", base, "-")])
    cases: Sequence[str] = args.cases.split(",")
    counts = {(label, case): per_unit(tree, engine, case, args.quick)
              for case in cases for label, tree, engine in servers}
    print(f"Instructions (client + server, callgrind), main = {ROOT} (git {git_commit(ROOT)})"
          + (f", baseline = {args.baseline} (git {git_commit(args.baseline)})" if args.baseline else "")
          + ":\n")
    print(table(["case", *(label for label, _, _ in servers)],
                [[CASES[case], *(f"{counts[label, case] / 1000:,.1f} k" for label, _, _ in servers)]
                 for case in cases]))


if __name__ == "__main__":
    main()
