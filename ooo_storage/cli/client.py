"""The client subcommands of ``ooo-storage``: ``get``, ``set``, ``push``, ``del`` and ``watch``.

::

    ooo-storage get   URL KEY            print the object (or the list, for a glob) as one JSON line
    ooo-storage set   URL KEY VALUE      store VALUE (JSON text, or - for stdin); print the index
    ooo-storage push  URL PATTERN VALUE  store VALUE under a fresh key; print its index
    ooo-storage del   URL KEY            delete the key (or every match of a glob)
    ooo-storage watch URL KEY            print the state as one JSON line after every change

Exit status: 0 on success, 1 when the server answers with an error or cannot be reached (the message
goes to stderr), 2 for a bad argument, 130 when interrupted. ``watch`` keeps stdout for states and
reports every disconnect (with the close code and reason, or the connection error) and every
reconnect on stderr, so a stream that keeps failing is never silent. ``ooo_storage.cli`` owns the
parser and calls :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..client import Client, ClientError, Connected, Status

__all__ = ["add_parsers"]

_Command = Callable[[Client, argparse.Namespace], Awaitable[Any]]


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client subcommands; each sets ``func(args) -> exit status``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8800")
    common.add_argument("key", metavar="KEY", help="key, or glob pattern such as users/*")
    common.add_argument("--token", help="bearer token (Authorization header, websocket sub-protocol)")
    value = argparse.ArgumentParser(add_help=False)
    value.add_argument("value", metavar="VALUE", help="JSON text, or - to read it from stdin")

    def add(name: str, command: _Command, summary: str, *parents: argparse.ArgumentParser) -> Any:
        parser = subparsers.add_parser(name, help=summary, description=summary,
                                       parents=[common, *parents])
        parser.set_defaults(func=lambda args: _run(command, args))
        return parser

    add("get", _get, "print the object at KEY, or the list matching a glob, as JSON")
    add("set", _set, "store VALUE at KEY and print its index", value)
    add("push", _push, "store VALUE under a fresh key of the glob KEY and print its index", value)
    add("del", _delete, "delete KEY, or every key matching a glob")
    watch = add("watch", _watch, "print the state of KEY as one JSON line after every change")
    watch.add_argument("--count", type=int, metavar="N", help="exit after N states")
    watch.add_argument("--no-reconnect", action="store_true",
                       help="exit when the server closes the stream instead of reconnecting")


def _run(command: _Command, args: argparse.Namespace) -> int:
    async def main() -> Any:
        async with Client(args.url, token=args.token) as client:
            return await command(client, args)

    try:
        asyncio.run(main())
    except ClientError as exc:
        print(f"ooo-storage: {exc}", file=sys.stderr)
        return 1
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


async def _get(client: Client, args: argparse.Namespace) -> None:
    _print(await client.get(args.key))


async def _set(client: Client, args: argparse.Namespace) -> None:
    print(await client.set(args.key, _value(args)))


async def _push(client: Client, args: argparse.Namespace) -> None:
    print(await client.push(args.key, _value(args)))


async def _delete(client: Client, args: argparse.Namespace) -> None:
    await client.delete(args.key)


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
    async with subscription:
        async for state in subscription:
            _print(state)
            seen += 1
            if seen == args.count:
                return
