"""``serve``'s configuration from four sources: flag > ``OOO_*`` environment variable > TOML file
(``--config FILE``) > default; ``ooo-storage config show`` prints what is in force and where each
value came from.

Derived from the ``serve`` parser itself, never from a list kept here: every long option ``--some-flag``
is the variable ``OOO_SOME_FLAG`` and the file key ``some-flag`` (``some_flag`` is accepted too), so a
flag added to ``cli/serve.py`` tomorrow is configurable with no change here. Values from the
environment and the file become command-line arguments that argparse parses like the user's own,
after each has been checked with the option's own ``type`` and ``choices``: a bad one is an error
naming its source (``OOO_PORT=99999: ...``, ``serve.toml: port: ...``) and exit status 2, like a
bad flag.

Shapes: an option without a value (``--sync``) takes ``true``/``false`` in the file and
``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` in the environment; a repeatable one
(``--allowed-origin``) takes a list in the file and a comma-separated list in the environment; any
other takes a string or a number. A source never adds to a repeatable option given by a higher one:
it is replaced whole. ``OOO_CONFIG`` names the file when ``--config`` does not. An empty (or blank)
variable counts as unset, as shells and container runtimes leave ``OOO_X=`` behind: the file or
the default then decides. A choice whose words are all lower case (``--log-level``,
``--log-format``, ``--loop``, ``--http-engine``) is read in any case: ``OOO_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = ["PREFIX", "CONFIG_ENV", "Setting", "add_config_option", "add_parsers", "resolve", "settings"]

PREFIX = "OOO_"
CONFIG_ENV = "OOO_CONFIG"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_SKIPPED = frozenset({"help", "config", "version"})


class ConfigError(Exception):
    """A value that cannot be used, with its source in the message; exit status 2."""


@dataclass(frozen=True)
class _Option:
    """One ``serve`` option as the sources name it."""

    action: argparse.Action
    flag: str  # --max-body-bytes

    @property
    def key(self) -> str:
        return self.flag[2:]

    @property
    def env(self) -> str:
        return PREFIX + self.key.upper().replace("-", "_")

    @property
    def takes_value(self) -> bool:
        return self.action.nargs != 0

    @property
    def repeatable(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)


@dataclass(frozen=True)
class Setting:
    """The value of one option and where it came from: ``flag``, ``env OOO_X``, ``FILE`` or
    ``default``."""

    key: str
    value: Any
    source: str


def add_config_option(serve: argparse.ArgumentParser) -> None:
    """``--config FILE`` on the ``serve`` parser (read by :func:`resolve` before parsing)."""
    serve.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of serve options (keys are the flag names: port = 8800, sync = true); "
        f"precedence: flag > {PREFIX}* environment variable > file > default (default: ${CONFIG_ENV}). "
        "`ooo-storage config show` prints the result",
    )


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ooo-storage config show [--config FILE] [serve flags]``."""
    summary = "print serve's configuration: flag > OOO_* environment > --config file > default"
    config = subparsers.add_parser("config", help=summary, description=summary)
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    text = ("print every serve option, its value and where it came from, as TOML that a --config "
            "file accepts (options without a value are commented out)")
    show = actions.add_parser("show", help=text, description=text)
    show.add_argument("flags", nargs=argparse.REMAINDER, metavar="SERVE-FLAGS",
                      help="serve flags to take into account (e.g. --config FILE --port 9000)")
    show.set_defaults(func=_show)
    text = ("ask the server this configuration describes for GET /healthz (host, port and TLS as "
            "serve reads them: flags, OOO_* environment, --config file): exit 0 when it answers 200, "
            "else 1 with the reason; a container's HEALTHCHECK")
    health = subparsers.add_parser("health", help=text, description=text)
    health.add_argument("flags", nargs=argparse.REMAINDER, metavar="SERVE-FLAGS",
                        help="serve flags to take into account (e.g. --config FILE --port 9000)")
    health.set_defaults(func=_health)


def serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` subparser of the ``ooo-storage`` parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices["serve"]
            return found
    raise LookupError("the parser has no serve command")


def _options(serve: argparse.ArgumentParser) -> list[_Option]:
    options = []
    for action in serve._actions:
        longs = [flag for flag in action.option_strings if flag.startswith("--")]
        if longs and action.dest not in _SKIPPED:
            options.append(_Option(action, longs[0]))
    return options


def _given(serve: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests the command line sets (abbreviations of long options included, as argparse
    accepts them)."""
    flags = serve._option_string_actions
    longs = [flag for flag in flags if flag.startswith("--")]
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-"):
            continue
        name = token.partition("=")[0]
        action = flags.get(name)
        if action is None and name.startswith("--"):
            matches = {flags[flag] for flag in longs if flag.startswith(name)}
            action = matches.pop() if len(matches) == 1 else None
        if action is not None:
            given.add(action.dest)
    return given


def _config_path(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The file named by ``--config`` (the last one), else ``$OOO_CONFIG``; and how it was named."""
    path: str | None = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif token.startswith("--config="):
            path = token.partition("=")[2]
    if path is not None:
        return path, "--config"
    return environ.get(CONFIG_ENV) or None, CONFIG_ENV


def _read_file(path: str, named_by: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{named_by} {path}: can't read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{named_by} {path}: not valid TOML: {exc}") from None


def _folded(option: _Option, text: str) -> str:
    """``text`` in lower case when the option's choices are lower-case words and that is one of
    them (``DEBUG`` for ``debug``); otherwise as it is, for :func:`_check` to judge."""
    choices = option.action.choices
    if choices is None or text in choices or not all(isinstance(c, str) and c == c.lower() for c in choices):
        return text
    return text.lower() if text.lower() in choices else text


def _check(option: _Option, text: str, source: str) -> None:
    """Apply the option's ``type`` and ``choices`` as argparse would, naming ``source``."""
    action = option.action
    value: Any = text
    try:
        if callable(action.type):
            value = action.type(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (TypeError, ValueError):  # argparse's own words for them
        name = getattr(action.type, "__name__", repr(action.type))
        raise ConfigError(f"{source}: invalid {name} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ConfigError(f"{source}: invalid choice: {text!r} (choose from {choices})")


def _from_env(option: _Option, text: str) -> list[str]:
    source = f"{option.env}={text}"
    if not option.takes_value:
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(f"{source}: {option.flag} is on or off: give 1/true/yes/on or 0/false/no/off")
        return [option.flag] if word in _TRUE else []
    items = [part.strip() for part in text.split(",") if part.strip()] if option.repeatable else [text]
    items = [_folded(option, item) for item in items]
    for item in items:
        _check(option, item, source)
    return [f"{option.flag}={item}" for item in items]


def _from_file(option: _Option, value: Any, source: str) -> list[str]:
    if not option.takes_value:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {option.flag} is on or off: give true or false, not {value!r}")
        return [option.flag] if value else []
    values = value if option.repeatable and isinstance(value, list) else [value]
    texts = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            shape = "a string, a number" + (" or a list of them" if option.repeatable else "")
            raise ConfigError(f"{source}: expected {shape}, not {item!r}")
        text = _folded(option, str(item))
        _check(option, text, f"{source} = {text}")
        texts.append(f"{option.flag}={text}")
    return texts


def _file_options(options: list[_Option], doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The file's values by dest, unknown keys refused (a typo must not be ignored silently)."""
    by_key = {option.key: option for option in options}
    values: dict[str, Any] = {}
    named: dict[str, str] = {}  # dest -> the key that gave it
    for key, value in doc.items():
        option = by_key.get(key) or by_key.get(key.replace("_", "-"))
        if option is None:
            known = ", ".join(sorted(by_key))
            raise ConfigError(f"{path}: {key}: no such serve option (known: {known})")
        dest = option.action.dest
        if dest in named:  # max-body-bytes and max_body_bytes: which one would win is a guess
            raise ConfigError(f"{path}: {named[dest]} and {key} are the same option: keep one")
        named[dest] = key
        values[dest] = (option, value)
    return values


@dataclass(frozen=True)
class Resolved:
    """The argv to parse and the source of every dest it or the defaults set."""

    argv: list[str]
    sources: dict[str, str]


def resolve(serve: argparse.ArgumentParser, argv: Sequence[str],
            environ: Mapping[str, str] | None = None) -> Resolved:
    """``argv`` (serve's own arguments) preceded by what the environment and the file add for the
    options it does not give; :class:`ConfigError` names a bad value's source."""
    environ = os.environ if environ is None else environ
    options = _options(serve)
    given = _given(serve, argv)
    path, named_by = _config_path(argv, environ)
    in_file = _file_options(options, _read_file(path, named_by), path) if path else {}
    added: list[str] = []
    sources: dict[str, str] = {}
    for option in options:
        dest = option.action.dest
        if dest in given:
            sources[dest] = "flag"
        elif environ.get(option.env, "").strip():  # OOO_X= is unset
            added += _from_env(option, environ[option.env])
            sources[dest] = f"env {option.env}"
        elif dest in in_file:
            _, value = in_file[dest]
            added += _from_file(option, value, f"{path}: {option.key}")
            sources[dest] = f"file {path}"
        else:
            sources.setdefault(dest, "default")
    return Resolved([*added, *argv], sources)


def expand(parser: argparse.ArgumentParser, argv: Sequence[str],
           environ: Mapping[str, str] | None = None) -> list[str]:
    """The whole command line with ``serve``'s configuration added (unchanged for other commands);
    a bad value is one line on stderr and exit status 2."""
    if list(argv[:2]) == ["config", "show"] and "--" not in argv:
        return ["config", "show", "--", *argv[2:]]  # serve flags, not config show's own options
    if argv[:1] == ["health"] and "--" not in argv:
        return ["health", "--", *argv[1:]]
    if not argv or argv[0] != "serve":
        return list(argv)
    serve = serve_parser(parser)
    try:
        resolved = resolve(serve, argv[1:], environ)
    except ConfigError as exc:
        print(f"ooo-storage serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _name_sources(serve, resolved.sources)
    return ["serve", *resolved.argv]


def _name_sources(serve: argparse.ArgumentParser, sources: dict[str, str]) -> None:
    """Make argparse's errors (options that exclude each other) say which options came from the
    environment or the file, on one line: the user did not type them, so the usage would not help."""
    found = [f"{option.flag} from {sources[option.action.dest]}" for option in _options(serve)
             if sources.get(option.action.dest, "flag") not in ("flag", "default")]
    if not found:
        return

    def named(message: str) -> NoReturn:
        serve.exit(2, f"{serve.prog}: error: {message} (not on the command line: {', '.join(found)})\n")

    serve.error = named  # type: ignore[method-assign]


def settings(parser: argparse.ArgumentParser, argv: Sequence[str],
             environ: Mapping[str, str] | None = None) -> list[Setting]:
    """Every ``serve`` option's value once ``argv`` (serve flags) and the sources are applied."""
    serve = serve_parser(parser)
    resolved = resolve(serve, argv, environ)
    args = serve.parse_args(resolved.argv)
    return [Setting(option.key, getattr(args, option.action.dest), resolved.sources[option.action.dest])
            for option in _options(serve)]


_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]+@")
_QUERY_PASSWORD = re.compile(r"(?<=[?&]password=)[^&\s#]*", re.IGNORECASE)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # a password in a URL (--redis: user:pw@ or ?password=) is not printed
    text = _QUERY_PASSWORD.sub("***", _PASSWORD.sub(r"\1***@", str(value)))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lines(found: Sequence[Setting]) -> Iterator[str]:
    """``config show``'s output: TOML a ``--config`` file accepts, each line saying its source; an
    option without a value (its default is decided by the server) is commented out."""
    yield "# ooo-storage serve: the configuration in force (flag > OOO_* environment > file > default)"
    texts = [f"# {s.key} = (unset)" if s.value is None else f"{s.key} = {_toml(s.value)}" for s in found]
    width = min(max(map(len, texts)), 60) + 1
    for text, s in zip(texts, found, strict=True):
        yield f"{text.ljust(width)} # {s.source}"


def _show(args: argparse.Namespace) -> int:
    from . import build_parser

    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags  # the "--" expand() added
    try:
        found = settings(build_parser(), flags)
    except ConfigError as exc:
        print(f"ooo-storage config show: {exc}", file=sys.stderr)
        return 2
    try:
        for line in lines(found):
            print(line)
    except BrokenPipeError:  # `ooo-storage config show | head`
        sys.stderr.close()
    return 0



_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def health_url(found: Sequence[Setting]) -> str:
    """``/healthz`` of the server ``found`` describes: its port, https with ``--tls-cert``, and
    loopback for a wildcard bind (``0.0.0.0`` answers there too, and loopback Hosts pass the Host
    check); ValueError when it cannot be asked (``--port 0``, ``--no-health``)."""
    value = {s.key: s.value for s in found}
    if value["no-health"]:
        raise ValueError("serve runs with --no-health: it has no /healthz to ask")
    if value["port"] == 0:
        raise ValueError("serve picks a free port (--port 0): give the port it logged")
    host = _WILDCARDS.get(value["host"], value["host"])
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if value["tls-cert"] else "http"
    return f"{scheme}://{host}:{value['port']}/healthz"


def _health(args: argparse.Namespace) -> int:
    import ssl
    import urllib.error
    import urllib.request

    from . import build_parser

    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    try:
        url = health_url(settings(build_parser(), flags))
    except (ConfigError, ValueError) as exc:
        print(f"ooo-storage health: {exc}", file=sys.stderr)
        return 2
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # our own server, by address
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as reply:  # noqa: S310
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"ooo-storage health: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"ooo-storage health: {url}: {status}", file=sys.stderr)
        return 1
    return 0
