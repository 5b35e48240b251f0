"""The client subcommands of ``ooo-storage``: ``get``, ``set``, ``push``, ``del``, ``watch``, ``stats``.

::

    ooo-storage get   URL KEY            print the object (or the list, for a glob) as one JSON line
    ooo-storage set   URL KEY VALUE      store VALUE (JSON text, or - for stdin); print the index
    ooo-storage push  URL PATTERN VALUE  store VALUE under a fresh key; print its index
    ooo-storage del   URL KEY            delete the key (or every match of a glob)
    ooo-storage watch URL KEY            print what changes, one JSON line per change
    ooo-storage stats URL                print the server's usage per namespace (GET /?api=stats)

Each takes ``--token TOKEN``, or the ``OOO_TOKEN`` environment variable when the flag is not given
(``--token ''`` sends none): a bearer token for a server started with ``--auth``.

Exit status (:data:`EPILOG`): 0 on success, 1 when the server answers with an error or cannot be
reached (the message goes to stderr; a missing key is ``no such key: KEY``, and ``del`` of a key
already gone exits 0 only with ``--force``), 2 for a bad argument, 3 when the server wants a (valid) token
(401), 4 when the token may not do this (403), 130 when interrupted. ``watch`` prints the first state as
``{"version", "snapshot"}``, then each change as ``{"version", "set", "del"}``: the objects written
and the keys gone since the previous state (a one-item change to a large glob is a short line;
``--full`` prints the whole state instead, as it used to). It keeps stdout for
changes and reports every disconnect (with the close code and reason, or the connection error) and
every reconnect on stderr, so a stream that keeps failing is never silent; it exits 1 where
reconnecting cannot help: a frame above ``--max-frame-bytes`` (64 MiB; the message says to raise
it), a subscription the server refuses (a glob over its item limit). ``ooo_storage.cli`` owns the
parser and calls :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..client import Client, ClientError, ClientOptions, Connected, FrameTooLarge, Status
from .serve import _integer

__all__ = ["add_parsers", "EPILOG", "UNAUTHORIZED", "FORBIDDEN"]

_Command = Callable[[Client, argparse.Namespace], Awaitable[Any]]

TOKEN_ENV = "OOO_TOKEN"
UNAUTHORIZED = 3
"""Exit status when the server answers 401: no token, an unknown one, an expired or badly signed JWT."""
FORBIDDEN = 4
"""Exit status when the server answers 403: the token (or anonymous) lacks the right on that path."""
_AUTH_EXITS = {401: UNAUTHORIZED, 403: FORBIDDEN}
EPILOG = (
    f"The token comes from --token, else from ${TOKEN_ENV} (--token '' sends none). "
    "Exit status: 0 done; 1 the server answered with an error or could not be reached; 2 bad "
    f"argument; {UNAUTHORIZED} unauthorized (401: no token, or one the server does not accept); "
    f"{FORBIDDEN} forbidden (403: the token may not do this on this path); 130 interrupted. "
    "Errors print the server's reason on stderr. A missing key is `no such key: KEY` (exit 1); "
    "`del` of a key that is already gone exits 1 too, or 0 with --force."
)


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client subcommands; each sets ``func(args) -> exit status``."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8800")
    server.add_argument("--token", help=f"bearer token (Authorization header, websocket sub-protocol); "
                        f"default: ${TOKEN_ENV}")
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument("key", metavar="KEY", help="key, or glob pattern such as users/*")
    value = argparse.ArgumentParser(add_help=False)
    value.add_argument("value", metavar="VALUE", help="JSON text, or - to read it from stdin")

    def add(name: str, command: _Command, summary: str, *parents: argparse.ArgumentParser,
            options: Callable[[argparse.Namespace], ClientOptions] = lambda args: ClientOptions()) -> Any:
        parser = subparsers.add_parser(name, help=summary, description=summary, epilog=EPILOG,
                                       parents=[server, *parents])
        parser.set_defaults(func=lambda args: _run(command, args, options(args)))
        return parser

    add("get", _get, "print the object at KEY, or the list matching a glob, as JSON", key)
    add("set", _set, "store VALUE at KEY and print its index", key, value)
    add("push", _push, "store VALUE under a fresh key of the glob KEY and print its index", key, value)
    delete = add("del", _delete, "delete KEY, or every key matching a glob", key)
    delete.add_argument("--force", action="store_true",
                        help="exit 0 when KEY does not exist (nothing to delete) instead of 1")
    watch = add("watch", _watch, "print what changes at KEY, one JSON line per change: the first state "
                "as {\"version\", \"snapshot\"}, then {\"version\", \"set\": objects written, \"del\": keys "
                "gone} (for a single key: \"set\": its object, \"del\": KEY; missing at first: no line, "
                "a note on stderr)", key,
                options=lambda args: ClientOptions(max_frame_bytes=args.max_frame_bytes))
    watch.add_argument("--full", action="store_true",
                       help="print the whole state as one JSON line after every change instead")
    watch.add_argument("--count", type=int, metavar="N", help="exit after N lines")
    watch.add_argument("--no-reconnect", action="store_true",
                       help="exit when the server closes the stream instead of reconnecting")
    watch.add_argument("--max-frame-bytes", type=_frame_limit, default=ClientOptions.max_frame_bytes,
                       metavar="N", help="largest frame accepted, e.g. the snapshot of a big glob; a "
                       f"larger one exits 1 (default {ClientOptions.max_frame_bytes}; 0 = no limit)")
    add("stats", _stats, "print the server's usage per namespace as JSON (GET /?api=stats; needs admin)")


def _frame_limit(text: str) -> int:
    limit = _integer(text)
    if limit < 0:
        raise argparse.ArgumentTypeError(f"{limit} is not a number of bytes (0 = no limit)")
    return limit


def token_of(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$OOO_TOKEN``; an empty token is none."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    return token or None


def _run(command: _Command, args: argparse.Namespace, options: ClientOptions) -> int:
    async def main() -> Any:
        async with Client(args.url, token=token_of(args), options=options) as client:
            return await command(client, args)

    try:
        asyncio.run(main())
    except _NoSuchKey as exc:
        print(f"ooo-storage: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"ooo-storage: {exc}", file=sys.stderr)
        return _AUTH_EXITS.get(exc.status, 1)
    except ValueError as exc:
        print(f"ooo-storage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `ooo-storage watch ... | head -1`
        sys.stderr.close()  # nothing more can be reported; keep the interpreter from complaining
        return 0
    return 0


def _print(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def _value(args: argparse.Namespace) -> bytes:
    # Sent verbatim: the server is the judge of what JSON it accepts, and says why it refuses.
    return sys.stdin.buffer.read() if args.value == "-" else args.value.encode()


class _NoSuchKey(Exception):
    """A 404 for a single key, said as ``no such key: KEY`` (the server's ``ooo: empty key`` and
    ``storage: not found`` are the protocol's words, not a user's)."""


async def _missing(key: str, call: Awaitable[Any], hint: str = "") -> Any:
    try:
        return await call
    except ClientError as exc:
        if exc.status == 404 and "*" not in key:
            raise _NoSuchKey(f"no such key: {key}{hint}") from None
        raise


async def _get(client: Client, args: argparse.Namespace) -> None:
    _print(await _missing(args.key, client.get(args.key)))


async def _set(client: Client, args: argparse.Namespace) -> None:
    print(await client.set(args.key, _value(args)))


async def _push(client: Client, args: argparse.Namespace) -> None:
    print(await client.push(args.key, _value(args)))


async def _delete(client: Client, args: argparse.Namespace) -> None:
    try:
        await _missing(args.key, client.delete(args.key), " (nothing deleted; --force exits 0 for it)")
    except _NoSuchKey:
        if not args.force:
            raise


def _report(status: Status) -> None:
    """Tell the user about connection trouble on stderr; a first connection at once goes unsaid."""
    if isinstance(status, Connected) and not status.reconnect and not status.attempt:
        return
    print(f"ooo-storage: {status}", file=sys.stderr, flush=True)


async def _watch(client: Client, args: argparse.Namespace) -> None:
    if args.count is not None and args.count <= 0:
        raise ValueError("--count must be positive")
    seen = 0
    subscription = client.subscribe(args.key, reconnect=not args.no_reconnect, on_status=_report)
    changes = _Changes(args.key, args.full)
    try:
        async with subscription:
            async for state in subscription:
                line = changes.line(state, subscription.version)
                if line is None:
                    continue
                _print(line)
                seen += 1
                if seen == args.count:
                    return
    except FrameTooLarge as exc:
        raise FrameTooLarge(exc.key, exc.size, exc.limit,
                            remedy="give --max-frame-bytes N above it (0 = no limit)") from None
    except ClientError as exc:
        if exc.status in _AUTH_EXITS:
            raise await _refusal(client, args.key, exc) from None
        raise


class _Changes:
    """What ``watch`` prints for each state: the first whole (``snapshot``), then only what changed
    since the state before: ``set`` (the objects written, newest first, for a glob a list) and
    ``del`` (the keys gone); nothing when a reconnect's snapshot changed nothing. ``--full`` prints
    every state whole. A key missing at first prints nothing (a note on stderr), so that ``--count``
    counts only real states, never the protocol's stand-in ``{"created":0,...}``."""

    def __init__(self, key: str, full: bool) -> None:
        self.key, self.full = key, full
        self.state: Any = None
        self.started = False

    def line(self, state: Any, version: str | None) -> dict[str, Any] | Any:
        before, self.state = self.state, state
        if not self.started:
            self.started = True
            if "*" not in self.key and _absent(state):  # the protocol's stand-in, not an object
                print(f"ooo-storage: no such key: {self.key} (yet: watching for it)", file=sys.stderr,
                      flush=True)
                return None
            if not self.full:
                return {"version": version, "snapshot": state}
        if self.full:
            return state
        change = _glob_change(before, state) if isinstance(state, list) else self._key_change(before, state)
        return {"version": version, **change} if change else None

    def _key_change(self, before: Any, state: Any) -> dict[str, Any]:
        if _absent(state):
            return {} if _absent(before) else {"del": self.key}
        return {} if state == before else {"set": state}


