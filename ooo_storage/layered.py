"""Layered: the store. A memory mirror over an optional persistent layer, with events and locks.

Write path (one key): validate → take the key's lock (skipped when nobody holds or waits on it and
every layer is synchronous: nothing can interleave then) → write the persistent layer → write memory
→ assign the next store-wide revision → queue the event. The persistent layer is written *first*, so
a failed write needs no memory rollback and no reader ever sees a value that is then rolled back: on
failure memory is untouched, no event is emitted and no hook runs.

Writes arriving in the same event-loop iteration share one batch of the persistent layer (when it
can write one: :class:`~ooo_storage.layers.base.BatchWriter`, LevelDB's ``WriteBatch``). The first
write of an iteration is committed inline as above, so an isolated write never waits; writes of
other tasks in that iteration queue and are committed together at the start of the next one: the
batch is written, then each write is applied to memory, gets its revision and queues its event, in
arrival order, and only then are the writers resumed. A failed batch fails every write in it and
leaves memory untouched. Any other write (a delete, a write under a key's lock, a glob delete,
``clear``) commits the queued batch first, so commits keep the order of arrival.

Glob deletes and ``clear`` take the store-wide gate exclusively (no set interleaves with them). A glob
delete also waits until every earlier event has reached the watchers before it emits its one event,
so a watcher never sees an older set of a matching key after the glob delete.

Revisions never repeat for the lifetime of a data directory: a start continues above the last
revision reserved in the persistent layer (when it can keep one, as LevelDB does) and above the
wall clock in microseconds (memory-only stores, or a data directory restored from a backup), so a
version a client saw before a restart never names a different state after it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import random
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import orjson

from ._utils import maybe_await
from .errors import (
    AllLayersNil,
    CantLockGlob,
    Conflict,
    CorruptObject,
    GlobNotAllowed,
    GlobRequired,
    HistoryTrimmed,
    InvalidData,
    InvalidLimit,
    InvalidPath,
    InvalidPattern,
    InvalidRange,
    InvalidTransaction,
    LockNotFound,
    MergeError,
    NotActive,
    NotFound,
    NotSupported,
    StorageError,
    StorageUnavailable,
    TransactionTimeout,
)
from .journal import Journal, JournalOptions
from .layers.base import (
    BatchWriter,
    EventKeeper,
    Follower,
    Layer,
    PersistentLayer,
    RawLoader,
    RevisionKeeper,
    SharedOrder,
    SyncLayer,
    TxnWriter,
)
from .layers.memory import MemoryLayer
from .locks import Gate, KeyLocks
from .protocol import jsontext, keys, txn
from .protocol.clock import now
from .protocol.merge import merge_json
from .protocol.objects import Event, Object, Operation, load_object, make_event, make_object
from .protocol.txn import Committed, TxnOp
from .sharded import Callback, ShardedChan
from .transaction import Transaction

log = logging.getLogger("ooo_storage")

_loads, _dumps, _JSONDecodeError = orjson.loads, orjson.dumps, orjson.JSONDecodeError

__all__ = ["HistoryOptions", "Layered", "Options", "WatchHandle", "encode_data"]


@dataclass
class Options:
    """Store options. Hooks run on the event loop and must not block."""

    workers: int = 6
    """Number of event shards (and consumer tasks)."""
    no_broadcast_keys: Sequence[str] = ()
    """Writes to keys that peer one of these produce no events."""
    before_read: Callable[[str], Any] | None = None
    """Called with the key or pattern before every read."""
    after_write: Callable[[str], Any] | None = None
    """Called once per committed set/push/delete, after its event is queued."""
    after_write_op: Callable[[str, str], Any] | None = None
    """Called with (key, "set"|"del") once per committed write, before its event is queued."""
    lossless_watch: bool = False
    """Writers wait for room in a full event queue instead of dropping after ``drop_timeout``."""
    queue_size: int = 1024
    """Capacity of each event shard queue."""
    drop_timeout: float = 5.0
    """How long a writer waits for room in a full event queue before the event is dropped."""
    on_drop: Callable[[Event], Any] | None = None
    """Called with each dropped event."""


_ORDER = attrgetter("created", "path")
_RESERVE = 1 << 20
"""Revisions reserved in the persistent layer at a time (one durable write per ``_RESERVE``)."""

Observer = Callable[[Event], None]

_NOBODY = object()
_DRIVEN = object()
"""``Layered._first`` when the iteration's first write came from a coroutine run by hand."""
_Done = asyncio.Future[tuple[Object, "asyncio.Future[None] | None"]]
"""What a queued writer awaits: its object and the event queue's wait (see ``_publish``)."""
_Queued = tuple[str, bytes, "tuple[int, int] | None", _Done]
"""A write waiting for the next batch: key, data, stamps, and the future its writer awaits."""
if sys.version_info >= (3, 12):
    _task_of: Callable[[asyncio.AbstractEventLoop], object] = asyncio.current_task  # in C
else:  # what asyncio.current_task reads, without its Python frame and loop lookup
    _task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
_is_valid = keys.is_valid
_tuple_new = tuple.__new__
_T = TypeVar("_T")
_Change = tuple[str, Operation, "Object | None"]
"""A change of a transaction: key, operation, object (as in its event)."""


class WatchHandle(Protocol):
    """What ``watch`` and ``on_commit`` return: ``cancel()`` stops the deliveries."""

    def cancel(self) -> None: ...


def _unavailable(exc: Exception, prefix: str) -> StorageError:
    """``exc`` as the store reports a failed layer call: a StorageError as is, anything else as
    StorageUnavailable (a 503) with ``prefix``."""
    return exc if isinstance(exc, StorageError) else StorageUnavailable(f"{prefix}: {exc}")


def encode_data(data: Any) -> bytes:
    """Compact JSON bytes for a data argument: JSON text (bytes/str) or any orjson-serialisable value."""
    if type(data) is bytes:
        # Fast path: text that orjson reads and writes back unchanged is compact JSON whose every
        # number orjson kept (a number it changes, such as an integer beyond 64 bits read as a
        # float, is written back differently), so it needs neither jsontext's number check nor a
        # new copy. Anything else takes the exact path below (and gets its error message there).
        try:
            if _dumps(_loads(data)) == data:
                return data
        except (_JSONDecodeError, TypeError):
            pass
    if isinstance(data, bytes | bytearray | memoryview | str):
        if not data:
            raise InvalidData()
        try:
            value = jsontext.loads(data)
        except jsontext.JSONDecodeError as exc:
            raise InvalidData(f"storage: invalid data (not JSON: {exc})") from None
    else:
        value = data
    try:
        # Re-encoding JSON text is cheaper than checking whether it is already compact.
        return jsontext.dumps(value)
    except TypeError as exc:
        raise InvalidData(f"storage: invalid data (not JSON serialisable: {exc})") from None


# -- event history -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryOptions:
    """Where and how much of the event history a store keeps (``Layered(..., history=...)``).

    Every committed event (revision, operation, key and the object's stored JSON) is appended to a
    journal (:mod:`ooo_storage.journal`) in ``directory`` (in batches: see ``_History.record``), so that
    ``events(pattern, since=revision)`` can replay what a client missed, across restarts. It is
    bounded: at most ``max_bytes`` on disk (the oldest of its ``files`` segments is evicted when the
    newest is full) and, with ``max_age`` seconds, events older than that are pruned every
    ``max_age / 4`` seconds (at most every minute). An event larger than one segment
    (``max_bytes / files``) is not kept: replaying across it raises HistoryTrimmed. One larger
    than a batch (1 MiB) is a journal item of its own, read alone: a replay holds it whole.

    ``durable``: whether a write is acknowledged only once its event is on disk. None (the default)
    follows the persistent layer: durable when its writes are awaited; otherwise the events are
    written on the loop into the page cache in batches (1 MiB or 50 ms) and reach the disk later.
    With ``LevelDBLayer(sync=True)`` (an :class:`~ooo_storage.layers.base.EventKeeper`) a durable
    event goes into the write's own group commit (one fsync for both), and the journal, written as
    without ``durable``, is fsynced every ``_TRIM_EVERY`` seconds, after which LevelDB's copies are
    dropped; a start appends the copies the journal lacks. Other awaited layers (SOS, erasure,
    Redis) fsync the journal after the write: a kill -9 between the two may part a write from its
    event, so only with such copies does the history reach back across an unclean stop (otherwise
    it starts afresh there: a resume from before gets a snapshot). One process at a time keeps a
    history directory (a lock file in it).
    """

    directory: str | os.PathLike[str]
    max_bytes: int = 64 << 20
    max_age: float | None = None
    durable: bool | None = None
    files: int = 8

    def __post_init__(self) -> None:
        if self.files < 2:
            raise ValueError("history: files must be at least 2")
        if self.max_bytes < self.files * 4096:
            raise ValueError(f"history: max_bytes must be at least {self.files * 4096}")
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError("history: max_age must be a positive number of seconds")

    def journal(self) -> JournalOptions:
        size = self.max_bytes // self.files
        # One owner (the store, itself behind the database lock): no flock per append. Durability
        # comes from ``flush`` when wanted; sealed segments are fsynced in the background anyway.
        return JournalOptions(
            max_files=self.files, max_file_size=size, max_chunk=min(size, _BATCH_BYTES), max_item_size=size,
            prefix="events", lock=False, sync=False, when_full="evict",
        )


_BATCH_BYTES = 1 << 20
"""Queued event bytes that make the history append them at once (memory held for them)."""
_BATCH_DELAY = 0.05
"""Seconds after the first queued event that the queue is appended at the latest."""

_BATCH_MAGIC = b"\x00"
"""The first byte of a batch item (an event item starts with ``[``): u32 length + event, repeated."""
_BATCH_LEN = struct.Struct("<I")
_pack_len = _BATCH_LEN.pack
_SET = struct.Struct("<IBQqqI")
"""A plain set's frame head: u32 length (of what follows it), ``_SET_MAGIC``, u64 revision, i64
created, i64 updated, u32 key length; then the key and the object's data. One ``pack`` and no
JSON (``_decode_set``): the set is the hot path, where a JSON head cost ~18 % of the write. Its
index is the key's last segment and its path the key (what the store builds for a set)."""
_pack_set = _SET.pack
_SET_MAGIC = 1
"""The first byte of a binary set event (a JSON event starts with ``[``)."""
_SET_HEAD = _SET.size - _BATCH_LEN.size
_MOVED = -1
"""The ``txn`` of a recorded ``set_with_meta`` event, which may move its key (a new ``created``)."""

_Framed = tuple[int, tuple[bytes, ...]]
"""An event's frame in a batch: its size (u32 length included) and its parts (``_History.record``)."""
_JUST_FRAME: _Framed = (0, ())
"""``_History.record(..., framed=_JUST_FRAME)`` returns the event's frame, queues nothing."""

_SHARED_PROBE = 1.0
"""Seconds a shared commit past its deadline waits for the shared store to answer (409 or 503)."""

_STATE = "history.json"
"""Beside the journal: the revision reservation of the last run that kept history, and the floor."""
_GAPS = 64
"""Gaps (revisions a history's lineage never issued, :meth:`_History.open`) remembered at most; the
floor rises above the oldest one dropped."""
_LOCK = "history.lock"
"""Beside the journal: ``flock``ed by the process keeping the history (one writer per directory)."""
_TRIM_EVERY = 1.0
"""Seconds between two fsyncs of the journal after which the layer's copies are dropped (events
kept by an :class:`EventKeeper` layer: that many seconds of writes at most)."""
_COMPLAIN_EVERY = 10.0
"""Seconds between two ERROR lines of a failing history disk (every batch fails on a full one)."""
_CATCH_UP_EVERY = 10.0
"""Seconds between two tries to append the layer's copies to a journal that fell behind."""


