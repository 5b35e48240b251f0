"""LevelDBLayer: the default persistent layer, LevelDB through plyvel.

Without ``sync`` every call runs inline on the event loop: a plyvel call takes a few microseconds, far
less than a thread hop; ``set_many`` writes the sets that ``Layered`` gathered from one event-loop
iteration as one ``WriteBatch`` (one log record and one ``write()`` instead of one per put).
With ``sync=True`` (durable writes) writes use *group commit*: each write joins
the pending group and waits; one committer writes the whole group as one ``WriteBatch(sync=True)`` in a
dedicated thread, so many concurrent writers share one fsync and the event loop never blocks on disk.
A write is acknowledged only once its batch is durable; a failed batch fails every write in it.

Keys are the UTF-8 key bytes; values are the exact object JSON. Keys starting with ``\xff`` (a
byte UTF-8 never holds, so no user key sorts there) are reserved: with ``sync=True`` and a durable
event history, ``Layered`` writes each write's event under :data:`EVENTS` in the write's own
group commit (:meth:`LevelDBLayer.write_with_event`), so one fsync makes both durable; the history
journal trims them once it has fsynced them itself. Every listing stops before that space
(:func:`user_iterator`).

After a failed write (a full disk, an I/O error) the database is not trusted until it has been
reopened: LevelDB may have left a torn record at the end of its log, and on the next open its
recovery silently drops every record written after it, acknowledged or not. So the first failure
makes the layer refuse every write (``StorageUnavailable``, a 503) until a reopen succeeds; the
reopen seals the log (recovery turns it into a table and starts a new log), then the keys of the
failed writes are put back to the value they had before (a failed write may or may not have
reached the log), and writes are accepted again. A reopen is tried on the next write once the
filesystem has some room, with a backoff of up to ``_RETRY_MAX`` seconds between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import plyvel  # type: ignore[import-untyped]  # plyvel ships no type information

from ..errors import NoSpace, StorageUnavailable, no_space
from ..protocol.keys import glob_prefix, has_glob, match
from ..protocol.objects import Object, load_object
from .fs.atomic import write_file_atomic
from .fs.layout import read_marker
from .fs.temp import TempNamer

log = logging.getLogger("ooo_storage.leveldb")

Ops = list[tuple[bytes, bytes | None]]
"""Writes of one call: (key, value) puts and (key, None) deletes, applied in order."""
Durable = Callable[[], None] | None
"""Called synchronously, in join order, once a write's group commit is durable (see
:meth:`LevelDBLayer.write_with_event`)."""
Event = tuple[int, bytes] | None
"""A write's event for the history's durable copy: (revision, framed bytes), or None."""
_Pending = tuple[Ops, "asyncio.Future[None]", Durable, Event]

RESERVED = b"\xff"
"""Keys from here on are not user keys (``\xff`` never occurs in UTF-8)."""
EVENTS = b"\xff\xffev"
"""Prefix of the event history's durable copy: ``EVENTS`` + a revision as 8 big-endian bytes, the
last of the group commit whose events (their frames, in revision order) the value holds."""


def event_key(revision: int) -> bytes:
    """The reserved key of the events of a group commit whose last revision is ``revision``."""
    return EVENTS + revision.to_bytes(8, "big")


def user_iterator(
    source: plyvel.DB | plyvel.Snapshot, prefix: bytes = b"", include_value: bool = True
) -> Iterator[Any]:
    """Iterate the user keys starting with ``prefix`` (a UTF-8 prefix), never the reserved ones:
    a non-empty prefix cannot start with ``\xff``; an empty one stops before :data:`RESERVED`."""
    if prefix:
        return cast(Iterator[Any], source.iterator(prefix=prefix, include_value=include_value))
    return cast(Iterator[Any], source.iterator(stop=RESERVED, include_value=include_value))

_UNKNOWN = b"\x00unknown"  # a failed write's key whose previous value could not be read
_RETRY_MIN = 0.05
_RETRY_MAX = 5.0
_MIN_FREE = 64 << 10  # below this many free bytes a reopen is not even tried
_PROBE_EVERY = 2.0  # seconds between two recoveries tried by a probe (try_recover)
_REVISION_FILE = "ooo-revision"  # beside LevelDB's own files, which it leaves alone
_RESERVE_FILE = "ooo-reserve"
DEFAULT_RESERVE = 32 << 20
"""What ``ooo-storage serve`` keeps aside for the day the disk fills (see ``reserve_bytes``): more
than LevelDB's 4 MiB log, which a reopen turns into a table."""


