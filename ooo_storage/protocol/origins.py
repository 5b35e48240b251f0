"""Which web pages (``Origin``) and which server names (``Host``) a request may come from.

Pure rules, no I/O: the server (``server/app.py``) applies them to every request, websocket
upgrades included, before anything is read or written; ``ooo-storage serve`` checks its
``--allowed-origin`` and ``--allowed-host`` values with them.

- **Origin.** A browser names the page behind a request in ``Origin``. A page of another origin is
  refused (403) unless the operator allowed it (``allowed_origins``; ``*`` allows any): withholding
  CORS headers alone would not be enough, since a browser sends a cross-origin "simple" POST without
  a preflight and the write would happen before the page is denied the answer. Same-origin requests
  (Origin names the Host the request was sent to) and requests without ``Origin`` (curl, servers, the
  Python and npm clients) pass.
- **Host.** DNS rebinding points a page's own name at this server, so its requests look same-origin
  and carry ``Host: <the page's name>``. Only Hosts naming the address the connection arrived on
  (any loopback name when that is a loopback address) or allowed by the operator
  (``allowed_hosts``; ``*`` allows any) are answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
LOOPBACK_NAMES = frozenset({"localhost"})


def normalize_origin(text: str) -> str:
    """``scheme://host[:port]`` in lower case, without the scheme's default port, as a browser
    would send it; ``null`` (sandboxed pages, files) stays ``null``. ValueError says what is wrong."""
    if text == "null":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not an origin ({exc}): {text!r}") from None
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"an origin is scheme://host[:port], without a path: {text!r}")
    if parts.username is not None or parts.fragment:
        raise ValueError(f"an origin is scheme://host[:port], without a user or fragment: {text!r}")
    scheme, host = parts.scheme.lower(), _bracket(parts.hostname)
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def split_host(text: str) -> tuple[str, int | None]:
    """The name (lower case, IPv6 without brackets) and port of a ``Host`` value or of an
    ``allowed_hosts`` entry; ValueError when it is not ``host[:port]``."""
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a host[:port] ({exc}): {text!r}") from None
    if not parts.hostname or parts.netloc != text or parts.username is not None or "@" in text:
        raise ValueError(f"not a host[:port]: {text!r}")
    return parts.hostname, port


def _bracket(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


def names_address(name: str, local_ip: str) -> bool:
    """Whether the Host name ``name`` names the address ``local_ip`` a connection arrived on:
    loopback names for a loopback address, otherwise that very address."""
    local = _ip(local_ip)
    if local is None:
        return False
    if local.is_loopback:
        ip = _ip(name)
        return name in LOOPBACK_NAMES or (ip is not None and ip.is_loopback)
    return _ip(name) == local


@dataclass(frozen=True)
class OriginPolicy:
    """The operator's ``allowed_origins`` and ``allowed_hosts``, normalised once."""

    origins: frozenset[str] = frozenset()
    hosts: frozenset[tuple[str, int | None]] = frozenset()
    any_origin: bool = False
    any_host: bool = False

    @classmethod
    def of(cls, origins: Iterable[str] = (), hosts: Iterable[str] = ()) -> OriginPolicy:
        """Raises ValueError, naming the entry, when an origin or a host is malformed."""
        origins, hosts = list(origins), list(hosts)
        return cls(
            origins=frozenset(normalize_origin(o) for o in origins if o != ANY),
            hosts=frozenset(split_host(h) for h in hosts if h != ANY),
            any_origin=ANY in origins,
            any_host=ANY in hosts,
        )

    def host_refusal(self, host: str | None, local: tuple[str, int] | None) -> str | None:
        """Why a request with this ``Host`` header, arriving on the local (address, port), is
        refused; None when it may proceed. No Host (HTTP/1.0) cannot come from a browser."""
        if host is None or self.any_host:
            return None
        try:
            name, port = split_host(host)
        except ValueError:
            return f"ooo: invalid Host header {host[:200]!r}"
        if (name, port) in self.hosts or (name, None) in self.hosts:
            return None
        if local is None:  # not a TCP socket (a unix socket): no address to compare with
            return None
        address, local_port = local
        if (port is None or port == local_port) and names_address(name, address):
            return None
        return (
            f"ooo: host not allowed: {host[:200]} (this server answers to {_bracket(address)}:{local_port}"
            f"{' and localhost' if names_address('localhost', address) else ''}; start it with "
            f"--allowed-host {name} to answer to that name)"
        )

    def origin_refusal(self, origin: str | None, host: str | None) -> str | None:
        """Why a request from the page ``origin``, sent to ``host``, is refused; None when it may
        proceed (no Origin, an allowed one, or the same origin as the server's)."""
        if origin is None or self.any_origin or self.allowed(origin) or same_origin(origin, host):
            return None
        return (
            f"ooo: origin not allowed: {origin[:200]} (start the server with --allowed-origin "
            f"{origin[:200]} to let pages from it use this server)"
        )

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` is one the operator listed (``*`` aside)."""
        try:
            return normalize_origin(origin) in self.origins
        except ValueError:
            return False

    def cors_origin(self, origin: str | None) -> str | None:
        """``Access-Control-Allow-Origin`` for a request from ``origin``: ``*`` when any origin is
        allowed, the origin itself when it is listed, None (no CORS headers) otherwise."""
        if origin is None:
            return None
        if self.any_origin:
            return ANY
        return origin if self.allowed(origin) else None


def same_origin(origin: str, host: str | None) -> bool:
    """Whether the page ``origin`` is the server itself, as named by the request's ``Host`` (the
    scheme is not compared: behind a TLS proxy the page is https while this server sees http)."""
    if host is None:
        return False
    try:
        page = urlsplit(normalize_origin(origin))
        name, port = split_host(host)
    except ValueError:
        return False
    default = DEFAULT_PORTS.get(page.scheme)
    return page.hostname == name and (page.port or default) == (port or default)
