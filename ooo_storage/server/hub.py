"""Stream pools: one per subscribed path, fed by the store's events (docs/protocol.md §5.3–5.5).

The store calls :meth:`Pools.on_event` synchronously for every committed write, in commit order
(``Layered.on_commit``). Matching pools are found through a :class:`~ooo_storage.protocol.keys.PatternIndex`
(a trie over segments, so the cost does not grow with the number of glob pools), each pool turns
the event into at most ONE frame and appends the same bytes to every member's outbox. What an event
changes is the pool's view's to say (``protocol/views.py``), the frame's bytes are
``protocol/frames.py``'s; a connection does not know its pool: the hub maps each member to it.

Joining is atomic: a pool's state, version and membership change only inside synchronous code, so
a new member gets the pool's current state and then exactly the frames after it. A new pool is
built from a synchronous memory read (``Layered.peek``/``peek_list``) together with
``store.revision``, so events already reflected in it (revision ≤ the pool's base) are skipped. A
store without a memory layer is read asynchronously; events arriving meanwhile are buffered and
replayed, and a read that raced with writes is retried (see :meth:`Pools._load`).

Transactions: the events of one ``Layered.commit`` share one revision and are told together,
``more`` on all but the last: a pool holds the changes they make (:attr:`Pool.held`) and sends
them as ONE frame once the last has come, so no client ever sees a state between two ops.

Resuming: a client with an older ``?v=`` gets, when the event history covers it, one patch from
its state at that version to now instead of a snapshot (``resume.py``); ``GET ?since=`` too.

Versions: a pool's version is the store revision of the last change delivered to it, or the
revision its state was read at. Events arrive in revision order and revisions never repeat for the
lifetime of the data directory (not even across restarts), so a version names one state of one
pool: a client resuming with ``?v=`` equal to the pool's version provably holds the current state
and gets no initial frame; any other version gets a snapshot. A pruned pool leaves a small record
(version and a digest of its state); when the pool is built again with the very same state it
takes back that version, so a resume after a prune still costs no snapshot when nothing changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Coroutine
from typing import Any

from ..errors import HTTPFailure, NotActive, NotFound
from ..layered import Layered
from ..protocol import jsontext
from ..protocol.filters import Filters
from ..protocol.frames import encode_frame, patch_frame, snapshot_frame
from ..protocol.keys import PatternIndex
from ..protocol.objects import Event, Object
from ..protocol.views import SNAPSHOT, Change, ListState, ObjectState
from .config import ServerConfig
from .connection import Connection
from .errors import Busy
from .resume import REPLAY_MAX, Gate, Replay, may_overlap

log = logging.getLogger("ooo_storage.server")

_LOAD_ATTEMPTS = 5
_REMEMBERED = 4096  # pruned pools whose version can be taken back
_RESUMES_KEPT = 16  # resume frames kept per pool until its next change
_PATCH_CHECK = 4096
"""A patch frame larger than this is compared with the snapshot, and the smaller one is sent (a
248 KB array emptied made a 1.36 MB patch of 37 000 operations)."""
SCAN_STEP = 1024
"""Keys a glob pool's build visits between two yields of the event loop: a glob over a large store
is read in steps, so other requests are served meanwhile (it held the loop ~2 s per subscription
over 200 000 keys). Builds take turns, one step per loop iteration in all (:meth:`Pools._turn`):
20 builds side by side used to cost 20 steps per iteration, and answered nobody else for 25 s."""
BUILDS_PER_CLIENT = 4
"""Glob subscriptions one client address may have waiting for their pools to be built; more are
closed at once (1011 with the reason, like any refusal after the upgrade) instead of queueing
behind its own."""


class Abandoned(Exception):
    """A pool's build stopped because every connection waiting for it has gone."""


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class Pool:
    """The subscribers of one path, its state and its version."""

    __slots__ = (
        "key",
        "state",
        "version",
        "base",
        "members",
        "no_patch",
        "loading",
        "buffer",
        "waiting",
        "conflations",
        "held",
        "_snapshot",
        "_resumes",
    )

    def __init__(self, key: str, state: ObjectState | ListState, no_patch: bool) -> None:
        self.key = key
        self.state = state
        self.version = 0
        self.base = 0
        self.members: dict[Connection, None] = {}
        self.no_patch = no_patch
        self.loading: asyncio.Future[None] | None = None
        self.buffer: list[Event] | None = None
        self.waiting: dict[Connection, None] = {}  # joining while the pool is built
        self.conflations = 0  # members whose queued frames were dropped for one snapshot
        self.held: Change = None  # the changes of a transaction being told, sent at its end
        self._snapshot: bytes | None = None
        self._resumes: tuple[int, dict[int, bytes]] = (0, {})  # (at version, {from version: frame})

    @property
    def is_list(self) -> bool:
        return isinstance(self.state, ListState)

    def load(self, data: Any, revision: int, remembered: tuple[int, bytes] | None = None) -> None:
        """Start from ``data`` read at store ``revision``; take back a pruned pool's version when
        the state is exactly what its clients last had."""
        self.state.load(data, revision)
        self.base = self.version = revision
        self._snapshot = None
        self.take_back(remembered)

    def take_back(self, remembered: tuple[int, bytes] | None) -> None:
        if remembered is not None and remembered[1] == _digest(self.state.data()):
            self.version = remembered[0]

    def snapshot_frame(self) -> bytes:
        """The current state as a snapshot frame (built once per version)."""
        if self._snapshot is None:
            self._snapshot = snapshot_frame(self.version, self.state.data())
        return self._snapshot

    def resume_frame(self, version: int) -> bytes | None:
        """The frame a client at ``version`` was given to reach the current version (b"": a
        snapshot), if one was computed since the last change: the subscribers of a pool all
        reconnect with the same version after a restart, and the history is read once for all."""
        at, frames = self._resumes
        return frames.get(version) if at == self.version else None

    def keep_resume(self, version: int, frame: bytes) -> None:
        at, frames = self._resumes
        if at != self.version:
            frames = {}
            self._resumes = (self.version, frames)
        if len(frames) < _RESUMES_KEPT:
            frames[version] = frame

    def feed(self, event: Event) -> bool:
        """Apply ``event`` and send its frame; an event of a transaction (``event.txn``) is held
        back instead (:meth:`release`). Returns whether a change is now held."""
        if event.revision <= self.base:
            return False  # already part of the state this pool was built from
        if self.buffer is not None:
            self.buffer.append(event)
            return False
        change = self.state.apply(event)
        if change is None:
            return False
        self.version = event.revision
        self._snapshot = None
        if event.txn:
            held = self.held
            if held is None:
                self.held = change
                return True
            both = isinstance(held, list) and isinstance(change, list)
            self.held = held + change if both else SNAPSHOT  # type: ignore[operator]
            return False
        self._send(change)
        return False

    def release(self) -> None:
        """Send the changes held for a transaction as ONE frame: its clients never see a state
        between two of its ops."""
        held, self.held = self.held, None
        if held is not None:
            self._send(held)

    def _send(self, change: Change) -> None:
        if isinstance(change, list) and not self.no_patch:
            frame = patch_frame(self.version, change)
            if len(frame) > _PATCH_CHECK:
                data = self.state.data()
                if len(frame) > len(data):  # the whole state says it in fewer bytes
                    frame = self._snapshot = snapshot_frame(self.version, data)
        else:  # SNAPSHOT
            frame = self.snapshot_frame()
        for conn in list(self.members):
            conn.send(frame)


