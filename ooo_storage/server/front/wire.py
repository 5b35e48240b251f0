"""The bytes the lean front reads and writes: request heads (``httptools``) and answers, exactly as
aiohttp puts them on the wire (status line, header order, ``Date``, ``Server``, ``Connection: close``)."""

from __future__ import annotations

import enum
import http
import re
from time import time as _time
from typing import Final

import httptools
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from ...errors import HTTPFailure
from ...protocol import keys
from ..errors import status_of
from ..streams import BEARER

MAX_BODY = 64 * 1024
"""Largest request body served here; larger ones go to aiohttp (its body budget and timeouts)."""
METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")
"""The methods served here."""
_METHODS = {m.encode(): m for m in METHODS}
"""The methods served here, as a head spells them, and their names (one look-up: no ``decode``)."""
KEY_URL = re.compile(r"/[A-Za-z0-9*/._-]+").fullmatch
"""A path naming a key (``rest.request_key``'s characters), without a query string."""
_LIST_QUERY = re.compile(r"(limit|cursor)=[A-Za-z0-9_-]*(&(limit|cursor)=[A-Za-z0-9_-]*)?").fullmatch
"""The query strings of a glob GET served here: ``limit`` and ``cursor`` (cursors are URL-safe
base64), each once, nothing to percent-decode, so that each reads as ``request.query.get`` would."""
TXN_QUERY = "api=txn"
"""The query string of ``POST /?api=txn`` served here (exactly: any other, aiohttp's)."""
TXN_PARAMS = {"api": "txn"}
"""A transaction's :attr:`Request.query` (read, never changed)."""
_OUR_HEADERS = frozenset(
    {b"host", b"content-length", b"connection", b"origin", b"upgrade", b"expect",
     b"transfer-encoding", b"content-encoding", b"authorization", b"sec-websocket-protocol"}
)
"""Headers that decide whether and how a request is served here (all others are ignored, as by
the aiohttp handlers)."""
_REFUSED = frozenset(
    {b"upgrade", b"expect", b"transfer-encoding", b"content-encoding", b"sec-websocket-protocol"}
)
"""Headers of requests the front leaves to aiohttp, whatever their value."""
SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class NotOurs(Exception):
    """The request at hand is aiohttp's (raised before anything had an effect)."""


class Request:
    """One parsed request, waiting for its answer. Made by :func:`_made` alone, which sets each
    attribute (a call of the class with an ``__init__`` of nine arguments cost 2.7 k instructions,
    1.7 k the stores alone)."""

    __slots__ = ("method", "key", "valid", "body", "size", "host", "origin", "token", "query")

    method: str
    key: str
    valid: bool  # ``keys.is_valid(key)``, read with the URL
    body: bytes
    size: int  # bytes of head and body: what to drop from the buffer once answered
    host: str
    origin: str | None
    token: str | None
    query: dict[str, str] | None  # a glob GET's ``limit`` and ``cursor``, a transaction's ``api``


_new = object.__new__


class _Head:
    """``httptools`` callbacks for one request head: the URL and the headers the front reads."""

    __slots__ = ("url", "headers", "bad")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.bad = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _OUR_HEADERS:
            if name in self.headers:
                self.bad = True  # a repeated header: aiohttp's own reading decides
            self.headers[name] = value


