"""An asyncio client for ooo-storage (and any ``ooo``-compatible server): REST calls and live states.

::

    async with Client("http://127.0.0.1:8800") as client:
        await client.set("users/1", {"name": "ada"})
        async with client.subscribe("users/*", on_status=print) as users:
            async for state in users:   # the whole current list, after every change
                print(state)

REST calls map one-to-one onto docs/protocol.md §4 and raise :class:`ClientError` (with the HTTP status
and the server's plain-text message) on any error response. When no response comes, the error says
whether the request can have reached the server: :class:`ConnectionFailed` means it was never sent,
:class:`RequestUncertain` that a write was sent and may or may not have been applied. Only a GET is
ever re-sent by the client (``ClientOptions.read_retries``); aiohttp's own silent re-send of a request
whose pooled connection dropped is switched off, because a re-sent DELETE turns a success into a 404.

:meth:`Client.subscribe` opens the websocket stream of §5, keeps the state by applying the server's
JSON patches, and reconnects with ``?v=<last version>`` and exponential backoff, so a resumed stream
that missed nothing costs no snapshot. Every disconnect and reconnect is reported as a
:class:`Disconnected` or :class:`Connected` status; a patch that does not apply drops the state and
resubscribes for a fresh snapshot instead of patching a state that no longer matches the server's.
What a reconnect would meet again ends the subscription with an error instead of a retry loop: a
frame over ``ClientOptions.max_frame_bytes`` (:class:`FrameTooLarge`), a refused upgrade, a close by
which the server refuses the subscription (a glob with too many items).

Values are any JSON-serialisable Python value, encoded with orjson; ``bytes`` are sent verbatim as
JSON text (handy to forward a document without decoding it). Unlike :class:`~ooo_storage.Layered`,
a ``str`` is a JSON string here, so ``await client.set("name", "ada")`` stores ``"ada"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, NamedTuple, NotRequired, Self, TypedDict, cast

import aiohttp
import orjson
from yarl import URL

from .protocol import keys
from .protocol.jsonpatch import PatchError, apply_patch

__all__ = [
    "Client",
    "ClientOptions",
    "ClientError",
    "ConnectionFailed",
    "RequestUncertain",
    "TxnConflict",
    "FrameTooLarge",
    "Connected",
    "Disconnected",
    "Status",
    "Entry",
    "Subscription",
    "backoff_delays",
]


class Entry(TypedDict):
    """An object as the server sends it (docs/protocol.md §2.1); ``path`` is absent for single keys."""

    created: int
    updated: int
    index: str
    path: NotRequired[str]
    data: Any


class ClientError(Exception):
    """An error response from the server: ``status`` is the HTTP status, ``message`` its body text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class ConnectionFailed(ClientError):
    """No response, and the call had no effect: the server could not be reached (refused,
    unresolvable, connect timeout), so the request was never sent, or a read lost its connection
    every time it was sent. Repeating the call is safe. ``status`` is 0."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)

    def __str__(self) -> str:
        return f"connection failed: {self.message}"


class RequestUncertain(ClientError):
    """A write was sent but its connection was lost before the reply: it may or may not have been
    applied. ``status`` is 0; ``method`` and ``key`` name the request.

    The client never re-sends it by itself: a second DELETE of a key answers 404 although the first
    one worked, a second push stores the value twice, and a second set or PATCH overwrites whatever
    another writer stored in between (and changes ``updated``, waking every watcher). Read the key to
    learn what happened, then decide. Deliberately not a :class:`ConnectionFailed`, so that code which
    retries on ``ConnectionFailed`` does not repeat these by accident.
    """

    def __init__(self, method: str, key: str, cause: str) -> None:
        super().__init__(0, f"{method} {key}: the connection was lost after the request was sent "
                            f"({cause}); it may or may not have been applied: read the key before "
                            "repeating it")
        self.method = method
        self.key = key

    def __str__(self) -> str:
        return f"outcome unknown: {self.message}"


class TxnConflict(ClientError):
    """A transaction refused with 409 (:meth:`Client.txn`): a key of its ``expect`` changed, appeared
    or went since it was read (or stayed locked past the transaction's deadline). Nothing was
    applied: read ``keys`` again and retry. ``status`` is 409, ``message`` the server's reason."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(409, message)
        self.keys = keys


class FrameTooLarge(ClientError):
    """A subscription received a frame larger than ``ClientOptions.max_frame_bytes`` (a snapshot
    of a big glob, a huge value). The next connection would get the same frame, so the
    subscription ends instead of reconnecting forever. ``size`` is the frame's length in bytes
    (None when unknown), ``limit`` the limit it broke, ``remedy`` how to raise it; ``status`` is 0.
    """

    def __init__(self, key: str, size: int | None, limit: int,
                 remedy: str = "raise ClientOptions.max_frame_bytes above it (0 = no limit)") -> None:
        frame = "a frame" if size is None else f"a frame of {_bytes(size)}"
        super().__init__(0, f"{key}: the server sent {frame}, over the limit of {_bytes(limit)}: "
                            f"{remedy}")
        self.key = key
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return f"frame too large: {self.message}"


def _bytes(count: int) -> str:
    return f"{count} bytes" + (f" ({count / 2**20:.1f} MiB)" if count >= 2**20 else "")


@dataclass(frozen=True)
class ClientOptions:
    """Tuning of a :class:`Client`. The defaults suit a server on a LAN or the same host."""

    #: Seconds allowed for one REST call, connect to last byte.
    request_timeout: float = 30.0
    #: How many more times a GET is sent when its connection is lost before the reply. Reads have no
    #: effect, so this is always safe; writes are never re-sent (see :class:`RequestUncertain`).
    read_retries: int = 1
    #: Delay before the first reconnect attempt of a subscription, in seconds.
    reconnect_initial: float = 0.1
    #: Each further failed attempt multiplies the delay by this factor ...
    reconnect_factor: float = 2.0
    #: ... up to this many seconds.
    reconnect_max: float = 10.0
    #: Fraction of each delay drawn at random, so that many clients of a restarted server spread out.
    reconnect_jitter: float = 0.2
    #: Ping the server this often (seconds) and reconnect when no pong comes within half of it;
    #: None relies on the server's own pings.
    heartbeat: float | None = 30.0
    #: Largest frame accepted on a subscription (a snapshot of a big list can be large); 0 = no limit.
    #: A larger frame ends the subscription with :class:`FrameTooLarge` (it would come again).
    max_frame_bytes: int = 64 * 1024 * 1024


def backoff_delays(options: ClientOptions, rng: random.Random | None = None) -> Iterator[float]:
    """Yield the successive reconnect delays: exponential, capped, with a random part."""
    rng = rng or random.Random()
    delay = options.reconnect_initial
    while True:
        yield delay * (1.0 - options.reconnect_jitter * rng.random())
        delay = min(delay * options.reconnect_factor, options.reconnect_max)


@dataclass(frozen=True)
class Connected:
    """A websocket of a subscription opened: the first one, or a reconnect."""

    key: str
    #: The attempt number announced by the last :class:`Disconnected`; 0 for a first try.
    attempt: int
    #: Whether it asked to resume with ``?v=``: then no snapshot follows if nothing changed.
    resumed: bool
    #: False for the subscription's first connection.
    reconnect: bool

    def __str__(self) -> str:
        if not self.reconnect:
            return f"{self.key}: connected" + (f" (attempt {self.attempt})" if self.attempt else "")
        how = "resumed" if self.resumed else "fresh snapshot"
        return f"{self.key}: reconnected ({how}, attempt {self.attempt})"


@dataclass(frozen=True)
class Disconnected:
    """A subscription lost its websocket, or could not open one.

    Exactly one of ``code`` (the stream was open: the server's close code, or 1006 when the
    connection died without one), ``status`` (the server refused the upgrade with this HTTP status)
    and ``error`` (no connection, or a frame the client could not use) says why; ``reason`` is the
    text of it.
    """

    key: str
    reason: str
    code: int | None = None
    status: int | None = None
    error: BaseException | None = None
    #: The number of the attempt that follows (1 for the first retry since the stream last worked).
    attempt: int = 0
    #: Seconds until that attempt; None when the subscription ends instead.
    delay: float | None = None
    #: The state was dropped (a frame did not apply): the next connection asks for a fresh snapshot.
    resync: bool = False

    def __str__(self) -> str:
        if self.resync:
            what = f"out of step ({self.reason}), resubscribing for a fresh snapshot"
        elif self.code is not None:
            what = f"disconnected (close {self.code}" + (f": {self.reason})" if self.reason else ")")
        elif self.status is not None:
            what = f"subscription refused (HTTP {self.status}: {self.reason})"
        else:
            what = f"cannot connect ({self.reason})"
        if self.delay is None:
            return f"{self.key}: {what}; not reconnecting"
        return f"{self.key}: {what}; retry {self.attempt} in {self.delay:.1f} s"


#: What a subscription reports to ``on_status`` and keeps in :attr:`Subscription.status`.
Status = Connected | Disconnected


class Client:
    """REST and websocket client of one server, rooted at ``base_url`` (``http://host:port[/prefix]``).

    Use it as an async context manager, or call :meth:`close` when done. ``token`` is sent as
    ``Authorization: Bearer <token>`` on REST calls and as the ``bearer, <token>`` websocket
    sub-protocol on subscriptions. Pass ``session`` to share an :class:`aiohttp.ClientSession`
    (it is then not closed by the client).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        options: ClientOptions | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = url if url.path.endswith("/") else url.with_path(url.path + "/")
        self.token = token
        self.options = options or ClientOptions()
        self._session = session
        self._own_session = session is None
        self._subscriptions: set[Subscription] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every open subscription, then the session if the client created it."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # REST (docs/protocol.md §4)

    async def get(self, key: str) -> Entry | list[Entry]:
        """The object at ``key``, or for a key with a ``*`` the whole list of matches, newest first
        (read page by page: the server returns lists in pages, see :meth:`get_page`)."""
        if "*" not in key:
            return cast(Entry, orjson.loads(await self._request("GET", key)))
        items: list[Entry] = []
        cursor: str | None = None
        while True:
            page, cursor = await self.get_page(key, cursor=cursor)
            items.extend(page)
            if cursor is None:
                return items

    async def get_page(
        self, pattern: str, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[Entry], str | None]:
        """One page of the glob ``pattern``: up to ``limit`` items (the server's default when None),
        newest first, from ``cursor`` on; returns the items and the cursor of the next page (None
        after the last one). Pages neither repeat nor skip items across writes."""
        query = {k: str(v) for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        reply = await self._exchange("GET", pattern, query=query)
        return orjson.loads(reply.body), reply.headers.get("X-Next-Cursor")

    async def set(self, key: str, value: Any) -> str:
        """Create or overwrite ``key`` (no glob) with ``value``; returns the index."""
        if keys.is_glob(key):
            raise ValueError(f"set needs a key without a trailing glob, got {key!r}; use push")
        return await self._write("POST", key, value)

    async def push(self, pattern: str, value: Any) -> str:
        """Store ``value`` under a fresh key made from ``pattern`` (ending in ``/*``); returns its
        index (the text that replaced the ``*``)."""
        if not keys.is_glob(pattern):
            raise ValueError(f"push needs a pattern ending in '*', got {pattern!r}")
        return await self._write("POST", pattern, value)

    async def patch(self, key: str, value: dict[str, Any] | bytes) -> str:
        """Merge the JSON object ``value`` into the data stored at ``key`` (§4.1); returns the index."""
        return await self._write("PATCH", key, value)

    async def delete(self, key: str) -> None:
        """Delete ``key``, or every match of a glob (a glob delete never fails for lack of matches)."""
        await self._request("DELETE", key)

    async def keys(self) -> list[str]:
        """Every stored key, bytewise ascending."""
        body = await self._request("GET", "", headers={"Accept": "application/json"})
        return cast(list[str], orjson.loads(body)["keys"])

    async def stats(self) -> dict[str, Any]:
        """The usage of each namespace the server's policy declares (``GET /?api=stats``, which
        needs the ``admin`` right): ``{"namespaces": [{"name", "prefix", "objects", "bytes",
        "requests": {"lastHour", "last24h", "perHour"}}], "since", "at"}``, where ``bytes`` is the
        size of the stored JSON data, ``perHour`` holds 24 counts, oldest first, the last for the
        current hour so far, and ``since``/``at`` are epoch seconds (counting started, the answer).
        A token without ``admin`` gets :class:`ClientError` 403, none or a bad one 401."""
        reply = await self._exchange("GET", "", query={"api": "stats"})
        return cast(dict[str, Any], orjson.loads(reply.body))

    async def txn(self, ops: Sequence[TxnOpLike], expect: dict[str, int | None] | None = None
                  ) -> dict[str, Any]:
        """Apply ``ops`` all or nothing (``POST /?api=txn``, docs/protocol.md §4.7): each a
        ``(op, key, data)`` tuple (``ooo_storage.protocol.txn.TxnOp`` will do; ``op`` is ``"set"``,
        ``"patch"`` or ``"del"``, ``data`` any JSON value, ``bytes`` sent as JSON text, left out for
        a ``del``, which may name a glob) or a ``{"op", "key", "data"}`` dict. ``expect`` maps keys
        to the version read (an object's ``updated``, or its ``created`` when ``updated`` is 0) or
        None (must not exist). Returns ``{"revision": "<hex>", "indexes": [...]}`` (one index per
        op, ``""`` for a del). Raises :class:`TxnConflict` (409, with the ``keys`` that did not
        hold) when ``expect`` no longer holds, :class:`ClientError` 400 for a malformed transaction."""
        body: dict[str, Any] = {"ops": [_txn_op(op) for op in ops]}
        if expect is not None:
            body["expect"] = expect
        try:
            reply = await self._exchange("POST", "", body=orjson.dumps(body), query={"api": "txn"},
                                         headers={"Content-Type": "application/json"})
        except RequestUncertain as exc:  # named by its route, not by the empty key of "/"
            cause = _describe(exc.__cause__) if exc.__cause__ is not None else exc.message
            raise RequestUncertain("POST", "/?api=txn", cause) from exc.__cause__
        except ClientError as exc:
            if exc.status == 409:
                raise _conflict(exc) from None
            raise
        return cast(dict[str, Any], orjson.loads(reply.body))

    # Websocket streams (docs/protocol.md §5)

    def subscribe(
        self,
        key: str,
        *,
        version: str | None = None,
        state: Any = None,
        reconnect: bool = True,
        on_status: Callable[[Status], object] | None = None,
    ) -> Subscription:
        """Follow ``key`` (or a glob): an async iterator over its state, one per frame received.

        ``version`` and ``state`` resume from what an earlier subscription held (its ``version``
        and ``state``): the server then sends only what changed since, nothing if nothing did. A
        ``version`` without its ``state`` asks for a snapshot, since no patch could apply to it.
        ``on_status`` is called with a :class:`Connected` or :class:`Disconnected` on every
        connection and every loss of one (a plain function, run in the iterating task; ``print``
        will do). The subscription reconnects after network errors and any close of the stream
        but those that retrying cannot get past: an upgrade refused with a 4xx status other than
        408 and 429, or a close by which the server refuses the subscription (a close code
        4000 + such a status, 1009, a glob over the server's item limit), raise
        :class:`ClientError` with that status (413 for the too large); a frame over
        ``max_frame_bytes`` raises :class:`FrameTooLarge`. Each of these closes is reported first
        as a :class:`Disconnected` with no delay. ``reconnect=False`` ends the iteration when the
        server closes the stream and raises :class:`ConnectionFailed` when it cannot connect.
        """
        self._url(key)  # validate now rather than on first iteration
        subscription = Subscription(self, key, version=version, state=state,
                                    reconnect=reconnect, on_status=on_status)
        self._subscriptions.add(subscription)
        return subscription

    # Plumbing

    def _url(self, key: str) -> URL:
        if key and not keys.is_valid(key):
            raise ValueError(f"invalid key {key!r}")
        return self.base_url.join(URL(key))

    def session(self) -> aiohttp.ClientSession:
        """The underlying session, created on first use (inside the running event loop)."""
        if self._session is None:
            # No connection limit: every subscription holds one connection for its whole life.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _write(self, method: str, key: str, value: Any) -> str:
        body = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else orjson.dumps(value)
        reply = await self._request(
            method, key, body=body, headers={"Content-Type": "application/json"}
        )
        return cast(str, orjson.loads(reply)["index"])

    async def _request(
        self, method: str, key: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        """Send one call; the reply's body."""
        return (await self._exchange(method, key, body=body, headers=headers)).body

    async def _exchange(
        self,
        method: str,
        key: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> _Reply:
        """Send one call; a GET is sent again (up to ``read_retries`` times) when its connection is
        lost, any other method never is."""
        retries = self.options.read_retries if method == "GET" else 0
        while True:
            try:
                reply = await self._send(method, key, body, headers or {}, query or {})
            except _Lost as lost:
                if method != "GET":
                    raise RequestUncertain(method, key, lost.cause) from lost.__cause__
                if retries <= 0:
                    raise ConnectionFailed(f"connection lost: {lost.cause}") from lost.__cause__
                retries -= 1
                continue
            if reply.status >= 400:
                raise ClientError(reply.status, reply.body.decode(errors="replace").strip())
            return reply

    async def _send(
        self, method: str, key: str, body: bytes | None, headers: dict[str, str], query: dict[str, str]
    ) -> _Reply:
        """One exchange: the reply, or :class:`ConnectionFailed` when nothing was sent, or
        ``_Lost`` when the request may have reached the server."""
        session = self.session()
        url = self._url(key)
        try:
            async with session.request(
                method, url.with_query(query) if query else url, data=body,
                headers={**self._auth(), **headers},
                timeout=aiohttp.ClientTimeout(total=self.options.request_timeout),
                middlewares=_middlewares(session),
            ) as response:
                return _Reply(response.status, await response.read(), dict(response.headers))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectionFailed(_describe(exc)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Sent at least in part, then reset, cut short or timed out: the server may have acted.
            raise _Lost(_describe(exc)) from exc

    def _forget(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)


TxnOpLike = tuple[str, str] | tuple[str, str, Any] | dict[str, Any]
"""An op of :meth:`Client.txn`: ``(op, key)``, ``(op, key, data)`` or ``{"op", "key", "data"}``."""


def _txn_op(op: TxnOpLike) -> Any:
    """The JSON of one op; ``bytes`` data is sent as the JSON text it holds, a del without data.
    Anything but a tuple is sent as it is: a dict, or what the server refuses with its reason."""
    if not isinstance(op, tuple):
        return op
    kind, key, *rest = op
    if kind == "del" or not rest:
        return {"op": kind, "key": key}
    data = rest[0]
    if isinstance(data, bytes | bytearray | memoryview):
        data = orjson.Fragment(bytes(data))
    return {"op": kind, "key": key, "data": data}


def _conflict(exc: ClientError) -> TxnConflict:
    """The 409 of ``POST /?api=txn`` as :class:`TxnConflict`, its JSON body read."""
    try:
        body = orjson.loads(exc.message)
        return TxnConflict(str(body["error"]), [str(key) for key in body["keys"]])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return TxnConflict(exc.message, [])


class _Reply(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]


class _Lost(Exception):
    """The connection failed after the request may have been sent (internal to the client)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _no_silent_resend(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Keep aiohttp from re-sending a request whose connection dropped.

    aiohttp (3.12 to at least 3.14) sends GET, HEAD, OPTIONS, TRACE, PUT and DELETE a second time,
    silently, when the first send ends in ``ServerDisconnectedError`` or ``ClientOSError`` (a pooled
    keep-alive connection the server closed, or any connection lost before the reply). Our DELETE is
    not idempotent in its answer, so :meth:`Client._request` decides instead: turning the error into
    one aiohttp does not retry ends its loop. A failure to connect is passed through unchanged.
    """
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _Lost(_describe(exc)) from exc


def _middlewares(session: aiohttp.ClientSession) -> Sequence[aiohttp.ClientMiddlewareType]:
    # Per-request middlewares replace the session's, so a shared session's own ones are kept after
    # ours (aiohttp has no public accessor for them).
    return (_no_silent_resend, *getattr(session, "_middlewares", ()))


class Subscription(AsyncIterator[Any]):
    """The live state of one key or glob; see :meth:`Client.subscribe`.

    Iterating yields the full state after each frame: an :class:`Entry` dict for a single key (the
    empty object while it does not exist), a list of entries, newest first, for a glob. States are
    shared with later ones: treat them as read-only. Use ``async with`` (or :meth:`close`) to close
    the websocket deterministically when leaving the loop early.

    It connects with ``?v=`` only while it holds a state and that state's version: the server may
    then send patches against that state alone. After such a reconnect, a snapshot replaces the
    state and without one the state is kept and the next patches apply to it. A frame that cannot
    be applied drops the state and the version, reports :class:`Disconnected` with ``resync=True``
    and reconnects without ``?v=``.
    """

    def __init__(
        self,
        client: Client,
        key: str,
        *,
        version: str | None,
        state: Any,
        reconnect: bool,
        on_status: Callable[[Status], object] | None,
    ) -> None:
        self.key = key
        #: The version of the last frame received (sent back as ``?v=`` on reconnect).
        self.version = version
        #: The current state; None until the first frame (or the state resumed from).
        self.state: Any = state
        #: How many times a websocket was opened.
        self.connections = 0
        #: The latest :class:`Connected` or :class:`Disconnected`; None before the first attempt.
        self.status: Status | None = None
        self._client = client
        self._reconnect = reconnect
        self._on_status = on_status
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed = False
        self._stopped = asyncio.Event()
        self._attempt = 0
        self._delays = backoff_delays(client.options)
        self._opened_at = 0.0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the websocket; the iteration then ends (a pending backoff wait is cut short)."""
        self._closed = True
        self._stopped.set()
        self._client._forget(self)
        await self._disconnect()

    async def __anext__(self) -> Any:
        while not self._closed:
            ws = self._ws or await self._connect()
            if ws is None:
                break
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                problem = self._on_frame(message.data)
                if problem is None:
                    return self.state
                await self._disconnect()  # out of step: the next connection starts from a snapshot
                reason = f"{type(problem).__name__}: {problem}"
                await self._lost(Disconnected(self.key, reason, error=problem, resync=True))
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                code, reason = _close_of(ws, message)
                await self._disconnect()
                final = self._final(message, code, reason)
                if final is not None or not self._reconnect:
                    self._report(Disconnected(self.key, reason, code=code))
                    if final is not None:
                        await self.close()
                        raise final
                    break
                await self._lost(Disconnected(self.key, reason, code=code))
        await self.close()
        raise StopAsyncIteration

    def _final(self, message: aiohttp.WSMessage, code: int, reason: str) -> ClientError | None:
        """The error that ends the subscription when the next connection would end the same way:
        a frame above our own ``max_frame_bytes`` (aiohttp closes with 1009 for it), or a close by
        which the server refuses the subscription (:func:`_refusal`); None for every other close."""
        if message.type is aiohttp.WSMsgType.ERROR and code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
            found = _FRAME_SIZE.search(reason)
            size = int(found.group(1)) if found else None
            return FrameTooLarge(self.key, size, self._client.options.max_frame_bytes)
        status = _refusal(code, reason)
        return None if status is None else ClientError(status, f"subscription refused: {reason}")

    def _on_frame(self, raw: bytes | str) -> Exception | None:
        """Apply one frame to the state; on failure drop the state and return why."""
        try:
            frame = orjson.loads(raw)
            if frame["snapshot"]:
                state = frame["data"]
            elif self.state is None:
                raise PatchError("a patch came before any snapshot")
            else:
                state = apply_patch(self.state, frame["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError, PatchError) as exc:
            self.state, self.version = None, None
            return exc
        self.state, self.version = state, frame.get("version")
        self._worked()
        return None

    async def _connect(self) -> aiohttp.ClientWebSocketResponse | None:
        """Open the websocket; None once closed. Each failure is reported, then waited out."""
        client = self._client
        url = client._url(self.key)
        if self._resumes() and self.version is not None:
            url = url.with_query(v=self.version)
        protocols = ("bearer", client.token) if client.token else ()
        while not self._closed:
            try:
                self._ws = await client.session().ws_connect(
                    url, protocols=protocols, heartbeat=client.options.heartbeat,
                    max_msg_size=client.options.max_frame_bytes,
                )
            except aiohttp.WSServerHandshakeError as exc:
                reason = exc.message if exc.status < 400 else _reason_phrase(exc.status)
                if 400 <= exc.status < 500 and exc.status not in _RETRIED:
                    await self.close()  # retrying cannot help: bad key, refused, unauthorised ...
                    raise ClientError(exc.status, f"subscription refused: {reason}") from exc
                status: Disconnected = Disconnected(self.key, reason, status=exc.status, error=exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status = Disconnected(self.key, _describe(exc), error=exc)
            else:
                if self._closed:  # closed from another task while connecting
                    await self._disconnect()
                    return None
                self._opened()
                return self._ws
            if not self._reconnect:
                await self.close()
                raise ConnectionFailed(status.reason) from status.error
            await self._lost(status)
        return None

    def _opened(self) -> None:
        self.connections += 1
        self._opened_at = asyncio.get_running_loop().time()
        self._report(Connected(self.key, self._attempt, resumed=self._resumes(),
                               reconnect=self.connections > 1))

    def _resumes(self) -> bool:
        """Whether to connect with ``?v=``: only with the state of that version to patch, else a
        resume's patches could not apply and cost a second connection for the snapshot."""
        return self.version is not None and self.state is not None

    def _worked(self) -> None:
        """The stream works: the next loss starts the backoff afresh, at attempt 1."""
        self._attempt = 0
        self._delays = backoff_delays(self._client.options)

    async def _lost(self, status: Disconnected) -> None:
        """Report a failure with the delay to the next attempt, then wait for it (or for close).

        A stream that stayed open longer than the longest delay counts as having worked, even if no
        frame came (a resume with nothing new); one that fails sooner keeps backing off, so a server
        that accepts and at once drops connections is not hammered.
        """
        alive = asyncio.get_running_loop().time() - self._opened_at
        if status.code is not None and alive >= self._client.options.reconnect_max:
            self._worked()
        self._attempt += 1
        delay = next(self._delays)
        self._report(dataclasses.replace(status, attempt=self._attempt, delay=delay))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopped.wait()

    def _report(self, status: Status) -> None:
        self.status = status
        if self._on_status is not None:
            self._on_status(status)

    async def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()


def _close_of(ws: aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage) -> tuple[int, str]:
    """The close code and reason of a stream that ended with ``message``.

    A close frame carries the server's code and reason. Without one the connection died (1006), or
    the client itself closed it for an unusable frame (a ``WebSocketError`` with its own code, such
    as 1009 for a frame above ``max_frame_bytes``).
    """
    if message.type is aiohttp.WSMsgType.CLOSE:
        return int(message.data), str(message.extra or "")
    if message.type is aiohttp.WSMsgType.ERROR:
        error = message.data
        code = error.code if isinstance(error, aiohttp.WebSocketError) else 1006
        return code, _describe(error)
    cause = ws.exception()
    return 1006, f"connection lost: {_describe(cause)}" if cause else "connection lost"


_FRAME_SIZE = re.compile(r"Message size (\d+) exceeds limit")
"""How aiohttp states the size of a frame above ``max_msg_size`` (its ``WebSocketError`` 1009)."""
_TOO_MANY_ITEMS = re.compile(r"matches more than \d+ items")
"""The reason of the close by which ooo-storage refuses a glob over its ``max_subscription_items``
(server/hub.py); it closes with 1011, which otherwise means a failure worth retrying."""
_RETRIED = (408, 429)
"""4xx statuses that can pass: a timeout, too many requests. Any other 4xx is final."""


def _refusal(code: int, reason: str) -> int | None:
    """The HTTP status of a close by which the server refuses the subscription for good, None for
    a close that a reconnect may get past (shutdown, slow consumer, write timeout, lost connection).

    Final: a close code 4400..4499 (4000 + a 4xx status, as a server says after the upgrade what
    it would have said before it: 4413 too large, 4403 forbidden), except 4408 and 4429 as for a
    refused upgrade; 1009, by which the server says what we sent is too big; and ooo-storage's
    close of a glob with too many items.
    """
    status = code - 4000
    if 400 <= status < 500:
        return None if status in _RETRIED else status
    if code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG or _TOO_MANY_ITEMS.search(reason):
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value
    return None


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "no reason given"
