"""RedisLayer: several ooo-storage nodes over one Redis, one order for all of them.

Redis holds the data and the order; every node keeps a full memory mirror and does the HTTP,
websocket and JSON work. In Redis, under ``<namespace>:``:

* ``data``: a hash, key -> the object's JSON bytes (``obj.to_json()``);
* ``keys``: a sorted set of the keys (all scores 0: lexicographic, for globs and ranges);
* ``rev``: the revision counter shared by every node;
* ``log``: a stream of the writes, bounded with ``MAXLEN ~``, whose entry ids are ``<revision>-0``.

A write is one Lua script (one atomic Redis step): it changes ``data`` and ``keys``, takes the next
revision from ``rev`` and appends the event (operation, key, object bytes, node id and the previous
revision) to ``log``. Every node tails ``log`` with ``XREAD BLOCK`` in one task and applies the
other nodes' entries through ``Layered.apply_remote`` (:class:`~ooo_storage.layers.base.Follower`) in
stream order. A write of this node returns when the tail reaches its entry, with the entry's
revision in :attr:`RedisLayer.last_revision`, and the tail goes on only after the writer's next step,
in which ``Layered`` publishes the write with that revision (the layer says ``publishes_writes``).
So the mirror, the revisions and the events of every node follow that one order, and a websocket
client can resume with ``?v=`` on another node. A writer that is gone (cancelled, timed out) has its
entry applied by the tail like another node's.

Locks (``get_and_lock``) are Redis keys ``<namespace>:lock:<key>`` with a token and an expiry; the
set and point-delete scripts refuse a key locked by another node (its writer sends it again after a
backoff), so a plain write waits for the holder on every node, as one process's key locks make it
wait. A glob delete does not wait for locks (in one process neither: it takes the store's gate,
which a lock holder does not hold; the holder's ``set_and_unlock`` then writes the key again).

A transaction (``Layered.commit``) is one script too (``_TXN``): it checks every key the
transaction writes or expects against Redis, at the version this node's view gave it (the mirror
may be behind another node's writes: the node then catches up and the commit is checked and
built again), refuses a key another node holds locked (sent again after a backoff, within the
transaction's deadline), then applies every op and appends ONE entry with ONE revision. Every
node applies that entry in one step (``Layered.apply_remote_txn``): its mirror, then one event
per op sharing the revision, so each websocket pool sends one frame for the whole transaction.

Each entry names the revision before it, so a node sees a gap (its position trimmed away by
``MAXLEN`` while it was disconnected, or a ``clear`` by another node): it then reloads the data and
the counter in one script and applies what changed as ONE unit at ONE shared revision, cutting its
history there (:meth:`RedisLayer._resync`, ``Layered.apply_remote_reload``). Redis unreachable: writes raise
``StorageUnavailable`` (a 503 naming Redis), reads are served from the mirror, the tail reconnects
with a backoff (up to 5 s) and goes on from its position.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from ..errors import CorruptObject, StorageUnavailable, TransactionTimeout
from ..protocol import keys
from ..protocol.clock import now
from ..protocol.objects import Object, load_object
from .base import RemoteApply, RemoteRawApply, RemoteTxnApply

log = logging.getLogger("ooo_storage.redis")

__all__ = ["RedisLayer", "DEFAULT_NAMESPACE", "redact", "check_namespace"]

DEFAULT_NAMESPACE = "ooo"
_START_MARGIN_US = 60_000_000
"""A starting node moves the shared counter this far above its clock (see :meth:`start`)."""
_SLOTS = 1024
"""Push stamps end in a node's slot (``INCR <namespace>:nodes`` at start, modulo this)."""
_BATCH = 1000
"""Stream entries read per ``XREAD``."""
_BLOCK_MS = 1000
_LINGER = 0.001
"""After a short batch, a tail with nobody waiting on it waits this long before its next ``XREAD``:
under another node's load an ``XREAD`` then carries more than one of its scripts' entries (10.8
entries per ``XREAD`` instead of 6.5 at 32 pipelined wrk connections), and each round trip costs
the follower and Redis more than applying an entry (CPU per remote write: follower 31.9 -> 26.5
us, Redis 49 -> 40 us, medians of 7 interleaved rounds). Another node's write reaches this node's
subscribers up to this much later; a quiet stream is read at once (``XREAD BLOCK`` answers the
first entry)."""
_NAMES = [b"o", b"k", b"v", b"n", b"p"]
"""The field names of a stream entry, in the order every script writes them (``_XADD``, ``_BUMP``,
``_SNAPSHOT``, ``_TXN``); a silent delete adds ``q``."""
_QUIET_NAMES = [*_NAMES, b"q"]
_SET_BATCH = 256
"""Sets per script at most: a longer script would hold Redis (one thread) from the other nodes."""