def _error(prefix: str, exc: BaseException) -> StorageUnavailable:
    """``prefix: <LevelDB's message>`` as a StorageUnavailable (NoSpace when the disk is full)."""
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    if no_space(exc):  # the promised start (docs/protocol.md), then what failed and why
        return NoSpace(f"{NoSpace.message}: {prefix.removeprefix('storage: ')}: {text}")
    return StorageUnavailable(f"{prefix}: {text}")


class LevelDBLayer:
    """LevelDB at ``path`` (the database directory itself, created if missing).

    ``sync=True`` makes every write durable before it is acknowledged.
    """

    GROUP_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    """Upper bounds of the buckets of :attr:`group_sizes` (writes per group commit)."""

    def __init__(
        self, path: str | os.PathLike[str], sync: bool = False, reserve_bytes: int = 0
    ) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self.reserve_bytes = reserve_bytes
        """Size of the emergency reserve file kept beside the database (0, the library's default:
        none; ``serve`` keeps :data:`DEFAULT_RESERVE`). When the disk fills, the reserve is
        released so the database can recover and deletes can free space; until there is room for
        it again, writes that add data are refused and deletes accepted.
        Without it, a disk filled by the database itself could not be cleaned through the API,
        nor the database opened again after a restart."""
        self._low_space = False
        self._db: plyvel.DB | None = None
        # group commit state (sync mode only)
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.commits = 0
        """Number of durable batches written (sync mode): writes / commits = group size."""
        self.group_sizes = [0] * (len(self.GROUP_BOUNDS) + 1)
        """Group commits by their number of writes: one count per bucket of
        :attr:`GROUP_BOUNDS`, the last one above them all (plain ints: a histogram's buckets)."""
        self.group_writes = 0
        """Writes in those group commits (the histogram's sum)."""
        self.batches = 0
        """Number of ``set_many`` batches written (non-sync mode: the writes of one iteration)."""
        # failure state: why writes are refused (None while healthy), the keys of the failed
        # writes with the value they had before, and when the next reopen may be tried
        self._failure: StorageUnavailable | None = None
        self._suspects: dict[bytes, bytes | None] = {}
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN
        self._probe_at = 0.0
        self.reopens = 0
        """Number of successful reopens after a failed write."""

    @property
    def asynchronous(self) -> bool:
        """The contract this layer follows (``layers.base``): without ``sync`` a
        :class:`~ooo_storage.layers.base.SyncLayer`; with it an
        :class:`~ooo_storage.layers.base.AsyncLayer` whose writes (``set``, ``delete``, ``clear``,
        ``close``) may return awaitables that resolve once durable, while reads still answer
        directly."""
        return self.sync

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._db is not None:
            return
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"storage: can't create database directory {self.path}: {exc.strerror}"
            ) from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"storage: database directory {self.path} is not writable")
        try:
            self._db = self._open()
        except NoSpace:
            if not self._release_reserve():
                raise
            self._db = self._open()  # the reserve made room for the log's recovery
        released_before = os.path.exists(self._reserve_path)
        if not self._keep_reserve():
            if released_before:  # emptied when the disk filled, not rebuilt since
                self._low_space = True
            elif self.reserve_bytes > 0:
                log.warning(
                    "%s: no room for the %d-byte reserve: a disk this full may need cleaning by hand",
                    self.path,
                    self.reserve_bytes,
                )

    # -- the emergency reserve -----------------------------------------------------------------
    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    @property
    def _reserve_path(self) -> str:
        return os.path.join(self.path, _RESERVE_FILE)

    def disk_bytes(self) -> tuple[int, int]:
        """``(database, reserve)``: the size of the directory's files but the reserve, and the
        reserve's (its space is held for the day the disk fills, not data). A few dozen ``stat``
        calls (LevelDB keeps no subdirectories); (0, 0) if the directory cannot be read."""
        total = reserve = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        size = entry.stat(follow_symlinks=False).st_size
                        if entry.name == _RESERVE_FILE:
                            reserve = size
                        else:
                            total += size
        except OSError:
            return 0, 0
        return total, reserve

    def _keep_reserve(self) -> bool:
        """Make sure the reserve holds its bytes (allocated when there is room for twice its
        size); True if it does."""
        if self.reserve_bytes <= 0:
            return True
        path = self._reserve_path
        try:
            if os.path.getsize(path) >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        if self._free_bytes() < 2 * self.reserve_bytes:
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)  # really allocated, not sparse
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("%s: can't allocate the %d-byte reserve: %s", self.path, self.reserve_bytes, exc)
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
            return False
        return True

    def _release_reserve(self) -> bool:
        """Give the reserve's space back (the disk is full); True if it held any. The emptied file
        stays, so that a restart knows the reserve is spent."""
        try:
            if os.path.getsize(self._reserve_path) == 0:
                return False
            os.truncate(self._reserve_path, 0)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("%s: can't release the reserve: %s", self.path, exc)
            return False
        self._low_space = True
        log.warning(
            "%s: disk full: released the %d-byte reserve so the database can recover; writes that "
            "add data are refused and deletes accepted until there is room for it again",
            self.path,
            self.reserve_bytes,
        )
        return True

    def _regain_room(self) -> bool:
        """Rebuild the spent reserve if there is room for it now; True if writes that add data
        are taken again."""
        if not self._keep_reserve():
            return False
        self._low_space = False
        log.warning("%s: room again: reserve rebuilt, writes accepted", self.path)
        return True

    def _room_to_grow(self) -> None:
        """While the reserve is spent, refuse writes that add data unless it could be rebuilt."""
        if self._regain_room():
            return
        raise NoSpace(
            "storage: no space left on device: the disk is nearly full; writes are refused and "
            "deletes accepted until there is room again (free space, or delete keys)"
        )

    def _open(self) -> plyvel.DB:
        try:
            return plyvel.DB(self.path, create_if_missing=True)
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StorageUnavailable(
                    f"storage: database {self.path} is locked by another process"
                ) from exc
            raise _error(f"storage: can't open database {self.path}", exc) from exc
        except plyvel.Error as exc:
            raise _error(f"storage: can't open database {self.path}", exc) from exc

    def close(self) -> Awaitable[None] | None:
        if self._committer is not None and not self._committer.done():
            return self._close_after_commits()
        self._close_now()
        return None

    async def _close_after_commits(self) -> None:
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)
        self._close_now()

    def _close_now(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._failure is not None and self._db is not None:
            # Seal the log and put the failed writes' keys back now: after a restart nobody
            # would remember which keys those were.
            self._retry_at = 0.0
            try:
                self._recover()
            except StorageUnavailable as exc:
                log.error("closing %s without recovering from a failed write: %s", self.path, exc)
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> plyvel.DB:
        if self._db is None:
            if self._failure is not None:
                self._recover()  # a reopen that failed earlier: try again (or raise)
                assert self._db is not None
                return self._db
            raise StorageUnavailable(f"storage: database {self.path} is not open")
        return self._db

    @property
    def failure(self) -> StorageUnavailable | None:
        """Why writes are refused right now (after a failed write, until a reopen), else None."""
        return self._failure

    @property
    def low_space(self) -> bool:
        """True while the reserve is spent: writes that add data are refused, deletes accepted."""
        return self._low_space

    def write_refusal(self) -> str | None:
        """Why writes (those that add data) are refused right now, or None when they are taken: a
        failed write not yet recovered from, or the reserve spent on a nearly full disk."""
        if self._failure is not None:
            return f"LevelDB refuses writes until it reopens after a failed write ({self._failure})"
        if self._low_space:
            return ("LevelDB refuses writes that add data: the disk is nearly full and its "
                    "reserve is spent (free space, or delete keys)")
        return None

    def try_recover(self) -> bool:
        """Try now what the next write would: the reopen after a failed write (within its
        backoff), the reserve's rebuild once there is room. For a probe (``/readyz``) that comes
        when no write does; True if writes are taken afterwards. In sync mode a running group
        commit is left to recover by itself. Tried at most once per :data:`_PROBE_EVERY` seconds
        (a reopen also keeps its own backoff)."""
        now = time.monotonic()
        busy = self._committer is not None and not self._committer.done()
        if busy or now < self._probe_at:
            return self.write_refusal() is None
        self._probe_at = now + _PROBE_EVERY
        if self._failure is not None:
            try:
                self._recover()
            except StorageUnavailable:
                return False
        if self._low_space:
            self._regain_room()
        return self.write_refusal() is None

    # -- failure and recovery ------------------------------------------------------------------
    def _writable(self, grows: bool = True) -> plyvel.DB:
        """The database, once it can be trusted with a write (reopened after a failure); a write
        that adds data (``grows``) also needs room while the reserve is spent."""
        if self._failure is not None:
            self._recover()
        if grows and self._low_space:
            self._room_to_grow()
        return self.db

    def _failed(self, ops: Ops, exc: BaseException, prefix: str) -> StorageUnavailable:
        """Record a failed write: remember what its keys held and refuse writes until a reopen."""
        error = _error(prefix, exc)
        db = self._db
        for k, _ in ops:
            if k in self._suspects:
                continue
            try:
                self._suspects[k] = None if db is None else db.get(k)
            except plyvel.Error:
                self._suspects[k] = _UNKNOWN
        if self._failure is None:
            log.error("%s; writes refused until the database is reopened", error)
            self._failure = error
            self._retry_at = 0.0
            self._retry_delay = _RETRY_MIN
        if isinstance(error, NoSpace):
            self._release_reserve()
        return error

    def _refused(self, why: object) -> StorageUnavailable:
        assert self._failure is not None
        message = (
            f"storage: writes refused until the database recovers from a failed write "
            f"({self._failure}): {why}"
        )
        return NoSpace(message) if isinstance(self._failure, NoSpace) else StorageUnavailable(message)

    def _room_to_recover(self) -> bool:
        """Whether the filesystem has any room for the table a reopen writes from the log (how
        much it needs depends on how well the log compresses: only the reopen can tell)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return True  # cannot tell: let the reopen decide
        return st.f_bavail * st.f_frsize >= _MIN_FREE

    def _recover(self) -> None:
        """Reopen the database (recovery seals its log) and undo the failed writes, or raise."""
        now = time.monotonic()
        if now < self._retry_at:
            raise self._refused(f"next attempt in {self._retry_at - now:.2f} s")
        if not self._room_to_recover():
            self._retry_at = now + _RETRY_MIN
            raise self._refused("waiting for free space")
        try:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._db = self._open()
            self._restore(self._db)
        except (StorageUnavailable, plyvel.Error, OSError) as exc:
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
            raise self._refused(exc) from exc
        log.warning("database %s reopened after a failed write; writes accepted again", self.path)
        self._failure = None
        self._suspects.clear()
        self.reopens += 1

    def _restore(self, db: plyvel.DB) -> None:
        """Put every key of a failed write back to its value before that write (durably)."""
        with db.write_batch(sync=True) as batch:
            for k, old in self._suspects.items():
                if old is _UNKNOWN:
                    log.warning("%s: key %r may hold a failed write's value", self.path, k)
                    continue
                if db.get(k) == old:
                    continue
                if old is None:
                    batch.delete(k)
                else:
                    batch.put(k, old)

    # -- revisions -----------------------------------------------------------------------------
    def load_revision(self) -> int:
        """The last revision reserved by :meth:`save_revision` (0 if none)."""
        doc = read_marker(self.path, _REVISION_FILE)
        return int(doc.get("reserved", 0)) if doc else 0

    def save_revision(self, revision: int) -> None:
        """Durably record that revisions up to ``revision`` may have been used (see ``Layered``)."""
        raw = b'{"reserved": %d}\n' % revision
        final = os.path.join(self.path, _REVISION_FILE)
        write_file_atomic(final, [raw], self.path, TempNamer(), "full", tmp_dir=self.path)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Object | None:
        raw = self.db.get(key.encode())
        return None if raw is None else load_object(key, raw)

    def get_list(self, pattern: str) -> list[Object]:
        return [load_object(key, raw) for key, raw in self._matching(pattern, True)]

    def keys(self) -> list[str]:
        return [k.decode() for k in user_iterator(self.db, include_value=False)]

    def load(self) -> dict[str, Object]:
        return {key: load_object(key, v) for key, v in self.load_raw().items()}

    def load_raw(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in user_iterator(self.db)}

    # -- backup --------------------------------------------------------------------------------
    def backup(self, target: str | os.PathLike[str]) -> Awaitable[int]:
        """Copy a consistent snapshot of the database into a fresh LevelDB at ``target`` (created;
        an existing non-empty directory is :class:`FileExistsError`), with the revision marker; the
        awaitable gives the number of keys copied. The snapshot is taken by this call, before it
        returns: every write acknowledged before it is in the copy, none after it. The copy runs in
        a thread (writes go on meanwhile) and is synced when it resolves; a failed copy removes the
        directory it made. ``ooo-storage serve --data <target>`` serves the copy."""
        snapshot = self.db.snapshot()
        return self._backup(snapshot, os.fspath(target), self.load_revision())

    @staticmethod
    async def _backup(snapshot: plyvel.Snapshot, target: str, reserved: int) -> int:
        try:
            return await asyncio.to_thread(_copy_snapshot, snapshot, target, reserved)
        finally:
            snapshot.close()

    def _matching(self, pattern: str, values: bool) -> Iterable[tuple[str, bytes]]:
        prefix = glob_prefix(pattern).encode()
        if values:
            for k, v in user_iterator(self.db, prefix):
                key = k.decode()
                if match(pattern, key):
                    yield key, v
        else:
            for k in user_iterator(self.db, prefix, include_value=False):
                key = k.decode()
                if match(pattern, key):
                    yield key, b""

    # -- writes --------------------------------------------------------------------------------
    def set(self, key: str, obj: Object) -> Awaitable[None] | None:
        if self.sync:
            return self._commit([(key.encode(), obj.to_json())])
        db = self._db
        if db is None or self._failure is not None or self._low_space:
            db = self._writable()
        k = key.encode()
        try:
            db.put(k, obj.to_json())
        except plyvel.Error as exc:
            raise self._failed([(k, None)], exc, "storage: write failed") from exc
        return None

    def set_many(self, items: Sequence[tuple[str, Object]]) -> None:
        """Write ``items`` as one batch, all or none (non-sync mode; see
        :class:`~ooo_storage.layers.base.BatchWriter`)."""
        if self.sync:
            raise TypeError("set_many is for the non-sync mode (sync mode batches by itself)")
        db = self._db
        if db is None or self._failure is not None or self._low_space:
            db = self._writable()
        batch = db.write_batch()  # filled in one pass over ``items``, no list of ops between
        put = batch.put
        try:
            for key, obj in items:
                put(key.encode(), obj.to_json())
            batch.write()
        except plyvel.Error as exc:
            ops: Ops = [(key.encode(), None) for key, _ in items]
            raise self._failed(ops, exc, "storage: write failed") from exc
        self.batches += 1

    def apply_many(
        self, sets: Sequence[tuple[str, Object]], deletes: Sequence[str]
    ) -> Awaitable[None] | None:
        """Write ``sets`` and delete ``deletes`` (keys) as one batch, all or none (a transaction,
        :class:`~ooo_storage.layers.base.TxnWriter`); with ``sync``, joins the group commit and
        resolves once durable (a group is one ``WriteBatch``, so the whole transaction or none of
        it survives a crash)."""
        ops: Ops = [(key.encode(), obj.to_json()) for key, obj in sets]
        ops += [(key.encode(), None) for key in deletes]
        if self.sync:
            return self._commit(ops)
        self._apply(ops, "storage: write failed", bool(sets))
        return None

    @property
    def keeps_events(self) -> bool:
        """Whether :meth:`write_with_event` may be used: with ``sync`` (a group commit to share)."""
        return self.sync

    def write_with_event(
        self,
        sets: Sequence[tuple[str, Object]],
        deletes: Sequence[str],
        event: tuple[int, bytes] | None,
        on_durable: Callable[[], None],
    ) -> asyncio.Future[None]:
        """Write ``sets``, delete the keys ``deletes`` and keep ``event`` (revision, the history's
        framed bytes), all in the next group commit (sync mode: one ``WriteBatch(sync=True)``,
        all or none; the group's events joined under one reserved key): a durable history costs
        no fsync of its own.
        Once the group is durable ``on_durable()`` is called, synchronously and in join order
        with the other writes' callbacks, then the future resolves; on failure neither (the
        future raises). See :class:`~ooo_storage.layers.base.EventKeeper`."""
        if not self.sync:
            raise TypeError("write_with_event needs sync=True (a group commit to join)")
        ops: Ops = [(key.encode(), obj.to_json()) for key, obj in sets]
        if deletes:
            ops += [(key.encode(), None) for key in deletes]
        return self._commit(ops, on_durable, event)

    def kept_events(self) -> list[tuple[int, bytes]]:
        """The events written by :meth:`write_with_event` and not yet dropped, one entry per group
        commit: (its last revision, the frames of its events in revision order)."""
        start = len(EVENTS)
        return [(int.from_bytes(k[start:], "big"), v) for k, v in self.db.iterator(prefix=EVENTS)]

    async def drop_events(self, upto: int) -> None:
        """Delete the kept events up to revision ``upto`` (the history journal has them on disk),
        in one batch without fsync, in the commit thread (so the next group's fsync covers it)."""
        if self._failure is not None or self._db is None:
            return  # a reopen is pending: they are dropped next time, or at the next start
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ooo-leveldb-commit")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._drop_events, upto)

    def _drop_events(self, upto: int) -> None:
        db = self.db
        try:
            with db.write_batch() as batch:
                for k in db.iterator(start=EVENTS, stop=event_key(upto + 1), include_value=False):
                    batch.delete(k)
        except plyvel.Error as exc:  # kept: the next start drops them (the journal has them)
            log.warning("%s: can't drop the history's events up to %d: %s", self.path, upto, exc)

    def delete(self, key_or_glob: str) -> int | Awaitable[int]:
        db = self.db
        if has_glob(key_or_glob):
            doomed = [key.encode() for key, _ in self._matching(key_or_glob, False)]
        else:
            k = key_or_glob.encode()
            doomed = [] if db.get(k) is None else [k]
        ops: Ops = [(k, None) for k in doomed]
        if self.sync:
            return self._commit_count(ops)
        self._apply(ops, "storage: delete failed")
        return len(doomed)

    def clear(self) -> Awaitable[int] | None:
        ops: Ops = [(k, None) for k in user_iterator(self.db, include_value=False)]
        if self.sync:
            return self._commit_count(ops)
        self._apply(ops, "storage: clear failed")
        return None

    def _apply(self, ops: Ops, prefix: str, grows: bool = False) -> None:
        """Write ``ops`` inline as one batch (non-sync mode); ``grows`` if any of them adds data."""
        if not ops:
            return
        db = self._writable(grows)
        try:
            with db.write_batch() as batch:
                for k, v in ops:
                    if v is None:
                        batch.delete(k)
                    else:
                        batch.put(k, v)
        except plyvel.Error as exc:
            raise self._failed(ops, exc, prefix) from exc
        if self._low_space:
            self._reclaim(db, ops)

    def _reclaim(self, db: plyvel.DB, ops: Ops) -> None:
        """Compact the range of deleted keys now: LevelDB frees the space of deleted data only
        when it compacts, and while the disk is nearly full that space is what writes wait for."""
        keys = [k for k, v in ops if v is None]
        if not keys:
            return
        try:
            db.compact_range(start=min(keys), stop=max(keys))
        except plyvel.Error as exc:
            log.warning("%s: compaction after deletes failed: %s", self.path, exc)

    # -- group commit (sync mode) --------------------------------------------------------------
    async def _commit_count(self, ops: Ops) -> int:
        if ops:
            await self._commit(ops)
        return len(ops)

    def _commit(
        self, ops: Ops, on_durable: Durable = None, event: Event = None
    ) -> asyncio.Future[None]:
        """Join the pending group; the future resolves once the group is durable (after
        ``on_durable`` was called)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((ops, fut, on_durable, event))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._run_commits())
        return fut

    async def _run_commits(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            # A concurrent.futures thread, not the file stores' WorkerPool: its daemon threads
            # are abandoned at interpreter exit, which costs a file store at most a temp file,
            # while this thread writes into a plyvel DB that the exiting interpreter tears down;
            # concurrent.futures joins its threads before that, so a group in flight completes.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ooo-leveldb-commit")
        while self._pending:
            group, self._pending = self._pending, []
            try:
                if self._failure is not None:
                    self._recover()  # inline: no group is being written while we are here
                if self._low_space:
                    group = self._without_growth(group)
                    if not group:
                        continue
                await loop.run_in_executor(self._executor, self._write_group, group)
                if self._low_space:
                    ops = [op for ops, _, _, _ in group for op in ops]
                    await loop.run_in_executor(self._executor, self._reclaim, self.db, ops)
            except Exception as exc:
                if isinstance(exc, StorageUnavailable):
                    error = exc
                else:
                    ops = [op for ops, _, _, _ in group for op in ops]
                    events = _group_events(group)
                    if events is not None:  # put back (absent) after a reopen, as the writes
                        ops.append((events[0], None))
                    error = self._failed(ops, exc, "storage: durable write failed")
                for _, fut, _, _ in group:
                    if not fut.done():
                        fut.set_exception(error)
            else:
                self._count_group(len(group))
                self._durable(group)

    @staticmethod
    def _durable(group: list[_Pending]) -> None:
        """A group is durable: its callbacks first, all in join order (memory and watchers get the
        writes in the order of their revisions, whoever awaits them, cancelled or not), then its
        writers."""
        for _, _, on_durable, _ in group:
            if on_durable is not None:
                try:
                    on_durable()
                except Exception:
                    log.exception("a durable write's callback failed")
        for _, fut, _, _ in group:
            if not fut.done():
                fut.set_result(None)

    def _count_group(self, size: int) -> None:
        """One durable group of ``size`` writes committed: bucket ``le`` the power of two that
        holds it (``(size - 1).bit_length()``: no search)."""
        self.commits += 1
        self.group_writes += size
        self.group_sizes[min((size - 1).bit_length(), len(self.GROUP_BOUNDS))] += 1

    def _without_growth(self, group: list[_Pending]) -> list[_Pending]:
        """The writes of ``group`` that may go while the reserve is spent: deletes always (with
        their event, trimmed soon after), the others only if there is room again (they fail with
        NoSpace otherwise)."""
        try:
            self._room_to_grow()
            return group
        except NoSpace as refusal:
            kept = []
            for pending in group:
                ops, fut, _, _ = pending
                if all(v is None for _, v in ops):
                    kept.append(pending)
                elif not fut.done():
                    fut.set_exception(refusal)
            return kept

    def _write_group(self, group: list[_Pending]) -> None:
        # Runs in the commit thread; plyvel releases the GIL while LevelDB writes and syncs.
        with self.db.write_batch(sync=True) as batch:
            for ops, _, _, _ in group:
                for k, v in ops:
                    if v is None:
                        batch.delete(k)
                    else:
                        batch.put(k, v)
            events = _group_events(group)
            if events is not None:
                batch.put(*events)


def _group_events(group: list[_Pending]) -> tuple[bytes, bytes] | None:
    """The one reserved key and value holding the events of a group commit (their frames in
    revision order, under the last revision): one put per group, not per write."""
    events = [event for _, _, _, event in group if event is not None]
    if not events:
        return None
    return event_key(events[-1][0]), b"".join(frames for _, frames in events)


_BACKUP_BATCH = 4 << 20  # bytes of keys and values per (synced) WriteBatch of a backup copy


def _copy_snapshot(snapshot: plyvel.Snapshot, target: str, reserved: int) -> int:
    """:meth:`LevelDBLayer.backup`'s copy, in a thread."""
    made = not os.path.exists(target)
    os.makedirs(target, exist_ok=True)
    if not made and os.listdir(target):
        raise FileExistsError(errno.EEXIST, "not empty: give a new or empty directory", target)
    try:
        count = 0
        copy = plyvel.DB(target, create_if_missing=True, error_if_exists=True)
        try:
            batch, size = copy.write_batch(sync=True), 0
            for key, value in user_iterator(snapshot):
                batch.put(key, value)
                count, size = count + 1, size + len(key) + len(value)
                if size >= _BACKUP_BATCH:
                    batch.write()
                    batch, size = copy.write_batch(sync=True), 0
            batch.write()
        finally:
            copy.close()
        if reserved:
            raw = b'{"reserved": %d}\n' % reserved
            write_file_atomic(os.path.join(target, _REVISION_FILE), [raw], target, TempNamer(), "full",
                              tmp_dir=target)
    except BaseException:
        if made:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return count