def _absent(entry: Any) -> bool:
    """The empty object a single-key stream holds while the key does not exist."""
    return not isinstance(entry, dict) or (not entry.get("created") and not entry.get("index"))


def _glob_change(before: Any, state: list[Any]) -> dict[str, Any]:
    """The items of a glob's list written or gone between two states, by key."""
    old = {_path(entry): entry for entry in before or ()}
    written = [entry for entry in state if old.get(_path(entry)) != entry]
    kept = {_path(entry) for entry in state}
    gone = [path for path in old if path not in kept]
    return {name: items for name, items in (("set", written), ("del", gone)) if items}


def _path(entry: Any) -> Any:
    return entry.get("path", entry.get("index")) if isinstance(entry, dict) else entry


async def _refusal(client: Client, key: str, refused: ClientError) -> ClientError:
    """The server's reason for refusing to let ``key`` be watched (401/403).

    A refused websocket upgrade gives only a status (aiohttp does not read its body), and the
    server decides a subscription as it decides a GET of the same key (both need ``read``), so a
    GET asks for the reason; if it is not refused the same way, the upgrade's status is all we say.
    """
    try:
        await (client.get_page(key, limit=1) if "*" in key else client.get(key))
    except ClientError as exc:
        if exc.status == refused.status:
            return ClientError(exc.status, f"subscription refused: {exc.message}")
    return refused


async def _stats(client: Client, args: argparse.Namespace) -> None:
    _print(await client.stats())
