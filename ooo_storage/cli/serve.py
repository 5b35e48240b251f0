"""``ooo-storage serve``: the HTTP and websocket server over a memory mirror and LevelDB.

::

    ooo-storage serve [--host 127.0.0.1] [--port 8800] [--data ./data] [--memory-only] [--sync] [--static]
                      [--sos ROOT [--indexer-rate 0.1] | --redis URL [--namespace ooo]]
                      [--history-bytes N] [--history-age S] [--history-dir DIR]
                      [--max-body-bytes N] [--allowed-origin ORIGIN ...] [--allowed-host HOST ...]
                      [--max-connections N] [--max-connections-per-client N]
                      [--max-buffered-body-bytes N] [--header-timeout S] [--body-timeout S]
                      [--keepalive-timeout S] [--max-head-bytes N] [--max-line-size N]
                      [--max-field-size N] [--max-headers N] [--list-limit N] [--outbox-bytes N]
                      [--write-timeout S] [--no-patch] [--loop auto] [--http-engine lean] [--log-level info]
                      [--log-format text] [--access-log] [--no-metrics] [--metrics-auth] [--no-health]
                      [--auth FILE | --insecure-no-auth] [--tls-cert FILE --tls-key FILE]

Every option is checked while parsing: a bad value (``--port 99999``, a zero timeout, a malformed
origin) is an argparse error (exit 2) that says what is expected. Every option can also come from an
``OOO_*`` environment variable or a ``--config`` TOML file (``cli/config.py``, derived from this
parser: a flag added here needs nothing more); ``ooo-storage config show`` prints the result.

Access control (``--auth FILE``, a policy of ``protocol/access.py``) is loaded and validated before
anything starts: a file that cannot be used is one line on stderr and exit status 1, never a server
running with part of a policy. ``SIGHUP`` reloads the file: a good file replaces the whole policy at
once (``Server.set_policy``), a bad one is logged and the previous policy stays in force. Like
Redis's protected mode, a server bound to an address other than loopback refuses to start without
``--auth`` unless told ``--insecure-no-auth``. ``--tls-cert``/``--tls-key`` serve HTTPS and
``wss://``; files that cannot be read or do not belong together are exit status 1 too.

``serve`` runs until SIGINT or SIGTERM, then stops listening, closes every websocket with 1001,
lets in-flight requests finish and closes the store (LevelDB included). On a full disk it answers
503 until the database can be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import math
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import NoSpace, PolicyError, StorageError, StorageUnavailable
from ..protocol.access import Policy, Rule
from ..protocol.origins import ANY, names_address, normalize_origin, split_host

if TYPE_CHECKING:
    from ..layered import HistoryOptions
    from ..server import Server

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


def _non_negative(text: str) -> int:
    number = _integer(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} must be 0 or a positive integer")
    return number


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{text} must be a positive, finite number of seconds")
    return seconds


_HISTORY_MIN = 8 * 4096
"""The smallest --history-bytes: 8 segments of one page (HistoryOptions' own lower bound)."""
_HISTORY_DEFAULT = 64 << 20


def _history_bytes(text: str) -> int:
    number = _integer(text)
    if number != 0 and number < _HISTORY_MIN:
        raise argparse.ArgumentTypeError(f"{number} must be 0 (no history) or at least {_HISTORY_MIN}")
    return number


def _directory(text: str) -> str:
    """An existing directory, made absolute once (a relative one, from a config file too, is read
    against where serve started); a missing one is an error now, not at the first request."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory: create it first (mkdir -p)")
    return str(Path(text).absolute())


def _host(text: str) -> str:
    """An address to bind: a text made of digits and dots, or holding a colon, must be an IP
    address (``999.1.1.1`` would otherwise be looked up as a host name and fail only at bind)."""
    if text and (":" in text or not text.strip("0123456789.")):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    return text


class _Storage(argparse.Action):
    """The options that choose where the data lives (``--data``, ``--sync``, ``--memory-only``,
    ``--sos``, ``--redis``): stored as usual (a flag when ``nargs=0``), but two that exclude each
    other (:data:`_EXCLUDED`) are an argparse error (exit 2), in whichever order and from whichever
    source (flag, ``OOO_*``, ``--config``) they come, instead of a server that silently picks one
    and ignores the directory, the engine or the durability it was also asked for."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:
        flag = self.option_strings[0]
        given: tuple[str, ...] = getattr(namespace, "storage_flags", ())
        for other in given:
            why = _EXCLUDED.get(frozenset((flag, other)))
            if why is not None:
                raise argparse.ArgumentError(self, f"not allowed with argument {other}: {why}")
        namespace.storage_flags = (*given, flag)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


_MEMORY_ONLY = "--memory-only"
_ENGINES = ("--sos", "--redis")
_EXCLUDED: dict[frozenset[str], str] = {
    **{frozenset((_MEMORY_ONLY, other)): "--memory-only keeps nothing on disk"
       for other in ("--data", "--sync", *_ENGINES)},
    frozenset(_ENGINES): "a server stores in one place: SOS or Redis, not both",
    **{frozenset(("--data", engine)): f"--data is the LevelDB directory, which {engine} replaces "
       "(the event history goes in --history-dir)" for engine in _ENGINES},
    frozenset(("--sync", "--redis")): "with --redis, durability is Redis's own appendfsync setting "
    "(docs/layers.md)",
}
"""The storage options that exclude each other, and why (``--sync`` with ``--sos`` is allowed:
SOS writes are durable anyway)."""


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
    (
        "--max-connections-per-client",
        _positive,
        "N",
        "most connections one client address may keep busy (open websockets, requests in "
        "progress); more are refused with 503 (default: three quarters of --max-connections, so "
        "that others keep room). Behind a reverse proxy all clients share its address: raise it",
    ),
    (
        "--max-buffered-body-bytes",
        _positive,
        "N",
        "most request-body bytes buffered at once over all requests, at least --max-body-bytes; "
        "a body over 64 KiB that does not fit is refused with 503 and Retry-After (default 268435456)",
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
        "bytes that may wait for one subscriber that does not keep up; beyond them its queued "
        "changes are dropped and it gets one fresh snapshot once it drains; a single larger frame "
        "is still delivered (default 8388608)",
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
    serve.add_argument("--host", type=_host, default="127.0.0.1",
                       help="interface to bind: an IP address or a host name (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8800, help="port (default 8800; 0 = any free)")
    serve.add_argument("--data", action=_Storage, default="./data",
                       help="LevelDB directory (default ./data)")
    serve.add_argument("--memory-only", action=_Storage, nargs=0, default=False,
                       help="keep nothing on disk (not with --data or --sync)")
    serve.add_argument(
        "--sync",
        action=_Storage,
        nargs=0,
        default=False,
        help="durable writes: acknowledge only once on disk (concurrent writes share one fsync)",
    )
    serve.add_argument(
        "--reserve-bytes",
        type=_non_negative,
        default=None,
        metavar="N",
        help="disk space kept aside beside the database for the day the disk fills: released then, "
        "so that LevelDB can recover and deletes can free space (default 32 MiB; 0: none)",
    )
    serve.add_argument(
        "--sos",
        action=_Storage,
        default=None,
        metavar="ROOT",
        help="store in an SOS directory instead of LevelDB (durable writes): several servers on one "
        "ROOT see each other's writes within --indexer-rate (docs/layers.md)",
    )
    serve.add_argument(
        "--redis",
        action=_Storage,
        default=None,
        metavar="URL",
        help="store in Redis (redis://host:6379/0) instead of LevelDB: every server on one Redis and "
        "--namespace serves the same data, every write in one order (docs/layers.md)",
    )
    serve.add_argument("--namespace", default="ooo", metavar="NAME",
                       help="with --redis: the prefix of this store's Redis keys (default ooo)")
    serve.add_argument(
        "--indexer-rate",
        type=_seconds,
        default=0.1,
        metavar="S",
        help="with --sos: seconds between two looks for the other servers' writes (default 0.1; "
        "inotify usually tells sooner on a local filesystem)",
    )
    serve.add_argument(
        "--history-bytes",
        type=_history_bytes,
        default=None,
        metavar="N",
        help="keep an event history of at most N bytes in --history-dir, so that a watch can resume "
        "from a revision (the oldest events are dropped first; default: off, 64 MiB with "
        "--history-age or --history-dir; 0: off)",
    )
    serve.add_argument(
        "--history-age",
        type=_seconds,
        default=None,
        metavar="S",
        help="drop history events older than S seconds (turns the history on; default: kept until "
        "--history-bytes is reached)",
    )
    serve.add_argument(
        "--history-dir",
        default=None,
        metavar="DIR",
        help="where this server keeps its event history (turns the history on; default "
        "<data>/history with LevelDB). Required with --sos and --redis: the servers sharing a "
        "store each need their own history directory, never one another's",
    )
    serve.add_argument(
        "--backup-dir",
        type=_directory,
        default=None,
        metavar="DIR",
        help="an existing directory that POST /?api=backup&target=NAME may write snapshots into "
        "(DIR/NAME); default: none, backups over HTTP are off (403)",
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
    access = serve.add_mutually_exclusive_group()
    access.add_argument(
        "--auth",
        metavar="FILE",
        help="access policy (TOML: tokens, JWTs, anonymous rules, namespaces), checked at start; "
        "SIGHUP reloads it (a bad new file keeps the old policy); `ooo-storage token new` makes tokens",
    )
    access.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without --auth on an address other than loopback: anyone who can reach the port "
        "may read, write and delete every key (without it, such a server refuses to start)",
    )
    serve.add_argument("--tls-cert", metavar="FILE",
                       help="certificate chain (PEM): serve HTTPS and wss:// (with --tls-key)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM, unencrypted)")
    serve.add_argument("--no-patch", action="store_true", help="send snapshots instead of patches")
    serve.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop (default auto: uvloop when installed, it serves HTTP markedly faster)",
    )
    serve.add_argument(
        "--http-engine",
        default="lean",
        choices=("lean", "aiohttp"),
        help="who serves HTTP (default lean: a lean front answers GET, POST, PATCH and DELETE on one "
        "key and hands everything else to aiohttp; aiohttp: aiohttp serves all, the old path)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="logging level (default info)",
    )
    _add_observability(serve)
    serve.set_defaults(func=run_serve)


def _add_observability(serve: argparse.ArgumentParser) -> None:
    """Logs, metrics and health flags (docs/operations.md, Metrics, health and logs)."""
    serve.add_argument("--log-format", default="text", choices=("text", "json"),
                       help="text: '<date> <LEVEL> <logger>: <message>' lines; json: one JSON object "
                       "per line, access-log fields included (default text)")
    serve.add_argument("--access-log", action="store_true",
                       help="log one line per request: method, path, status, body bytes, microseconds, "
                       "remote address (logger ooo_storage.access; default off: it costs a few "
                       "microseconds per request)")
    serve.add_argument("--no-metrics", action="store_true",
                       help="do not serve GET /metrics (Prometheus) nor count for it; GET /metrics then "
                       "reads the key 'metrics'")
    serve.add_argument("--metrics-auth", action="store_true",
                       help="with --auth, GET /metrics needs an admin token (default: no token needed)")
    serve.add_argument("--no-health", action="store_true",
                       help="do not serve GET /healthz and GET /readyz (they then read those keys)")


class _Refused(Exception):
    """A reason not to start, said on one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Access:
    """What guards the server, settled before it starts: the policy (and its file) and TLS."""

    policy: Policy | None = None
    path: str | None = None
    tls: ssl.SSLContext | None = None


def run_serve(args: argparse.Namespace) -> int:
    from ..server.accesslog import configure_logging

    args.log_batch = configure_logging(args.log_level, args.log_format)  # --access-log writes to it too
    if args.auth is not None:
        # Until the event loop takes SIGHUP over (_reload_on_sighup), one must not kill the server.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        access = _access(args)
    except _Refused as exc:
        return _refuse(args, exc)
    try:
        _run(_serve(args, access), args.loop)
    except _Refused as exc:  # could not listen
        return _refuse(args, exc)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130
    except (OSError, StorageError) as exc:  # port in use, database locked or unwritable...
        log.error("%s", exc)
        return 1
    return 0


def _refuse(args: argparse.Namespace, exc: _Refused) -> int:
    """Say why the server does not start in the log's format: with ``--log-format json`` a JSON
    line like every other (a log collector must not get a stray text line), else plain text."""
    if args.log_format == "json":
        log.error("%s", exc)
    else:
        print(f"ooo-storage: {exc}", file=sys.stderr)
    return exc.status


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


def _access(args: argparse.Namespace) -> _Access:
    """The policy and TLS context of the command line, or :class:`_Refused` saying why not."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _Refused("serve: --tls-cert and --tls-key go together: give both or neither", status=2)
    policy = path = None
    if args.auth is not None:
        path = str(Path(args.auth).absolute())  # SIGHUP reloads the same file
        policy = load_policy(path)
        log.info("auth: %s: %s", args.auth, describe(policy))
        if not _grants_anything(policy):
            log.warning("auth: %s grants no right to anyone: every request will be refused", args.auth)
    elif not is_loopback(args.host):
        if not args.insecure_no_auth:
            raise _Refused(
                f"serve: refusing to serve {args.host} without --auth: anyone who can reach it could "
                "read, overwrite and delete every key. Give --auth FILE (tokens from `ooo-storage token "
                "new`), bind to 127.0.0.1, or pass --insecure-no-auth to serve it unprotected anyway"
            )
        log.warning("serving %s without access control (--insecure-no-auth): anyone who can reach it "
                    "may read, write and delete every key", args.host)
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    return _Access(policy, path, tls)


def _grants_anything(policy: Policy) -> bool:
    jwt_rules = policy.jwt.rules if policy.jwt is not None else ()
    return bool(policy.anonymous or jwt_rules or any(rules for _, rules in policy.tokens.values()))


def is_loopback(host: str) -> bool:
    """Whether ``--host`` binds only to loopback: 127.0.0.0/8, ::1 or ``localhost``. Any other name
    or address (``0.0.0.0``, ``::``, a LAN address, a host name) can be reached from elsewhere."""
    # A loopback Host name is one that names the loopback address (protocol/origins.py).
    return names_address(host.lower(), "127.0.0.1")


def load_policy(path: str) -> Policy:
    """:meth:`Policy.load`, every failure a :class:`_Refused` of one line."""
    try:
        return Policy.load(path)
    except (PolicyError, ValueError) as exc:  # ValueError: a file that is not UTF-8 text
        raise _Refused(_one_line(exc)) from None


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, PolicyError) else f"auth: {type(exc).__name__}: {text}"


def describe(policy: Policy) -> str:
    """What a policy lets in, for the log: counts, names and paths, never a token, digest or secret."""
    tokens = len(policy.tokens)
    parts = [f"{tokens} token{'' if tokens == 1 else 's'}"]
    if policy.jwt is None:
        parts.append("no JWT")
    else:
        algorithms = ",".join(policy.jwt.algorithms)
        parts.append(f"JWT {algorithms} ({_rules(policy.jwt.rules)})")
    parts.append(f"anonymous: {_rules(policy.anonymous)}")
    shown = [f"{ns.name}={ns.prefix}" for ns in policy.namespaces[:_SHOWN]]
    more = len(policy.namespaces) - len(shown)
    parts.append("namespaces: " + (", ".join(shown) + (f" (+{more} more)" if more > 0 else "") or "none"))
    return "; ".join(parts)


_SHOWN = 8  # rules or namespaces named in the log line; the rest are counted


def _rules(rules: tuple[Rule, ...]) -> str:
    if not rules:
        return "nothing"
    shown = [f"{'+'.join(sorted(r.rights))} on {' '.join(r.paths)}" for r in rules[:_SHOWN]]
    more = len(rules) - len(shown)
    return ", ".join(shown) + (f" (+{more} more rules)" if more > 0 else "")


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context for the PEM files ``cert`` and ``key``, or :class:`_Refused` naming the
    file that cannot be used and why."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise _Refused(f"serve: {flag} {path}: can't read it: {exc.strerror}") from None

    def no_passphrase() -> str:  # OpenSSL would otherwise ask for one on the terminal
        raise _Refused(f"serve: --tls-key {key} is encrypted: give it without a passphrase "
                       "(openssl pkey -in KEY -out PLAIN)")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise _Refused(
            f"serve: --tls-cert {cert} with --tls-key {key}: {exc.reason or exc} (both must be PEM, "
            "the key the certificate's own)"
        ) from None
    return context


def _reload(server: Server, path: str) -> None:
    """SIGHUP: the policy file again, applied whole, or the old policy kept and the reason logged."""
    try:
        policy = load_policy(path)
    except _Refused as exc:
        log.error("auth: reload failed, the previous policy stays in force: %s", exc)
        return
    except Exception as exc:  # whatever goes wrong, a reload must not take the server down
        log.error("auth: reload failed, the previous policy stays in force: %s", _one_line(exc))
        return
    closed = server.set_policy(policy)
    log.info("auth: reloaded %s: %s; %d open stream%s it refuses closed", path, describe(policy), closed,
             "" if closed == 1 else "s")


async def _serve(args: argparse.Namespace, access: _Access) -> None:
    from ..layered import Layered
    from ..layers import Layer, LevelDBLayer, MemoryLayer
    from ..layers.leveldb import DEFAULT_RESERVE
    from ..server import Server, serve
    from ..server.accesslog import DirectAccessLog

    reserve = DEFAULT_RESERVE if args.reserve_bytes is None else args.reserve_bytes
    embedded: Layer | None = (
        None if args.memory_only else LevelDBLayer(args.data, sync=args.sync, reserve_bytes=reserve)
    )
    if args.sos:
        from ..layers.sos import SOSLayer

        embedded = SOSLayer(args.sos, shared=True, indexer_rate=args.indexer_rate)
    redis_url = ""  # as logs show it: without its password
    if args.redis:
        from ..layers.redis import RedisLayer, redact

        try:
            embedded = RedisLayer(args.redis, args.namespace)
        except ValueError as exc:  # the namespace's grammar: a usage error, said on one line
            raise _Refused(f"serve: --namespace: {exc}", status=2) from None
        redis_url = redact(args.redis)
    store = Layered(memory=MemoryLayer(), embedded=embedded, history=_history(args))
    server = Server(
        store,
        static=args.static,
        no_patch=args.no_patch,
        max_body_bytes=args.max_body_bytes,
        allowed_origins=tuple(args.allowed_origins),
        allowed_hosts=tuple(args.allowed_hosts),
        auth=access.policy,
        http_engine=args.http_engine,
        access_log=DirectAccessLog(args.log_batch, args.log_format) if args.access_log else False,
        metrics=not args.no_metrics,
        metrics_auth=args.metrics_auth,
        health=not args.no_health,
        backup_dir=args.backup_dir,
        **_limits(args),
    )
    scheme = "http" if access.tls is None else "https"
    listening = False

    def ready(port: int) -> None:
        nonlocal listening
        listening = True
        log.info(
            "ooo-storage %s serving on %s://%s:%d (%s)",
            __version__,
            scheme,
            args.host,
            port,
            "memory only"
            if args.memory_only
            else f"SOS at {args.sos}, shared"
            if args.sos
            else f"Redis at {redis_url}, namespace {args.namespace}"
            if args.redis
            else f"LevelDB at {args.data}{', durable writes' if args.sync else ''}",
        )

    gc.set_threshold(*GC_THRESHOLDS)
    with _reload_on_sighup(server, access.path):
        starting: asyncio.Task[None] | None = None
        try:
            await store.start()
            _freeze_heap()
        except NoSpace as exc:
            # Opening LevelDB writes (its log becomes a table): serve 503s until there is room.
            log.error("%s: serving 503 until the database can be opened (retrying)", exc)
            starting = asyncio.create_task(_start_when_possible(store))
        except StorageUnavailable as exc:
            if not args.redis:
                raise
            # Redis not answering yet (it starts after us, it restarts), the history directory
            # in use: the same, until it starts. The error says which.
            log.error("%s: serving 503 until the store starts (retrying)", exc)
            starting = asyncio.create_task(_start_when_possible(store))
        try:
            await serve(
                store,
                args.host,
                args.port,
                server=server,
                ssl_context=access.tls,
                ready=ready,
            )
        except OSError as exc:
            if listening:
                raise
            raise _Refused(_cannot_listen(args.host, args.port, exc)) from None
        finally:
            if starting is not None:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            await store.close()
            if listening:  # a server that never listened did not stop: its error says why
                log.info("stopped")


GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds in ``serve`` (Python's: 700, 10, 10). Every stored
object (a tuple subclass, which the collector never untracks) stays tracked, so each full collection
walks the whole memory mirror, and one ran every 100 young collections, i.e. every 70 000 net
allocations: 200 000 POSTs over 100 000 keys spent 300 ms in the collector (3 full collections of
~64 ms each), with four subscribers connecting and disconnecting meanwhile 6.2 s (61 full
collections), about an eighth of the server's CPU. With a young generation of 10 000 (and
:func:`_freeze_heap`) the full collections are 14 times rarer: 38 ms and 0.9 s in the same runs,
the same RSS (a young collection pauses ~2 ms instead of ~0.15 ms; garbage cycles wait for at most
10 000 more allocations before the first look)."""


def _freeze_heap() -> None:
    """Once the store is loaded: collect, then move every object alive (modules, the server, the
    loaded mirror) out of every later collection (``gc.freeze``), so that a full collection walks
    only what was allocated since (about 48 000 objects fewer). Nothing frozen is garbage (the
    collection before); a frozen object is still freed when its last reference goes, only a cycle
    of them would stay: what start-up built lives as long as the server."""
    gc.collect()
    gc.freeze()


def _history(args: argparse.Namespace) -> HistoryOptions | None:
    """The event history asked for: off unless --history-bytes (not 0) or --history-age is given.
    Off by default because nothing the server serves reads it yet (resuming a websocket from a
    revision comes next), while it costs a write per event and, with --sync, a second fsync."""
    from ..layered import HistoryOptions

    size, age, directory = args.history_bytes, args.history_age, args.history_dir
    if size == 0 or (size is None and age is None and directory is None):
        return None
    if args.memory_only:
        raise _Refused("serve: --history-bytes/--history-age/--history-dir keep the history on disk: "
                       "not with --memory-only", status=2)
    if directory is None:
        engine = "--sos" if args.sos else "--redis" if args.redis else None
        if engine is not None:
            # The default (./data/history) would be one journal for every server started in the
            # same directory: the second server would be refused at start (the directory is locked).
            raise _Refused(f"serve: the event history with {engine} needs --history-dir DIR, a "
                           "directory of this server alone (servers sharing a store must not "
                           "share a history)", status=2)
        directory = str(Path(args.data) / "history")
    return HistoryOptions(directory, max_bytes=size or _HISTORY_DEFAULT, max_age=age)


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why the server could not listen, naming the option to change."""
    if isinstance(exc, socket.gaierror):
        return f"serve: --host {host}: no such host or address ({exc.strerror})"
    return f"serve: cannot listen on --host {host} --port {port}: {exc.strerror or exc}"


@contextlib.contextmanager
def _reload_on_sighup(server: Server, path: str | None) -> Iterator[None]:
    """SIGHUP reloads the policy file while inside. Installed before the store opens, which can
    take a while: a SIGHUP meanwhile must reload, not kill the process (its default action)."""
    if path is None:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload, server, path)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


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