class _History:
    """The journal of a running store: records events, says how far back it is complete, replays.

    ``floor``: every event with a revision above it is in the journal (or was evicted, which the
    oldest kept entry tells). It rises when an event cannot be kept (too large, a failed write) and,
    at start, to the starting revision when the journal may have missed writes: a first start, or
    a run without history since the last one with it (the revision reservation the persistent
    layer holds differs from the one saved here). Layers that keep no revision give no such proof:
    after a restart, history then starts afresh.

    ``gaps``: the revisions between the last one a run issued and the start of the next (which is
    a version: the state at the last one), which this lineage never issued. A version in a gap
    comes from elsewhere, typically the server that ran on after the copy this directory was
    restored from (a copy carries this state: nothing in it tells a restored copy from a
    restart): its changes are not in this history, so it is not resumable.
    """

    def __init__(
        self, options: HistoryOptions, durable: bool, keeper: EventKeeper | None = None
    ) -> None:
        self.options = options
        self.durable = durable
        self.keeper = keeper
        """The layer that keeps a durable copy of the events the journal has not fsynced yet."""
        self._lock = _lock_directory(options.directory)
        try:
            self.journal = Journal(options.directory, options.journal())
        except BaseException:
            os.close(self._lock)
            raise
        self._trimmer: asyncio.Task[None] | None = None
        self.floor = 0
        self._state = self.journal.directory / _STATE
        self._reserved = 0
        self._pruner: asyncio.Task[None] | None = None
        self._append = self.journal.append_tagged_nowait
        self._max_item = self.journal.options.max_item
        self._parts: list[bytes] = [_BATCH_MAGIC]
        self._last = 0
        self.moving: dict[str, int] = {}
        """Keys that ``set_with_meta`` is writing: their events are recorded with ``txn`` -1 (the
        key may have moved: its ``created`` may change), so that a resume takes a snapshot."""
        self._pending_bytes = 0
        # One journal item per batch: it must fit in one item, and one append never needs two
        # new segments.
        self._batch_bytes = min(_BATCH_BYTES, self._max_item, self.journal.options.max_file_size // 2)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trimmed = 0
        """The layer's copies of the events up to this revision are dropped."""
        self.gaps: list[tuple[int, int]] = []
        self._restore_floor = 0
        """The last event :meth:`restore` could not put back in the journal (0: none)."""
        self._behind = 0
        """The last event the journal lacks since an append failed (a full disk) while the layer
        keeps the durable copies (0: none): :meth:`_catch_up` appends them from there."""
        self._catch_up_at = 0.0
        self._readable = 0
        """The first journal index :meth:`oldest_floor` found readable (damaged ones below)."""
        self._quiet_until = 0.0
        self._quieted = 0

    def open(self, saved_reservation: int, revision: int) -> int:
        """Decide the floor; returns the revision the store must continue above."""
        try:
            state = _loads(self._state.read_bytes())
        except (OSError, _JSONDecodeError):
            state = None
        # After an unclean stop only copies kept in the layer's own durable step prove the history
        # whole: a layer that fsyncs the journal after its write (SOS, erasure) may hold a write
        # whose event never reached the journal, and a resume across it would miss it.
        copies = self.keeper is not None and self.keeper.keeps_events
        continuous = (
            isinstance(state, dict)
            and saved_reservation
            and state.get("reserved") == saved_reservation
            and ((self.durable and copies) or state.get("clean") is True)
        )
        revision = max(revision, self.journal.log.last_tag)
        if continuous and isinstance(state, dict):
            self.floor = max(int(state.get("floor", 0)), self._restore_floor)
            self._gap(state, revision)
        else:
            self.floor = revision
        self._loop = asyncio.get_running_loop()
        if self.options.max_age is not None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune(self.options.max_age))
        if self.keeper is not None and self.keeper.keeps_events:
            self._trimmer = self._loop.create_task(self._trim_every(_TRIM_EVERY))
        return revision

    def _gap(self, state: dict[str, Any], start: int) -> None:
        """Note the revisions between the last one the previous run issued (saved at its close;
        after a crash, the journal's last event: a durable history holds every acknowledged one)
        and ``start``, where this run begins: a version among them was never issued here."""
        # (a journal behind lacks the last events: their copies in the layer were issued)
        last = max(self.journal.log.last_tag, self._behind)
        last = max(last, int(state.get("last", 0)) if state.get("clean") else 0)
        gaps = [(int(low), int(high)) for low, high in state.get("gaps", ()) if int(high) > self.floor]
        if start > last:
            gaps.append((last, start))
        while len(gaps) > _GAPS:  # a bounded state: what falls out is no longer resumable at all
            self.floor = max(self.floor, gaps.pop(0)[1])
        self.gaps = gaps

    def issued(self, since: int) -> tuple[int, int] | None:
        """The gap holding ``since`` (a version this lineage never issued), None if none does."""
        for low, high in self.gaps:
            if low < since < high:
                return low, high
        return None

    async def restore(self) -> None:
        """Before :meth:`open`: append the events the layer kept that the journal lacks (a crash
        came before the journal's fsync), in revision order, fsync them, then drop the copies."""
        keeper = self.keeper
        if keeper is None:
            return
        kept = keeper.kept_events()
        if not kept:
            return
        self._cut_damaged(kept)
        last = self.journal.log.last_tag
        missing, lost = _restored(kept, last, self._batch_bytes, self._max_item)
        if lost:
            log.error("history: event %d not restored (larger than a history segment)", lost)
            self._restore_floor = lost
        if missing and not self._append_copies(missing):
            return  # a full history disk must not keep the data from being served (issue 11 F1)
        try:
            await self.journal.flush()
        except Exception as exc:  # not on disk: the copies stay, the trim drops them once it is
            log.error("history: can't fsync the events restored from the persistent layer: %s", exc)
            return
        if missing:
            log.info("history: events up to %d restored from the persistent layer", missing[-1][0])
        await keeper.drop_events(kept[-1][0])

    def _cut_damaged(self, kept: list[tuple[int, bytes]]) -> None:
        """A journal item damaged by a power failure (not fsynced yet) whose events the layer
        keeps: cut the journal before it, so that :meth:`restore` appends its events, and those
        of the items after it, again from the copies (they hold every event from their first on).
        An item holding events older than the copies is left as it is (a resume across it gets
        a snapshot / 410)."""
        log_ = self.journal.log
        first_copy = next(_revisions(kept[0][1]), (0, b""))[0]
        if not first_copy:
            return
        start = log_.seek(first_copy - 1)  # the first item with events the copies may hold
        for index in range(start + 1, log_.next_index):  # ``start`` may begin before them
            try:
                self.journal.read(index)
            except CorruptObject as exc:
                log.warning("history: %s; it and the %d items after it are appended again from the "
                            "persistent layer's copies", exc, log_.next_index - index - 1)
                self.journal.truncate(index)
                return
            except NotFound:
                continue

    def _append_copies(self, items: list[tuple[int, bytes]]) -> bool:
        """Append the items made of the layer's copies (:func:`_restored`), one at a time, as far
        as the journal takes them; False (and the history behind: resumes from before the last
        of them get a snapshot / 410) when one fails, e.g. on a full disk."""
        for item in items:
            try:
                self._append(item)
            except Exception as exc:
                self._fall_behind(items[-1][0], exc)
                return False
        return True

    def _fall_behind(self, revision: int, why: object) -> None:
        """The journal could not take the events up to ``revision``, which the layer keeps: stop
        appending (tags never decrease) until :meth:`_catch_up` appends them from there."""
        self._behind = max(self._behind, revision)
        self._complain(
            f"history: can't append events up to {revision} to the journal ({why}): the persistent "
            f"layer keeps them, appended when the journal can take them (tried every "
            f"{_CATCH_UP_EVERY:g} s); resumes from before them get a snapshot / 410"
        )

    def _catch_up(self) -> None:
        """A history behind (:attr:`_behind`): append the layer's copies above the journal's last
        event, at most every ``_CATCH_UP_EVERY`` seconds, synchronously (no event is recorded
        meanwhile). Caught up once the journal holds the last event it lacked: a recorded event's
        copy is always there (recorded once its group commit is durable); one missing anyway is
        lost (the floor rises past it) rather than the history waiting for ever."""
        now = time.monotonic()
        if now < self._catch_up_at:
            return
        self._catch_up_at = now + _CATCH_UP_EVERY
        if not self._room():
            return  # still full: reading the copies (all of them) every try would cost for nothing
        keeper = cast(EventKeeper, self.keeper)
        try:
            kept = keeper.kept_events()
        except Exception as exc:
            self._complain(f"history: can't read the events kept by the persistent layer: {exc}")
            return
        behind = self._behind
        missing, lost = _restored(kept, self.journal.log.last_tag, self._batch_bytes, self._max_item)
        if lost:  # only a copy written by an older version can be over a segment
            self.floor = max(self.floor, lost)
        if not self._append_copies(missing):
            return
        if self.journal.log.last_tag < behind:  # no copy of them (never expected): not wait for ever
            self._behind = 0
            self._lost(behind, "the persistent layer has no copy of them")
            return
        self._behind = 0
        log.warning("history: caught up: events up to %d appended from the persistent layer", behind)

    def _room(self) -> bool:
        """Whether the journal's filesystem has room for a batch (True when it cannot tell)."""
        try:
            stat = os.statvfs(self.journal.directory)
        except OSError:
            return True
        return stat.f_bavail * stat.f_frsize >= self._batch_bytes

    async def _trim_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.trim()

    async def trim(self) -> None:
        """Fsync the journal (in its thread), then drop the layer's copies of what it holds: the
        durable copy of a recent event lives in the layer only until the journal's is on disk."""
        keeper = self.keeper
        self.write()
        if self._behind:
            self._catch_up()
        # What the journal holds, never what was recorded: a failed append stops the trim point
        # (its events' only durable copy is the layer's).
        upto = self.journal.log.last_tag
        if keeper is None or upto <= self._trimmed:
            return
        try:
            await self.journal.flush()
            await keeper.drop_events(upto)
        except Exception as exc:  # kept in the layer: the next trim (or start) tries again
            self._complain(f"history: can't trim the events kept by the persistent layer: {exc}")
            return
        self._trimmed = upto

    def abandon(self) -> None:
        """A start that failed after this opened: release the directory's lock."""
        os.close(self._lock)

    def reserved(self, reservation: int) -> None:
        """The store reserved revisions up to ``reservation`` in its persistent layer."""
        self._reserved = reservation
        self._save()

    def _save(self, clean: bool = False, last: int = 0) -> None:
        temp = self._state.with_suffix(".tmp")
        state: dict[str, Any] = {"reserved": self._reserved, "floor": self.floor, "clean": clean}
        if self.gaps:
            state["gaps"] = self.gaps
        if clean:
            state["last"] = max(last, self._last)
        try:
            temp.write_bytes(_dumps(state))
            os.replace(temp, self._state)
        except OSError as exc:
            self._complain(f"history: can't save {self._state}: {exc}")

    def _complain(self, message: str) -> None:
        """Log an error of the history's disk at most once per ``_COMPLAIN_EVERY`` seconds, with
        how many were left unsaid (a full disk fails every batch). ``server.errors.Notices`` does
        this for the server, a tier above the store."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._quieted += 1
            return
        if self._quieted:
            message += f" ({self._quieted} more history errors in the last {_COMPLAIN_EVERY:g} s)"
        self._quiet_until, self._quieted = now + _COMPLAIN_EVERY, 0
        log.error("%s", message)

    def _lost(self, revision: int, why: object) -> None:
        self._complain(f"history: event {revision} not kept (replays across it raise HistoryTrimmed): {why}")
        self.floor = revision
        self._save()

    @property
    def _copied(self) -> bool:
        """Whether every event has a durable copy in the layer (its group commit's)."""
        return self.durable and self.keeper is not None and self.keeper.keeps_events

    def record(
        self,
        key: str,
        op: str,
        obj: Object | None,
        revision: int,
        part: tuple[int, int] = (0, 0),
        framed: _Framed | None = None,
    ) -> _Framed | None:
        """Queue one event for the journal, framed at once into the pending batch (u32 length,
        then the event): the queue is appended as one journal item (:meth:`write`) once
        ``_batch_bytes`` are queued or ``_BATCH_DELAY`` after its first event, or before, by a
        durable writer's :meth:`flush`, a replay or close: one append per event, or per loop
        iteration, cost as much as the set itself. A process killed in between loses them, which
        costs nothing more: a restart after an unclean stop without ``durable`` starts the history
        afresh anyway.
        ``part``: (events of its transaction, its position among them) for a transaction's event;
        the events of one transaction are recorded in one step and never split between batches.
        ``framed``: the event's frame when the caller made it already (:meth:`framed`), or
        ``_JUST_FRAME``: return the frame (its size and parts) instead of queueing it (the one
        place events are framed, inline: a call more cost ~2 % of a set)."""
        if framed is None or framed is _JUST_FRAME:
            if (
                part[0] or op != "set" or obj is None or obj.path is not key
                or (self.moving and key in self.moving)
            ):
                size, frame = self._rare_frame(key, op, obj, revision, part)
            else:  # a plain set, built by this store: the hot path (``_SET``, no JSON)
                data = obj.data
                size = _SET.size + len(key) + len(data)
                try:
                    frame = (
                        _pack_set(size - 4, _SET_MAGIC, revision, obj.created, obj.updated, len(key)),
                        key.encode(),
                        data,
                    )
                except struct.error:  # stamps beyond 64 bits (set_with_meta): a JSON head
                    size, frame = self._rare_frame(key, op, obj, revision, part)
            if framed is not None:
                return size, frame
        else:
            size, frame = framed
        if not size:
            return None
        pending = self._pending_bytes + size + 1  # and the batch's first byte
        if pending > self._batch_bytes and not part[1]:
            if size + 1 > self._max_item:
                limit = self._max_item - 5
                self._lost(
                    revision,
                    f"its {size - 4} bytes are more than one history segment holds ({limit} bytes: "
                    "max_bytes / files; raise --history-bytes)",
                )
                return None
            # A batch starts only at a transaction's first event; a larger event is a batch alone.
            self.write()
            pending = size + 1
        self._parts += frame
        self._pending_bytes = pending - 1
        self._last = revision
        if self._timer is None:
            loop = cast(asyncio.AbstractEventLoop, self._loop)
            self._timer = loop.call_later(_BATCH_DELAY, self._timed_write)
        return None

    def framed(
        self, key: str, op: str, obj: Object | None, revision: int, part: tuple[int, int] = (0, 0)
    ) -> tuple[_Framed, bytes]:
        """The event's frame (for :meth:`record`) and its bytes for the layer's durable copy
        (empty if the journal cannot keep it: :meth:`record` says why when it is recorded)."""
        framed = cast(_Framed, self.record(key, op, obj, revision, part, _JUST_FRAME))
        size = framed[0]
        return framed, b"".join(framed[1]) if size and size + 1 <= self._max_item else b""

    def _rare_frame(
        self, key: str, op: str, obj: Object | None, revision: int, part: tuple[int, int]
    ) -> tuple[int, tuple[bytes, ...]]:
        """The frame (its size, its parts) of an event with a JSON head (see :meth:`_rare_item`);
        (0, ()) if it has none (stamps beyond 64 bits): the event is then lost, not the write."""
        try:
            item = self._rare_item(key, op, obj, revision, part)
        except TypeError as exc:  # the write is committed: it must not fail for its history
            self._lost(revision, exc)
            return 0, ()
        return len(item) + 4, (_pack_len(len(item)), item)

    def _rare_item(
        self, key: str, op: str, obj: Object | None, revision: int, part: tuple[int, int]
    ) -> bytes:
        """The item of a delete, a transaction's event, a ``set_with_meta`` (txn ``_MOVED``), or of
        a set that ``_SET`` cannot frame (or that starts a new batch): a JSON head, then the data."""
        if not part[0] and self.moving and key in self.moving:
            part = (_MOVED, 0)
        if obj is None:
            return _dumps((revision, op, key, *part) if part[0] else (revision, op, key))
        fields = (revision, op, key, obj.created, obj.updated, obj.index, obj.path)
        return b"%b\n%b" % (_dumps((*fields, *part) if part[0] else fields), obj.data)

    def _timed_write(self) -> None:
        self._timer = None
        self.write()

    def write(self) -> None:
        """Append the queued events to the journal (into the page cache) as one item: a batch of
        events (``_BATCH_MAGIC``, then u32 length + event, repeated; :func:`_decode_item`) tagged
        with its last revision, so that the journal's per-item work (an entry, two CRCs) is paid
        once per batch, not per event."""
        if not self._pending_bytes:
            return
        parts, self._parts = self._parts, [_BATCH_MAGIC]
        self._pending_bytes = 0
        if self._behind:  # their copies are in the layer: :meth:`_catch_up` appends them in order
            self._behind = max(self._behind, self._last)
            return
        try:
            self._append((self._last, b"".join(parts)))
        except Exception as exc:  # the writes are committed: they must not fail for their history
            if self._copied:
                self._fall_behind(self._last, exc)
            else:
                self._lost(self._last, exc)

    async def flush(self) -> None:
        """Return once the events recorded so far are durable (one fsync shared by the writers)."""
        self.write()
        await self.journal.flush()

    def cut(self, revision: int) -> None:
        """Nothing at or below ``revision`` may be replayed any more (see ``Layered.clear``)."""
        self.write()
        self.floor = max(self.floor, revision)
        self._save()

    def oldest_floor(self) -> int:
        """The revision above which the journal holds every event."""
        self.write()
        if self._behind:  # the journal lacks the events up to it (the layer keeps them)
            return max(self.floor, self._behind)
        log_ = self.journal.log
        if not log_.segments[0].count:
            return self.floor
        index, item = self._first_readable()
        if item is None:
            return max(self.floor, log_.last_tag)
        if item[:1] == _BATCH_MAGIC:  # batches start with a whole transaction
            first_event = next(_decode_item(item))
            return max(self.floor, first_event.revision - 1)
        # An old item, one event: an eviction may have cut a transaction, not wholly kept then.
        tag = self.journal.entry(index).tag
        whole = _position(item) == 0
        return max(self.floor, tag - 1 if whole else tag)

    def _first_readable(self) -> tuple[int, bytes | None]:
        """The oldest journal item that reads (its index and bytes; None if none does): a damaged
        one (a lost page, bit rot) holds events no replay can give, so the history starts after
        it (logged once), instead of every resume failing on it."""
        log_ = self.journal.log
        index = start = max(log_.first_index, self._readable)
        item: bytes | None = None
        damaged: CorruptObject | None = None
        while item is None and index < log_.next_index:
            try:
                item = self.journal.read(index)[0]
            except NotFound:  # deleted or pruned meanwhile
                index += 1
            except CorruptObject as exc:
                damaged = exc
                index += 1
        if damaged is not None:
            log.warning(
                "history: journal items %d to %d are damaged (%s): the history starts after them "
                "(resumes from before get a snapshot / 410)", start, index - 1, damaged,
            )
        self._readable = index
        return index, item

    def replay(self, since: int, upto: int) -> Iterator[Event]:
        """The kept events with ``since < revision <= upto``, one chunk in memory at a time."""
        self.write()
        log_ = self.journal.log
        index = log_.seek(since)
        while index < log_.next_index:
            chunk = log_.chunk(index)
            index = chunk.next
            for _, item in chunk:
                for event in _decode_item(item):
                    if event.revision > upto:
                        return
                    if event.revision > since:  # a batch may begin before ``since``
                        yield event

    async def _prune(self, max_age: float) -> None:
        while True:
            await asyncio.sleep(min(max_age / 4, 60.0))
            try:
                self.journal.prune(max_age)
            except Exception as exc:
                log.error("history: prune failed: %s", exc)

    async def close(self, last: int = 0) -> None:
        """Append what is queued, close the journal, save a clean state: ``last`` is the last
        revision the store issued (the next start's gap begins there)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in (self._pruner, self._trimmer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.write()
        upto = self.journal.log.last_tag  # what it holds, not what it lacks (see write)
        try:
            await self.journal.close()
            keeper = self.keeper
            if keeper is not None and keeper.keeps_events and upto > self._trimmed:
                await keeper.drop_events(upto)  # the journal's close fsynced them
        finally:
            os.close(self._lock)  # releases the directory's flock
        self._save(clean=True, last=last)


def _lock_directory(directory: str | os.PathLike[str]) -> int:
    """Take the history directory's lock (a descriptor holding an exclusive ``flock``): two
    processes appending to one journal would tear each other's entries."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageUnavailable(
            f"storage: history directory {os.fspath(directory)} is in use by another process "
            "(stop it, or give this one a --history-dir of its own)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _decode_item(item: bytes) -> Iterator[Event]:
    """The events of a journal item: a batch (see :meth:`_History.write`) or one event (as
    earlier versions wrote them)."""
    if item[:1] != _BATCH_MAGIC:
        yield _decode(item)
        return
    view = memoryview(item)
    position, end, unpack = 1, len(item), _BATCH_LEN.unpack_from
    while position < end:
        (size,) = unpack(item, position)
        position += _BATCH_LEN.size
        if item[position] == _SET_MAGIC:
            yield _decode_set(item, position, size)
        else:
            yield _decode(bytes(view[position : position + size]))
        position += size


_unpack_set = struct.Struct("<BQqqI").unpack_from


def _frames_above(frames: bytes, revision: int) -> bytes:
    """The frames (u32 length + event, repeated, as in a batch) of the events above ``revision``:
    a group commit's copy may hold events the journal has already (its last tag falls inside)."""
    return b"".join(part for above, part in _revisions(frames) if above > revision)


def _revisions(frames: bytes) -> Iterator[tuple[int, bytes]]:
    """``(revision, its frames)`` of ``frames``, a transaction's events together."""
    position, end, unpack = 0, len(frames), _BATCH_LEN.unpack_from
    first, current = 0, 0
    while position < end:
        (size,) = unpack(frames, position)
        start = position + _BATCH_LEN.size
        if frames[start] == _SET_MAGIC:
            revision = _unpack_set(frames, start)[1]
        else:
            revision = int(_loads(frames[start : start + size].partition(b"\n")[0])[0])
        if revision != current and position:
            yield current, frames[first:position]
            first = position
        current, position = revision, start + size
    if position:
        yield current, frames[first:position]


def _restored(
    kept: list[tuple[int, bytes]], above: int, batch: int, largest: int
) -> tuple[list[tuple[int, bytes]], int]:
    """The journal items (tag, batch) holding the events of the layer's copies above ``above``,
    in batches of about ``batch`` bytes cut between transactions (a group commit's copy may be
    larger than one item holds); and the last revision too large for an item (0: none)."""
    items: list[tuple[int, bytes]] = []
    parts, size, tag, lost = [_BATCH_MAGIC], 1, 0, 0
    for _, frames in kept:
        for revision, part in _revisions(frames):
            if revision <= above:
                continue
            if len(part) + 1 > largest:
                lost = revision
                continue
            if size > 1 and size + len(part) > batch:
                items.append((tag, b"".join(parts)))
                parts, size = [_BATCH_MAGIC], 1
            parts.append(part)
            size, tag = size + len(part), revision
    if size > 1:
        items.append((tag, b"".join(parts)))
    return items, lost


def _decode_set(item: bytes, position: int, size: int) -> Event:
    """The set event framed by ``_SET`` at ``position`` of a batch (``size`` bytes from there)."""
    _, revision, created, updated, length = _unpack_set(item, position)
    start = position + _SET_HEAD
    key = item[start : start + length].decode()
    data = item[start + length : position + size]
    obj = make_object(created, updated, key.rpartition("/")[2], key, data)
    return make_event(key, "set", obj, revision)


def _decode(item: bytes) -> Event:
    """An event as :meth:`_History.record` wrote it (a transaction's with two more fields)."""
    head, _, data = item.partition(b"\n")
    fields = _loads(head)
    txn, position = fields[-2:] if len(fields) in (5, 9) else (0, 0)
    more = position < txn - 1
    if len(fields) < 7:
        return make_event(fields[2], fields[1], None, fields[0], txn, more)
    revision, op, key, created, updated, index, path = fields[:7]
    obj = make_object(created, updated, index, path, data)
    return make_event(key, op, obj, revision, txn, more)


def _position(item: bytes) -> int:
    """The position of a recorded transaction event among its transaction's (0 otherwise)."""
    fields = _loads(item.partition(b"\n")[0])
    return int(fields[-1]) if len(fields) in (5, 9) else 0


class _TxnHold:
    """What a commit holds while it runs: its keys' locks, taken in sorted order (``plan.locked``),
    then the gate (exclusive when it deletes by glob); :meth:`release` gives back what was taken,
    whether or not :meth:`take` finished (its caller bounds it with a timeout)."""

    __slots__ = ("locks", "gate", "plan", "taken", "gated")

    def __init__(self, locks: KeyLocks, gate: Gate, plan: txn.Plan) -> None:
        self.locks, self.gate, self.plan = locks, gate, plan
        self.taken: list[str] = []
        self.gated = False

    async def take(self) -> None:
        for key in self.plan.locked:
            await self.locks.acquire(key)
            self.taken.append(key)
        await (self.gate.acquire_exclusive() if self.plan.globs else self.gate.acquire_shared())
        self.gated = True

    def waited(self) -> list[str]:
        """The keys still not taken (a timeout names them)."""
        return list(self.plan.locked[len(self.taken) :])

    async def release(self) -> None:
        if self.gated:
            await (self.gate.release_exclusive() if self.plan.globs else self.gate.release_shared())
        for key in self.taken:
            self.locks.release(key)


class Layered:
    """A memory layer over a persistent layer (either may be None, not both).

    With a memory layer, every read is served from memory (``start`` loads the persistent layer into
    it); without one, reads go to the persistent layer.

    ``history``: keep a bounded, durable journal of the events (:class:`HistoryOptions`), so that
    ``events(pattern, since=revision)`` replays what came after ``revision``, also after a restart.
    Without it nothing is recorded and a write costs what it did.
    """

    def __init__(
        self,
        memory: MemoryLayer | None = None,
        embedded: Layer | None = None,
        history: HistoryOptions | None = None,
    ) -> None:
        self.memory = memory
        self.embedded = embedded
        self.history_options = history
        self._history: _History | None = None
        self._history_durable = False
        """A durable history: writes take the awaited path and wait for the journal's fsync."""
        self.failure: str | None = None
        """Why the last ``start`` failed (None once started): NotActive says it."""
        self.options = Options()
        self._active = False
        self._revision = 0
        self._locks = KeyLocks()
        self._gate = Gate()
        self._chan: ShardedChan | None = None
        self._watchers: list[tuple[Callback, list[WatchHandle | None]]] = []
        self._observers: tuple[Observer, ...] = ()
        self._silent_observers: tuple[Observer, ...] = ()
        self._reserved = 0
        self._streams: set[asyncio.Queue[Event | None]] = set()  # open ``events()`` iterators
        # The persistent layer's declared contract (layers.base): an asynchronous one is awaited.
        # Every layer synchronous: a write has no await point and cannot interleave with another.
        self._sync = embedded is None or not embedded.asynchronous
        if history is not None:
            durable = history.durable
            self._history_durable = not self._sync if durable is None else durable
            # A durable history waits for the journal's fsync after the write: the awaited path.
            self._sync = self._sync and not self._history_durable
        self._sync_layer = cast(SyncLayer, embedded) if self._sync else None
        # A layer that keeps the events' durable copies (LevelDB sync, issue 11): read at start
        # in any mode; with a durable history, each write's event joins the write's group commit.
        events = embedded if history is not None and isinstance(embedded, EventKeeper) else None
        self._events_layer: EventKeeper | None = events
        keeps = events is not None and self._history_durable and events.keeps_events
        self._keeper: EventKeeper | None = events if keeps else None
        self._history_fsync = self._history_durable and not keeps
        """A durable history whose writer waits for the journal's fsync (not with ``_keeper``,
        whose group commit made the event durable with the write): decided once, not per write."""
        self._assigned = 0
        """With ``_keeper``: the last revision given to a write in flight (published when its group
        commit is durable, in revision order)."""
        self._keeps_revision = isinstance(embedded, RevisionKeeper)
        # Transactions need an all-or-nothing batch (checked once: a Protocol isinstance is slow),
        # and a layer no other writer shares: their expectations are checked against this mirror.
        txns = isinstance(embedded, TxnWriter) and not isinstance(embedded, Follower)
        self._txn_layer = cast(TxnWriter, embedded) if txns else None
        # A Follower layer that ``publishes_writes`` (Redis) gives each write its revision in the
        # order it shares with other nodes (``last_revision``), and returns only when the write's
        # turn in that order has come: the write is published with that revision.
        shared = embedded if isinstance(embedded, SharedOrder) and embedded.publishes_writes else None
        self._shared: SharedOrder | None = shared
        self._followed = shared is not None
        self._deleted: Object | None = None
        """With such a layer: what the point delete whose turn came last removed from the mirror."""
        # Batching (see the module docstring): the layer that writes batches, the writes queued
        # for the next one, and the task of this iteration's first write (_NOBODY: no write yet;
        # the end of the iteration is marked by ``_tick``, scheduled by that first write).
        batches = self._sync and isinstance(embedded, BatchWriter)
        self._batcher = cast(BatchWriter, embedded) if batches else None
        self._queued: list[_Queued] | None = None
        self._first: object = _NOBODY
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    @property
    def mirrored(self) -> bool:
        """True when a complete memory mirror serves reads: :meth:`peek` and :meth:`peek_list` then
        read synchronously (otherwise they return None and reads go to the persistent layer)."""
        return self.memory is not None

    @property
    def revision(self) -> int:
        """Revision of the last committed write (store-wide, strictly increasing)."""
        return self._revision

    @property
    def dropped(self) -> int:
        """Events dropped because watchers could not keep up (never with ``lossless_watch``)."""
        return self._chan.dropped if self._chan is not None else 0

    @property
    def queued(self) -> int:
        """Events waiting to be delivered to watchers (the event queue's depth; 0 without any)."""
        return self._chan.queued if self._chan is not None else 0

    async def start(self, options: Options | None = None) -> None:
        """Start the layers, load the persistent layer into memory, start event delivery."""
        if self.memory is None and self.embedded is None:
            raise AllLayersNil()
        if self._active:
            return
        try:
            await self._start(options)
        except BaseException as exc:
            self.failure = str(exc).removeprefix("storage: ") or type(exc).__name__
            raise
        self.failure = None

    async def _start(self, options: Options | None) -> None:
        opts = options or Options()
        self.options = opts
        self._no_broadcast = tuple(opts.no_broadcast_keys)
        if self.memory is not None:
            self.memory.start()
        if self.embedded is not None:
            try:
                await maybe_await(self.embedded.start())
            except StorageError:
                raise
            except Exception as exc:
                raise StorageUnavailable(f"storage: can't start persistent layer: {exc}") from exc
            if self.memory is not None:
                try:
                    await self._load()
                except BaseException as exc:
                    # Not started: release the persistent layer (a database lock, executors).
                    await maybe_await(self.embedded.close())
                    self.memory.clear()
                    if isinstance(exc, StorageError) or not isinstance(exc, Exception):
                        raise
                    raise StorageUnavailable(f"storage: can't start persistent layer: {exc}") from exc
        saved = await self._saved_revision()
        self._revision = max(self._revision, time.time_ns() // 1000, saved)
        if self.history_options is not None:
            await self._open_history(self.history_options, saved)
        self._reserve()
        self._chan = ShardedChan(
            opts.workers, opts.queue_size, opts.drop_timeout, opts.lossless_watch, opts.on_drop
        )
        for callback, slot in self._watchers:
            slot[0] = self._chan.subscribe(callback)
        self._chan.start()
        self._loop = asyncio.get_running_loop()
        self._first = _NOBODY
        self._active = True
        if self._shared is not None:  # before follow: the tail may meet a transaction at once
            self._shared.follow_txns(self.apply_remote_txn)
            self._shared.follow_reloads(self.apply_remote_reload)
            self._shared.follow_raw(self.apply_remote_raw)
        if isinstance(self.embedded, Follower):
            self.embedded.follow(self.apply_remote)

    async def _open_history(self, options: HistoryOptions, saved: int) -> None:
        history = None
        try:
            history = _History(options, self._history_durable, self._events_layer)
            await history.restore()
            self._revision = history.open(saved, self._revision)
        except BaseException as exc:
            if history is not None:
                history.abandon()
            if self.embedded is not None:
                await maybe_await(self.embedded.close())
            if self.memory is not None:
                self.memory.clear()
            if isinstance(exc, StorageError) or not isinstance(exc, Exception):
                raise
            where = options.directory
            raise StorageUnavailable(f"storage: can't open the history in {where}: {exc}") from exc
        self._history = history

    async def _load(self) -> None:
        assert self.memory is not None and self.embedded is not None
        if isinstance(self.embedded, RawLoader):
            self.memory.bulk_load(await maybe_await(self.embedded.load_raw()))
        else:
            layer = cast(PersistentLayer, self.embedded)
            self.memory.bulk_load(await maybe_await(layer.load()))

    async def _saved_revision(self) -> int:
        if not isinstance(self.embedded, RevisionKeeper):
            return 0
        try:
            return int(await maybe_await(self.embedded.load_revision()))
        except Exception as exc:  # the clock still keeps revisions apart
            log.error("can't read the saved revision: %s", exc)
            return 0

    def _reserve(self) -> None:
        """Reserve the next block of revisions in the persistent layer (if it can keep one)."""
        self._reserved = self._revision + _RESERVE
        if self._keeps_revision:
            try:
                cast(RevisionKeeper, self.embedded).save_revision(self._reserved)
            except Exception as exc:  # a full disk must not fail the write that got here
                log.error("can't save the revision reservation: %s", exc)
        if self._history is not None:  # after the layer: a reservation it lacks breaks continuity
            self._history.reserved(self._reserved if self._keeps_revision else 0)

    def _persistent(self) -> Layer:
        """The persistent layer, where reads go without a memory mirror (one of the two exists)."""
        assert self.embedded is not None
        return self.embedded

    async def close(self) -> None:
        """Deliver queued events (bounded), then close the layers. Idempotent."""
        if not self._active:
            return
        self._settle()
        self._active = False
        if self._chan is not None:
            await self._chan.close()
        for stream in self._streams:
            stream.put_nowait(None)  # ends every ``async for event in store.events()``
        if self._history is not None:
            history, self._history = self._history, None
            await history.close(max(self._revision, self._assigned))
        if self.embedded is not None:
            await maybe_await(self.embedded.close())
        if self.memory is not None:
            self.memory.close()

    async def __aenter__(self) -> Layered:
        await self.start()
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- checks --------------------------------------------------------------------------------
    def _not_active(self) -> NotActive:
        """NotActive, saying why when ``start`` failed (a full disk: free space, it retries)."""
        if self.failure is None:
            return NotActive()
        return NotActive(f"storage: not active: {self.failure}")

    def _check(self, key: str) -> None:
        if not self._active:
            raise self._not_active()
        if not keys.is_valid(key):
            raise InvalidPath()

    def _check_pattern(self, pattern: str) -> None:
        self._check(pattern)
        if "*" not in pattern:
            raise InvalidPattern()
        if self.options.before_read is not None:
            self.options.before_read(pattern)

    # -- reads ---------------------------------------------------------------------------------
    async def get(self, key: str) -> Object:
        """The object at ``key``; NotFound if missing."""
        if self._active and not keys.is_valid(key):  # inactive: _get_checked says so first
            raise InvalidPath()
        return await self._get_checked(key)

    async def _get_checked(self, key: str) -> Object:
        """:meth:`get` of a key known to be valid (``rest.check_key`` ran): a GET checks it once."""
        if not self._active:
            raise self._not_active()
        if "*" in key:
            raise GlobNotAllowed()
        if self.options.before_read is not None:
            self.options.before_read(key)
        obj = await self._read(key)
        if obj is None:
            raise NotFound()
        return obj

    @property
    def reads_now(self) -> bool:
        """True when a read never waits (a memory mirror, or a synchronous persistent layer):
        :meth:`read_now` may then be called."""
        return self.memory is not None or not self._persistent().asynchronous

    def read_now(self, key: str) -> Object | None:
        """:meth:`_get_checked` without a coroutine (None when missing), when :attr:`reads_now`: for
        a caller answering outside any task (the lean front's GET, in ``data_received``), to which
        a chain of coroutines cost a few k instructions. It reads what :meth:`get` reads:
        neither waits for a key's lock or a write in flight (the last committed object), and a
        write queued for the next batch is not acknowledged yet, so neither sees it."""
        if not self._active:  # :meth:`_get_checked`'s checks, inline: this is the hot path
            raise self._not_active()
        if "*" in key:
            raise GlobNotAllowed()
        if self.options.before_read is not None:
            self.options.before_read(key)
        memory = self.memory
        if memory is not None:
            return memory.get(key)
        return cast(SyncLayer, self.embedded).get(key)

    async def get_json(self, key: str) -> bytes:
        """The exact object JSON of ``key`` (PROTOCOL §2.1), served without re-encoding when possible."""
        self._check(key)
        if "*" in key:
            raise GlobNotAllowed()
        if self.options.before_read is not None:
            self.options.before_read(key)
        if self.memory is not None:
            raw = self.memory.get_raw(key)
        else:
            obj = await self._read(key)
            raw = None if obj is None else obj.to_json()
        if raw is None:
            raise NotFound()
        return raw

    def peek(self, key: str) -> Object | None:
        """Synchronous memory read without checks or hooks (None if missing or no memory layer).

        For components that must read and register in one step with no await in between (stream
        snapshots)."""
        return self.memory.get(key) if self.memory is not None else None

    def peek_list(self, pattern: str) -> list[Object] | None:
        """Synchronous memory glob read, newest first (None without a memory layer)."""
        if self.memory is None:
            return None
        objs = self.memory.get_list(pattern)
        objs.sort(key=_ORDER, reverse=True)
        return objs

    def peek_scan(self, pattern: str, after: str | None, visit: int) -> tuple[list[Object], str | None]:
        """Synchronous, bounded part of a memory glob read: the objects matching ``pattern`` among
        at most ``visit`` keys after the key ``after`` (bytewise order), and the key to resume
        after (None when done). For building large stream states in steps that yield the event
        loop; requires a memory mirror (:attr:`mirrored`)."""
        assert self.memory is not None
        return self.memory.scan(pattern, after, visit)

    async def _read(self, key: str) -> Object | None:
        if self.memory is not None:
            return self.memory.get(key)
        return await maybe_await(self._persistent().get(key))

    async def _matching(self, pattern: str) -> list[Object]:
        if self.memory is not None:
            return self.memory.get_list(pattern)
        return list(await maybe_await(self._persistent().get_list(pattern)))

    async def get_list(self, pattern: str) -> list[Object]:
        """Objects matching ``pattern``, oldest first (ties by path)."""
        self._check_pattern(pattern)
        objs = await self._matching(pattern)
        objs.sort(key=_ORDER)
        return objs

    async def get_list_descending(self, pattern: str) -> list[Object]:
        """Objects matching ``pattern``, newest first (exact reverse of ``get_list``)."""
        self._check_pattern(pattern)
        objs = await self._matching(pattern)
        objs.sort(key=_ORDER, reverse=True)
        return objs

    async def get_n(self, pattern: str, limit: int) -> list[Object]:
        """The ``limit`` newest objects matching ``pattern`` (all when limit <= 0), newest first."""
        if limit <= 0:
            return await self.get_list_descending(pattern)
        return await self.get_page(pattern, limit)

    async def get_n_ascending(self, pattern: str, limit: int) -> list[Object]:
        """The ``limit`` oldest objects matching ``pattern`` (all when limit <= 0), oldest first."""
        if limit <= 0:
            return await self.get_list(pattern)
        return await self.get_page(pattern, limit, descending=False)

    async def get_page(
        self,
        pattern: str,
        limit: int,
        after: tuple[int, str] | None = None,
        descending: bool = True,
    ) -> list[Object]:
        """Up to ``limit`` objects matching ``pattern``, newest first (oldest first when
        ``descending`` is False), strictly after the position ``after`` — the ``(created, path)``
        of the last object of the previous page. Pages neither repeat nor skip objects across
        writes made between them. With a memory layer a page costs about its own size, not the
        number of matches (see ``MemoryLayer.page``)."""
        return (await self.page_within(pattern, limit, after, descending))[0]

    async def page_within(
        self,
        pattern: str,
        limit: int,
        after: tuple[int, str] | None = None,
        descending: bool = True,
        visit: int | None = None,
    ) -> tuple[list[Object], tuple[int, str] | None]:
        """:meth:`get_page` that visits at most ``visit`` keys of the memory mirror: the objects
        found and, when the budget ran out before the page filled, the position to go on from
        (pass it as ``after``). For servers, which must bound the work of one request."""
        self._check_pattern(pattern)
        if limit <= 0:
            raise InvalidLimit()
        if self.memory is not None:
            return self.memory.page_within(pattern, limit, after, descending, visit)
        objs = await self._matching(pattern)
        objs.sort(key=_ORDER, reverse=descending)
        if after is not None and descending:
            objs = [o for o in objs if (o.created, o.path) < after]
        elif after is not None:
            objs = [o for o in objs if (o.created, o.path) > after]
        return objs[:limit], None

    async def get_n_range(self, pattern: str, limit: int, from_: int, to: int) -> list[Object]:
        """Up to ``limit`` newest objects with ``from_ <= created <= to``, newest first."""
        self._check_pattern(pattern)
        if limit <= 0:
            raise InvalidLimit()
        if to < from_:
            return []
        objs = [o for o in await self._matching(pattern) if from_ <= o.created <= to]
        objs.sort(key=_ORDER, reverse=True)
        return objs[:limit]

    async def keys(self) -> list[str]:
        """Every key, bytewise ascending."""
        if not self._active:
            raise self._not_active()
        if self.memory is not None:
            return self.memory.keys()
        return sorted(await maybe_await(self._persistent().keys()))

    async def keys_range(self, pattern: str, from_: int, to: int) -> list[str]:
        """Keys matching ``pattern`` with ``from_ <= created <= to``, ordered by created."""
        self._check_pattern(pattern)
        if to < from_:
            raise InvalidRange()
        objs = [o for o in await self._matching(pattern) if from_ <= o.created <= to]
        objs.sort(key=_ORDER)
        return [o.path for o in objs]

    # -- writes --------------------------------------------------------------------------------
    async def set(self, key: str, data: Any) -> str:
        """Create or overwrite ``key``; returns its index."""
        if not self._active:
            raise self._not_active()
        if not _is_valid(key):
            raise InvalidPath()
        if key == "*" or key.endswith("/*"):  # keys.is_glob, inline: this is the hot path
            raise GlobNotAllowed()
        raw = encode_data(data)
        if self._sync and not self._locks.busy(key) and self._gate.idle:
            # ``_write``'s inline case without its coroutine
            if (
                self._batcher is None
                or (self._queued is None and self._first is _task_of(self._loop))
                or self._first_of_iteration()
            ):
                obj, waiter = self._commit_now(key, raw, None)
            else:
                obj, waiter = await self._join(key, raw, None)
            if waiter is not None or self.options.after_write is not None:
                await self._finish(key, waiter)
            return obj.index
        return await self._write(key, raw)

    async def push(self, pattern: str, data: Any) -> str:
        """Store ``data`` under a new key made from ``pattern`` (``logs/*``); returns the new index."""
        self._check(pattern)
        if not keys.is_glob(pattern):
            raise GlobRequired()
        raw = encode_data(data)
        # Push keys unique across the nodes of a layer that publishes_writes: its own clock
        stamp = now() if self._shared is None else self._shared.push_stamp()
        key = keys.build(pattern, stamp)
        return await self._write(key, raw, (now(), 0))

    async def set_with_meta(self, key: str, data: Any, created: int, updated: int) -> str:
        """Store ``data`` at ``key`` with the given timestamps (no glob or empty checks: empty data
        is stored as ``{}``, the empty object's data). The key may move (a new ``created``): with a
        history its event is replayed with ``txn`` -1, so that a resuming list takes a snapshot."""
        self._check(key)
        raw = b"{}" if isinstance(data, bytes | str) and not data else encode_data(data)
        history = self._history
        if history is None:
            return await self._write(key, raw, (created, updated))
        moving = history.moving
        moving[key] = moving.get(key, 0) + 1
        try:
            return await self._write(key, raw, (created, updated))
        finally:
            if moving[key] == 1:
                del moving[key]
            else:
                moving[key] -= 1

    async def get_and_lock(self, key: str) -> Object:
        """Take ``key``'s lock and return its object. NotFound (and no lock kept) if missing."""
        self._check(key)
        if "*" in key:
            raise CantLockGlob()
        await self._locks.acquire(key)
        try:
            if self._shared is not None:  # and the key's lock across nodes, once this node holds their writes
                await self._shared.lock(key)
            self._settle()  # a queued write of this key lands before the lock holder reads it
            obj = await self._read(key)
        except BaseException:
            await self._release(key)
            raise
        if obj is None:
            await self._release(key)
            raise NotFound()
        return obj

    async def _release(self, key: str) -> None:
        """Release ``key``'s lock (with a layer that publishes_writes, its lock across nodes too)."""
        self._locks.release(key)
        if self._shared is not None:
            await self._shared.unlock(key)

    async def set_and_unlock(self, key: str, data: Any) -> str:
        """Write ``key`` while holding the lock taken by ``get_and_lock``, then release it (also on
        failure)."""
        self._check(key)
        if "*" in key:
            raise CantLockGlob()
        try:
            raw = encode_data(data)
        except InvalidData:
            if self._locks.locked(key):
                await self._release(key)
            raise
        if not self._locks.locked(key):
            raise LockNotFound()
        try:
            return await self._write(key, raw, locked=True)
        finally:
            await self._release(key)

    async def unlock(self, key: str) -> None:
        """Release ``key``'s lock (from any task)."""
        if not self._active:
            raise self._not_active()
        if not self._locks.locked(key):
            raise LockNotFound()
        await self._release(key)

    async def _write(
        self, key: str, raw: bytes, stamps: tuple[int, int] | None = None, locked: bool = False
    ) -> str:
        if not self._sync:
            obj, waiter = await self._write_awaiting(key, raw, stamps, locked)
            if self._history_fsync:
                await self._history_flush()
        elif not locked and not self._locks.busy(key) and self._gate.idle:
            # Every layer is synchronous and nobody holds the key: nothing can interleave.
            if self._batcher is None or self._first_of_iteration():
                obj, waiter = self._commit_now(key, raw, stamps)
            else:
                obj, waiter = await self._join(key, raw, stamps)
        else:
            if not locked:
                await self._locks.acquire(key)
            try:
                await self._gate.acquire_shared()
                try:
                    self._settle()
                    obj, waiter = self._commit_now(key, raw, stamps)
                finally:
                    await self._gate.release_shared()
            finally:
                if not locked:
                    self._locks.release(key)
        if waiter is not None or self.options.after_write is not None:
            await self._finish(key, waiter)
        return obj.index

    def _commit_now(
        self, key: str, raw: bytes, stamps: tuple[int, int] | None
    ) -> tuple[Object, asyncio.Future[None] | None]:
        """The whole write with synchronous layers, in one step (this is the hot path)."""
        memory, embedded = self.memory, self._sync_layer
        old = memory.get(key) if memory is not None else cast(SyncLayer, embedded).get(key)
        obj = _build(key, raw, stamps, old)
        if embedded is not None:
            try:
                embedded.set(key, obj)
            except StorageError:
                raise
            except Exception as exc:
                raise StorageUnavailable(f"storage: write failed: {exc}") from exc
        if memory is not None:
            memory.set(key, obj)
        return obj, self._publish(key, "set", obj)

    # -- batches -------------------------------------------------------------------------------
    driven = False
    """True while a coroutine run by hand runs (``send(None)``, outside any task: the lean front's
    requests, ``server/front/connection.py``), whose driver resumes it once a future it awaits is
    done: its writes join the batch as a task's do. Set by that driver around each step."""

    def _first_of_iteration(self) -> bool:
        """Whether a write may be committed inline (else it joins the batch): it is the first of
        this loop iteration, or another of the same task (which cannot have two writes waiting at
        once), or one whose caller could not wait for the batch (no task, not :attr:`driven`: the
        batch is committed first, then the write, so the order of arrival holds). Writers run by
        hand are all task-less: only the first of them in an iteration is inline."""
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]  # started: set
        if self.driven:
            if self._first is not _NOBODY or self._queued is not None:
                return False
            self._first = _DRIVEN
            loop.call_soon(self._tick)
            return True
        task = _task_of(loop)
        if self._queued is not None:
            if task is not None:
                return False
            self._settle()
            return True
        first = self._first
        if first is _NOBODY:
            self._first = task
            loop.call_soon(self._tick)
            return True
        return first is task or task is None

    @property
    def batching(self) -> bool:
        """Whether writes of one iteration share a batch of the persistent layer (:meth:`_join`)."""
        return self._batcher is not None

    def _join(self, key: str, raw: bytes, stamps: tuple[int, int] | None) -> _Done:
        """Queue a write for the batch committed at the start of the next iteration (``_tick``)."""
        assert self._loop is not None
        fut: _Done = self._loop.create_future()
        if self._queued is None:
            self._queued = [(key, raw, stamps, fut)]
        else:
            self._queued.append((key, raw, stamps, fut))
        return fut

    def held(self, key: str) -> bool:
        """Whether a write of ``key`` would wait now: its lock is held, or a transaction holds the
        store (a caller of :meth:`set_run` ends its run before such a write)."""
        return self._locks.busy(key) or not self._gate.idle

    def set_run(self, run: Sequence[tuple[str, bytes]], checked: bool = False) -> list[_Done] | None:
        """:meth:`set` of each ``(key, JSON bytes)`` of ``run``, in order, as one batch of the
        persistent layer, for a caller that waits for futures but cannot afford a coroutine per write
        (the lean front: a pipelined burst of POSTs, one connection's writes of one read).

        Returns each write's future, done with ``(object, waiter)`` as :meth:`_join`'s, or with the
        write's error (an invalid key or document fails alone; a failed batch fails every write in
        it, and none is applied; a store not active fails them all). The run is committed at once
        when it is the loop iteration's first write, else with the iteration's batch (its futures
        done then); on a store whose writes are not batched (memory only), each write at once.
        None when the writes must go one by one through :meth:`set`: a layer that is not
        synchronous, an ``after_write`` hook, a key locked or a transaction in progress.
        ``checked``: the keys are known valid and not globs (the lean front read their validity
        with their URL): not checked again."""
        loop = asyncio.get_running_loop() if self._loop is None else self._loop
        if not self._active:  # every write fails, as ``set`` would
            return [_failed_future(loop, self._not_active()) for _ in run]
        if not self._sync or self.options.after_write is not None or not self._gate.idle:
            return None
        busy = self._locks.busy
        for key, _ in run:
            if busy(key):
                return None
        batched = self._batcher is not None  # else each write committed at once, as ``set`` does
        queued = self._queued
        if queued is None and batched:
            queued = self._queued = []
        futs: list[_Done] = []
        for key, raw in run:
            fut: _Done = loop.create_future()
            futs.append(fut)
            try:  # ``set``'s checks
                if not checked:
                    if not _is_valid(key):
                        raise InvalidPath()
                    if key == "*" or key.endswith("/*"):
                        raise GlobNotAllowed()
                if batched:
                    cast(list[_Queued], queued).append((key, encode_data(raw), None, fut))
                else:
                    fut.set_result(self._commit_now(key, encode_data(raw), None))
            except StorageError as exc:
                fut.set_exception(exc)
        if batched and self._first is _NOBODY:  # the iteration's first write: committed now
            self._first = _DRIVEN
            loop.call_soon(self._tick)
            self._settle()
        return futs

    def _tick(self) -> None:
        """The end of the iteration in which a write was made: commit the queued batch."""
        self._first = _NOBODY
        self._settle()

    def _settle(self) -> None:
        """Commit the queued writes now, as one batch (before any write that does not queue)."""
        queued = self._queued
        if queued is None:
            return
        self._queued = None
        items, futs = self._build_batch(queued)
        if not futs:
            return
        assert self._batcher is not None
        try:
            self._batcher.set_many(items)
        except Exception as exc:
            error = _unavailable(exc, "storage: write failed")
            for fut in futs:
                fut.set_exception(error)
            return
        memory, publish = self.memory, self._publish
        if memory is not None:
            memory_set = memory.set
            for (key, obj), fut in zip(items, futs, strict=True):
                memory_set(key, obj)
                fut.set_result((obj, publish(key, "set", obj)))
        else:
            for (key, obj), fut in zip(items, futs, strict=True):
                fut.set_result((obj, publish(key, "set", obj)))

    def _build_batch(self, queued: list[_Queued]) -> tuple[list[tuple[str, Object]], list[_Done]]:
        """The queued writes' keys and objects (what ``set_many`` takes) and their writers' futures,
        each object built over the one before it in the batch, with ``_tuple_new`` as in
        ``_commit_now`` (a write whose old object cannot be read fails alone; a cancelled writer's
        write is dropped). One pass, no list of triples to split again: this is the hot path."""
        memory, layer = self.memory, self._sync_layer
        get = memory.get if memory is not None else cast(SyncLayer, layer).get
        items: list[tuple[str, Object]] = []
        futs: list[_Done] = []
        latest: dict[str, Object] = {}
        for key, raw, stamps, fut in queued:
            if fut.done():
                continue
            old = latest.get(key)
            if old is None:
                try:
                    old = get(key)
                except Exception as exc:
                    fut.set_exception(_unavailable(exc, "storage: read failed"))
                    continue
            obj = latest[key] = _build(key, raw, stamps, old)
            items.append((key, obj))
            futs.append(fut)
        return items, futs

    async def _write_awaiting(
        self, key: str, raw: bytes, stamps: tuple[int, int] | None, locked: bool
    ) -> tuple[Object, asyncio.Future[None] | None]:
        """The write with an asynchronous persistent layer: under the key lock and the gate."""
        if not locked:
            await self._locks.acquire(key)
        try:
            await self._gate.acquire_shared()
            try:
                obj = _build(key, raw, stamps, await self._read(key))
                if self._keeper is not None:  # the event in the write's own durable step
                    waiter, cancelled = await self._kept([(key, obj)], [], key, "set", obj)
                    if cancelled:
                        raise asyncio.CancelledError()
                    return obj, waiter
                cancelled = await self._store(key, obj)
                waiter = self._publish(key, "set", obj)
                if cancelled:  # the write landed: memory and watchers have it, now the caller stops
                    raise asyncio.CancelledError()
                return obj, waiter
            finally:
                await self._gate.release_shared()
        finally:
            if not locked:
                self._locks.release(key)

    async def _kept(
        self,
        sets: list[tuple[str, Object]],
        deletes: list[str],
        key: str,
        op: Operation,
        obj: Object | None,
        broadcast: bool = True,
    ) -> tuple[asyncio.Future[None] | None, bool]:
        """A write with its event in the same durable step (``_keeper``, see
        :class:`~ooo_storage.layers.base.EventKeeper`): the revision is given now, as the write
        joins the group commit; once the group is durable the layer calls back, in revision order,
        and memory and the watchers get the write there (also when the writer was cancelled
        meanwhile). Returns the event queue's wait and whether the writer was cancelled (it raises
        once done); a failed group skips the revision: no event, nothing in memory."""
        revision = self._assign()
        history = self._history
        framed, event = None, None
        if history is not None and broadcast and not (self._no_broadcast and self._quiet(key)):
            framed, copy = history.framed(key, op, obj, revision)
            event = (revision, copy) if copy else None
        waiter: list[asyncio.Future[None] | None] = [None]
        memory = self.memory

        def durable() -> None:
            if memory is not None:
                for set_key, set_obj in sets:
                    memory.set(set_key, set_obj)
                for doomed in deletes:
                    memory.delete(doomed)
            if framed is not None and self._history is not None:  # framed once, for both copies
                self._history.record(key, op, obj, revision, (0, 0), framed)
            self._revision = revision - 1  # _publish adds one
            waiter[0] = self._publish(key, op, obj, broadcast, recorded=True)

        keeper = cast(EventKeeper, self._keeper)
        try:
            cancelled = await _finished(keeper.write_with_event(sets, deletes, event, durable), "write")
        except StorageError:
            raise
        except Exception as exc:
            raise StorageUnavailable(f"storage: write failed: {exc}") from exc
        return waiter[0], cancelled

    def _assign(self) -> int:
        """The next revision, for a write joining a group commit (reserved before it is used)."""
        revision = self._assigned = max(self._assigned, self._revision) + 1
        if revision >= self._reserved:
            self._reserve()
        return revision

    async def _store(self, key: str, obj: Object) -> bool:
        """Write ``obj`` to the layers; True when the writer was cancelled while the persistent
        layer's write was in flight: that write goes on (a group commit, a worker thread), so it is
        awaited to its end and applied to memory all the same; the caller raises afterwards."""
        cancelled = False
        if self.embedded is not None:
            try:
                pending = self.embedded.set(key, obj)
                if self._followed:  # its write is handed to the writer at its turn: no detour
                    await maybe_await(pending)
                elif isinstance(pending, Awaitable):
                    cancelled = await _finished(pending, "write")
            except StorageError:
                raise
            except Exception as exc:
                raise StorageUnavailable(f"storage: write failed: {exc}") from exc
            if self._followed:
                self._follow_revision()
        if self.memory is not None:
            self.memory.set(key, obj)
        return cancelled

    async def delete(self, key: str) -> None:
        """Delete ``key`` (NotFound if missing) or every key matching a glob (never errors)."""
        await self._delete(key, broadcast=True)

    async def delete_silent(self, key: str) -> None:
        """Like ``delete`` but emits no event (hooks still run)."""
        await self._delete(key, broadcast=False)

    async def _delete(self, key: str, broadcast: bool) -> None:
        self._check(key)
        if "*" in key:
            await self._delete_glob(key, broadcast)
            return
        if self._keeper is not None:
            await self._delete_kept(key, broadcast)
            return
        async with self._locks.hold(key):
            await self._gate.acquire_shared()
            try:
                self._settle()
                old = await self._read(key)
                if old is None:
                    raise NotFound()
                await self._remove(key, broadcast)
                if self._followed and self.memory is not None:
                    old = self._deleted  # at the delete's turn in the shared order (None: gone)
                waiter = None if old is None else self._publish(key, "del", old, broadcast)
            finally:
                await self._gate.release_shared()
        if self._history_fsync:
            await self._history_flush()
        await self._finish(key, waiter)

    async def _delete_kept(self, key: str, broadcast: bool) -> None:
        """``_delete`` with the event in the delete's own durable step (see :meth:`_kept`)."""
        async with self._locks.hold(key):
            await self._gate.acquire_shared()
            try:
                old = await self._read(key)
                if old is None:
                    raise NotFound()
                waiter, cancelled = await self._kept([], [key], key, "del", old, broadcast)
            finally:
                await self._gate.release_shared()
        if cancelled:
            raise asyncio.CancelledError()
        await self._finish(key, waiter)

    async def _delete_glob_kept(self, pattern: str, broadcast: bool) -> None:
        """``_delete_glob`` with the event in the delete's own durable step (see :meth:`_kept`):
        the keys it removes are listed first (the store is gated exclusively: nothing moves)."""
        await self._gate.acquire_exclusive()
        try:
            doomed = await self._doomed(pattern)
            if not doomed:
                return
            if broadcast and self._chan is not None:
                # Barrier: earlier events of matching keys reach watchers before this one.
                await self._drain()
            waiter, cancelled = await self._kept([], doomed, pattern, "del", None, broadcast)
        finally:
            await self._gate.release_exclusive()
        if cancelled:
            raise asyncio.CancelledError()
        await self._finish(pattern, waiter)

    async def _doomed(self, pattern: str) -> list[str]:
        """The keys matching ``pattern`` (from memory, else from the persistent layer)."""
        if self.memory is not None:
            return list(self.memory.matching_keys(pattern))
        try:
            objs = await maybe_await(self._persistent().get_list(pattern))
        except Exception as exc:
            raise _unavailable(exc, "storage: read failed") from exc
        return [obj.path for obj in objs]

    async def _delete_glob(self, pattern: str, broadcast: bool) -> None:
        if self._keeper is not None:
            await self._delete_glob_kept(pattern, broadcast)
            return
        await self._gate.acquire_exclusive()
        try:
            self._settle()
            removed = await self._remove(pattern, broadcast)
            if not removed:
                return
            if broadcast and self._chan is not None and not self._followed:
                # Barrier: earlier events of matching keys reach watchers before this one.
                await self._drain()
            waiter = self._publish(pattern, "del", None, broadcast)
        finally:
            await self._gate.release_exclusive()
        if self._history_fsync:
            await self._history_flush()
        await self._finish(pattern, waiter)

    async def _history_flush(self) -> None:
        """Wait until the events recorded so far are durable (one fsync shared by the writers);
        called when ``_history_fsync`` only."""
        history = self._history
        if history is not None:
            await history.flush()

    async def _drain(self) -> None:
        assert self._chan is not None
        if self.options.lossless_watch:
            await self._chan.drain()
            return
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives
            # as the inner wait completes, and the cancelled caller then carries on.
            async with asyncio.timeout(self.options.drop_timeout):
                await self._chan.drain()
        except TimeoutError:
            log.warning("glob delete: watchers did not catch up within drop_timeout")

    async def _remove(self, key_or_glob: str, broadcast: bool = True) -> int:
        removed = 0
        if self.embedded is not None:
            try:
                if self._shared is not None:  # a silent delete stays silent on the other nodes
                    removed = await self._shared.delete(key_or_glob, broadcast)
                else:
                    removed = await maybe_await(self.embedded.delete(key_or_glob))
            except StorageError:
                raise
            except Exception as exc:
                raise StorageUnavailable(f"storage: delete failed: {exc}") from exc
            if self._followed:
                self._follow_revision()
                if self.memory is not None and "*" not in key_or_glob:
                    self._deleted = self.memory.get(key_or_glob)
        if self.memory is not None:
            removed = self.memory.delete(key_or_glob) or removed
        return removed

    def _follow_revision(self) -> None:
        """The write the followed layer just made has its revision in the order shared with other
        nodes: the event published next, in this same step, carries it."""
        assert self._shared is not None
        revision = self._shared.last_revision
        if revision > self._revision:
            self._revision = revision - 1  # _publish adds one
        elif revision:
            log.error("shared revision %d of a write is not above the store's %d", revision, self._revision)

    async def clear(self) -> None:
        """Remove every key from every layer. Emits no events (an administrative reset); with a
        history, replays from before it raise HistoryTrimmed (a client resuming takes a snapshot)."""
        if not self._active:
            raise self._not_active()
        await self._gate.acquire_exclusive()
        try:
            self._settle()
            if self.embedded is not None:
                try:
                    await maybe_await(self.embedded.clear())
                except Exception as exc:
                    raise StorageUnavailable(f"storage: clear failed: {exc}") from exc
            if self.memory is not None:
                self.memory.clear()
            self._history_cut()
        finally:
            await self._gate.release_exclusive()

    def _history_cut(self) -> None:
        """After ``clear`` (which emits no event): a replay across it would patch keys that are
        gone, so the history's floor rises above it (on a revision of its own) and such replays
        raise HistoryTrimmed, which makes a resuming client take a snapshot."""
        if self._history is None:
            return
        if self._shared is not None:  # the clear's own revision in the shared order (no local one)
            self._revision = max(self._revision, self._shared.last_revision)
            self._history.cut(self._revision)
            return
        self._revision = max(self._revision, self._assigned) + 1  # above any skipped revision
        if self._revision >= self._reserved:
            self._reserve()
        self._history.cut(self._revision)

    # -- transactions ------------------------------------------------------------------------------
    def transaction(self, timeout: float = 5.0) -> Transaction:
        """An optimistic transaction: ``async with store.transaction() as tx:`` reads with
        ``await tx.get(key)`` (None for a missing key), collects ``tx.set``/``tx.patch``/
        ``tx.delete`` and commits them on a clean exit with :meth:`commit`, expecting every key
        read to be unchanged: Conflict (nothing applied) otherwise. ``timeout`` is the deadline of
        the whole transaction, counted from here. See :meth:`transaction_run` for retries."""
        if not self._active:
            raise self._not_active()
        return Transaction(self._txn_read, self.commit, timeout)

    async def transaction_run(
        self, fn: Callable[[Transaction], Awaitable[_T]], retries: int = 3, timeout: float = 5.0
    ) -> _T:
        """Run ``await fn(tx)`` in a fresh :meth:`transaction` and commit it, again (after a short
        random pause) on Conflict, at most ``retries`` more times; returns what ``fn`` returned.
        The last Conflict is raised; a TransactionTimeout is raised at once (each attempt has its
        own ``timeout``, so retrying a contended key would multiply it)."""
        attempt = 0
        while True:
            tx = self.transaction(timeout)
            try:
                result = await fn(tx)
                await tx.commit()
                return result
            except TransactionTimeout:
                raise
            except Conflict:
                if attempt >= retries:
                    raise
            attempt += 1
            await asyncio.sleep(random.random() * min(0.001 * (1 << attempt), 0.05))

    async def _txn_read(self, key: str) -> Object | None:
        try:
            return await self.get(key)
        except NotFound:
            return None

    async def commit(
        self,
        ops: Sequence[TxnOp],
        expect: Mapping[str, int | None] | None = None,
        timeout: float = 5.0,
        check_merged: Callable[[str, bytes], object] | None = None,
    ) -> Committed:
        """Apply ``ops`` all together or not at all, if every key of ``expect`` still has the
        version given (``protocol.txn.version``: ``updated``, or ``created`` while ``updated`` is
        0; None: the key must not exist), else Conflict naming the keys that differ.

        The persistent layer gets the whole transaction as one batch (LevelDB: one WriteBatch,
        durable before the return with ``sync=True``), then memory with no await in between (no
        reader sees half of it), then the watchers: one event per op that changed something, all
        with one revision, ``txn`` their number and ``more`` True but on the last, told in op order
        with no await in between. The commit takes the locks of its keys in sorted order (waiting
        for ``get_and_lock`` holders) and the store gate (exclusively with a glob delete);
        TransactionTimeout (a Conflict, nothing applied) if they are not all had within
        ``timeout`` seconds; once writing, it completes. InvalidTransaction for ops breaking the
        rules of :mod:`ooo_storage.protocol.txn`, NotFound for a patch of a missing key,
        NotSupported on a persistent layer without an all-or-nothing batch (SOS, erasure-coded).
        On a layer that nodes share in one order (Redis) the layer checks and applies the whole
        transaction in one step for every node (:meth:`_txn_shared`).
        ``check_merged(key, merged)`` sees each patch's merged document before anything is written
        (a size limit): what it raises refuses the whole transaction."""
        if not self._active:
            raise self._not_active()
        plan = txn.plan(ops, expect, check_merged)
        if self._shared is not None:
            return await self._txn_shared(plan, self._txn_payloads(plan.ops), timeout)
        writer = self._txn_writer()
        payloads = self._txn_payloads(plan.ops)
        if (
            self._sync
            and not plan.globs
            and self._gate.idle
            and not any(map(self._locks.busy, plan.locked))
        ):
            # Synchronous layers and nobody on these keys: nothing can interleave, no lock needed.
            self._settle()
            current = await self._txn_current(plan.locked)
            result, waiters, _ = await self._txn_apply(plan, payloads, writer, current, {})
        else:
            result, waiters = await self._txn_locked(plan, payloads, writer, timeout)
        if self._history_fsync:
            await self._history_flush()
        for key, waiter in waiters:
            await self._finish(key, waiter)
        return result

    def _txn_writer(self) -> TxnWriter | None:
        embedded = self.embedded
        if embedded is None or self._txn_layer is not None:
            return self._txn_layer
        raise NotSupported(
            f"storage: transactions are not supported by {type(embedded).__name__}: it cannot write "
            "several keys all or nothing, or other writers share it (use LevelDB, or write the "
            "keys one by one)"
        )

    @staticmethod
    def _txn_payloads(ops: Sequence[TxnOp]) -> list[Any]:
        """Each op's data, checked before any lock: compact JSON for a set, the decoded document
        for a patch, None for a delete."""
        payloads: list[Any] = []
        for i, op in enumerate(ops):
            try:
                if op.op == "set":
                    payloads.append(encode_data(op.data))
                elif op.op == "patch" and isinstance(op.data, bytes | bytearray | memoryview | str):
                    payloads.append(jsontext.loads(op.data) if op.data else encode_data(op.data))
                else:
                    payloads.append(op.data)
            except (InvalidData, jsontext.JSONDecodeError) as exc:
                why = f"invalid data (not JSON: {exc})" if isinstance(exc, ValueError) else exc
                raise InvalidTransaction(
                    f"storage: invalid transaction: op {i} ({op.key}): {why}"
                ) from None
        return payloads

    async def _txn_locked(
        self, plan: txn.Plan, payloads: list[Any], writer: TxnWriter | None, timeout: float
    ) -> tuple[Committed, list[tuple[str, asyncio.Future[None] | None]]]:
        """The commit under its key locks (sorted order) and the gate, which it waits for at most
        ``timeout`` seconds, together with its reads."""
        hold = _TxnHold(self._locks, self._gate, plan)
        try:
            try:
                async with asyncio.timeout(timeout):
                    await hold.take()
                    self._settle()
                    current = await self._txn_current(plan.locked)
                    doomed = await self._txn_doomed(plan.ops)
                    if doomed and self._chan is not None:
                        await self._drain()  # earlier events of matching keys reach watchers first
            except TimeoutError:
                raise TransactionTimeout(hold.waited(), timeout) from None
            result, waiters, cancelled = await self._txn_apply(plan, payloads, writer, current, doomed)
            if cancelled:  # the commit was written and told anyway: the cancellation comes now
                raise asyncio.CancelledError()
            return result, waiters
        finally:
            await hold.release()

    async def _txn_shared(self, plan: txn.Plan, payloads: list[Any], timeout: float) -> Committed:
        """The commit on a layer shared by nodes in one order (Redis): this node's key locks (sorted)
        and the gate as locally, then the layer checks the keys against the shared store (this
        node's view may be behind another node's writes: it then catches up and the commit is
        checked and built again) and applies the whole transaction as one write with one
        revision, which every node applies in one step (:meth:`apply_remote_txn`)."""
        deadline = time.monotonic() + timeout
        assert self._shared is not None
        hold = _TxnHold(self._locks, self._gate, plan)
        try:
            try:
                async with asyncio.timeout(timeout):
                    await hold.take()
            except TimeoutError:
                raise await self._shared_timeout(TransactionTimeout(hold.waited(), timeout)) from None
            result, waiters = await self._txn_shared_locked(plan, payloads, deadline, timeout)
        finally:
            await hold.release()
        if self._history_fsync:
            await self._history_flush()
        for key, waiter in waiters:
            await self._finish(key, waiter)
        return result

    async def _shared_timeout(self, late: TransactionTimeout) -> StorageError:
        """What a shared commit whose deadline passed answers: ``late`` (409: the keys are
        contended) if the shared store answers now, else StorageUnavailable (503): the wait was for
        the store (a paused or unreachable Redis), not for other writers. Nothing was applied."""
        shared = self._shared
        assert shared is not None
        try:
            async with asyncio.timeout(_SHARED_PROBE):
                await shared.catch_up()
        except (TimeoutError, StorageError, OSError) as exc:
            return StorageUnavailable(
                f"storage: unavailable: the shared store did not answer while the transaction "
                f"waited ({exc or 'no answer within ' + format(_SHARED_PROBE, 'g') + ' s'}); "
                "nothing applied, retry"
            )
        return late

    async def _txn_shared_locked(
        self, plan: txn.Plan, payloads: list[Any], deadline: float, timeout: float
    ) -> tuple[Committed, list[tuple[str, asyncio.Future[None] | None]]]:
        """Check, build and send until the layer takes it with this node's view up to date; the
        ops that changed something are applied and published in the step its turn comes."""
        shared = self._shared
        assert shared is not None
        fresh = False
        while True:
            current = await self._txn_current(plan.locked)
            try:
                changed = txn.conflicts(plan.expect, current)
                if changed:
                    raise Conflict(changed)
                _, _, changes, indexes = self._txn_build(plan, payloads, current, {})
            except (Conflict, NotFound):
                if fresh:
                    raise
                # Refused on this node's view: the caller may have read another node's write
                # that this node has not applied yet. Refused again once caught up, it stands.
                await shared.catch_up()
                fresh = True
                continue
            sets = {key: obj for key, kind, obj in changes if kind == "set"}
            ops = [(op.key, sets.get(op.key)) for op in plan.ops]
            seen = {key: None if obj is None else txn.version(obj) for key, obj in current.items()}
            applied = await shared.apply_txn(seen, ops, deadline, timeout)
            if applied is not None:
                break
            fresh = True  # the layer caught up: a refusal on the next view stands
            if time.monotonic() > deadline:
                raise await self._shared_timeout(TransactionTimeout(list(plan.locked), timeout, (
                    f"storage: transaction timeout: its keys kept changing on other nodes for "
                    f"{timeout:g} s; nothing applied, retry"
                )))
        if not applied:
            return Committed(self._revision, indexes), []
        self._follow_revision()
        waiters = self._txn_remote_changes(applied, current)
        return Committed(self._revision, indexes), waiters

    async def _txn_current(self, keys_: Sequence[str]) -> dict[str, Object | None]:
        try:
            if self.memory is not None:
                get = self.memory.get
                return {key: get(key) for key in keys_}
            layer = self._persistent()
            return {key: await maybe_await(layer.get(key)) for key in keys_}
        except Exception as exc:
            raise _unavailable(exc, "storage: read failed") from exc

    async def _txn_doomed(self, ops: Sequence[TxnOp]) -> dict[str, list[str]]:
        """The keys each glob delete of ``ops`` removes (globs removing nothing left out)."""
        doomed = {}
        for op in ops:
            if "*" not in op.key:
                continue
            if self.memory is not None:
                matched = list(self.memory.matching_keys(op.key))
            else:
                try:
                    objs = await maybe_await(self._persistent().get_list(op.key))
                except Exception as exc:
                    raise _unavailable(exc, "storage: read failed") from exc
                matched = [obj.path for obj in objs]
            if matched:
                doomed[op.key] = matched
        return doomed

    async def _txn_apply(
        self,
        plan: txn.Plan,
        payloads: list[Any],
        writer: TxnWriter | None,
        current: dict[str, Object | None],
        doomed: dict[str, list[str]],
    ) -> tuple[Committed, list[tuple[str, asyncio.Future[None] | None]], bool]:
        """Check ``expect``, then write: persistent layer, memory, events. Returns the result, the
        event queue waits, and whether the committer was cancelled while its write was on its way
        to the disk (it is then finished first: what reaches the disk reaches memory too)."""
        changed = txn.conflicts(plan.expect, current)
        if changed:
            raise Conflict(changed)
        sets, deletes, changes, indexes = self._txn_build(plan, payloads, current, doomed)
        if not changes:
            return Committed(self._revision, indexes), [], False
        if self._keeper is not None:
            return await self._txn_kept(sets, deletes, changes, indexes)
        cancelled = False
        if writer is not None:
            try:
                pending = writer.apply_many(sets, deletes)
                if pending is not None:
                    cancelled = await _finished(pending)
            except Exception as exc:
                raise _unavailable(exc, "storage: transaction failed") from exc
        if self.memory is not None:
            self.memory.apply_many(sets, deletes)
        revision, waiters = self._publish_txn(changes)
        return Committed(revision, indexes), waiters, cancelled

    async def _txn_kept(
        self,
        sets: list[tuple[str, Object]],
        deletes: list[str],
        changes: list[_Change],
        indexes: list[str],
    ) -> tuple[Committed, list[tuple[str, asyncio.Future[None] | None]], bool]:
        """``_txn_apply``'s write with its events in the same durable step (see :meth:`_kept`):
        one revision, given as the transaction joins the group commit, for all its events."""
        revision = self._assign()
        event = self._txn_event(changes, revision)
        done: list[tuple[int, list[tuple[str, asyncio.Future[None] | None]]]] = []
        memory = self.memory

        def durable() -> None:
            if memory is not None:
                memory.apply_many(sets, deletes)
            self._revision = revision - 1  # _publish_txn adds one
            done.append(self._publish_txn(changes))

        keeper = cast(EventKeeper, self._keeper)
        try:
            cancelled = await _finished(keeper.write_with_event(sets, deletes, event, durable))
        except StorageError:
            raise
        except Exception as exc:
            raise _unavailable(exc, "storage: transaction failed") from exc
        published, waiters = done[0] if done else (revision, [])
        return Committed(published, indexes), waiters, cancelled

    def _txn_event(self, changes: list[_Change], revision: int) -> tuple[int, bytes] | None:
        """The durable copy of the events ``_publish_txn`` will record: their frames, in order."""
        history = self._history
        if history is None:
            return None
        loud = self._loud(changes)
        frame = b"".join(
            history.framed(key, op, obj, revision, (len(loud), i))[1]
            for i, (key, op, obj) in enumerate(loud)
        )
        return (revision, frame) if frame else None

    def _loud(self, changes: list[_Change]) -> list[_Change]:
        """The changes of a transaction that emit an event (not ``no_broadcast_keys``)."""
        quiet = self._no_broadcast
        return [c for c in changes if not (quiet and self._quiet(c[0]))] if quiet else changes

    def _txn_build(
        self,
        plan: txn.Plan,
        payloads: list[Any],
        current: dict[str, Object | None],
        doomed: dict[str, list[str]],
    ) -> tuple[list[tuple[str, Object]], list[str], list[_Change], list[str]]:
        """The objects to set, the keys to delete, the events and the indexes of the ops."""
        sets: list[tuple[str, Object]] = []
        deletes: list[str] = []
        changes: list[_Change] = []
        indexes: list[str] = []
        check = plan.check_merged
        for i, (op, payload) in enumerate(zip(plan.ops, payloads, strict=True)):
            key = op.key
            old = current.get(key)
            if op.op == "del":
                indexes.append("")
                matched = doomed.get(key, []) if "*" in key else [key] if old is not None else []
                if matched:
                    deletes += matched
                    changes.append((key, "del", old))
                continue
            if op.op == "patch":
                if old is None:
                    raise NotFound(f"storage: not found: {key} (op {i} patches a missing key)")
                try:
                    raw = merge_json(old.data, payload)
                except MergeError as exc:
                    raise InvalidTransaction(
                        f"storage: invalid transaction: op {i} ({key}): {exc}"
                    ) from None
                if check is not None:
                    check(key, raw)
            else:
                raw = payload
            obj = _build(key, raw, None, old)
            sets.append((key, obj))
            changes.append((key, "set", obj))
            indexes.append(obj.index)
        return sets, deletes, changes, indexes

    def _publish_txn(
        self, changes: list[_Change]
    ) -> tuple[int, list[tuple[str, asyncio.Future[None] | None]]]:
        """``_publish`` for a transaction: one revision for all its events, each observer told
        all of them in op order with no await in between (``more`` on all but its last)."""
        self._revision += 1
        if self._revision >= self._reserved:
            self._reserve()
        revision = self._revision
        loud = self._loud(changes)
        history = self._history
        if history is not None:
            for i, (key, op, obj) in enumerate(loud):
                history.record(key, op, obj, revision, (len(loud), i))
        hook = self.options.after_write_op
        if hook is not None:
            for key, op, _ in changes:
                try:
                    hook(key, op)
                except Exception:
                    log.exception("after_write_op hook failed for %s", key)
        events = _txn_events(loud, revision)
        every = events if loud is changes else _txn_events(changes, revision)
        silent = self._silent_observers
        for observer in self._observers:
            for event in every if observer in silent else events:
                self._tell(observer, event)
        waits = {}
        if self._watchers and self._chan is not None:
            put = self._chan.put
            waits = {event.key: put(event) for event in events}
        return revision, [(key, waits.get(key)) for key, _, _ in changes]

    # -- writes by others ------------------------------------------------------------------------
    def apply_remote(
        self, key: str, obj: Object | None, revision: int | None = None, broadcast: bool = True
    ) -> bool:
        """Apply a write that another writer committed to the shared persistent layer (another
        process on the same directory, another node on the same Redis): update the memory mirror
        and tell observers and watchers as for a local write. The layer already holds it: nothing
        is written, no hook runs. Called synchronously, in the other writer's commit order, by a
        :class:`~ooo_storage.layers.base.Follower` layer.

        ``obj`` None deletes ``key`` (a key or a glob). ``revision``: the write's place in an order
        shared by every writer; the store's revision moves up to it, and a write at or below the
        store's revision is taken as already applied and ignored. Without it the write gets the
        next local revision. Returns whether the write changed anything (an object already in the
        mirror, a delete of a key the mirror lacks: nothing, no event). ``broadcast`` False: a write
        its writer made without an event (``delete_silent``) is applied without one here too."""
        if not self._active:
            return False
        if revision is not None and revision <= self._revision:
            return False
        self._settle()  # local writes queued before this one commit first: the order is kept
        return self._apply_one(key, obj, revision, broadcast)

    def apply_remote_raw(self, writes: Sequence[tuple[str, bytes | None, int, bool]]) -> int:
        """:meth:`apply_remote` for a run of writes read together from a shared order (a batch of
        a Redis node's stream), in one call: ``(key, raw, revision, broadcast)`` each, ``raw`` the
        object's stored JSON bytes or None for a delete. An object is parsed only if its write is
        applied: a write at or below the store's revision (this node's own, read back after its
        writer published it) costs a comparison, not a parse. Returns how many writes were
        handled: all of them, or the index of the first whose object is damaged (nothing from it
        on is applied; the caller reloads)."""
        if not self._active:
            return len(writes)
        settled = False
        for i, (key, raw, revision, broadcast) in enumerate(writes):
            if revision <= self._revision:
                continue
            if not settled:
                self._settle()  # as apply_remote: local writes queued before these commit first
                settled = True
            obj = None
            if raw is not None:
                try:
                    obj = load_object(key, raw)
                except CorruptObject:
                    return i
            self._apply_one(key, obj, revision, broadcast)
        return len(writes)

    def _apply_one(self, key: str, obj: Object | None, revision: int | None, broadcast: bool) -> bool:
        """A remote write above the store's revision to the mirror, then its event."""
        memory = self.memory
        op: Operation
        if obj is None:
            op, event_obj = "del", None
            if memory is not None:
                if "*" in key:
                    if not memory.delete(key):
                        return self._skip(revision)
                else:
                    event_obj = memory.get(key)
                    if event_obj is None:
                        return self._skip(revision)
                    memory.delete(key)
        else:
            op, event_obj = "set", obj
            if memory is not None:
                old = memory.get(key)
                if old == obj:
                    return self._skip(revision)
                memory.set(key, obj)
        if revision is not None:
            self._revision = revision - 1  # _publish adds one
        self._publish(key, op, event_obj, broadcast)
        return True

    def apply_remote_txn(self, ops: Sequence[tuple[str, Object | None]], revision: int) -> bool:
        """Apply a transaction that another node committed to the shared layer (or this node's,
        when its committer is gone): every op to the memory mirror with no await in between, then
        its events with one revision, as :meth:`commit` publishes a local one (``txn``,
        ``more``: a websocket pool sends one frame). ``ops``: ``(key, obj)`` sets, ``(key_or_glob,
        None)`` deletes. Ignored at or below the store's revision, like :meth:`apply_remote`."""
        if not self._active or revision <= self._revision:
            return False
        self._settle()
        self._revision = revision - 1  # _publish_txn adds one
        return bool(self._txn_remote_changes(ops)) or self._skip(revision)

    def apply_remote_reload(self, ops: Sequence[tuple[str, Object | None]], revision: int) -> bool:
        """Apply the whole state of a shared layer that this node reloaded (it missed part of the
        shared order: its place in it trimmed away, another node's ``clear``): ``ops`` sets every
        stored key and deletes keys gone, as of ``revision``, a revision of the shared order
        whose state on every node is this one. Applied as one unit like :meth:`apply_remote_txn`
        (what changed here: one revision, one frame per pool), then the history is cut there
        (as :meth:`clear` cuts it): its events are not the writes this node missed (a key
        deleted and written again shows as overwritten, with a new ``created``), so a resume
        from an earlier version takes a snapshot, never a patch across the reload."""
        if not self._active:
            return False
        if revision <= self._revision:  # the layer reloads above the store's revision
            log.error("reload at shared revision %d is not above the store's %d: applied at %d",
                      revision, self._revision, self._revision + 1)
            revision = self._revision + 1
        self._settle()
        memory = self.memory
        if memory is not None:  # what changed only; keys the mirror has and the data lacks go
            stored = {key for key, obj in ops if obj is not None}
            ops = [(key, obj) for key, obj in ops if obj is not None and memory.get(key) != obj]
            ops += [(key, None) for key in sorted(set(memory.keys()) - stored)]
        self._revision = revision - 1  # _publish_txn adds one
        if not self._txn_remote_changes(ops):
            self._skip(revision)
        if self._history is not None:
            self._history.cut(self._revision)
        return True

    async def apply_remote_reach(self, revision: int, within: float = 1.5) -> None:
        """Wait, at most ``within`` seconds, until this node has applied every write the shared
        order had when asked, when ``revision`` is above the store's (a client resuming with a
        version it got from another node, ahead of this one): it must not be sent back in time.
        Without a shared order, or past the wait: return (the caller sends a snapshot)."""
        shared = self._shared
        if shared is None or revision <= self._revision:
            return
        try:
            async with asyncio.timeout(within):
                await shared.catch_up()
        except (TimeoutError, StorageError) as exc:
            log.info("resume at %d: this node is at %d and did not catch up: %s",
                     revision, self._revision, exc or "timeout")

    def _txn_remote_changes(
        self, ops: Sequence[tuple[str, Object | None]], read: Mapping[str, Object | None] | None = None
    ) -> list[tuple[str, asyncio.Future[None] | None]]:
        """The ops of a shared transaction to the mirror, then published with the store's next
        revision; ops that change nothing here (a delete of a key the mirror lacks) have no event.
        Without a mirror a delete's event has the object its committer ``read``, if any."""
        memory = self.memory
        changes: list[_Change] = []
        for key, obj in ops:
            if obj is not None:
                if memory is not None:
                    memory.set(key, obj)
                changes.append((key, "set", obj))
            elif "*" in key:
                if memory is None or memory.delete(key):
                    changes.append((key, "del", None))
            else:
                old = (read or {}).get(key) if memory is None else memory.get(key)
                if memory is not None:
                    if old is None:
                        continue
                    memory.delete(key)
                changes.append((key, "del", old))
        if not changes:
            return []
        return self._publish_txn(changes)[1]

    def _skip(self, revision: int | None) -> bool:
        """A remote write with nothing to apply still moves the shared revision up to its own."""
        if revision is not None and revision > self._revision:
            self._revision = revision
            if self._revision >= self._reserved:
                self._reserve()
        return False

    # -- events --------------------------------------------------------------------------------
    def _publish(
        self, key: str, op: Operation, obj: Object | None, broadcast: bool = True, recorded: bool = False
    ) -> asyncio.Future[None] | None:
        """Assign the revision, tell the observers and queue the event, synchronously right after
        the commit (``recorded``: the caller recorded it in the history already)."""
        self._revision += 1
        if self._revision >= self._reserved:
            self._reserve()
        history = self._history
        if (
            history is not None and not recorded and broadcast
            and not (self._no_broadcast and self._quiet(key))
        ):
            history.record(key, op, obj, self._revision)
        opts = self.options
        if opts.after_write_op is not None:
            try:
                opts.after_write_op(key, op)
            except Exception:
                log.exception("after_write_op hook failed for %s", key)
        if not broadcast or self._chan is None or (self._no_broadcast and self._quiet(key)):
            if self._silent_observers:
                event = make_event(key, op, obj, self._revision)
                for observer in self._silent_observers:
                    self._tell(observer, event)
            return None
        observers, watched = self._observers, self._watchers
        if not observers and not watched:
            return None  # nobody to tell: no event to build or to route
        event = _tuple_new(Event, (key, op, obj, self._revision, 0, False))  # make_event, inline
        for observer in observers:
            try:  # ``_tell``, inline
                observer(event)
            except Exception:
                log.exception("commit observer failed on %s %s", op, key)
        # Without watchers (a server has only observers) the shards would carry it to nobody.
        return self._chan.put(event) if watched else None

    def _quiet(self, key: str) -> bool:
        """A write that emits no event (``no_broadcast_keys``)."""
        return any(keys.peer(quiet, key) for quiet in self._no_broadcast)

    @staticmethod
    def _tell(observer: Observer, event: Event) -> None:
        try:
            observer(event)
        except Exception:
            log.exception("commit observer failed on %s %s", event.operation, event.key)

    async def _finish(self, key: str, waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            await waiter
        hook = self.options.after_write
        if hook is not None:
            try:
                hook(key)
            except Exception:
                log.exception("after_write hook failed for %s", key)

    def on_commit(self, observer: Observer, silent: bool = False) -> WatchHandle:
        """Call ``observer(event)`` synchronously for every event, in commit (revision) order,
        inside the write itself, before the writer's call returns.

        For components that must see one total order, such as the server's stream pools. The
        observer runs on the writer's time: it must be fast, must not block and should not raise
        (exceptions are logged). With ``silent`` it also sees the writes that emit no event
        (``delete_silent``, ``no_broadcast_keys``), as events of their own: for bookkeeping of
        what is stored rather than of what watchers are shown. ``cancel()`` on the returned handle
        stops it.
        """
        self._observers = (*self._observers, observer)
        if silent:
            self._silent_observers = (*self._silent_observers, observer)
        return _Observation(self, observer)

    def _unobserve(self, observer: Observer) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)
        self._silent_observers = tuple(o for o in self._silent_observers if o is not observer)

    def watch(self, callback: Callback) -> WatchHandle:
        """Call ``callback(event)`` (sync or async) for every event committed from now on; events
        of one key in order."""
        slot: list[WatchHandle | None] = [None]
        entry = (callback, slot)
        self._watchers.append(entry)
        if self._chan is not None:
            slot[0] = self._chan.subscribe(callback)
        return _StoreWatch(self, entry)

    def _unwatch(self, entry: tuple[Callback, list[WatchHandle | None]]) -> None:
        if entry in self._watchers:
            self._watchers.remove(entry)
        handle = entry[1][0]
        if handle is not None:
            handle.cancel()

    async def events(self, pattern: str | None = None, since: int | None = None) -> AsyncIterator[Event]:
        """Iterate the events whose key peers ``pattern`` (every event without one).

        The iterator has its own bounded buffer (``queue_size``); when it is full the delivering shard
        waits for it (and, unless ``lossless_watch``, the event is dropped after ``drop_timeout``).
        The iteration ends when the store closes.

        With ``since`` (a revision, from an event or :attr:`revision`) it first replays the kept
        events after ``since`` from the history, then goes on live, without a gap or a duplicate
        at the seam: it subscribes first, replays up to the revision of that moment and skips the
        live events at or below it. HistoryTrimmed (a StorageError) when the history no longer
        reaches back to ``since``: start from a snapshot instead. StorageError without a history
        (``Layered(history=HistoryOptions(...))``).
        """
        if since is not None and self._history is None:
            raise StorageError(
                "storage: events(since=...) needs an event history: "
                "Layered(..., history=HistoryOptions(directory))"
            )
        opts = self.options
        # Bounded by ``deliver``, not by the queue, so that ``close`` can always add its sentinel.
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        room = asyncio.Event()

        async def deliver(event: Event) -> None:
            if pattern is not None and not keys.peer(pattern, event.key):
                return
            while queue.qsize() >= opts.queue_size:
                room.clear()
                if opts.lossless_watch:
                    await room.wait()
                    continue
                try:
                    # not wait_for: it may swallow the shard's cancellation at close (3.11),
                    # leaving the consumer running and close() waiting for it forever
                    async with asyncio.timeout(opts.drop_timeout):
                        await room.wait()
                except TimeoutError:
                    if self._chan is not None:
                        self._chan.count_drop(event)
                    return
            queue.put_nowait(event)

        handle = self.watch(deliver)
        self._streams.add(queue)
        try:
            seen = 0  # live events up to this revision were replayed (or came before the start)
            if since is not None:
                seen = self._revision
                for old in self._replay(since, seen):
                    if pattern is None or keys.peer(pattern, old.key):
                        yield old
            while True:
                event = await queue.get()
                room.set()
                if event is None:  # the store closed
                    return
                if event.revision > seen:
                    yield event
        finally:
            self._streams.discard(queue)
            handle.cancel()


    def replay(self, since: int, upto: int | None = None) -> Iterator[Event]:
        """The recorded events with ``since < revision <= upto`` (default: :attr:`revision`), in
        revision order, read lazily one journal chunk at a time (iterate it before awaiting:
        it reads the journal as it is then).

        HistoryTrimmed (a StorageError) when the history no longer reaches back to ``since``
        (evicted, pruned, or cut by :meth:`clear`): take a snapshot instead. StorageError
        without a history, or once the store is closed."""
        if self._history is None and self.history_options is None:
            raise StorageError(
                "storage: replay needs an event history: Layered(..., history=HistoryOptions(directory))"
            )
        return self._replay(since, self._revision if upto is None else upto)

    def _replay(self, since: int, upto: int) -> Iterator[Event]:
        """:meth:`replay` once its arguments are settled."""
        history = self._history
        if history is None:
            raise StorageError("storage: the store closed")
        floor = history.oldest_floor()
        if since < floor:
            raise HistoryTrimmed(
                f"storage: history trimmed: events after revision {since} are no longer all kept "
                f"(the history starts after {floor}); start from a snapshot"
            )
        gap = history.issued(since)
        if gap is not None:
            raise HistoryTrimmed(
                f"storage: history trimmed: revision {since} was not issued by this store's data "
                f"(it went from {gap[0]} to {gap[1]} at a restart, or its directory was restored "
                "from a copy); start from a snapshot"
            )
        return history.replay(since, upto)


def _txn_events(changes: list[_Change], revision: int) -> list[Event]:
    """The events of a transaction's changes: one revision, ``txn`` their number, ``more`` on all
    but the last."""
    last = len(changes) - 1
    return [
        make_event(key, op, obj, revision, last + 1, i < last)
        for i, (key, op, obj) in enumerate(changes)
    ]


def _build(key: str, raw: bytes, stamps: tuple[int, int] | None, old: Object | None) -> Object:
    """The object a write of ``raw`` to ``key`` makes over ``old``: ``stamps`` (created, updated)
    when given, else created now (a new key) or kept and updated now."""
    if stamps is not None:
        created, updated = stamps
    elif old is None:
        created, updated = now(), 0
    else:
        created, updated = old.created, now()
    return _tuple_new(Object, (created, updated, key.rpartition("/")[2], key, raw))  # make_object


def _failed_future(loop: asyncio.AbstractEventLoop, error: Exception) -> _Done:
    """A writer's future done with ``error`` (:meth:`Layered.set_run`)."""
    fut: _Done = loop.create_future()
    fut.set_exception(error)
    return fut


async def _finished(pending: Awaitable[None], what: str = "transaction") -> bool:
    """Await a layer's write to its end even if the waiting task is cancelled meanwhile (the
    write goes on, so what it writes must reach memory and the watchers too); returns whether
    the task was cancelled, for the caller to raise once it has done so."""
    fut = asyncio.ensure_future(pending)
    cancelled = False
    while True:
        try:
            await asyncio.shield(fut)
            return cancelled
        except asyncio.CancelledError:
            if fut.cancelled():
                raise StorageUnavailable(f"storage: {what} failed: its write was cancelled") from None
            cancelled = True


class _Observation:
    """Handle of ``Layered.on_commit``."""

    __slots__ = ("_store", "_observer")

    def __init__(self, store: Layered, observer: Observer) -> None:
        self._store = store
        self._observer = observer

    def cancel(self) -> None:
        self._store._unobserve(self._observer)


class _StoreWatch:
    """Handle of ``Layered.watch``: survives a later ``start`` (re-subscribes) until cancelled."""

    __slots__ = ("_store", "_entry")

    def __init__(self, store: Layered, entry: tuple[Callback, list[WatchHandle | None]]) -> None:
        self._store = store
        self._entry = entry

    def cancel(self) -> None:
        self._store._unwatch(self._entry)
