"""LevelDBLayer: the default persistent layer, LevelDB through plyvel.

Without ``sync`` every call runs inline on the event loop: a plyvel call takes a few microseconds, far
less than a thread hop. With ``sync=True`` (durable writes) writes use *group commit*: each write joins
the pending group and waits; one committer writes the whole group as one ``WriteBatch(sync=True)`` in a
dedicated thread, so many concurrent writers share one fsync and the event loop never blocks on disk.
A write is acknowledged only once its batch is durable; a failed batch fails every write in it.

Keys are the UTF-8 key bytes; values are the exact object JSON.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor

import plyvel

from ..errors import StorageUnavailable
from ..keys import glob_prefix, has_glob, match
from ..meta import Object, load_object

Ops = list[tuple[bytes, bytes | None]]
"""Writes of one call: (key, value) puts and (key, None) deletes, applied in order."""


class LevelDBLayer:
    """LevelDB at ``path`` (the database directory itself, created if missing).

    ``sync=True`` makes every write durable before it is acknowledged.
    """

    def __init__(self, path: str | os.PathLike[str], sync: bool = False) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self._db: plyvel.DB | None = None
        # group commit state (sync mode only)
        self._pending: list[tuple[Ops, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.commits = 0
        """Number of durable batches written (sync mode): writes / commits = group size."""

    @property
    def async_writes(self) -> bool:
        """True when writes return awaitables (sync mode): ``Layered`` then takes its awaited path."""
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
            self._db = plyvel.DB(self.path, create_if_missing=True)
        except plyvel.IOError as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StorageUnavailable(
                    f"storage: database {self.path} is locked by another process"
                ) from exc
            raise StorageUnavailable(f"storage: can't open database {self.path}: {text}") from exc
        except plyvel.Error as exc:
            raise StorageUnavailable(f"storage: can't open database {self.path}: {exc}") from exc

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
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> plyvel.DB:
        if self._db is None:
            raise StorageUnavailable(f"storage: database {self.path} is not open")
        return self._db

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Object | None:
        raw = self.db.get(key.encode())
        return None if raw is None else load_object(key, raw)

    def get_list(self, pattern: str) -> list[Object]:
        return [load_object(key, raw) for key, raw in self._matching(pattern, True)]

    def keys(self) -> list[str]:
        return [k.decode() for k in self.db.iterator(include_value=False)]

    def load(self) -> dict[str, Object]:
        return {key: load_object(key, v) for key, v in self.load_raw().items()}

    def load_raw(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.db.iterator()}

    def _matching(self, pattern: str, values: bool) -> Iterable[tuple[str, bytes]]:
        prefix = glob_prefix(pattern).encode()
        if values:
            for k, v in self.db.iterator(prefix=prefix):
                key = k.decode()
                if match(pattern, key):
                    yield key, v
        else:
            for k in self.db.iterator(prefix=prefix, include_value=False):
                key = k.decode()
                if match(pattern, key):
                    yield key, b""

    # -- writes --------------------------------------------------------------------------------
    def set(self, key: str, obj: Object) -> Awaitable[None] | None:
        if self.sync:
            return self._commit([(key.encode(), obj.to_json())])
        db = self._db
        if db is None:
            raise StorageUnavailable(f"storage: database {self.path} is not open")
        db.put(key.encode(), obj.to_json())
        return None

    def delete(self, key_or_glob: str) -> int | Awaitable[int]:
        db = self.db
        if has_glob(key_or_glob):
            doomed = [key.encode() for key, _ in self._matching(key_or_glob, False)]
        else:
            k = key_or_glob.encode()
            doomed = [] if db.get(k) is None else [k]
        if self.sync:
            return self._commit_count([(k, None) for k in doomed])
        if len(doomed) == 1:
            db.delete(doomed[0])
        elif doomed:
            with db.write_batch() as batch:
                for k in doomed:
                    batch.delete(k)
        return len(doomed)

    def clear(self) -> Awaitable[int] | None:
        db = self.db
        doomed = list(db.iterator(include_value=False))
        if self.sync:
            return self._commit_count([(k, None) for k in doomed])
        with db.write_batch() as batch:
            for k in doomed:
                batch.delete(k)
        return None

    # -- group commit (sync mode) --------------------------------------------------------------
    async def _commit_count(self, ops: Ops) -> int:
        if ops:
            await self._commit(ops)
        return len(ops)

    def _commit(self, ops: Ops) -> asyncio.Future[None]:
        """Join the pending group; the future resolves once the group is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((ops, fut))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._run_commits())
        return fut

    async def _run_commits(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ooo-leveldb-commit")
        while self._pending:
            group, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._write_group, group)
            except Exception as exc:
                error = StorageUnavailable(f"storage: durable write failed: {exc}")
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(error)
            else:
                self.commits += 1
                for _, fut in group:
                    if not fut.done():
                        fut.set_result(None)

    def _write_group(self, group: list[tuple[Ops, asyncio.Future[None]]]) -> None:
        # Runs in the commit thread; plyvel releases the GIL while LevelDB writes and syncs.
        with self.db.write_batch(sync=True) as batch:
            for ops, _ in group:
                for k, v in ops:
                    if v is None:
                        batch.delete(k)
                    else:
                        batch.put(k, v)