_LINE = rb"(GET|HEAD|POST|PATCH|DELETE) ([!-~]+) HTTP/1\.1\r\n"
_BLOCK = rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*\r\n"
_PLAIN_HEAD = re.compile(_LINE + rb"(" + _BLOCK + rb")").fullmatch
"""A head in the plainest HTTP/1.1 form: a method served here, a target of visible characters, and
header lines of a token, a colon and a value of visible characters, spaces and tabs (no obs-fold, no
control characters). Every such head is one ``httptools`` reads without error, into the same
method, URL and header values: :func:`read_head` reads it with ``bytes`` methods (about a third of
the parser object's and its callbacks' cost), its request line (:data:`_PLAIN_LINE`) apart from its
header block (:data:`_PLAIN_BLOCK`), and gives any other head to ``httptools``."""
_PLAIN_LINE = re.compile(_LINE + rb"(.*)", re.DOTALL).match
"""A plain request line, its method, its target and the rest of the head (its header block)."""
_KEY_LINE = re.compile(
    rb"(GET|HEAD|POST|PATCH|DELETE) /(" + keys.KEY_SHAPE.encode() + rb") HTTP/1\.1\r\n(.*)", re.DOTALL
).match
"""The most common :data:`_PLAIN_LINE`: the path of a key of a valid key's shape (its characters,
its first and last), no query string. The key is valid (``keys.is_valid``) unless it holds ``//``
or ``**``, looked for in the decoded key (``VALID_KEY``'s look-aheads cost 1.1 k instructions more
a match): one match and two ``in`` read the line and :attr:`Request.valid`, and a GET of a valid
key needs no ``rest.check_key`` call. The match's groups are the method, the key and the header
block (one ``groups()``: no ``end()`` and slice)."""
_VALID_URL = re.compile("/" + keys.VALID_KEY).fullmatch
"""A path naming a valid key, for the other request lines."""
_PLAIN_BLOCK = re.compile(_BLOCK).fullmatch
_MEMO_BYTES = 1024
"""Header blocks up to this size are read once (:data:`_BLOCKS`; 64 of them kept: 64 KiB)."""
_MEMO_COUNT = 64


class _NotPlain(enum.Enum):
    """What :func:`_header_fields` says of a header block not in the plain form, and what
    :data:`_BLOCKS` remembers of one that makes any request NotOurs (an enum: ``is`` tells the type
    checker the fields are not it, where a ``cast`` call cost 0.4 k instructions)."""

    NOT_PLAIN = enum.auto()
    NOT_OURS = enum.auto()


_NOT_PLAIN: Final = _NotPlain.NOT_PLAIN
_NOT_OURS: Final = _NotPlain.NOT_OURS
_Fields = tuple[int, int, str, str | None, str | None]
"""What a request's header block says, whatever its request line: the number of header lines, the
``Content-Length`` (-1: none), ``Host``, ``Origin`` and ``Authorization`` (stripped)."""


def read_head(head: bytes, max_head: int, max_headers: int, max_body: int) -> Request:
    """The request of a complete ``head`` (its ``size`` the body's length), or NotOurs when the
    front does not serve it: only requests it answers exactly as aiohttp would qualify."""
    if len(head) > max_head:
        raise NotOurs()
    line = _KEY_LINE(head)
    keyed = line is not None
    if not keyed:
        line = _PLAIN_LINE(head)
    if line is not None:
        method, target, block = line.groups()
        fields = _BLOCKS.get(block)
        if fields is None:
            fields = _read_block(block)
        if fields is _NOT_OURS:
            raise NotOurs()
        if fields is not _NOT_PLAIN:
            if keyed:  # no query string: the key is read, the URL needs nothing more
                key = target.decode()
                valid = "//" not in key and "**" not in key
                return _made(method, key, valid, None, fields, max_headers, max_body)
            return _request(method, target, fields, max_headers, max_body)
    if not head.isascii():
        raise NotOurs()
    return _parsed_head(head, max_headers, max_body)


def _header_fields(block: bytes) -> _Fields | _NotPlain | None:
    """What the header ``block`` (every line of a head after the request line) says, or None when
    it makes any request NotOurs; :data:`_NOT_PLAIN` when it is not in the plain form."""
    if _PLAIN_BLOCK(block) is None:
        return _NOT_PLAIN
    headers: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n")[:-2]:  # ``block`` ends with two
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in _OUR_HEADERS:
            if name in headers:
                return None  # a repeated header: aiohttp's own reading decides
            headers[name] = value
    return _fields(block.count(b"\r\n") - 1, headers)


