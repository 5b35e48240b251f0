"""``ooo-storage serve``: the HTTP and websocket server over a memory mirror and LevelDB.

::

    ooo-storage serve [--host 127.0.0.1] [--port 8800] [--data ./data] [--memory-only] [--sync] [--static]
                      [--max-body-bytes N] [--allowed-origin ORIGIN ...] [--allowed-host HOST ...]
                      [--max-connections N] [--header-timeout S] [--body-timeout S]
                      [--keepalive-timeout S] [--max-head-bytes N] [--max-line-size N]
                      [--max-field-size N] [--max-headers N] [--list-limit N] [--outbox-bytes N]
                      [--write-timeout S] [--no-patch] [--loop auto] [--log-level info]

Every option is checked while parsing: a bad value (``--port 99999``, a zero timeout, a malformed
origin) is an argparse error (exit 2) that says what is expected.

``serve`` runs until SIGINT or SIGTERM, then stops listening, closes every websocket with 1001,
lets in-flight requests finish and closes the store (LevelDB included). On a full disk it answers
503 until the database can be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from .. import __version__
from ..errors import NoSpace, StorageError
from ..protocol.origins import ANY, normalize_origin, split_host

log = logging.getLogger("ooo_storage")

def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _port(text: str) -> int:
    port = _integer(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port: 0..65535 (0 picks a free one)")
    return port


def _positive(text: str) -> int:
    number = _integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} must be a positive integer")
    return number


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{text} must be a positive, finite number of seconds")
    return seconds


def _checked_by(rule: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that validates with ``rule`` (one of ``protocol.origins``), ``*`` aside."""

    def check(text: str) -> str:
        if text != ANY:
            try:
                rule(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


# Connection limits, passed to the server only when given, so that their defaults live in one place
# (ServerConfig); the help texts state them and tests/server/test_server_cli.py checks they agree.
_LIMITS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    (
        "--max-connections",
        _positive,
        "N",
        "most open connections, websockets included (default: from ulimit -n, keeping a quarter of "
        "it for files: 768 under ulimit -n 1024); at the limit the oldest connection waiting for a "
        "request is closed, or a new one refused with 503 when all are busy",
    ),
    ("--header-timeout", _seconds, "S", "seconds a request head may take from its first byte (default 10)"),
    ("--body-timeout", _seconds, "S", "a request body that receives nothing for S seconds ends (default 30)"),
    ("--keepalive-timeout", _seconds, "S", "seconds a connection may idle between requests (default 75)"),
    ("--max-head-bytes", _positive, "N", "largest request head: request line and headers (default 32768)"),
    ("--max-line-size", _positive, "N", "longest request line (default 8190)"),
    ("--max-field-size", _positive, "N", "longest header name or value (default 8190)"),
    ("--max-headers", _positive, "N", "most headers in one request (default 100)"),
    ("--list-limit", _positive, "N", "most items a glob GET returns, and the largest ?limit= (default 1000)"),
    (
        "--outbox-bytes",
        _positive,
        "N",
        "bytes that may wait for one subscriber that does not keep up before it is dropped; "
        "a single larger frame is still delivered (default 8388608)",
    ),
    (
        "--write-timeout",
        _seconds,
        "S",
        "a subscriber whose socket takes nothing for S seconds is dropped (default 15)",
    ),
)


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limit options given on the command line, as ServerConfig fields."""
    names = (flag[2:].replace("-", "_") for flag, *_ in _LIMITS)
    return {name: value for name in names if (value := getattr(args, name)) is not None}


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "serve the store over HTTP and websockets"
    serve = subparsers.add_parser("serve", help=summary, description=summary)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8800, help="port (default 8800; 0 = any free)")
    serve.add_argument("--data", default="./data", help="LevelDB directory (default ./data)")
    serve.add_argument("--memory-only", action="store_true", help="keep nothing on disk")
    serve.add_argument(
        "--sync",
        action="store_true",
        help="durable writes: acknowledge only once on disk (concurrent writes share one fsync)",
    )
    serve.add_argument("--static", action="store_true", help="refuse every route without a matching filter")
    serve.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=10 * 1024 * 1024,
        metavar="N",
        help="largest POST/PATCH body (default 10 MiB)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        type=_checked_by(normalize_origin),
        metavar="ORIGIN",
        dest="allowed_origins",
        help="web page origin (scheme://host[:port]) allowed to use the server from a browser, HTTP "
        "and websockets alike; '*' allows any (repeatable; default: same-origin pages only)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        type=_checked_by(split_host),
        metavar="HOST",
        dest="allowed_hosts",
        help="Host name (name or name:port) to answer besides the bound address (and localhost when "
        "bound to loopback): needed behind a reverse proxy or to use a DNS name; '*' answers any "
        "(repeatable)",
    )
    for flag, kind, metavar, text in _LIMITS:
        serve.add_argument(flag, type=kind, metavar=metavar, help=text)
    serve.add_argument("--no-patch", action="store_true", help="send snapshots instead of patches")
    serve.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop (default auto: uvloop when installed, it serves HTTP markedly faster)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="logging level (default info)",
    )
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _run(_serve(args), args.loop)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130
    except (OSError, StorageError) as exc:  # port in use, database locked or unwritable...
        log.error("%s", exc)
        return 1
    return 0


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise SystemExit("ooo-storage: --loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def _serve(args: argparse.Namespace) -> None:
    from ..layered import Layered
    from ..layers import LevelDBLayer, MemoryLayer
    from ..server import serve

    embedded = None if args.memory_only else LevelDBLayer(args.data, sync=args.sync)
    store = Layered(memory=MemoryLayer(), embedded=embedded)
    starting: asyncio.Task[None] | None = None
    try:
        await store.start()
    except NoSpace as exc:
        # Opening LevelDB writes (its log becomes a table): serve 503s until there is room.
        log.error("%s: serving 503 until the database can be opened (retrying)", exc)
        starting = asyncio.create_task(_start_when_possible(store))
    try:
        await serve(
            store,
            args.host,
            args.port,
            static=args.static,
            no_patch=args.no_patch,
            max_body_bytes=args.max_body_bytes,
            allowed_origins=tuple(args.allowed_origins),
            allowed_hosts=tuple(args.allowed_hosts),
            **_limits(args),
            ready=lambda port: log.info(
                "ooo-storage %s serving on http://%s:%d (%s)",
                __version__,
                args.host,
                port,
                "memory only"
                if args.memory_only
                else f"LevelDB at {args.data}{', durable writes' if args.sync else ''}",
            ),
        )
    finally:
        if starting is not None:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await store.close()
        log.info("stopped")


async def _start_when_possible(store: Any) -> None:
    """Retry ``store.start()`` with a backoff until it opens (a full disk was freed)."""
    delay = 0.2
    while not store.active:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
        try:
            await store.start()
        except StorageError as exc:
            log.warning("storage still unavailable: %s", exc)
        else:
            log.info("storage opened: serving")
