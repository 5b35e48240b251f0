"""Access control at the edge (issue 9): who a request is, and whether the policy lets it through.

The rules are :mod:`ooo_storage.protocol.access`'s; here they meet requests. A :class:`Guard` holds
the server's current :class:`~ooo_storage.protocol.access.Policy` and its middleware runs for every
route, websocket upgrades included, before the ooo filters and before any body is read:

1. the bearer token comes from ``Authorization: Bearer <token>`` or from the ``bearer, <token>``
   websocket sub-protocol (:func:`bearer_token`); :meth:`Policy.authenticate` makes it a
   :class:`~ooo_storage.protocol.access.Principal` (bad or expired credentials: 401 with
   ``WWW-Authenticate``), stored on the request as ``request[PRINCIPAL]`` for later middlewares;
2. the route says which right it needs (:func:`required_right`) and :meth:`Policy.check` decides;
   a refusal is a 403 naming the right and the path, or a 401 when no token was given (one might
   grant it). A websocket is refused the same way, before the upgrade.

The policy is swapped by replacing one reference (:meth:`Guard.swap`): a request reads it once, so
a request already past authentication finishes under the policy it started with. Denied requests
are logged by :class:`DeniedLog`, never with the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler, Middleware

from ..errors import Forbidden, HTTPFailure, NotActive, NotFound, Unauthorized
from ..layered import Layered, WatchHandle
from ..protocol import keys
from ..protocol.access import Namespace, Policy, Principal, Right, shown, token_digest
from .errors import response_for
from .rest import request_key
from .streams import bearer_token, wants_websocket
from .usage import Stored, Usage

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("ooo_storage.server.auth")

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("ooo_principal", Principal)
"""``request[PRINCIPAL]``: who the request is, once the guard let it in (absent without a policy)."""

ANY: Literal["any"] = "any"
"""The need of the clock stream on ``/``: any principal the policy authenticates, anonymous too."""

Need = Right | Literal["any"]


def principal_of(request: web.Request) -> Principal | None:
    """Who ``request`` is, or None when the server has no policy."""
    return request.get(PRINCIPAL)


_METHOD_RIGHTS: dict[str, Right] = {"GET": "read", "POST": "write", "PATCH": "write", "DELETE": "delete"}


def required_right(method: str, key: str, websocket: bool) -> Need | None:
    """What a request on ``key`` (``""`` for ``/``) needs: ``read`` for a GET or a subscription,
    ``write`` for POST and PATCH (a push on ``logs/*`` covers the glob), ``delete`` for DELETE,
    ``admin`` for ``GET /`` (listings, every ``?api=``), :data:`ANY` for the clock stream. None when
    the request is refused anyway, whoever asks (405, an invalid key: 400), so the handler says why."""
    need = method_need(method, key, websocket)
    return None if key and not keys.is_valid(key) else need


def method_need(method: str, key: str, websocket: bool) -> Need | None:
    """:func:`required_right` without reading ``key`` beyond whether it is empty: for an invalid
    key, what its method would need. :func:`decide` lets an invalid key through rather than refuse
    it (the handler, which checks the key anyway, answers 400), so a caller that decides with this
    validates the key only for a request it would refuse, not for every request."""
    if not key:
        if method != "GET":
            return None
        return ANY if websocket else "admin"
    return _METHOD_RIGHTS.get(method)


def _asked(request: web.Request) -> tuple[str, Need | None]:
    """The key ``request`` names and what it needs (:func:`method_need`), in one pass: this runs
    for every request. The key is :func:`~.rest.request_key`'s, left unchecked here: :func:`decide`
    checks it only before a refusal (a path :func:`~.rest.request_key` refuses is never a valid
    key: let through, the handler says why); the headers are read only for ``/`` (the clock stream)."""
    path = request.raw_path.partition("?")[0]
    if path[:1] != "/":
        return "", None
    key = path[1:]
    return key, method_need(request.method, key, not key and wants_websocket(request))


def explorer_page(request: web.Request) -> bool:
    """Whether a ``GET /`` asks for the explorer page (docs/protocol.md §4.9): no query string, and
    not ``Accept: application/json`` (the key listing). The page holds no data, so it needs no
    right; what it then reads (listings, ``?api=``, keys, streams) is checked as usual."""
    return (
        request.method in ("GET", "HEAD")
        and not request.query_string
        and "application/json" not in request.headers.get("Accept", "")
    )


def decide(policy: Policy, principal: Principal, need: Need | None, key: str) -> None:
    """Raise :class:`Forbidden` (403) unless ``principal`` may do what ``need`` says on ``key``;
    :class:`Unauthorized` (401) instead for an anonymous request, which a token might let in. An
    invalid ``key`` is let through: it is refused whoever asks, and its handler says why (400)."""
    if need is None or need == ANY:
        return
    if principal.admin if need == "admin" else principal.may(need, key):  # Policy.allows, inlined
        return
    if key and not keys.is_valid(key):
        return
    if principal.kind == "anonymous":
        raise Unauthorized(f"ooo: unauthorized: a token is required to {need} {key or '/'}")
    policy.check(principal, need, key)


def _refusal(policy: Policy, who: Principal | Unauthorized, need: Need, key: str) -> HTTPFailure | None:
    """Why ``who`` (a principal, or why its credentials failed) may not do ``need`` on ``key``."""
    if isinstance(who, Unauthorized):
        return who
    try:
        decide(policy, who, need, key)
    except (Unauthorized, Forbidden) as exc:
        return exc
    return None


def _who(token: str | None) -> str:
    """How the log names the sender of refused credentials: never the token, only a short prefix
    of its SHA-256 (what the policy file keeps), enough to tell two callers apart."""
    return "anonymous" if token is None else f"token sha256:{token_digest(token)[:12]}"


class DeniedLog:
    """One log line per (principal, path) per ``interval`` seconds, and at most ``budget`` lines per
    ``interval`` in all (paths are the client's to choose); what was left out is counted and said
    in one line once the interval is over. Remembers at most ``capacity`` pairs (memory stays
    bounded whatever the paths)."""

    def __init__(
        self,
        interval: float = 60.0,
        budget: int = 100,
        capacity: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.budget = budget
        self.capacity = max(capacity, budget)
        self.clock = clock
        self._logged: OrderedDict[tuple[str, str], float] = OrderedDict()  # oldest line first
        self._window = clock()
        self._lines = 0
        self._left_out = 0

    def __call__(self, who: str, method: str, path: str, failure: HTTPFailure) -> None:
        now = self.clock()
        self._roll(now)
        pair = (who, path)
        last = self._logged.get(pair)
        if (last is not None and now - last < self.interval) or self._lines >= self.budget:
            self._left_out += 1
            return
        self._logged[pair] = now
        self._logged.move_to_end(pair)
        while len(self._logged) > self.capacity:  # older than any line of this window: budget ≤ capacity
            self._logged.popitem(last=False)
        self._lines += 1
        level = logging.INFO if failure.status == 401 and who == "anonymous" else logging.WARNING
        # Names and reasons quote JWT claims: a "sub" with a newline must not forge a log line.
        log.log(level, "denied %s %.200s to %s: %d %.300s", method, shown(path), shown(who), failure.status,
                shown(failure.message))

    def _roll(self, now: float) -> None:
        if now - self._window < self.interval:
            return
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Say how many denied requests were not logged since the last such line, and start a new
        window (called by the next denial after ``interval``, and when the server stops)."""
        now = self.clock() if now is None else now
        if self._left_out:
            log.warning(
                "denied %d more request(s) in the last %.0f s without a log line each (one line per "
                "principal and path per %g s, at most %d lines)",
                self._left_out, now - self._window, self.interval, self.budget,
            )
        self._window, self._lines, self._left_out = now, 0, 0


class Guard:
    """The policy in force and what follows from it: the requests it lets in (:meth:`middleware`),
    the streams it still allows after a swap (:meth:`recheck`), the usage of its namespaces
    (``usage.py``) and the log of the requests it refuses. Without a policy every request passes
    untouched and nothing is counted."""

    def __init__(self, store: Layered, policy: Policy | None, denied: DeniedLog | None = None) -> None:
        self.store = store
        self.policy = policy
        self.denied = denied or DeniedLog()
        self.usage: Usage | None = None
        self.endpoints: dict[str, Need | None] = {}
        """The server's own endpoints (``health.py``; ``metrics`` for ``/metrics``) and what a plain
        GET or HEAD of each needs: None lets everyone in, no token asked."""
        self._namespaces: tuple[Namespace, ...] = ()
        self._observer: WatchHandle | None = None
        self._generation = 0  # bumped by every change of namespaces; a load of an older one is redone
        self._loaded = False
        self._loading: asyncio.Task[None] | None = None
        self._started = False

    def swap(self, policy: Policy | None) -> None:
        """Use ``policy`` for every request from now on (one reference replaced: atomic for the
        event loop; requests already let in finish under the policy they started with)."""
        self.policy = policy
        self._follow(policy)

    # -- lifecycle (the application's startup and cleanup) -------------------------------------
    async def start(self) -> None:
        """Start counting usage: before the server listens, the namespaces' objects are counted
        (one pass over the keys; ~0.6 s for 200 000 namespaced keys after a restart), so no
        request waits behind that pass (unless the store opens later: then the first
        ``?api=stats`` counts)."""
        self._started = True
        self._follow(self.policy)
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)  # a failure is logged

    async def stop(self) -> None:
        self._started = False
        if self._observer is not None:
            self._observer.cancel()
            self._observer = None
        loading, self._loading = self._loading, None
        if loading is not None:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
        self.denied.flush()

    # -- admission -------------------------------------------------------------------------------
    def middleware(self) -> Middleware:
        """The aiohttp middleware: authenticate, authorize, remember the principal, count usage."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            policy = self.policy
            if policy is None:
                return await handler(request)
            key, need = _asked(request)
            if need == "admin" and explorer_page(request):
                return await handler(request)  # static, no data: the page asks for a token itself
            if key in self.endpoints and request.method in ("GET", "HEAD") and not wants_websocket(request):
                need = self.endpoints[key]
                if need is None:
                    return await handler(request)
            token = bearer_token(request)
            try:
                principal = policy.authenticate(token)
            except Unauthorized as exc:
                return self._refuse(request, _who(token), exc)
            try:
                decide(policy, principal, need, key)
            except (Unauthorized, Forbidden) as exc:
                return self._refuse(request, principal.name, exc)
            request[PRINCIPAL] = principal
            usage = self.usage
            if usage is not None and key and need is not None and keys.is_valid(key):
                usage.count_request(key)
            return await handler(request)

        return guard

    def admit(self, token: str | None, method: str, key: str) -> bool:
        """What :meth:`middleware` decides for a plain HTTP request (no websocket) on ``key`` with the
        bearer ``token``, in one call, for the lean front (``front/``), which answers most requests
        without aiohttp: raises :class:`Unauthorized` or :class:`Forbidden` as the middleware would
        refuse (the front then hands the request to aiohttp, which answers and logs it). True when
        the request is to be counted in the usage (``Usage.count_request`` finds its namespace) once
        answered. The key is validated only when it matters: before a refusal, and for the usage."""
        policy = self.policy
        if policy is None:
            return False
        principal = policy.authenticate(token)
        if not key:
            decide(policy, principal, method_need(method, key, False), key)
            return False
        right = _METHOD_RIGHTS.get(method)
        if right is not None and not principal.may(right, key):
            decide(policy, principal, right, key)  # raises, unless the key is invalid (400 for all)
        return self.usage is not None and right is not None and keys.is_valid(key)

    def _refuse(self, request: web.Request, who: str, exc: HTTPFailure) -> web.Response:
        self.denied(who, request.method, request.rel_url.raw_path, exc)  # as sent: no decoded newline
        response = response_for(exc)
        if not request.content.is_eof():
            response.force_close()  # a refused body is not worth reading
        return response

    def recheck(self, connections: Iterable[Connection]) -> int:
        """Close (1008, with the reason) every open stream the current policy would refuse if it
        subscribed now: its token unknown or expired, or its principal without ``read`` on its key.
        Returns how many were closed. Each distinct token is authenticated once."""
        policy = self.policy
        if policy is None:
            return 0
        principals: dict[str | None, Principal | Unauthorized] = {}
        closed = 0
        for conn in connections:
            token = bearer_token(conn.request)
            if token not in principals:
                try:
                    principals[token] = policy.authenticate(token)
                except Unauthorized as exc:
                    principals[token] = exc
            key = request_key(conn.request) or ""
            refusal = _refusal(policy, principals[token], ANY if not key else "read", key)
            if refusal is not None and not conn.closed:
                conn.drop(WSCloseCode.POLICY_VIOLATION, refusal.message)
                closed += 1
        if closed:
            log.warning("auth: new policy: closed %d stream(s) it no longer allows", closed)
        return closed

    def expire(self, conn: Connection) -> Expiry:
        """Close ``conn`` (1008, ``ooo: unauthorized: token expired``) once its token expires: a
        stream outlives no JWT (its ``exp`` plus the leeway); opaque tokens and anonymous never
        expire. Call it once the stream has started; cancel what it returns when the stream ends."""
        expiry = Expiry(self, conn)
        expiry.arm()
        return expiry

    # -- usage of the namespaces -----------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """``?api=stats``: the usage of every namespace, once it has been counted from the store."""
        usage = self.usage
        if usage is None:
            raise HTTPFailure(
                404, "ooo: no usage statistics: the access policy declares no namespaces (add "
                '[[namespaces]] name = "...", prefix = ".../" to the --auth file)',
            )
        while not self._loaded and self.usage is usage:
            await asyncio.shield(self._load_soon())
        return usage.snapshot()

    def _follow(self, policy: Policy | None) -> None:
        """Keep the usage counter in step with the namespaces of ``policy``: created with the first
        namespaces (a commit observer from startup on), recounted from the store when they change,
        dropped when there are none."""
        namespaces = () if policy is None else policy.namespaces
        if not namespaces:
            if self._observer is not None:
                self._observer.cancel()
                self._observer = None
            self.usage, self._namespaces, self._loaded = None, (), False
            return
        if self.usage is None:
            self.usage = Usage(namespaces)
        elif namespaces == self._namespaces and (self._loaded or self._loading is not None):
            return
        self._namespaces = namespaces
        self._generation += 1
        self._loaded = False
        if not self._started:
            return
        if self._observer is None:
            self._observer = self.store.on_commit(self.usage.on_event, silent=True)  # trims too
        if self.store.active:  # otherwise counted by the first ?api=stats once it is
            self._load_soon()

    def _load_soon(self) -> asyncio.Task[None]:
        """The running load of the namespaces' objects, started if none is."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())
            self._loading.add_done_callback(_log_failure)
        return self._loading

    async def _load(self) -> None:
        """Count the stored objects of the namespaces: read until no write committed during the
        read (with the memory mirror nothing here waits, so the first read is whole); events from
        then on are the commit observer's. Redone if the namespaces changed meanwhile."""
        try:
            while not self._loaded:
                usage, namespaces, generation = self.usage, self._namespaces, self._generation
                if usage is None:
                    return
                prefixes = tuple(ns.prefix for ns in namespaces)
                for _ in range(_LOAD_ATTEMPTS):
                    revision = self.store.revision
                    objects = await _stored(self.store, prefixes)
                    if self.store.revision == revision:
                        break
                if generation == self._generation and usage is self.usage:
                    usage.reconfigure(namespaces, objects)
                    self._loaded = True
        finally:
            self._loading = None


class Expiry:
    """The timer that closes one stream when its token expires. When it fires, the token is
    authenticated again by the policy then in force (a SIGHUP may have changed the leeway, or
    turned access control off): refused, the stream is closed with the reason; still accepted
    (the clocks of the loop and of ``time.time()`` differ a little), the timer is set again."""

    __slots__ = ("_guard", "_conn", "_timer")

    def __init__(self, guard: Guard, conn: Connection) -> None:
        self._guard = guard
        self._conn = conn
        self._timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self._timer = None
        policy, conn = self._guard.policy, self._conn
        if policy is None or conn.closed:
            return
        try:
            expires = policy.expiry(bearer_token(conn.request))
        except Unauthorized as exc:
            conn.drop(WSCloseCode.POLICY_VIOLATION, exc.message)
            return
        if expires is not None:
            delay = max(expires - time.time(), 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self.arm)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_LOAD_ATTEMPTS = 5


async def _stored(store: Layered, prefixes: tuple[str, ...]) -> list[Stored]:
    """What is stored under one of ``prefixes``, at any depth: with the memory mirror, its raw
    values (nothing parsed, nothing awaited, so one consistent read); otherwise the objects, read
    one by one (the caller retries when a write committed meanwhile)."""
    if not store.active:
        raise NotActive()
    memory = store.memory
    if memory is not None:
        every = memory.keys()  # a MemoryLayer is not iterable
        return [(k, memory.get_raw(k)) for k in every if k.startswith(prefixes)]
    objects: list[Stored] = []
    for key in [k for k in await store.keys() if k.startswith(prefixes)]:
        with contextlib.suppress(NotFound):  # deleted since keys(): the revision check retries
            objects.append(await store.get(key))
    return objects


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("usage: counting the namespaces' objects failed: %r", task.exception())