_BLOCKS: dict[bytes, _Fields | _NotPlain] = {}
"""What :func:`_header_fields` said of the last :data:`_MEMO_COUNT` header blocks read: the
requests of a client mostly repeat their header block (a pure function's results: the same
whatever the order of requests). A look-up here costs 0.4 k instructions, ``functools.lru_cache``'s
0.9 k."""


def _read_block(block: bytes) -> _Fields | _NotPlain:
    """What :func:`_header_fields` says of ``block`` (:data:`_NOT_OURS` for None), remembered in
    :data:`_BLOCKS` when it is small (the oldest forgotten)."""
    fields = _header_fields(block)
    said = _NOT_OURS if fields is None else fields
    if len(block) <= _MEMO_BYTES:
        if len(_BLOCKS) >= _MEMO_COUNT:
            del _BLOCKS[next(iter(_BLOCKS))]
        _BLOCKS[block] = said
    return said


def _fields(count: int, headers: dict[bytes, bytes]) -> _Fields | None:
    """The fields of a request's ``count`` header lines, read into the headers of
    :data:`_OUR_HEADERS` (each once), or None when they make any request NotOurs."""
    if (
        not _REFUSED.isdisjoint(headers)
        or headers.get(b"connection", b"keep-alive").strip().lower() != b"keep-alive"
    ):
        return None
    length = headers.get(b"content-length")
    size = -1
    if length is not None:
        length = length.strip()
        if not length.isdigit() or len(length) > 7:
            return None
        size = int(length)
    host, origin, token = headers.get(b"host"), headers.get(b"origin"), headers.get(b"authorization")
    if host is None:
        return None  # aiohttp refuses an HTTP/1.1 request without one
    return (
        count, size, host.strip().decode(),
        None if origin is None else origin.strip().decode(),
        None if token is None else token.strip().decode(),
    )


def _parsed_head(head: bytes, max_headers: int, max_body: int) -> Request:
    """:func:`read_head` for any head but the plainest, read by ``httptools``."""
    cb = _Head()
    parser = httptools.HttpRequestParser(cb)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        raise NotOurs() from None
    if cb.bad or parser.get_http_version() != "1.1":
        raise NotOurs()
    method = parser.get_method()
    fields = _fields(head.count(b"\r\n") - 2, cb.headers)
    if method not in _METHODS or fields is None:
        raise NotOurs()
    return _request(method, cb.url, fields, max_headers, max_body)


def _request(method: bytes, raw_url: bytes, fields: _Fields, max_headers: int, max_body: int) -> Request:
    """The request of an HTTP/1.1 head read into its method, URL and header ``fields``, or
    NotOurs."""
    url, mark, text = raw_url.decode().partition("?")
    query: dict[str, str] | None = None
    valid = _VALID_URL(url) is not None
    if valid or KEY_URL(url) is not None:
        if mark:
            query = list_query(text)
            if method not in (b"GET", b"HEAD") or "*" not in url:
                raise NotOurs()  # a query string on anything but a glob GET (or HEAD): aiohttp's
    elif url == "/" and text == TXN_QUERY and method == b"POST":
        query = TXN_PARAMS  # a transaction: key "" (``txn.run``)
    else:
        raise NotOurs()  # "/" otherwise, paths no key has: aiohttp's
    return _made(method, url[1:], valid, query, fields, max_headers, max_body)


def _made(method: bytes, key: str, valid: bool, query: dict[str, str] | None, fields: _Fields,
          max_headers: int, max_body: int) -> Request:
    """The request of ``method`` on ``key`` with its header ``fields``, or NotOurs when its header
    count or its body is not for the front."""
    count, size, host, origin, token = fields
    if count > max_headers:
        raise NotOurs()
    if size < 0:
        if method in (b"POST", b"PATCH"):
            raise NotOurs()
        size = 0
    elif size > max_body or (size and method in (b"GET", b"HEAD", b"DELETE")):
        raise NotOurs()
    request = _new(Request)  # one store each: stores from a tuple cost as much as the call
    request.method = _METHODS[method]
    request.key = key
    request.valid = valid
    request.body = b""
    request.size = size
    request.host = host
    request.origin = origin
    request.token = token
    request.query = query
    return request


