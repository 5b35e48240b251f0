"""``ooo-storage`` command line: one subcommand module each (``serve``, ``client`` for
get/set/push/del/watch/stats, ``txn``, ``token`` for new/hash, ``erasure`` for scrub/repair, ``config`` for
show, ``backup`` for export/import); each adds its parsers with ``add_parsers(subparsers)`` and
sets ``func(args) -> exit status``. Subcommand modules load what they need (the server, the
store) only when they run. ``serve``'s arguments are completed from ``OOO_*`` variables and
``--config FILE`` (``config.expand``) before argparse reads them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import backup, client, config, erasure, serve, token, txn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ooo-storage", description="Layered key/value store with live JSON-patch streams."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, client, txn, token, erasure, config, backup):
        module.add_parsers(subparsers)
    config.add_config_option(config.serve_parser(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(config.expand(parser, sys.argv[1:] if argv is None else argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
