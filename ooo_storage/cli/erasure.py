"""The admin subcommands of ``ooo-storage`` for an erasure-coded store: ``scrub`` and ``repair``.

::

    ooo-storage scrub  --drives D1 ... Dn [-k 4] [-m 2]   verify every shard, report degraded objects
    ooo-storage repair --drives D1 ... Dn [-k 4] [-m 2]   rebuild missing/corrupt shards (replaced
                                                          drives included) and collect garbage

A plain-text progress bar goes to stderr (only when it is a terminal, unless ``--progress``), the
summary to stdout as ``name: value`` lines (``--json`` for one JSON object). Exit status: 0 when
every object is healthy afterwards, 1 when some are still degraded or lost, 2 when the store
cannot be opened (wrong drives, another geometry or backend). ``ooo_storage.cli`` owns the parser
and calls :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ..errors import StorageError
from ..layers.erasure.format import DRIVE_MARKER
from ..layers.erasure.store import ErasureStore
from ..layers.fs import read_marker

__all__ = ["add_parsers", "ProgressBar"]


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``scrub`` and ``repair``; each sets ``func(args) -> exit status``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--drives", nargs="+", required=True, metavar="DIR",
                        help="the k + m drive folders, in the store's order")
    common.add_argument("-k", type=int, default=4, help="data shards (default 4)")
    common.add_argument("-m", type=int, default=2, help="parity shards (default 2)")
    common.add_argument("--backend", default=None, help="pyeclib backend (default: the store's)")
    common.add_argument("--json", action="store_true", help="print the report as one JSON object")
    common.add_argument("--progress", action="store_true",
                        help="draw the progress bar even when stderr is not a terminal")
    for name, summary in (
        ("scrub", "verify every shard of an erasure-coded store; report degraded objects"),
        ("repair", "rebuild missing or corrupt shards of an erasure-coded store, now"),
    ):
        parser = subparsers.add_parser(name, help=summary, description=summary, parents=[common])
        parser.set_defaults(func=lambda args, name=name: run(name, args))


def run(command: str, args: argparse.Namespace) -> int:
    """Open the store (repairer off), run ``scrub`` or ``repair``, print the summary."""
    options: dict[str, Any] = {"repair": "off"}
    backend = args.backend or _stored_backend(args.drives)
    if backend:
        options["ec_backend"] = backend
    bar = ProgressBar(command, sys.stderr, enabled=args.progress or sys.stderr.isatty())

    async def main() -> dict[str, Any]:
        async with ErasureStore(args.drives, k=args.k, m=args.m, **options) as store:
            if command == "scrub":
                return await store.scrub(progress=bar)
            return await store.repair(progress=bar)

    try:
        report = asyncio.run(main())
    except (StorageError, ValueError) as exc:
        bar.finish()
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.finish()
        return 130
    bar.finish()
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for name, value in report.items():
            print(f"{name}: {value}")
    return 0 if not report.get("degraded") and not report.get("lost") else 1


def _stored_backend(drives: list[str]) -> str | None:
    """The backend pinned in the first readable drive marker (so the CLI needs no --backend)."""
    for drive in drives:
        try:
            marker = read_marker(drive, DRIVE_MARKER)
        except (OSError, StorageError):
            continue
        if marker is not None and isinstance(marker.get("backend"), str):
            return str(marker["backend"])
    return None


class ProgressBar:
    """``scrub [#########-----------]  45% 450/1000 keys`` redrawn in place, at most 10 times a
    second; a no-op when disabled. Callable as the ``progress(done, total)`` of scrub/repair."""

    def __init__(self, label: str, out: TextIO, enabled: bool = True, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.out = out
        self.enabled = enabled
        self.width = width
        self._clock = clock
        self._last = -1.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.width * done // total if total else self.width
        pct = 100 * done // total if total else 100
        bar = "#" * filled + "-" * (self.width - filled)
        self.out.write(f"\r{self.label} [{bar}] {pct:3d}% {done}/{total} keys")
        self.out.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