class Pools:
    """Every pool of a server, indexed for event routing, and the pool each connection is in."""

    def __init__(self, store: Layered, filters: Filters, config: ServerConfig) -> None:
        self.store = store
        self.filters = filters
        self.config = config
        self.pools: dict[str, Pool] = {}
        self._member_of: dict[Connection, Pool] = {}
        self._index: PatternIndex[Pool] = PatternIndex()
        self.slow_disconnects = 0
        self.conflations = 0  # in all pools, pruned ones included
        self._remembered: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._turns: deque[asyncio.Future[None]] = deque()  # build steps waiting for their turn
        self._turner: asyncio.Task[None] | None = None
        self._building: dict[str, int] = {}  # client address -> its joins waiting for a build
        self._holding: list[Pool] = []  # pools holding changes of the transaction being told
        self._reading: dict[tuple[str, int], tuple[Replay, asyncio.Future[None]]] = {}
        self.replays = Gate()  # bounds the replays reading the history at once

    # -- routing (the store's watch callback; synchronous) --------------------------------------
    def on_event(self, event: Event) -> None:
        # For a glob delete the index also yields pools that merely may hold matching items;
        # each checks its own items against the glob.
        if not self.pools and not self._holding:
            return  # nobody subscribed (a REST-only server): no look-up per write
        if self._holding and (not event.txn or event.revision != self._holding[0].version):
            self._release()  # a transaction's last event never came: its frames go now
        for pool in list(self._index.matching(event.key)):
            try:
                if pool.feed(event):
                    self._holding.append(pool)
            except Exception:
                log.exception("pool %s failed on %s %s", pool.key, event.operation, event.key)
        if event.txn and not event.more and self._holding:
            self._release()

    def _release(self) -> None:
        """The transaction was told whole: each pool it changed sends its one frame."""
        holding, self._holding = self._holding, []
        for pool in holding:
            try:
                pool.release()
            except Exception:
                log.exception("pool %s failed to send a transaction", pool.key)

    # -- membership ---------------------------------------------------------------------------
    async def join(self, key: str, conn: Connection, version: int | None) -> Pool:
        """Add ``conn`` to the pool of ``key`` and queue its snapshot (none if ``version`` is the
        pool's current one; a patch from ``version`` when the event history covers it).
        Everything from reading the pool's state to membership is synchronous."""
        replay = None
        if version is not None:  # from a node ahead of this one: catch up first (bounded)
            await self.store.apply_remote_reach(version)
        if version is not None and self._behind(key, version):
            replay = await self._read_ahead(key, version)
        if not self.store.active:
            raise NotActive()
        pool = self.pools.get(key)
        if pool is None:
            pool = self._create(key)
        if pool.loading is not None:
            self._admit(conn)
            pool.waiting[conn] = None
            try:
                await asyncio.shield(pool.loading)
            finally:
                del pool.waiting[conn]
                self._built(conn)
        pool.members[conn] = None
        self._member_of[conn] = pool
        conn.conflater = self
        if version != pool.version:
            frame = None if version is None else pool.resume_frame(version)
            if frame is None and replay is not None and version is not None:
                frame = self._resumed(pool, replay) or b""
                pool.keep_resume(version, frame)
            conn.send(frame or pool.snapshot_frame())
        return pool

    def _behind(self, key: str, version: int) -> bool:
        """Whether a client at ``version`` must be resumed from the history: not current, and
        no frame computed for that version since the pool's last change."""
        if self.store.history_options is None or self._unrecorded(key):
            return False
        pool = self.pools.get(key)
        if pool is None or pool.loading is not None:
            return True
        return pool.version != version and pool.resume_frame(version) is None

    def _unrecorded(self, key: str) -> bool:
        """Whether writes that emit no event, so are not in the history, may change ``key``:
        keys of ``no_broadcast_keys``, and the silent trimming of a limit filter."""
        quiet = self.store.options.no_broadcast_keys
        return any(may_overlap(q, key) for q in quiet) or any(
            e["kind"] == "after_write" and e["limit"] and may_overlap(e["path"], key)
            for e in self.filters.describe()
        )

    async def _read_ahead(self, key: str, version: int) -> Replay:
        """The history of ``key`` since ``version`` read up to about now; clients asking for the
        same one meanwhile share the reading (after a restart a pool's subscribers all reconnect
        at once with the same version: one reading, one chunk of the journal in memory)."""
        reading = self._reading.get((key, version))
        if reading is None:
            replay = Replay(key, version)
            task = asyncio.ensure_future(self.replays.read(replay, self.store, self._turn))
            reading = self._reading[(key, version)] = (replay, task)
            task.add_done_callback(lambda _: self._reading.pop((key, version), None))
        await asyncio.shield(reading[1])
        return reading[0]  # finished by each client with the pool's state: it only grows

    def _resumed(self, pool: Pool, replay: Replay) -> bytes | None:
        """The patch frame from the client's state (``replay``'s version) to the pool's current
        one; None when a snapshot must be sent instead, or is smaller. Synchronous: the state,
        the end of the replay and the membership belong to one moment."""
        if pool.no_patch or not replay.finish(self.store):
            return None
        ops = replay.change(pool.state)
        if not isinstance(ops, list):
            return None
        frame = patch_frame(pool.version, ops)
        if len(frame) > _PATCH_CHECK and len(frame) > len(pool.snapshot_frame()):
            return None
        return frame

    async def changes(self, key: str, version: int) -> bytes:
        """``GET /{key}?since=<version>``: a data frame's payload (docs/protocol.md §4): the patch
        since ``version``, or the single key's document when it changed; 410 when the history
        cannot say (not kept, trimmed, a glob delete, read filters), or when more items changed
        than a page of GET holds (a GET in pages costs less, and holds less in memory)."""
        await self.store.apply_remote_reach(version)  # a node behind the version: as ``join``
        replay = await self._read_ahead(key, version)
        if self._unrecorded(key):
            replay.known = False
        pool = self.pools.get(key)
        if pool is not None and pool.loading is None:
            state, current = pool.state, pool.version  # what subscribers see, and their version
        else:
            state, current = await self._read_state(key)
        # No await since the state was taken: the replay ends at its revision.
        change = replay.change(state) if replay.finish(self.store) else None
        if isinstance(change, list):
            cap = self.config.list_limit
            if sum("value" in op for op in change) > cap:
                raise HTTPFailure(
                    410,
                    f"ooo: more than {cap} items of {key} changed since version {version:x}: "
                    "GET it again (in pages)",
                )
            return encode_frame(False, current, jsontext.dumps(change))
        if change is SNAPSHOT:
            return encode_frame(True, current, state.data())
        if replay.busy:
            raise HTTPFailure(
                410,
                f"ooo: the changes of {key} since version {version:x} were not read: too many "
                "resumes at once here: GET it again, or retry ?since= later",
            )
        raise HTTPFailure(
            410,
            f"ooo: the changes of {key} since version {version:x} are not known here (no event "
            f"history, history trimmed, over {REPLAY_MAX} events to read, a glob delete, filters or "
            "writes without events): GET it again",
        )

    async def _read_state(self, key: str) -> tuple[ObjectState | ListState, int]:
        """``key``'s state as a pool would show it, exact as of the returned revision."""
        store = self.store
        for _ in range(_LOAD_ATTEMPTS):
            revision = store.revision
            data: list[Object] | Object | None
            if store.mirrored:
                data = store.peek_list(key) if "*" in key else store.peek(key)
            else:
                data = await self._read(key)
                if store.revision != revision:
                    continue  # a write came in between: read again
            if isinstance(data, list):
                self._check_size(key, len(data))
                listed = ListState(key, self.filters.list_view(key))
                listed.load(data, revision)
                return listed, revision
            single = ObjectState(key, self.filters.object_fn(key))
            single.load(data, revision)
            return single, revision
        raise Busy(f"ooo: {key} keeps changing while it is read; ask again")

    def _admit(self, conn: Connection) -> None:
        """Count ``conn`` among its client's subscriptions waiting for a build, or refuse it."""
        who = conn.request.remote or ""
        waiting = self._building.get(who, 0)
        if who and waiting >= BUILDS_PER_CLIENT:
            raise Busy(
                f"ooo: {waiting} glob subscriptions of this client are still being prepared; "
                "subscribe to the next one when one of them has its snapshot"
            )
        self._building[who] = waiting + 1

    def _built(self, conn: Connection) -> None:
        who = conn.request.remote or ""
        if (left := self._building[who] - 1) > 0:
            self._building[who] = left
        else:
            del self._building[who]

    def leave(self, conn: Connection) -> None:
        pool = self._member_of.pop(conn, None)
        if pool is None:
            return
        pool.members.pop(conn, None)
        self._prune(pool)

    def _prune(self, pool: Pool) -> None:
        if pool.members or pool.waiting or pool.loading is not None:
            return
        if self.pools.get(pool.key) is pool:
            del self.pools[pool.key]
            if pool.buffer is None:  # a fully built state
                self._remembered[pool.key] = (pool.version, _digest(pool.state.data()))
                self._remembered.move_to_end(pool.key)
                if len(self._remembered) > _REMEMBERED:
                    self._remembered.popitem(last=False)
            self._index.pop(pool.key)

    def _create(self, key: str) -> Pool:
        state: ObjectState | ListState
        if "*" in key:
            state = ListState(key, self.filters.list_view(key))
        else:
            state = ObjectState(key, self.filters.object_fn(key))
        pool = Pool(key, state, self.config.no_patch)
        self.pools[key] = pool
        self._index[key] = pool
        store = self.store
        if not store.mirrored:
            self._start_loading(pool, self._load(pool))
        elif "*" not in key:
            pool.load(store.peek(key), store.revision, self._remembered.pop(key, None))
        else:
            revision = store.revision
            objs, last = store.peek_scan(key, None, SCAN_STEP)
            entries = [(obj, revision) for obj in objs]
            if last is None:  # the whole glob in one step: no await between read and join
                try:
                    self._check_size(pool.key, len(entries))
                except HTTPFailure:
                    self._forget(pool)
                    raise
                assert isinstance(pool.state, ListState)
                pool.state.load_read(entries)
                pool.base = pool.version = revision
                pool.take_back(self._remembered.pop(key, None))
            else:
                pool.base = revision
                self._start_loading(pool, self._scan(pool, entries, last))
        return pool

    def _start_loading(self, pool: Pool, build: Coroutine[Any, Any, None]) -> None:
        """Build ``pool`` in the background; events meanwhile are buffered and replayed."""
        loop = asyncio.get_running_loop()
        pool.buffer = []
        pool.loading = loop.create_future()
        loop.create_task(build)

    async def _scan(self, pool: Pool, entries: list[tuple[Object, int]], last: str | None) -> None:
        """Read a large glob in steps of :data:`SCAN_STEP` keys, each object tagged with the
        revision it was read at, then replay the writes of the build (``ListState.load_read``)."""
        assert pool.loading is not None and pool.buffer is not None
        store = self.store
        try:
            while last is not None:
                await self._turn()  # other requests and builds get in between
                if all(conn.gone for conn in pool.waiting):  # also when nobody was admitted
                    raise Abandoned(f"ooo: nobody waits for {pool.key} any more")
                revision = store.revision
                objs, last = store.peek_scan(pool.key, last, SCAN_STEP)
                entries.extend((obj, revision) for obj in objs)
                self._check_size(pool.key, len(entries))
            state = pool.state
            assert isinstance(state, ListState)
            state.load_read(entries)
            self._finish_loading(pool, store.revision)
        except Exception as exc:
            self._fail_loading(pool, exc)

    def _turn(self) -> asyncio.Future[None]:
        """A future done when it is this build step's turn: one step per event-loop iteration
        over all builds, in arrival order (each waiter resumes in the iteration after it is
        given its turn, and the next turn is given in that iteration)."""
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self._turns.append(turn)
        if self._turner is None or self._turner.done():
            self._turner = loop.create_task(self._give_turns())
        return turn

    async def _give_turns(self) -> None:
        turns = self._turns
        while turns:
            turn = turns.popleft()
            if not turn.done():
                turn.set_result(None)
            await asyncio.sleep(0)

    def _finish_loading(self, pool: Pool, revision: int) -> None:
        """Replay the buffered writes, then the state is exact as of ``revision``."""
        assert pool.loading is not None and pool.buffer is not None
        buffered, pool.buffer = pool.buffer, None
        for event in buffered:
            pool.feed(event)
        pool.release()  # a transaction's changes, to nobody yet: members join after the build
        pool.version = revision
        pool._snapshot = None
        pool.take_back(self._remembered.pop(pool.key, None))
        pool.loading.set_result(None)
        pool.loading = None
        self._prune(pool)

    def _check_size(self, key: str, items: int) -> None:
        cap = self.config.max_subscription_items
        if items > cap:
            raise HTTPFailure(
                413,
                f"ooo: {key} matches more than {cap} items: subscribe to a narrower glob, "
                "or read it with GET pages",
            )

    def _fail_loading(self, pool: Pool, exc: Exception) -> None:
        assert pool.loading is not None
        pool.loading.set_exception(exc)
        pool.loading.exception()  # retrieved: waiters get it through join
        pool.loading = None
        pool.buffer = None
        self._forget(pool)

    def _forget(self, pool: Pool) -> None:
        """Unregister a pool whose build failed (it is neither kept nor remembered)."""
        if self.pools.get(pool.key) is pool:
            del self.pools[pool.key]
            self._index.pop(pool.key)

    async def _load(self, pool: Pool) -> None:
        """Asynchronous build (no memory layer): retry until no write committed during the read;
        after that many attempts, accept the last read (set events are idempotent, so a race costs
        at most a transient extra frame)."""
        assert pool.loading is not None and pool.buffer is not None
        try:
            for _ in range(_LOAD_ATTEMPTS):
                revision = self.store.revision
                data = await self._read(pool.key)
                if self.store.revision == revision:
                    break
            if isinstance(data, list):
                self._check_size(pool.key, len(data))
            pool.load(data, revision)
            self._finish_loading(pool, revision)
        except Exception as exc:
            self._fail_loading(pool, exc)

    async def _read(self, key: str) -> list[Object] | Object | None:
        if "*" in key:
            return await self.store.get_list_descending(key)
        try:
            return await self.store.get(key)
        except NotFound:
            return None

    # -- shutdown and reporting ----------------------------------------------------------------
    def connections(self) -> list[Connection]:
        return list(self._member_of)

    def state(self) -> dict[str, Any]:
        """``GET /?api=state``."""
        pools = [
            {
                "key": p.key,
                "connections": len(p.members),
                "version": format(p.version, "x"),
                "conflations": p.conflations,
            }
            for p in self.pools.values()
        ]
        state: dict[str, Any] = {
            "pools": pools,
            "totalConnections": sum(p["connections"] for p in pools),
            "slowDisconnects": self.slow_disconnects,
            "conflations": self.conflations,
        }
        # A node over Redis (issue 14) says where it stands in the shared stream (its lag). Read
        # by name: importing the Redis layer here would load redis-py in every server.
        node_state = getattr(self.store.embedded, "node_state", None)
        if node_state is not None:
            state["redis"] = node_state()
        return state

    # -- conflation (connection.Conflater) -----------------------------------------------------
    def conflated(self, conn: Connection) -> None:
        """A member's outbox overflowed: its patches were dropped, it waits for a snapshot."""
        pool = self._member_of.get(conn)
        if pool is None:
            return
        pool.conflations += 1
        self.conflations += 1
        log.debug("subscriber of %s is behind: its queued frames are replaced by one snapshot", pool.key)

    def catch_up(self, conn: Connection) -> bytes | None:
        """The frame a conflated member gets when its socket drains: the pool's snapshot at its
        current version (cached per version, so members catching up together share the bytes)."""
        pool = self._member_of.get(conn)
        return None if pool is None else pool.snapshot_frame()

    def dropped(self, conn: Connection, slow: bool) -> None:
        """A member was dropped by the server: it leaves now (counted if it was too slow)."""
        if slow:
            self.slow_disconnects += 1
            pool = self._member_of.get(conn)
            key = "?" if pool is None else pool.key
            log.warning("dropping slow subscriber of %s: %s", key, conn.close_reason)
        self.leave(conn)