# KEYS: data, keys, rev, log. Every write script appends one entry whose id is its revision.
# A silent delete (``delete_silent``) has a field 'q' '1': the other nodes apply it without an event.
_XADD = """
local function append(op, key, value, node, maxlen, quiet)
  local rev = redis.call('INCR', KEYS[3])
  local id = string.format('%d', rev) .. '-0'
  local prev = string.format('%d', rev - 1)
  if quiet == '1' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, id, 'o', op, 'k', key, 'v', value,
               'n', node, 'p', prev, 'q', '1')
  else
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, id, 'o', op, 'k', key, 'v', value,
               'n', node, 'p', prev)
  end
  return rev
end
"""
# A key locked by get_and_lock on another node is not written: its revision is '0' (the writer
# waits and sends it again), as one process's key locks make a plain set wait for the holder. A
# node's own token (or '') comes with each key: the holder's set_and_unlock goes through.
_LOCKED = """
local function locked(key, token)
  local holder = redis.call('GET', KEYS[5] .. key)
  return holder and holder ~= token
end
"""
# The sets of one event-loop iteration in one step. ARGV: node, maxlen, then key, object, token.
_SET = _XADD + _LOCKED + """
local revisions = {}
for i = 3, #ARGV, 3 do
  if locked(ARGV[i], ARGV[i + 2]) then
    revisions[#revisions + 1] = '0'
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], 0, ARGV[i])
    revisions[#revisions + 1] = string.format('%d', append('s', ARGV[i], ARGV[i + 1], ARGV[1], ARGV[2]))
  end
end
return revisions
"""
# A point delete always takes a revision: the store publishes it (its mirror had the key).
# ARGV: key, node, maxlen, quiet ('1' or '0'), token. Locked by another node: {-1, 0}.
_DELETE = _XADD + _LOCKED + """
if locked(ARGV[1], ARGV[5]) then return {-1, 0} end
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {n, append('d', ARGV[1], '', ARGV[2], ARGV[3], ARGV[4])}
"""
# ARGV: pattern, Lua pattern, range start, range end, node, maxlen, quiet
_DELETE_GLOB = _XADD + """
local found = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[3], ARGV[4])
local n = 0
for _, key in ipairs(found) do
  if string.find(key, ARGV[2]) then
    redis.call('HDEL', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
    n = n + 1
  end
end
if n == 0 then return {0, 0} end
return {n, append('g', ARGV[1], '', ARGV[5], ARGV[6], ARGV[7])}
"""
_CLEAR = _XADD + """
redis.call('DEL', KEYS[1], KEYS[2])
return append('c', '', '', ARGV[1], ARGV[2])
"""
# Moves the counter up to ARGV[1] (a starting node's clock plus a margin), with a 'b' entry so
# that the other nodes' tails see no gap. Returns the counter.
_BUMP = """
local c = tonumber(redis.call('GET', KEYS[3]) or '0')
local f = tonumber(ARGV[1])
if f <= c then return c end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], ARGV[1] .. '-0', 'o', 'b', 'k', '', 'v', '',
           'n', ARGV[2], 'p', string.format('%d', c))
return f
"""
# The data and the counter in one step. ARGV[1] > 0: the revision a resync applies the data at
# must be at least that (above the node's position): a counter below it is moved up to it behind a
# 'b' entry (nothing changes between the data's revision and it). Returns the data, the counter
# the data stands for and the revision to apply it at.
_SNAPSHOT = """
local c = tonumber(redis.call('GET', KEYS[3]) or '0')
local floor = tonumber(ARGV[1])
local top = c
if floor > c then
  top = floor
  local id = string.format('%d', top)
  redis.call('SET', KEYS[3], id)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], id .. '-0', 'o', 'b', 'k', '', 'v', '',
             'n', ARGV[2], 'p', string.format('%d', c))
end
return {redis.call('HGETALL', KEYS[1]), string.format('%d', c), string.format('%d', top)}
"""


# KEYS: the lock, rev. Takes the lock (a token of its holder, an expiry) and returns the counter
# (the holder must have applied the stream up to it to read the key's last write), or -1.
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('GET', KEYS[2]) or '0'
end
return -1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A transaction in one step (KEYS as the write scripts). ARGV: node, maxlen, the number of keys
# checked, each as key, version ('' for missing: the caller's view, expect included) and this
# node's token, then the ops: 's' key object | 'd' key | 'g' glob, Lua pattern, range start, end.
# A checked key locked by another node: {-1, 0, keys...} (the writer waits and sends it again).
# One whose version in Redis is not the caller's: {-2, 0, counter, keys...} (its view is behind:
# it catches up to the counter and checks again). Else every op is applied, and those that changed
# something go, in op order, in ONE stream entry 'o' 't' with ONE revision: {1, revision, mask}
# (mask: '1' per op that changed something); nothing changed: {2, 0, mask}, no revision.
# The entry's 'v' packs each op as kind, key, '\n', the value's length, '\n', the value.
_TXN = _LOCKED + """
local function version(raw)
  local created, updated = string.match(raw, '^{"created":(%d+),"updated":(%d+),')
  if updated == '0' then return created end
  return updated
end
local n = tonumber(ARGV[3])
local held, stale = {-1, 0}, {-2, 0, redis.call('GET', KEYS[3]) or '0'}
for i = 4, 3 + 3 * n, 3 do
  local key, want = ARGV[i], ARGV[i + 1]
  if locked(key, ARGV[i + 2]) then
    held[#held + 1] = key
  else
    local raw = redis.call('HGET', KEYS[1], key)
    if (raw and (want == '' or version(raw) ~= want)) or (not raw and want ~= '') then
      stale[#stale + 1] = key
    end
  end
end
if #held > 2 then return held end
if #stale > 3 then return stale end
local packed, mask = {}, {}
local i = 4 + 3 * n
while i <= #ARGV do
  local kind, key, value, changed = ARGV[i], ARGV[i + 1], '', false
  if kind == 's' then
    value = ARGV[i + 2]
    redis.call('HSET', KEYS[1], key, value)
    redis.call('ZADD', KEYS[2], 0, key)
    changed, i = true, i + 3
  elseif kind == 'd' then
    changed = redis.call('HDEL', KEYS[1], key) == 1
    redis.call('ZREM', KEYS[2], key)
    i = i + 2
  else
    for _, found in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[i + 3], ARGV[i + 4])) do
      if string.find(found, ARGV[i + 2]) then
        redis.call('HDEL', KEYS[1], found)
        redis.call('ZREM', KEYS[2], found)
        changed = true
      end
    end
    i = i + 5
  end
  if changed then
    mask[#mask + 1] = '1'
    packed[#packed + 1] = kind .. key .. '\\n' .. string.format('%d', #value) .. '\\n' .. value
  else
    mask[#mask + 1] = '0'
  end
end
if #packed == 0 then return {2, 0, table.concat(mask)} end
local rev = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], string.format('%d', rev) .. '-0', 'o', 't',
           'k', '', 'v', table.concat(packed), 'n', ARGV[1], 'p', string.format('%d', rev - 1))
return {1, rev, table.concat(mask)}
"""


