"""Shared directories: processes on one SOS root, or one set of erasure drives, see each other's writes.

Why: each process keeps a key index (and, inside ``Layered``, a memory mirror and subscribers) of
the shared store, and a write made by another process reaches the files but none of those. So each
process appends what it committed to its *own* journal (:mod:`ooo_storage.journal`), under
``<journals>/<host>.<pid>.<token>/``, once the write is durable in the store; and it tails the
journals of the others (inotify where the platform has it, polling every ``indexer_rate`` seconds
in any case, so NFS works too), applying their writes to its key index and handing them to
``Layered.apply_remote`` (the :class:`~ooo_storage.layers.base.Follower` hook), in each writer's
order, on the event loop.

Consistency (docs/layers.md): per key, last writer wins, as in SOS itself (the last ``rename``, or
the newest erasure generation). Each write of another process is delivered once, in that writer's
order; a write older (by its object's ``created``/``updated`` stamp) than the value already held
is not applied. Where two processes write one key within :data:`RACE_WINDOW`, the key is read
back from the store after their writes are applied and the stored value wins, so every process
ends with what the store holds (intermediate values may then be skipped).

Bounds: a process's journal is at most ``max_bytes`` (oldest segments evicted; a reader that fell
that far behind reloads the whole store instead). A journal whose process is gone (its
``owner.lock`` is free) and that has not changed for ``dead_after`` seconds is removed by any
other process. A process starting reads each existing journal from its end: the store's own
state is loaded at start, so nothing older is ever replayed over it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..errors import CorruptObject, HistoryTrimmed, JournalError, StorageUnavailable
from ..journal import Journal, JournalOptions
from ..journal.indexer import Indexer
from ..protocol.keys import has_glob
from ..protocol.objects import Object, load_object
from .base import RemoteApply
from .blob import BlobLayer, ByteStore

__all__ = ["SharedOptions", "Change", "SharedLog", "SharedBlobLayer", "RACE_WINDOW"]

log = logging.getLogger("ooo_storage.shared")

MiB = 1 << 20
RACE_WINDOW = 10.0
"""Seconds within which writes of one key by two processes count as concurrent (read back)."""
_OWNER = "owner.lock"
_PREFIX = "journal"


@dataclass(frozen=True)
class SharedOptions:
    """How a process shares a store: ``indexer_rate`` seconds between two looks at the other
    journals (inotify, when ``indexer`` allows it, usually tells sooner); ``max_bytes`` of journal
    per process; ``dead_after`` seconds of silence after which a dead process's journal is removed."""

    indexer_rate: float = 0.1
    indexer: Literal["auto", "inotify", "poll"] = "auto"
    max_bytes: int = 16 * MiB
    dead_after: float = 3600.0

    def __post_init__(self) -> None:
        if not self.indexer_rate > 0:
            raise ValueError("shared: indexer_rate must be a positive number of seconds")
        if self.max_bytes < 64 * 1024:
            raise ValueError("shared: max_bytes must be at least 65536")
        if not self.dead_after > 0:
            raise ValueError("shared: dead_after must be a positive number of seconds")

    def journal(self) -> JournalOptions:
        segment = self.max_bytes // 4
        return JournalOptions(
            max_files=4, max_file_size=segment, max_chunk=min(4 * MiB, segment), prefix=_PREFIX,
            lock=True, sync=False, when_full="evict", indexer=self.indexer, indexer_rate=self.indexer_rate,
        )  # fmt: skip


Op = Literal["set", "ref", "del", "clear"]
_CODES: dict[Op, bytes] = {"set": b"s", "ref": b"r", "del": b"d", "clear": b"c"}
_OPS: dict[bytes, Op] = {code: op for op, code in _CODES.items()}


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write: ``set`` (with the object JSON), ``ref`` (a set whose object is too large
    for the journal: read it from the store), ``del`` (a key or a glob) or ``clear``. ``stamp``:
    nanoseconds, the object's ``created``/``updated`` or the time of a delete."""

    op: Op
    key: str
    stamp: int
    data: bytes = b""

    def encode(self) -> bytes:
        head = b"%b%d %b" % (_CODES[self.op], self.stamp, self.key.encode())
        return head + b"\n" + self.data if self.op == "set" else head

    @classmethod
    def decode(cls, item: bytes) -> Change:
        head, _, data = item.partition(b"\n")
        stamp, _, key = head[1:].partition(b" ")
        return cls(_OPS[head[:1]], key.decode(), int(stamp), data)


