"""Transactions benchmark (issue 12): 2-key transfers per second at 64 clients, ooo vs etcd.

    .venv/bin/python bench/txn.py [--modes data,sync] [--rounds 5] [--seconds 5] [--warmup 2]
        [--accounts 100] [--baseline TREE] [--quick]

A transfer is one transaction that writes two accounts (``accounts/<a>``, ``accounts/<b>``, a ≠ b
random among ``--accounts``) only if two compares hold, on both servers:

- ooo: ``POST /?api=txn`` with two ``set`` ops and ``expect`` ``{"guard/<a>": null, "guard/<b>":
  null}`` (bench/wrk/txn.lua), served by ``python -m ooo_storage serve`` from this tree on LevelDB
  (``--data`` on a fresh temporary directory; ``sync``: with ``--sync``, durable before the answer);
- etcd: ``POST /v3/kv/txn`` through its v3 JSON gateway, comparing the version of both guards with 0
  and putting both accounts (bench/wrk/etcd_txn.lua); etcd fsyncs every commit, so ooo's ``sync``
  mode is the like-for-like comparison.

The guards are never written, so every compare holds and every transaction commits: this measures
what a transaction costs (parse, compare, lock, one atomic batch, events), not how often a workload
conflicts. Both servers run at once, pinned to core 0 (``taskset``), started as bench/http_front.py
starts them (its ``OooServer``, bench/peers' ``EtcdTarget``); wrk runs on core 1 (one thread, 64
keep-alive connections). After a warm-up per cell, ``--rounds`` interleaved rounds run each cell
once, the order rotating from round to round, so the machine's load drifts over all of them alike;
medians over the rounds are reported with min–max, and the ratio to etcd is the median of the
per-round ratios. A round with a non-2xx answer or a socket error is reported and left out.
Before the rounds one transfer is sent to each server and its answer checked (ooo: a revision;
etcd: ``"succeeded": true``).

``--baseline TREE`` adds the same servers run from another checkout (``git worktree add``) to the
same interleaved rounds, for a before/after in one run on the shared machine: the report then
gives, per mode, the median of the per-round ratios of this tree to the baseline.

wrk and etcd are not installed by this script (``apt-get install -y wrk etcd-server``); without
either it exits with status 1 and says so. The report (markdown) goes to stdout, progress to
stderr. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# Import bench/ as a package of the repository root (see bench/http_front.py).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import table  # noqa: E402
from bench.http_front import (  # noqa: E402
    CONNECTIONS,
    LOAD_CORE,
    SERVER_CORE,
    Cell,
    OooServer,
    Workload,
    errors_text,
    git_commit,
    latency_ms,
    log,
    median,
    ratio,
    run_rounds,
    spread,
    yes,
)
from bench.peers.targets import HOST, ROOT, EtcdTarget, install_cleanup, kill_all  # noqa: E402

GOAL = 2.0
"""Issue 12's target: at least 2× etcd's transfers per second."""


def workloads(accounts: int) -> tuple[Workload, Workload]:
    """The ooo and the etcd transfer, over ``accounts`` accounts."""
    return (Workload("txn", "2-key transfer", "txn.lua", (str(accounts),), True),
            Workload("txn", "2-key transfer", "etcd_txn.lua", (str(accounts),), True))


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer: dict[str, object] = json.loads(reply.read())
        return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def check(server: OooServer, etcd: EtcdTarget) -> None:
    """One transfer on each server, answered as the measured ones must be: committed."""
    ooo = _post(f"http://{HOST}:{server.port}/?api=txn", {
        "expect": {"guard/0": None, "guard/1": None},
        "ops": [{"op": "set", "key": "accounts/0", "data": {"balance": 1}},
                {"op": "set", "key": "accounts/1", "data": {"balance": 2}}]})
    if not isinstance(ooo.get("revision"), str):
        sys.exit(f"{server.label}: the check transfer was not committed: {ooo}")
    compares = [{"key": _b64(f"guard/{i}"), "target": "VERSION", "result": "EQUAL", "version": "0"}
                for i in (0, 1)]
    puts = [{"request_put": {"key": _b64(f"accounts/{i}"), "value": _b64('{"balance":1}')}} for i in (0, 1)]
    answer = _post(f"http://{HOST}:{etcd.port}/v3/kv/txn", {"compare": compares, "success": puts})
    if answer.get("succeeded") is not True:
        sys.exit(f"etcd: the check transfer did not succeed: {answer}")


def row(cell: Cell) -> list[str]:
    good = cell.good
    label = cell.target.label if cell.target.name == "etcd" else f"`{cell.target.name}`"
    if not good:
        return [label, "n/a", "n/a", "n/a", errors_text(cell), "", "0"]
    return [
        label, spread([run.rate for run in good]), spread([run.cpu_us for run in good], 1),
        f"{latency_ms([r.p50_us for r in good])} / {latency_ms([r.p99_us for r in good])}",
        errors_text(cell),
        f"{median([run.foreign[0] for run in good]):.0%} / {median([run.foreign[1] for run in good]):.0%}",
        str(len(good)),
    ]


def report(cells: Sequence[Cell], etcd_cell: Cell, header: Sequence[str]) -> str:
    headers = ["server", "transfers/s (min–max)", "server µs CPU/transfer (min–max)", "p50 / p99 ms",
               "bad rounds", "others core 0 / 1", "rounds"]
    parts = [*header, "", table(headers, [row(cell) for cell in [*cells, etcd_cell]])]
    rows = []
    for cell in cells:
        if cell.good and etcd_cell.good:
            times = ratio(cell, etcd_cell, lambda run: run.rate)
            cheaper = ratio(etcd_cell, cell, lambda run: run.cpu_us)
            rows.append([f"`{cell.target.name}`", f"{times:.2f}×", f"{cheaper:.2f}×",
                         yes(times >= GOAL)])
    if rows:
        parts += ["", f"Against etcd (median of per-round ratios; target ≥ {GOAL:g}× etcd's "
                      "transfers/s, like for like with `--sync`, which etcd always does):", "",
                  table(["server", "transfers/s ×", "CPU/transfer ×", f"≥ {GOAL:g}×"], rows)]
    parts += before_after(cells)
    parts += ["", "- Others core 0 / 1: the share of the server and load cores other processes took "
                  "(the machine is shared): it moves transfers/s far more than CPU per transfer."]
    return "\n".join(parts)


def before_after(cells: Sequence[Cell]) -> list[str]:
    """Per mode, this tree against ``--baseline``'s (median of per-round ratios); none without."""
    by_name = {cell.target.name: cell for cell in cells}
    rows = []
    for cell in cells:
        target = cell.target
        if not isinstance(target, OooServer) or target.tree_label != "main":
            continue
        base = by_name.get(f"baseline-{target.engine}-{target.mode}")
        if base is None or not (base.good and cell.good):
            continue
        rows.append([target.mode, f"{ratio(cell, base, lambda run: run.rate):.2f}×",
                     f"{ratio(base, cell, lambda run: run.cpu_us):.2f}×"])
    if not rows:
        return []
    return ["", "This tree against `--baseline` (median of per-round ratios):", "",
            table(["mode", "transfers/s ×", "CPU/transfer less ×"], rows)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--modes", default="data,sync", help="of data,sync (default both)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per run (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell (default 2)")
    parser.add_argument("--accounts", type=int, default=100, help="accounts to transfer between (100)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout to run the same servers from, in the same rounds")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, no warm-up: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1, 0
    unknown = [mode for mode in args.modes.split(",") if mode not in ("data", "sync")]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (choose from data, sync)")
    if args.accounts < 2:
        parser.error("--accounts: a transfer needs at least 2")
    return args


def header_lines(args: argparse.Namespace, etcd: EtcdTarget) -> list[str]:
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; "
        f"`{shlex.join(['.venv/bin/python', 'bench/txn.py', *sys.argv[1:]])}`",
        f"Versions: ooo-storage {ROOT} (git {git_commit(ROOT)}); etcd {etcd.version}.",
        f"Servers pinned to core {SERVER_CORE}, wrk to core {LOAD_CORE} (1 thread, {CONNECTIONS} "
        f"keep-alive connections); {args.accounts} accounts; {args.rounds} interleaved rounds × "
        f"{args.seconds} s after {args.warmup} s of warm-up per cell; medians over the rounds without "
        "errors.",
    ]


def main() -> None:
    args = parse_args()
    for binary, package in (("wrk", "wrk"), ("etcd", "etcd-server")):
        if shutil.which(binary) is None:
            sys.exit(f"bench/txn.py needs {binary}: apt-get install -y {package}")
    install_cleanup()
    ooo_work, etcd_work = workloads(args.accounts)
    with tempfile.TemporaryDirectory(prefix="txn_bench_") as name:
        tmp = Path(name)
        trees = [("main", ROOT), *([("baseline", args.baseline.resolve())] if args.baseline else [])]
        servers = [OooServer(label, tree, "lean", True, mode, tmp)
                   for mode in args.modes.split(",") for label, tree in trees]
        etcd = EtcdTarget(SERVER_CORE, tmp)
        try:
            for target in [*servers, etcd]:
                target.start()
                log(f"started {target.label} (pid {target.pid}): {shlex.join(target.command())}")
            for server in servers:
                check(server, etcd)
            cells = [Cell(ooo_work, server) for server in servers]
            etcd_cell = Cell(etcd_work, etcd)
            run_rounds([*cells, etcd_cell], args.rounds, args.seconds, args.warmup)
        finally:
            kill_all()
    print(report(cells, etcd_cell, header_lines(args, etcd)))


if __name__ == "__main__":
    main()