def list_query(text: str) -> dict[str, str]:
    """The parameters of a glob GET's query string ``text``, or NotOurs unless it is
    :data:`_LIST_QUERY`'s (anything else, aiohttp's ``request.query`` reads)."""
    if _LIST_QUERY(text) is None:
        raise NotOurs()
    query: dict[str, str] = {}
    for pair in text.split("&"):
        name, _, value = pair.partition("=")
        if name in query:
            raise NotOurs()  # a parameter twice
        query[name] = value
    return query


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as ``streams.bearer_token`` reads it
    (requests with ``Sec-WebSocket-Protocol`` are aiohttp's)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == BEARER and token:
        return token.strip()
    return None


class Dates:
    """The ``Date`` header line, as aiohttp writes it (computed once per second: aiohttp's
    function is called only then)."""

    __slots__ = ("_since", "_until", "_line")

    def __init__(self) -> None:
        self._since = self._until = 0.0  # the second of ``_line``: [since, until)
        self._line = b""

    def line(self) -> bytes:
        now = _time()
        if not self._since <= now < self._until:  # (the clock may go back)
            self._since = float(int(now))
            self._until = self._since + 1
            self._line = f"Date: {rfc822_formatted_time()}\r\n".encode()
        return self._line


def head_only(answer: bytes) -> bytes:
    """The head of ``answer``: what aiohttp sends of a response to a ``HEAD`` (its
    ``Content-Length`` still that of the body a ``GET`` gets)."""
    return answer[: answer.index(b"\r\n\r\n") + 4]


_OK = b"HTTP/1.1 200 OK\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>``, as aiohttp writes it."""
    return _OK if status == 200 else b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "").encode())


_PLAIN_JSON = (b"%sContent-Type: application/json\r\nContent-Length: %%d\r\n%%b%s\r\n%%b"
               % (_OK, SERVER_LINE.replace(b"%", b"%%")))
"""The answer of :func:`json_answer` without ``cors`` or ``extra`` lines, less its length, date and
body: three values to format instead of seven (a fifth of the function's cost)."""


def json_answer(date: bytes, body: bytes, cors: bytes = b"", extra: bytes = b"", status: int = 200) -> bytes:
    """An answer with a JSON body, as aiohttp's ``rest.json_response`` goes on the wire (the
    handler's own ``extra`` header lines first, as ``web.Response(headers=...)`` writes them)."""
    if status == 200 and not cors and not extra:
        return _PLAIN_JSON % (len(body), date, body)
    return b"%s%sContent-Type: application/json\r\n%sContent-Length: %d\r\n%s%s\r\n%s" % (
        _OK if status == 200 else status_line(status), extra, cors, len(body), date, SERVER_LINE, body
    )


def header_lines(headers: dict[str, str]) -> bytes:
    """``headers`` as lines of a response head, in their order."""
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()


def failure_answer(date: bytes, exc: BaseException, cors: bytes = b"") -> bytes:
    """The answer ``errors.response_for(exc)`` puts on the wire (its headers, its close)."""
    status, message = status_of(exc)
    body = message.encode()
    extra = b""
    close = b""
    if isinstance(exc, HTTPFailure):
        if exc.headers:
            extra = header_lines(exc.headers)
        if exc.close:
            close = b"Connection: close\r\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n%s%sContent-Length: %d\r\n"
        b"%s%s%s\r\n%s"
    ) % (status, _REASONS.get(status, "").encode(), extra, cors, len(body), date, SERVER_LINE,
         close, body)
