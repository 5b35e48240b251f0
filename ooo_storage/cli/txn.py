"""``ooo-storage txn URL FILE|-``: apply the transaction in FILE (or stdin) all or nothing.

FILE holds the body of ``POST /?api=txn`` (docs/protocol.md §4.7)::

    {"expect": {"accounts/a": 1796282432824439747, "accounts/c": null},
     "ops": [{"op": "set", "key": "accounts/a", "data": {"balance": 90}},
             {"op": "patch", "key": "accounts/b", "data": {"balance": 110}},
             {"op": "del", "key": "holds/*"}]}

On success it prints the answer, ``{"revision": "<hex>", "indexes": [...]}``, as one JSON line.
Exit status: those of the other client commands (``cli/client.py``: 1 an error, 2 a FILE that
cannot be read or is not such an object, 3/4 refused by the access policy), and
:data:`CONFLICT` (5) when ``expect`` no longer holds: nothing was applied; the keys that changed
are named on stderr: read them again and retry. ``ooo_storage.cli`` owns the parser and calls
:func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from ..client import Client, ClientOptions, TxnConflict
from .client import EPILOG, TOKEN_ENV, _print, _run

__all__ = ["CONFLICT", "add_parsers"]

CONFLICT = 5
"""Exit status when the server answers 409: a key of ``expect`` changed; nothing was applied."""
_SUMMARY = "apply the transaction in FILE (- for stdin) all or nothing and print its revision"
_MEMBERS = frozenset({"ops", "expect"})


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``txn``; it sets ``func(args) -> exit status``."""
    parser = subparsers.add_parser(
        "txn", help=_SUMMARY, description=f"{_SUMMARY}. FILE holds the body of POST /?api=txn: "
        '{"ops": [{"op": "set"|"patch"|"del", "key": ..., "data": ...}], "expect": {key: version|null}}.',
        epilog=f"{EPILOG} Exit status {CONFLICT}: conflict (409: a key of expect changed since it was read; "
        "nothing was applied: read again and retry).",
    )
    parser.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8800")
    parser.add_argument("file", metavar="FILE", help="the transaction as JSON, or - to read it from stdin")
    parser.add_argument("--token", help=f"bearer token (Authorization header); default: ${TOKEN_ENV}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read FILE, send it, print the answer; the exit status (module doc)."""
    conflicts: list[TxnConflict] = []

    async def command(client: Client, args: argparse.Namespace) -> None:
        ops, expect = transaction(read(args.file))
        try:
            _print(await client.txn(ops, expect))
        except TxnConflict as exc:
            conflicts.append(exc)

    status = _run(command, args, ClientOptions())
    if conflicts:
        print(f"ooo-storage: conflict: {conflicts[0].message}", file=sys.stderr)
        return CONFLICT
    return status


def read(file: str) -> bytes:
    """The bytes of ``file`` (``-``: stdin); ValueError (exit 2) when it cannot be read."""
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        with open(file, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {file}: {exc.strerror or exc}") from None


def transaction(text: bytes) -> tuple[list[Any], dict[str, Any] | None]:
    """The ops and expect of a transaction document; ValueError (exit 2) for one that is not a
    JSON object of those members. The server checks the rest, and says why it refuses."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the transaction is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ops"), list) or set(doc) - _MEMBERS:
        raise ValueError('the transaction must be a JSON object {"ops": [...], "expect": {...}} '
                         "(expect is optional)")
    expect = doc.get("expect")
    return doc["ops"], expect