def stamp_of(obj: Object) -> int:
    """When ``obj`` was written: its ``updated`` time, or ``created`` for a first write."""
    return max(obj.created, obj.updated)


Deliver = Callable[[str, "list[Change] | None"], Awaitable[None]]
"""``deliver(writer, changes)``: a writer's next changes in its order; None: some were lost."""


class SharedLog:
    """This process's journal in ``directory`` and the tailers of the other processes' journals."""

    def __init__(self, directory: str, options: SharedOptions | None = None) -> None:
        self.directory = directory
        self.options = options or SharedOptions()
        self.name = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        self._journal_options = self.options.journal()
        self._own: Journal | None = None
        self._owner_fd: int | None = None
        self._readers: dict[str, tuple[Journal, int]] = {}  # name -> (journal, start index)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._read_to: dict[str, int] = {}  # name -> the next index its tail reads
        self._done: set[str] = set()  # journals of dead processes, read to their end
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliver: Deliver | None = None
        self._indexer: Indexer | None = None
        self._swept = 0.0
        self.lost = 0
        """Changes this process could not journal (the others see them only after a restart)."""

    # -- opening and closing -------------------------------------------------------------------
    def open(self) -> None:
        """Create this process's journal and note where every other journal ends (call it before
        the store is loaded: what is appended later is applied on top of the loaded state)."""
        own = os.path.join(self.directory, self.name)
        making = os.path.join(self.directory, f".{self.name}")  # hidden until it has its owner
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)  # not its parents: a missing drive must not be made
        os.mkdir(making, 0o700)
        fd = os.open(os.path.join(making, _OWNER), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for life: a free owner lock means a dead process
        self._owner_fd = fd
        os.rename(making, own)
        self._own = Journal(own, self._journal_options)
        self._discover(at_end=True)

    def follow(self, deliver: Deliver) -> None:
        """Start tailing: ``deliver`` gets every other process's changes from now on."""
        if self._own is None or self._deliver is not None:
            return
        self._deliver = deliver
        for name, (journal, start) in self._readers.items():
            self._start_tail(name, journal, start)
        self._indexer = Indexer(
            self._own.directory.parent, self.options.indexer_rate, self._look, self.options.indexer != "poll"
        )
        self._indexer.start()

    async def close(self) -> None:
        if self._indexer is not None:
            self._indexer.stop()
            self._indexer = None
        self._deliver = None  # a journal being closed after it vanished reloads nothing now
        tails = list(self._tails.values())
        for task in tails:
            task.cancel()
        await asyncio.gather(*tails, *self._tasks, return_exceptions=True)
        self._tails.clear()
        for journal, _ in self._readers.values():
            await journal.close()
        self._readers.clear()
        if self._own is not None:
            await self._own.close()
            self._own = None
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None

    # -- writing -------------------------------------------------------------------------------
    def record(self, change: Change) -> None:
        """Append ``change`` to this process's journal (after the write is durable in the store).
        A journal that cannot take it is logged, not raised: the write itself succeeded."""
        if self._own is None:
            return
        item = change.encode()
        if len(item) > self._journal_options.max_item:
            item = Change("ref", change.key, change.stamp).encode()
        try:
            self._own.append_nowait(item)
        except (OSError, JournalError) as exc:
            self.lost += 1
            log.error("shared: can't journal a write of %s (other processes see it after a restart): %s",
                      change.key, exc)

    # -- finding the other journals ------------------------------------------------------------
    def _look(self) -> None:
        """The indexer's callback: new journals, vanished ones, and (now and then) dead ones."""
        try:
            self._discover(at_end=False)
            if time.monotonic() - self._swept > min(60.0, self.options.dead_after / 4):
                self._swept = time.monotonic()
                self._sweep()
        except OSError as exc:
            log.warning("shared: %s: %s", self.directory, exc)

    def _discover(self, at_end: bool) -> None:
        names = {name for name in _listdir(self.directory) if not name.startswith(".")}
        self._done &= names
        for name in names - self._readers.keys() - self._done - {self.name}:
            path = os.path.join(self.directory, name)
            if not os.path.exists(os.path.join(path, _OWNER)):
                continue  # being created, or being removed
            try:
                journal = Journal(path, self._journal_options)
            except (OSError, JournalError, CorruptObject) as exc:
                log.warning("shared: can't read the journal %s: %s", path, exc)
                continue
            start = journal.next_index if at_end else journal.log.first_index
            self._readers[name] = (journal, start)
            if self._deliver is not None:
                self._start_tail(name, journal, start)
        for name in self._readers.keys() - names:
            self._forget(name)

    def _forget(self, name: str) -> None:
        """Stop tailing ``name``; if it vanished before its tail read it all, reload the store."""
        journal, start = self._readers.pop(name)
        read_to = self._read_to.pop(name, start)
        task = self._tails.pop(name, None)
        if task is not None:
            task.cancel()
        with contextlib.suppress(OSError, JournalError):
            journal.log.refresh()  # its files may be gone: what we hold open still reads
        unread = read_to < journal.next_index
        self._spawn(self._closing(name, journal, unread))

    async def _closing(self, name: str, journal: Journal, unread: bool) -> None:
        await journal.close()
        deliver = self._deliver
        if unread and deliver is not None:
            log.warning("shared: the journal %s vanished before it was read; reloading the store", name)
            await deliver(name, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sweep(self) -> None:
        """Stop tailing the journals of dead processes once read to their end, and remove those
        that stayed silent for ``dead_after`` seconds."""
        for name, (journal, _) in list(self._readers.items()):
            path = os.path.join(self.directory, name)
            journal.log.refresh()
            if self._read_to.get(name, -1) >= journal.next_index and _owner_gone(path):
                self._forget(name)  # nothing more can come: no poller for it any longer
                self._done.add(name)
        for name in _listdir(self.directory):  # ".<name>": one that died while being made
            if name in (self.name, f".{self.name}"):
                continue
            path = os.path.join(self.directory, name)
            if _idle(path) > self.options.dead_after and _owner_gone(path):
                log.info("shared: removing the journal of a stopped process: %s", path)
                shutil.rmtree(path, ignore_errors=True)
                if name in self._readers:
                    self._forget(name)

    # -- tailing -------------------------------------------------------------------------------
    def _start_tail(self, name: str, journal: Journal, start: int) -> None:
        task = asyncio.get_running_loop().create_task(self._tail(name, journal, start))
        self._tails[name] = task

    async def _tail(self, name: str, journal: Journal, index: int) -> None:
        deliver = self._deliver
        assert deliver is not None
        while True:
            try:
                chunk = journal.log.chunk(index)
            except (HistoryTrimmed, CorruptObject) as exc:
                log.warning("shared: %s: %s; reloading the store", name, exc)
                index = journal.next_index
                await deliver(name, None)
                continue
            except JournalError:
                return  # closed
            if chunk.items:
                await deliver(name, [_decoded(name, item) for _, item in chunk])
            index = self._read_to[name] = chunk.next
            if index >= journal.next_index:
                try:
                    await journal.wait(index)
                except JournalError:
                    return


def _decoded(name: str, item: bytes) -> Change:
    try:
        return Change.decode(item)
    except (ValueError, KeyError, UnicodeDecodeError):
        log.error("shared: %s: an unreadable journal entry %r", name, item[:80])
        return Change("clear", "", 0)  # unknown: reload everything


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _idle(path: str) -> float:
    """Seconds since anything in the journal directory ``path`` changed."""
    try:
        newest = os.stat(path).st_mtime
    except OSError:
        return 0.0
    for name in _listdir(path):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(os.path.join(path, name)).st_mtime)
    return time.time() - newest


def _owner_gone(path: str) -> bool:
    """Whether the process that wrote the journal at ``path`` is gone (its owner lock is free)."""
    try:
        fd = os.open(os.path.join(path, _OWNER), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the lock if we took it
    return True


S = TypeVar("S", bound=ByteStore)
T = TypeVar("T")


class SharedBlobLayer(BlobLayer[S]):
    """A :class:`BlobLayer` whose writes other processes see, and which sees theirs.

    With ``journals`` None it is a plain BlobLayer (``follow`` does nothing). Otherwise it journals
    every committed write (:class:`SharedLog`) and, once ``Layered`` calls :meth:`follow`, applies
    the others' writes to its key index and hands them to ``Layered.apply_remote``.
    """

    def __init__(self, store: S, journals: str | None, options: SharedOptions | None = None) -> None:
        super().__init__(store)
        self.shared = None if journals is None else SharedLog(journals, options)
        self._apply: RemoteApply | None = None
        self._peek: Callable[[str], Object | None] = lambda key: None
        self._recent: dict[str, tuple[str, float]] = {}  # key -> (last writer, monotonic time)
        self._recent_cap = 4096
        self._inflight: dict[str, int] = {}  # key -> local writes in progress
        self._touched: dict[str, int] = {}  # key -> local writes started while the store is read
        self._reading = 0
        self._mirrored = False
        self._waiting: builtins.set[str] = set()  # keys to read back once their local write ends
        self._tasks: builtins.set[asyncio.Task[None]] = builtins.set()
        self.reloads = 0
        """Whole-store reloads (a journal fell too far behind, or another process cleared)."""

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        if self.shared is None:
            return
        try:
            self.shared.open()
        except BaseException as exc:
            await self.shared.close()
            await super().close()
            if isinstance(exc, OSError | JournalError):
                raise StorageUnavailable(
                    f"storage: can't open the shared journals in {self.shared.directory}: {exc}"
                ) from exc
            raise

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._apply = None
        await super().close()

    def follow(self, apply: RemoteApply) -> None:
        """The :class:`~ooo_storage.layers.base.Follower` hook: from now on, call ``apply`` for every
        write of another process (nothing without ``journals``)."""
        if self.shared is None:
            return
        self._apply = apply
        store = getattr(apply, "__self__", None)  # Layered: its mirror says what is already held
        peek = getattr(store, "peek", None)
        if callable(peek) and getattr(store, "mirrored", False):
            self._peek, self._mirrored = peek, True
        self.shared.follow(self._deliver)

    # -- local writes --------------------------------------------------------------------------
    async def set(self, key: str, obj: Object) -> None:
        if self.shared is None:
            await super().set(key, obj)
            return
        self._begin(key)
        try:
            await super().set(key, obj)
        finally:
            self._end(key)
        self.shared.record(Change("set", key, stamp_of(obj), obj.to_json()))

    async def delete(self, key_or_glob: str) -> int:
        if self.shared is None:
            return await super().delete(key_or_glob)
        self._begin(key_or_glob)
        try:
            removed = await super().delete(key_or_glob)
        finally:
            self._end(key_or_glob)
        self.shared.record(Change("del", key_or_glob, time.time_ns()))
        return removed

    async def clear(self) -> None:
        await super().clear()
        if self.shared is not None:
            self.shared.record(Change("clear", "", time.time_ns()))

    def _begin(self, key: str) -> None:
        self._inflight[key] = self._inflight.get(key, 0) + 1
        if self._reading:
            self._touched[key] = self._touched.get(key, 0) + 1
        if not has_glob(key):
            self._wrote(key, "")

    def _end(self, key: str) -> None:
        left = self._inflight[key] - 1
        if left:
            self._inflight[key] = left
            return
        del self._inflight[key]
        if key in self._waiting:
            self._waiting.discard(key)
            self._spawn(self._read_back([key]))

    def _note_remote(self, key: str, present: bool) -> None:
        """A key another process wrote or deleted: into the index (and the store's, if it keeps one)."""
        self._note(key, present)

    # -- remote writes -------------------------------------------------------------------------
    async def _deliver(self, writer: str, changes: list[Change] | None) -> None:
        """Apply ``writer``'s next ``changes`` in order, then read back the keys that raced."""
        if self._apply is None:
            return
        try:
            await self._apply_changes(writer, changes)
        except Exception:  # a store read failing must not stop the tail
            log.exception("shared: applying the writes of %s failed", writer)

    async def _apply_changes(self, writer: str, changes: list[Change] | None) -> None:
        if changes is None or any(change.op == "clear" for change in changes):
            await self._reload()
            return
        fetched = await self._fetch([c.key for c in changes if c.op == "ref"])
        contested: builtins.set[str] = set()
        for change in changes:
            contested.update(self._apply_one(writer, change, fetched))
        if contested:
            await self._read_back(sorted(contested))

    async def _fetch(self, keys: list[str]) -> dict[str, Object | None]:
        if not keys:
            return {}
        raws = await self.store.mget(keys)
        return {k: None if raw is None else load_object(k, raw) for k, raw in zip(keys, raws, strict=True)}

    def _apply_one(self, writer: str, change: Change, fetched: dict[str, Object | None]) -> Iterable[str]:
        """Apply one remote change; returns the keys to read back from the store."""
        key, apply = change.key, self._apply
        assert apply is not None
        if change.op == "del" and has_glob(key):
            doomed = list(self._index.matching_keys(key)) if self._index is not None else []
            for k in doomed:
                self._note_remote(k, False)
            self._call(key, None)
            return doomed  # a key written meanwhile by another process may still be stored
        obj = fetched.get(key) if change.op == "ref" else None
        if change.op == "set":
            obj = load_object(key, change.data)
        current = self._peek(key)
        if current is not None and stamp_of(current) > change.stamp:
            return (key,) if self._wrote(key, writer) else ()  # older than what we hold
        if obj is None and change.op == "ref":
            return (key,)  # gone again already: read back
        self._note_remote(key, obj is not None)
        self._call(key, obj)
        return (key,) if self._wrote(key, writer) else ()

    def _call(self, key: str, obj: Object | None) -> None:
        assert self._apply is not None
        try:
            self._apply(key, obj, None)
        except Exception:  # one bad write must not stop the tail
            log.exception("shared: applying a write of %s by another process failed", key)

    def _wrote(self, key: str, writer: str) -> bool:
        """Note that ``writer`` ("" for this process) wrote ``key``; True when another writer wrote
        it within RACE_WINDOW (their order in the store is the order of their renames, not ours)."""
        now = time.monotonic()
        last = self._recent.get(key)
        self._recent[key] = (writer, now)
        if len(self._recent) > self._recent_cap:
            self._recent = {k: v for k, v in self._recent.items() if now - v[1] < RACE_WINDOW}
            self._recent_cap = max(4096, 2 * len(self._recent))
        return last is not None and last[0] != writer and now - last[1] < RACE_WINDOW

    async def _read_back(self, keys: list[str]) -> None:
        """Make the mirror hold what the store holds for ``keys`` (the store's last writer wins).
        A key with a local write in progress is read once that write ends."""
        keys = [k for k in keys if not self._busy(k)]
        if not keys or self._apply is None or not self._mirrored:
            return
        raws, changed = await self._read_store(self.store.mget(keys))
        for key, raw in zip(keys, raws, strict=True):
            if key in changed or self._busy(key):
                continue  # a local write went on meanwhile: it lands after our read
            stored = None if raw is None else load_object(key, raw)
            if stored != self._peek(key):
                self._note_remote(key, stored is not None)
                self._call(key, stored)

    async def _reload(self) -> None:
        """Bring the index and the mirror to the whole store (a journal fell behind or was cleared)."""
        self.reloads += 1
        raws, changed = await self._read_store(self.store.load_all())
        known = builtins.set(self._index) if self._index is not None else builtins.set()
        for key in sorted(known - raws.keys()):
            if key not in changed and not self._busy(key):
                self._note_remote(key, False)
                if self._mirrored:
                    self._call(key, None)
        for key, raw in raws.items():
            if key not in changed and not self._busy(key):
                self._note_remote(key, True)
                if self._mirrored:  # the mirror tells what changed; without it, reads see the store
                    self._call(key, load_object(key, raw))

    async def _read_store(self, read: Awaitable[T]) -> tuple[T, builtins.set[str]]:
        """``await read``, and the keys whose local writes started meanwhile (what was read of
        them may be older than what this process is writing)."""
        self._reading += 1
        before = dict(self._touched)
        try:
            result = await read
            return result, {k for k, n in self._touched.items() if before.get(k, 0) != n}
        finally:
            self._reading -= 1
            if not self._reading:
                self._touched = {}

    def _busy(self, key: str) -> bool:
        """Whether a local write of ``key`` is in progress (then it is read back after it)."""
        if key in self._inflight:
            self._waiting.add(key)
            return True
        return False

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