_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is a valid one, else ValueError saying the grammar. No ``:``: every
    Redis key of a namespace is ``<namespace>:<family>...`` (``data``, ``keys``, ``rev``, ``log``,
    ``nodes``, ``lock:<key>``), so one namespace's keys never equal another's (``t1:lock`` would
    make ``t1:lock:rev`` both its counter and the lock of ``t1``'s key ``rev``); no glob or
    space characters either (Redis patterns, command lines)."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"redis: invalid namespace {namespace!r}: 1 to 64 of A-Z a-z 0-9 _ . - (no ':', "
            "spaces or '*')"
        )
    return namespace


def unpack_txn(packed: bytes) -> list[tuple[str, Object | None]]:
    """The ops of a transaction's stream entry (see ``_TXN``): ``(key, obj)`` for a set,
    ``(key_or_glob, None)`` for a delete, in op order."""
    ops: list[tuple[str, Object | None]] = []
    at = 0
    while at < len(packed):
        head = packed.index(b"\n", at)
        end = packed.index(b"\n", head + 1)
        size = int(packed[head + 1 : end])
        kind, key = packed[at : at + 1], packed[at + 1 : head].decode()
        at = end + 1 + size
        ops.append((key, load_object(key, packed[end + 1 : at]) if kind == b"s" else None))
    return ops


Fields = tuple[bytes, bytes, bytes, bytes, bytes, bool]
"""A stream entry's op, key, value, node id, previous revision and whether it is loud."""
Write = tuple[str, bytes | None, int, bool]
"""A set or delete read from the stream: key, object bytes (None: a delete), revision, loud."""


def entry_fields(flat: Sequence[bytes]) -> Fields:
    """The fields of a stream entry from its flat ``[name, value, ...]`` list (as ``XREAD``
    answers it): read by position when they are in the order the scripts write them (no dict per
    entry on the tail's hot path), by name otherwise."""
    names = flat[0::2]
    if names == _NAMES:
        return flat[1], flat[3], flat[5], flat[7], flat[9], True
    if names == _QUIET_NAMES:
        return flat[1], flat[3], flat[5], flat[7], flat[9], False
    fields = dict(zip(names, flat[1::2], strict=True))
    return (fields[b"o"], fields.get(b"k", b""), fields.get(b"v", b""), fields[b"n"], fields[b"p"],
            b"q" not in fields)


def flat_reply(reply: Any) -> Any:
    """redis-py's ``XREAD`` answer (``[[stream, [(id, {name: value})]]]``) in the form of the raw
    RESP reply that :class:`_Wire` hands on (``[[stream, [[id, [name, value, ...]]]]]``)."""
    return [[stream, [(entry_id, [x for item in fields.items() for x in item])
                      for entry_id, fields in entries]] for stream, entries in reply or ()]


def lua_pattern(pattern: str) -> str:
    """A glob of docs/protocol.md §1 as an anchored Lua pattern (``*`` stays inside a segment).
    Keys are ``[A-Za-z0-9*/._-]``: only ``.`` and ``-`` are magic in Lua."""
    out = []
    for char in pattern:
        if char == "*":
            out.append("[^/]*")
        elif char in ".-":
            out.append("%" + char)
        else:
            out.append(char)
    return "^" + "".join(out) + "$"


def lex_range(pattern: str) -> tuple[bytes, bytes]:
    """The ``ZRANGEBYLEX`` bounds of the keys that can match ``pattern`` (its literal prefix)."""
    prefix = keys.glob_prefix(pattern).encode()
    if not prefix:
        return b"-", b"+"
    return b"[" + prefix, b"[" + prefix + b"\xff"


_SECRETS = re.compile(r"(?<=://)[^/@\s]*@|(?<=[?&]password=)(?:[^&\s#:]|:(?!\s|$))*", re.IGNORECASE)
"""A URL's ``user:password@`` and its ``password=`` query parameter (``?password=`` or ``&...``;
up to a ``: `` that ends the URL in a message)."""


def redact(text: str) -> str:
    """``text`` with every URL's credentials replaced by ``***``: a Redis URL carries its password
    (``redis://user:pw@host``, ``redis://host?password=pw``), and errors and logs name the URL."""
    return _SECRETS.sub(lambda m: "***@" if m.group().endswith("@") else "***", text)


def _credentials_refused(exc: BaseException) -> bool:
    """Whether Redis answered but refused the URL's user or password (not a network failure)."""
    text = str(exc)
    return isinstance(exc, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text


def _unavailable(exc: BaseException, url: str) -> StorageUnavailable:
    return StorageUnavailable(redact(f"storage: unavailable: redis at {url}: {exc or type(exc).__name__}"))


class _Wire(asyncio.Protocol):
    """One Redis connection for the hot path (the set scripts, the tail's ``XREAD``): RESP written
    by hand and read by hiredis, replies matched to requests in order. redis-py's asyncio client
    costs about 3x more CPU per command (its pool, retry and timeout layers); on a node whose
    writes are a script and a read-back each, that was most of the node's CPU per write.
    Any failure (lost connection, timeout) drops the connection and fails every request in flight;
    the next request connects again."""

    def __init__(self, options: Mapping[str, Any], timeout: float) -> None:
        self.options = options
        self.timeout = timeout
        self._transport: asyncio.WriteTransport | None = None
        self._reader = hiredis.Reader()
        self._replies: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None

    @staticmethod
    def options_of(url: str) -> dict[str, Any] | None:
        """The host, port, db and credentials of a plain TCP ``redis://`` URL; None for the others
        (TLS, unix sockets), which stay on redis-py."""
        options = dict(parse_url(url))
        if options.pop("connection_class", None) is not None or "host" not in options:
            return None
        return options

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        replies = self._replies
        while replies and (reply := self._reader.gets()) is not False:
            fut = replies.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop(ConnectionError(f"connection lost: {exc or 'closed by redis'}"))

    def _drop(self, error: Exception) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._reader = hiredis.Reader()
        replies, self._replies = self._replies, collections.deque()
        for fut in replies:
            if not fut.done():
                fut.set_exception(error)

    def close(self) -> None:
        self._drop(ConnectionError("closed"))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(2.0):
            transport, _ = await loop.create_connection(
                lambda: self, self.options["host"], self.options["port"]
            )
        self._transport = cast(asyncio.WriteTransport, transport)
        if self.options.get("password"):
            user = self.options.get("username")
            await self._ask((b"AUTH", user, self.options["password"]) if user else
                            (b"AUTH", self.options["password"]))
        if self.options.get("db"):
            await self._ask((b"SELECT", self.options["db"]))

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (a Redis error reply raises ResponseError)."""
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            connecting = self._connecting
            try:
                await asyncio.shield(connecting)
            except BaseException:
                if connecting.done() and self._connecting is connecting:
                    self._connecting = None
                raise
            self._connecting = None
        return await self._ask(args)

    async def _ask(self, args: Sequence[Any]) -> Any:
        transport = self._transport
        if transport is None:
            raise ConnectionError("not connected")
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts += (b"$%d\r\n" % len(data), data, b"\r\n")
        transport.write(b"".join(parts))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._replies.append(fut)
        # A timer rather than asyncio.timeout: one handle, no Timeout object and task
        # bookkeeping on each round trip (the tail's XREAD and the set scripts are the hot path).
        timer = loop.call_later(self.timeout, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if not fut.done():  # its reply would be taken for the next request's
                self._drop(ConnectionError("a request was cancelled"))
            raise
        finally:
            timer.cancel()

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        """A request not answered within the timeout: it fails, and the connection with it."""
        if fut.done():
            return
        fut.set_exception(TimeoutError(
            f"no answer from redis within {self.timeout:g} s (a write may have been applied "
            "all the same: read it before sending it again)"
        ))
        self._drop(TimeoutError("timeout reading from redis"))

    async def script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``EVALSHA``, or ``EVAL`` when Redis lost its script cache (a restart): it did not run."""
        try:
            return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call(b"EVAL", script.script, len(keys), *keys, *args)

    async def xread(self, stream: str, after: int, count: int, block_ms: int) -> Any:
        """``XREAD`` as hiredis parsed it, ``[[stream, [[id, [name, value, ...]]]]]`` or None: the
        tail reads each entry's fields by position (:func:`entry_fields`), no dict per entry."""
        return await self.call(b"XREAD", b"COUNT", count, b"BLOCK", block_ms, b"STREAMS", stream,
                               b"%d-0" % after)


class _Waiting:
    """A write of a key that another node holds locked (``get_and_lock``): it is sent again after
    a backoff (Redis has no wake-up to await), until the lock is released or has expired."""

    def __init__(self, key: str, lock_ttl: float) -> None:
        self.key = key
        self.deadline = time.monotonic() + lock_ttl + 1.0
        self.delay = 0.001

    async def next(self) -> None:
        if time.monotonic() > self.deadline:  # a lock outlives its expiry only if renewed
            raise StorageUnavailable(
                f"storage: unavailable: {self.key} stays locked by another node (get_and_lock)"
            )
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 0.05)


class RedisLayer:
    """A persistent layer in Redis, shared by every node started with the same ``url`` and
    ``namespace`` (see the module docstring). Asynchronous (every call is a round trip).

    ``maxlen``: entries kept in the stream (approximately): a node disconnected for longer than
    that many writes reloads everything when it comes back. ``write_timeout``: how long a writer
    waits for its write to come back through the stream before it reports the node as lagging
    (the write is committed in Redis then; it reaches the mirror once the tail catches up)."""

    asynchronous = True
    publishes_writes = True
    """A write returns when its turn in the shared order has come, its revision in
    :attr:`last_revision`: the store publishes it in that step (see the module docstring)."""
    _apply_txn: RemoteTxnApply | None = None
    """Where the tail hands transaction entries (``Layered.apply_remote_txn``; see follow_txns)."""
    _apply_reload: RemoteTxnApply | None = None
    """Where a resync hands the reloaded state (``Layered.apply_remote_reload``; follow_reloads)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = DEFAULT_NAMESPACE,
        *,
        maxlen: int = 1_000_000,
        write_timeout: float = 10.0,
        node_id: str | None = None,
        lock_ttl: float = 30.0,
    ) -> None:
        check_namespace(namespace)
        self.url = url
        self.shown_url = redact(url)
        """The URL as errors and logs show it: without its password."""
        self.namespace = namespace
        self.maxlen = maxlen
        self.write_timeout = write_timeout
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._node_bytes = self.node_id.encode()
        """As the stream's entries name their node (compared once per entry)."""
        self._keys = [f"{namespace}:{part}" for part in ("data", "keys", "rev", "log", "lock:")]
        self.lock_ttl = lock_ttl
        self._tokens: dict[str, str] = {}
        self._locks_taken = 0
        self._catching: dict[int, asyncio.Future[None]] = {}
        self._batch: list[tuple[str, bytes, asyncio.Future[int]]] | None = None
        self._sending: set[asyncio.Task[Any]] = set()
        self._handed: set[int] = set()
        self.slot = 0
        self._last_stamp = 0
        self._client: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._wire: _Wire | None = None
        """The set scripts' connection (plain TCP URLs; else they go through redis-py)."""
        self._tail_wire: _Wire | None = None
        self._scripts: dict[str, Any] = {}
        self.position = 0
        """The revision of the last stream entry applied to this node (its place in the stream)."""
        self.head = 0
        """The highest shared revision this node has heard of (its writes, the stream)."""
        self.connected = False
        self.redis_version = ""
        self._apply: RemoteApply | None = None
        self._apply_raw: RemoteRawApply | None = None
        self._lingering: asyncio.Future[None] | None = None
        """Set while the tail lingers between two ``XREAD`` (see :meth:`_linger`)."""
        self._tail: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self.last_revision = 0
        """The shared revision of this node's last write, read by ``Layered`` as it returns."""
        self._sent = 0
        self._pending: set[int] = set()
        """Numbers (in sending order) of the write scripts not answered yet: at an entry of its own,
        the tail waits for those sent before it read the entry (one of them may be its writer)."""
        self._answered = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._known: set[str] = set()
        self._resync_needed = False
        self._behind_clock = False
        """The store started above the shared counter (loading outlasted the start margin)."""
        self._loaded = False
        self.resyncs = 0
        self._registered = False
        """This process has its push slot (one ``INCR nodes`` per process, not per start attempt)."""

    # -- lifecycle ---------------------------------------------------------------------------------
    def _connect(self, **extra: Any) -> aioredis.Redis:
        # No retries: a write script that timed out may have run, and must not run twice.
        return aioredis.Redis.from_url(
            self.url, decode_responses=False, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0,
            protocol=2, **extra,
        )

    async def start(self) -> None:
        """Connect, load the scripts and move the shared counter above this node's clock: the
        store starts above that clock (``Layered``), and entries below its start would be ignored."""
        self._client = self._connect(socket_timeout=5.0)
        self._reader = self._connect(socket_timeout=_BLOCK_MS / 1000 + 5.0)
        wired = _Wire.options_of(self.url)
        if wired is not None:
            self._wire, self._tail_wire = _Wire(wired, 5.0), _Wire(wired, _BLOCK_MS / 1000 + 5.0)
        client = self._client
        for name, text in (("set", _SET), ("delete", _DELETE), ("glob", _DELETE_GLOB),
                           ("clear", _CLEAR), ("bump", _BUMP), ("snapshot", _SNAPSHOT),
                           ("lock", _LOCK), ("unlock", _UNLOCK)):
            self._scripts[name] = client.register_script(text)
        try:
            info = await client.info("server")
            self.redis_version = str(info.get("redis_version", "?"))
            self.position = await self._bump()
            if not self._registered:  # a start retried (the store's history dir busy) keeps it
                self.slot = int(await client.incr(f"{self.namespace}:nodes")) % _SLOTS
                self._registered = True
        except (RedisError, OSError) as exc:
            await self._disconnect()
            why = "it refused the credentials" if _credentials_refused(exc) else "can't reach it"
            raise StorageUnavailable(
                redact(f"storage: unavailable: redis at {self.url}: {why}: {exc}")
            ) from exc
        self.connected = True
        self.head = self.position
        log.info("redis: node %s on redis %s at %s, namespace %s, stream position %d",
                 self.node_id, self.redis_version, self.shown_url, self.namespace, self.position)

    def node_state(self) -> dict[str, Any]:
        """This node's place in the shared stream, for ``GET /?api=state``: ``lag`` is how many
        revisions it has heard of (its own writes, the stream) and not applied yet."""
        return {
            "node": self.node_id,
            "position": self.position,
            "head": self.head,
            "lag": max(0, self.head - self.position),
            "connected": self.connected,
            "resyncs": self.resyncs,
        }

    def push_stamp(self, clock: Callable[[], int] = now) -> int:
        """A push key's stamp unique across nodes: the clock in nanoseconds with its last ten bits
        replaced by this node's slot, strictly increasing on this node (two nodes would otherwise
        need the same nanosecond to collide; now they need the same slot: 1 024 nodes)."""
        stamp = clock() // _SLOTS * _SLOTS + self.slot
        if stamp <= self._last_stamp:
            stamp = self._last_stamp + _SLOTS
        self._last_stamp = stamp
        return stamp

    async def _bump(self) -> int:
        floor = time.time_ns() // 1000 + _START_MARGIN_US
        return int(await self._scripts["bump"](keys=self._keys, args=[floor, self.node_id, self.maxlen]))

    async def close(self) -> None:
        tail, self._tail = self._tail, None
        self._apply = None
        if tail is not None:
            tail.cancel()
            if self._reader is not None:  # a cancelled XREAD BLOCK would wait for its block time
                await self._reader.connection_pool.disconnect()
            await asyncio.gather(tail, return_exceptions=True)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(StorageUnavailable("storage: unavailable: the store closed"))
        self._waiters.clear()
        await self._disconnect()

    async def _disconnect(self) -> None:
        for client in (self._client, self._reader):
            if client is not None:
                await client.aclose()
        for wire in (self._wire, self._tail_wire):
            if wire is not None:
                wire.close()
        self._client = self._reader = None
        self.connected = False

    # -- loading ---------------------------------------------------------------------------------
    async def load_raw(self) -> Mapping[str, bytes]:
        """Every object's JSON bytes and, in the same step, the stream position they stand for."""
        data, _, top = await self._snapshot(0)
        self.position = self.head = top
        self._loaded = True
        self._known = set(data)
        return data

    async def load(self) -> Mapping[str, Object]:
        return {key: load_object(key, raw) for key, raw in (await self.load_raw()).items()}

    async def _snapshot(self, floor: int) -> tuple[dict[str, bytes], int, int]:
        try:
            flat, low, top = await self._scripts["snapshot"](
                keys=self._keys, args=[floor, self.node_id, self.maxlen]
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, self.url) from exc
        data = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        return data, int(low), int(top)

    async def load_revision(self) -> int:
        """The shared revision this node starts at. Called after loading: when loading took so
        long that this node's clock passed it, the tail resyncs at once (see :meth:`start`)."""
        if time.time_ns() // 1000 >= self.position:
            self._resync_needed = self._behind_clock = True
        return self.position

    def save_revision(self, revision: int) -> None:
        """Nothing to keep: the shared counter in Redis is the reservation."""

    # -- following ---------------------------------------------------------------------------------
    def follow(self, apply: RemoteApply) -> None:
        """Start the tail: every stream entry after :attr:`position` reaches ``apply`` in order
        (runs of sets and deletes go to :meth:`follow_raw`'s ``apply`` instead when one is set)."""
        self._apply = apply
        if self._tail is None:
            self._tail = asyncio.get_running_loop().create_task(self._run(), name="redis-tail")

    @property
    def lag(self) -> int:
        """Revisions committed in Redis that this node has heard of but not applied yet."""
        return max(0, self.head - self.position)

    async def _run(self) -> None:
        backoff = 0.05
        stream = self._keys[3]
        task = asyncio.current_task()
        assert task is not None
        # redis-py may swallow a cancellation that lands in a blocking read: ``cancelling`` stays.
        while self._apply is not None and not task.cancelling():
            reader = self._reader
            assert reader is not None
            try:
                if self._resync_needed:
                    await self._resync()
                if self._tail_wire is not None:
                    reply: Any = await self._tail_wire.xread(stream, self.position, _BATCH, _BLOCK_MS)
                else:
                    reply = flat_reply(await reader.xread({stream: f"{self.position}-0"}, count=_BATCH,
                                                          block=_BLOCK_MS))
            except (RedisError, OSError, StorageUnavailable) as exc:  # the last: a resync's
                if self._apply is None or task.cancelling():  # closing
                    return
                if self.connected:
                    log.error("redis: node %s lost redis at %s (%s); retrying", self.node_id, self.shown_url,
                              redact(str(exc)))
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not self.connected:
                log.warning("redis: node %s reconnected to %s at stream position %d",
                            self.node_id, self.shown_url, self.position)
            self.connected = True
            backoff = 0.05
            sent = self._sent
            try:
                for _, entries in reply or ():
                    await self._entries(entries, sent)
            except Exception:  # a damaged entry (CorruptObject): reload rather than stop following
                log.exception("redis: node %s can't apply a stream entry after %d: reloading",
                              self.node_id, self.position)
                self._resync_needed = True
                await asyncio.sleep(backoff)
                continue
            if reply and self._idle(reply):
                await self._linger()

    def _idle(self, reply: Any) -> bool:
        """Whether the tail may wait :data:`_LINGER` before its next ``XREAD``: the batch was
        short (a backlog is read at once), no reload is due (it goes first, before new writes) and
        nobody on this node waits for the stream (a write for its turn or in flight, a lock, a
        catch-up or a resume)."""
        return (len(reply[0][1]) < _BATCH and not self._resync_needed and not self._waiters
                and not self._pending and not self._catching and self._batch is None
                and not self._sending)

    async def _linger(self) -> None:
        """Wait :data:`_LINGER`, or less: a write or a catch-up of this node ends it (``_wake``)."""
        loop = asyncio.get_running_loop()
        fut = self._lingering = loop.create_future()
        timer = loop.call_later(_LINGER, self._wake)
        try:
            await fut
        finally:
            timer.cancel()
            self._lingering = None

    def _wake(self) -> None:
        """End the tail's linger now (someone on this node waits for the stream)."""
        fut = self._lingering
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _entries(self, entries: Sequence[tuple[bytes, Sequence[bytes]]], sent: int) -> None:
        """Apply a batch of stream entries in stream order. Sets and deletes are gathered into runs
        that go to the store in one call each (:meth:`_flush`); an entry of this node's first lets
        its writer publish it (:meth:`_writer_turn`), after the run before it is applied; a
        transaction, a counter move or a clear goes alone (:meth:`_entry`). No coroutine per
        entry: the only await is a writer's turn."""
        if self._apply is None:  # closed
            return
        run: list[Write] = []
        at = self.position
        me = self._node_bytes
        for entry_id, flat in entries:
            revision = int(entry_id.partition(b"-")[0])
            if revision <= at:
                continue
            op, key, value, node, prev, loud = entry_fields(flat)
            if int(prev) != at:
                self._flush(run)
                log.warning("redis: node %s missed stream entries after %d (trimmed or cleared): "
                            "reloading", self.node_id, at)
                self._resync_needed = True
                return
            at = revision
            if node == me and op != b"b":
                self._flush(run)
                run = []
                await self._writer_turn(revision, sent)
                if self._apply is None:  # closed meanwhile
                    return
            if op == b"s":
                name = key.decode()
                self._known.add(name)
                run.append((name, value, revision, True))
            elif op == b"d":
                name = key.decode()
                self._known.discard(name)
                run.append((name, None, revision, loud))
            elif op == b"g":
                name = key.decode()
                self._known.difference_update([k for k in self._known if keys.match(name, k)])
                run.append((name, None, revision, loud))
            else:
                self._flush(run)
                run = []
                if not self._entry(op, value, node == me, revision):
                    return
        self._flush(run)

    def _flush(self, run: Sequence[Write]) -> None:
        """Apply a run of sets and deletes and move this node's position past it. A damaged object
        raises its CorruptObject once the writes before it are applied (the tail then reloads)."""
        if not run or self._apply is None:
            return
        many = self._apply_raw
        done = many(run) if many is not None else self._apply_each(run)
        if done:
            self._moved(run[done - 1][2])
        if done < len(run):
            key, raw, revision, _ = run[done]
            load_object(key, raw or b"")  # raises the damage's own message
            raise CorruptObject(f"storage: corrupt object at {key} (stream entry {revision})")

    def _apply_each(self, run: Sequence[Write]) -> int:
        """:meth:`_flush` through a plain ``apply`` (not a store's): one call per write."""
        apply = self._apply
        assert apply is not None
        for i, (key, raw, revision, loud) in enumerate(run):
            try:
                obj = None if raw is None else load_object(key, raw)
            except CorruptObject:
                return i
            apply(key, obj, revision, loud)  # ignored when its writer published it
        return len(run)

    def _entry(self, op: bytes, value: bytes, own: bool, revision: int) -> bool:
        """Apply a transaction, a counter move or a clear; False when the rest of the batch must
        wait for a resync."""
        if self._apply is None:
            return False
        if op == b"b":  # another node's start or reload moved the counter: nothing changed
            if not own and self._apply_txn is not None:
                self._apply_txn((), revision)  # the store's revision follows (a version to resume)
        elif op == b"c":
            if not own:
                self._resync_needed = True  # another node cleared: reload (the events say what went)
                return False
            self._known.clear()
        elif op == b"t":
            self._txn_entry(value, revision)
        self._moved(revision)
        return True

    async def _writer_turn(self, revision: int, sent: int) -> None:
        """Let the writer of this node's entry ``revision`` publish it now, in stream order: wait
        until its script has answered (it registers then) or no script sent before the entry was
        read (script number ``sent``) is pending: its writer is gone (failed, cancelled)."""
        while revision not in self._waiters and self._pending and min(self._pending) <= sent:
            self._answered.clear()
            await self._answered.wait()
        fut = self._waiters.pop(revision, None)
        if fut is not None and not fut.done():
            self.position = revision
            self._handed.add(revision)
            fut.set_result(None)
            # The writer's task runs before this one resumes (ready callbacks are FIFO; a batched
            # writer was woken when its turn was registered, earlier) and publishes in that step;
            # a writer cancelled meanwhile is covered by ``apply``.
            await asyncio.sleep(0)
            self._handed.discard(revision)

    def _moved(self, revision: int) -> None:
        self.position = revision
        if revision > self.head:
            self.head = revision
        if self._catching:
            for waited in [r for r in self._catching if r <= revision]:
                fut = self._catching.pop(waited)
                if not fut.done():
                    fut.set_result(None)

    async def _resync(self) -> None:
        """Reload the data and apply it as ONE unit at ONE revision of the shared order: the
        counter the data stands for (or a 'b' entry just above this node's position when nothing
        came since). Every node's state at that revision is this data, so a version a client
        gets from the reload resumes on any node. The store applies it as a transaction (one
        frame per pool) and cuts its history there (``Layered.apply_remote_reload``): a version
        from before it gets a snapshot, never a patch across the reload (it may move keys).
        New writes wait meanwhile; this node's writes that the data holds and whose turn had not
        come fail (see :meth:`_covered`)."""
        self._writable.clear()
        try:
            while self._pending:
                self._answered.clear()
                await self._answered.wait()
            floor = self.position + 1
            if self._behind_clock:  # the store started above the counter (see load_revision)
                floor = max(floor, time.time_ns() // 1000 + 1)
            data, _, top = await self._snapshot(floor)
            apply = self._apply_reload or self._apply_txn
            if self._apply is None or apply is None:
                return
            self._covered(top)
            self.resyncs += 1
            ops: list[tuple[str, Object | None]] = [(key, None) for key in sorted(self._known - data.keys())]
            ops += [(key, load_object(key, raw)) for key, raw in data.items()]
            apply(ops, top)
            self._known = set(data)
            self._resync_needed = self._behind_clock = False
            self._moved(top)
        finally:
            self._writable.set()
        log.warning("redis: node %s reloaded %d keys at stream position %d", self.node_id, len(data), top)

    def _covered(self, top: int) -> None:
        """This node's writes up to ``top`` whose turn has not come are in the reloaded data, but
        the stream entries before them are gone: published on their own, their revision would
        show a state that never existed (without other nodes' writes before it). Their writers
        get a 503 saying the write is committed and applied."""
        for revision in [r for r in self._waiters if r <= top]:
            fut = self._waiters.pop(revision)
            if not fut.done():
                fut.set_exception(StorageUnavailable(
                    f"storage: unavailable: the write is committed in redis (revision {revision}) "
                    "but this node missed stream entries before it and reloaded: the reload "
                    "applied it (GET shows it), nothing to send again"
                ))

    # -- writes ------------------------------------------------------------------------------------
    async def _write(self, name: str, args: Sequence[Any]) -> Any:
        """Run a write script, then wait for the write's turn in the shared order (its revision is
        the script's answer, or its second item)."""
        if self._client is None:
            raise StorageUnavailable("storage: unavailable: the redis layer is not started")
        if not self._writable.is_set():
            await self._writable.wait()
        if self._lingering is not None:
            self._wake()  # its entry is read back at once
        self._sent += 1
        number = self._sent
        self._pending.add(number)
        try:
            if name == "set" and self._wire is not None:
                answer = await self._wire.script(self._scripts[name], self._keys, args)
            else:
                answer = await self._scripts[name](keys=self._keys, args=args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, self.url) from exc
        else:
            if name == "set":
                revisions = [int(r) for r in answer]
            else:
                revisions = [int(answer[1] if isinstance(answer, list) else answer)]
            loop = asyncio.get_running_loop()
            for revision in revisions:
                if revision:
                    self._waiters[revision] = loop.create_future()
            return answer
        finally:
            self._pending.discard(number)
            self._answered.set()

    async def _turn(self, revision: int) -> None:
        """Wait until the tail hands this write its turn; :attr:`last_revision` is then set."""
        self.last_revision = 0
        if revision > self.head:
            self.head = revision
        fut = self._waiters.get(revision)
        if fut is None:
            if revision in self._handed:  # the tail handed the turn over before this writer ran
                self._handed.discard(revision)
                self.last_revision = revision
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await fut  # directly: the tail counts on one wake-up step (see _writer_turn)
        except TimeoutError:
            raise StorageUnavailable(
                f"storage: unavailable: the write is committed in redis (revision {revision}) but "
                f"this node has not read it back within {self.write_timeout:g} s (position "
                f"{self.position}, redis {'reachable' if self.connected else 'unreachable'})"
            ) from None
        finally:
            if self._waiters.get(revision) is fut:
                del self._waiters[revision]
        self.last_revision = revision

    async def set(self, key: str, obj: Object) -> None:
        """Queue the set for the next set script (one round trip and one socket write for the sets
        of every writer that came meanwhile, as LevelDB's write batch), then its turn."""
        raw = obj.to_json()
        waited = _Waiting(key, self.lock_ttl)
        while True:
            loop = asyncio.get_running_loop()
            if self._batch is None:
                self._batch = []
                if not self._sending:  # else the script in flight sends this batch as it ends
                    loop.call_soon(self._send_batch)
            fut: asyncio.Future[int] = loop.create_future()
            self._batch.append((key, raw, fut))
            revision = await fut
            if revision:
                break
            await waited.next()  # locked by get_and_lock on another node
        await self._turn(revision)

    def _send_batch(self) -> None:
        """Send the queued sets (at most ``_SET_BATCH``) in one script. One set script is in flight
        at a time: the sets that arrive meanwhile wait for its answer and go in the next, so under
        load a script carries many sets (a group commit) instead of one or two per loop iteration,
        each costing a script call in Redis and a redis-py command on this node."""
        batch = self._batch or []
        self._batch = batch[_SET_BATCH:] or None
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch[:_SET_BATCH]))
        self._sending.add(task)
        task.add_done_callback(self._sent_batch)

    def _sent_batch(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._batch:
            self._send_batch()

    async def _send(self, batch: list[tuple[str, bytes, asyncio.Future[int]]]) -> None:
        """One script for the batch. Its writers are answered in the step that registers their
        turns (no hop between: the tail must find each writer ready when it hands over a turn)."""
        args: list[Any] = [self.node_id, self.maxlen]
        for key, raw, _ in batch:
            args += (key, raw, self._tokens.get(key, ""))
        try:
            answer = await self._write("set", args)
        except BaseException as exc:
            error = exc if isinstance(exc, StorageUnavailable) else StorageUnavailable(
                "storage: unavailable: the store closed")
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), revision in zip(batch, answer, strict=True):
            if not fut.done():
                fut.set_result(int(revision))

    async def delete(self, key_or_glob: str, broadcast: bool = True) -> int:
        """Delete a key or a glob; ``broadcast`` False (``delete_silent``): the other nodes apply
        it without an event too (the stream entry says so)."""
        quiet = "0" if broadcast else "1"
        if "*" in key_or_glob:
            start, end = lex_range(key_or_glob)
            args = [key_or_glob, lua_pattern(key_or_glob), start, end, self.node_id, self.maxlen, quiet]
            removed, revision = await self._write("glob", args)
        else:
            waited = _Waiting(key_or_glob, self.lock_ttl)
            while True:
                token = self._tokens.get(key_or_glob, "")
                args = [key_or_glob, self.node_id, self.maxlen, quiet, token]
                removed, revision = await self._write("delete", args)
                if int(removed) >= 0:
                    break
                await waited.next()  # locked by get_and_lock on another node
        await self._turn(int(revision))
        return int(removed)

    async def clear(self) -> None:
        revision = await self._write("clear", [self.node_id, self.maxlen])
        await self._turn(int(revision))

    # -- transactions across nodes -----------------------------------------------------------------
    def follow_txns(self, apply: RemoteTxnApply) -> None:
        """The tail hands each transaction entry to ``apply`` as one unit (see :meth:`apply_txn`)."""
        self._apply_txn = apply

    def follow_raw(self, apply: RemoteRawApply) -> None:
        """Runs of sets and deletes go to ``apply`` (a store's ``apply_remote_raw``): one call per
        run, each object parsed only if it is applied (not this node's own writes read back,
        which their writers published)."""
        self._apply_raw = apply

    def follow_reloads(self, apply: RemoteTxnApply) -> None:
        """A resync hands the whole reloaded state to ``apply`` as one unit: ``(key, obj)`` for
        every stored key, ``(key, None)`` for keys gone, and the revision (see :meth:`_resync`)."""
        self._apply_reload = apply

    async def apply_txn(
        self,
        seen: Mapping[str, int | None],
        ops: Sequence[tuple[str, Object | None]],
        deadline: float,
        timeout: float,
    ) -> list[tuple[str, Object | None]] | None:
        """One script (``_TXN``) checks every key of ``seen`` against Redis (the versions this
        node's view gave them: a node's mirror may be behind another node's writes) and applies
        ``ops`` with one revision and one stream entry, which every node applies as one unit.
        Keys locked by another node's ``get_and_lock``: sent again after a backoff (as a set
        waits) until ``deadline``, then TransactionTimeout. See ``SharedOrder.apply_txn``."""
        args: list[Any] = [self.node_id, self.maxlen, len(seen)]
        for key, stamp in seen.items():
            args += (key, "" if stamp is None else str(stamp), self._tokens.get(key, ""))
        for key, obj in ops:
            if obj is not None:
                args += ("s", key, obj.to_json())
            elif "*" in key:
                args += ("g", key, lua_pattern(key), *lex_range(key))
            else:
                args += ("d", key)
        if "txn" not in self._scripts and self._client is not None:
            self._scripts["txn"] = self._client.register_script(_TXN)
        delay = 0.001
        while True:
            answer = await self._write("txn", args)
            status = int(answer[0])
            if status > 0:
                if status == 1:
                    await self._turn(int(answer[1]))
                return [op for op, bit in zip(ops, answer[2], strict=True) if bit == ord("1")]
            if status == -2:  # this node's view is behind Redis on some key: catch up, check again
                await self._caught_up(int(answer[2]))
                return None
            if time.monotonic() + delay > deadline:  # -1: locked by get_and_lock on another node
                raise TransactionTimeout([k.decode() for k in answer[2:]], timeout)
            await asyncio.sleep(delay)  # Redis has no wake-up to await
            delay = min(delay * 2, 0.05)

    async def catch_up(self) -> None:
        """Return once this node has applied every write committed in Redis before the call."""
        await self._caught_up(int(await self._read(lambda c: c.get(self._keys[2])) or 0))

    def _txn_entry(self, packed: bytes, revision: int) -> None:
        """A transaction's entry: its ops to the mirror and the watchers at once (one revision)."""
        ops = unpack_txn(packed)
        for key, obj in ops:
            if obj is not None:
                self._known.add(key)
            elif "*" in key:
                self._known.difference_update([k for k in self._known if keys.match(key, k)])
            else:
                self._known.discard(key)
        apply = self._apply_txn
        if apply is not None:
            apply(ops, revision)  # ignored when its writer published it

    # -- locks across nodes -------------------------------------------------------------------------
    async def lock(self, key: str) -> None:
        """Take ``key``'s lock in Redis (waiting while another node holds it), then wait until this
        node has applied every write committed before: the holder reads the key's last value. The
        lock expires after ``lock_ttl`` seconds, so a crashed node's lock frees itself."""
        self._locks_taken += 1
        token = f"{self.node_id}:{self._locks_taken}"
        lock_key = f"{self.namespace}:lock:{key}"
        delay = 0.001
        while True:
            counter = await self._read(lambda c: self._scripts["lock"](
                keys=[lock_key, self._keys[2]], args=[token, int(self.lock_ttl * 1000)], client=c))
            if int(counter) >= 0:
                break
            await asyncio.sleep(delay)  # held by another node: Redis has no wake-up to await
            delay = min(delay * 2, 0.05)
        self._tokens[key] = token
        try:
            await self._caught_up(int(counter))
        except BaseException:
            await self.unlock(key)
            raise

    async def _caught_up(self, revision: int) -> None:
        if revision <= self.position:
            return
        fut = self._catching.get(revision)
        if fut is None:
            fut = self._catching[revision] = asyncio.get_running_loop().create_future()
            self._wake()
        try:
            async with asyncio.timeout(self.write_timeout):
                await asyncio.shield(fut)
        except TimeoutError:
            raise StorageUnavailable(
                f"storage: unavailable: this node is behind the redis stream (position "
                f"{self.position}, needs {revision}) and cannot lock yet"
            ) from None

    async def unlock(self, key: str) -> None:
        """Release ``key``'s lock in Redis if this node holds it (an expired one is left alone)."""
        token = self._tokens.pop(key, None)
        if token is None:
            return
        try:
            await self._read(lambda c: self._scripts["unlock"](
                keys=[f"{self.namespace}:lock:{key}"], args=[token], client=c))
        except StorageUnavailable as exc:
            log.warning("redis: can't release the lock of %s (it expires in %g s): %s",
                        key, self.lock_ttl, redact(str(exc)))

    # -- reads (without a memory mirror) -----------------------------------------------------------
    async def _read(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self._client is None:
            raise StorageUnavailable("storage: unavailable: the redis layer is not started")
        try:
            return await call(self._client)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, self.url) from exc

    async def get(self, key: str) -> Object | None:
        raw = await self._read(lambda c: c.hget(self._keys[0], key))
        return None if raw is None else load_object(key, cast(bytes, raw))

    async def get_list(self, pattern: str) -> list[Object]:
        start, end = lex_range(pattern)
        found = await self._read(lambda c: c.zrangebylex(self._keys[1], start, end))
        names = [k.decode() for k in found if keys.match(pattern, k.decode())]
        if not names:
            return []
        raws = await self._read(lambda c: c.hmget(self._keys[0], names))
        return [load_object(k, raw) for k, raw in zip(names, raws, strict=True) if raw is not None]

    async def keys(self) -> list[str]:
        found = await self._read(lambda c: c.zrange(self._keys[1], 0, -1))
        return [k.decode() for k in found]
