"""HTTP write benchmark: POST point writes, ooo-storage vs a bare aiohttp handler doing the same put.

    .venv/bin/python bench/http_writes.py [--connections 32] [--seconds 3] [--rounds 6] [--profile]

The baseline is an aiohttp ``POST /{key}`` handler that puts the body into plyvel and answers
``{"index": ...}``; ours is ``create_app`` over a memory + LevelDB layered store (what
``ooo-storage serve --data DIR`` runs), with the same plyvel options as the baseline. Both write to a
fresh LevelDB in a temporary directory. ``--connections`` keep-alive connections each POST one
request at a time to keys cycling over ``--keys`` distinct keys (so a run mixes creates and
overwrites), with a ~100 B JSON body. Each round runs a warm-up second then ``--seconds`` of
counting, alternating between the servers; the ratio is the median of per-round ratios (target
>= 0.6).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

# Import bench/ as a package of the repository root, so that both `python bench/<script>.py` and
# `python -m bench.<script>` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import (  # noqa: E402
    BENCH,
    HttpLoadResult,
    Target,
    hot_frames,
    http_load,
    profiled,
    replace_section,
    serve,
    table,
)

BODY = b'{"sensor":"greenhouse-7","temperature":21.5,"humidity":0.43,"tags":["a","b"],"ok":true}'


async def run(args: argparse.Namespace) -> tuple[list[HttpLoadResult], list[HttpLoadResult]]:
    paths = [f"/bench/{i}" for i in range(args.keys)]
    connections = args.connections

    def request(c: int, n: int) -> tuple[str, str, bytes]:
        return "POST", paths[(n * connections + c) % len(paths)], BODY

    async def round_(target: Target) -> HttpLoadResult:
        return await http_load(target, request, connections=connections, seconds=args.seconds)

    with (
        tempfile.TemporaryDirectory(prefix="ooo-bench-") as tmp,
        serve("http-baseline", "--data", f"{tmp}/baseline") as baseline,
        serve("ooo", "--data", f"{tmp}/ours") as ours,
    ):
        results: tuple[list[HttpLoadResult], list[HttpLoadResult]] = ([], [])
        profile = BENCH / "out" / "http-ooo.collapsed" if args.profile else None
        with profiled(ours, profile):
            for r in range(args.rounds):
                pair = [(baseline, results[0]), (ours, results[1])]
                for target, into in pair if r % 2 == 0 else reversed(pair):
                    into.append(await round_(target))
    if profile is not None:
        print(f"Hot frames of our server (py-spy, {profile}):\n\n{hot_frames(profile)}\n")
    return results


def report(args: argparse.Namespace, baseline: list[HttpLoadResult], ours: list[HttpLoadResult]) -> str:
    def median(values: object) -> float:
        return statistics.median(values)  # type: ignore[arg-type]

    observed = median(o.rate / b.rate for o, b in zip(ours, baseline, strict=True))
    ratio = median(b.cpu_us for b in baseline) / median(o.cpu_us for o in ours)
    busy = median(r.bench_cpu / r.seconds for r in baseline + ours)

    def row(name: str, results: list[HttpLoadResult]) -> list[str]:
        best = max(results, key=lambda r: r.rate)
        cpu_us = median(r.cpu_us for r in results)
        return [name, f"{median(r.rate for r in results):,.0f}",
                " / ".join(f"{r.rate:,.0f}" for r in results),
                f"{best.percentile(50):.2f} / {best.percentile(99):.2f}", f"{cpu_us:.0f}",
                f"{1e6 / cpu_us:,.0f}"]

    text = table(
        ["server", "req/s seen (median)", "rounds", "p50 / p99 ms (best round)",
         "server CPU µs/req", "capacity req/s/core"],
        [row("bare aiohttp + plyvel put", baseline), row("ooo-storage (memory + LevelDB)", ours),
         ["**ratio ours/baseline** (target >= 0.6)", f"{observed:.2f}", "", "", "",
          f"**{ratio:.2f}**"]],
    )
    return (
        f"{args.connections} keep-alive connections, one request in flight each, {args.keys} keys, "
        f"{len(BODY)} B bodies, {args.rounds} rounds of {args.seconds:g} s (after 1 s warm-up) "
        f"alternating between the servers (medians shown); each server in a child process, the "
        f"load generator in the bench process, 127.0.0.1, 2 cores shared with other work. The "
        f"load generator was {busy:.0%} busy, so req/s seen depends on the machine's other load; "
        f"the servers are compared by CPU per request.\n\n{text}\n\n"
        f"Command: `.venv/bin/python bench/http_writes.py --connections {args.connections} "
        f"--seconds {args.seconds:g} --rounds {args.rounds}`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="py-spy our server (bench/out/)")
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    baseline, ours = asyncio.run(run(args))
    text = report(args, baseline, ours)
    print("## Server: HTTP writes\n\n" + text)
    if not args.no_results:
        replace_section(BENCH / "RESULTS.md", "Server: HTTP writes", text)


if __name__ == "__main__":
    main()
