"""Journal: the asyncio face of a :class:`~ooo_storage.journal.log.SegmentLog`.

Appends, reads and deletes run inline on the event loop: each is one or two ``pwrite``/``pread``
calls of at most ``max_chunk`` bytes into the page cache, cheaper than a thread hop (the rule of
the LevelDB layer). Only ``fsync`` leaves the loop: with ``sync=True`` an append writes inline,
then joins the pending group and waits; one committer thread fsyncs the data files, then the index
files, for the whole group, so concurrent appends share one fsync (group commit, as
``LevelDBLayer(sync=True)`` does). Without ``sync`` a segment that fills up is still fsynced in
the background, so only the newest one is ever at the mercy of the page cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import JournalError, NoSpace, StorageUnavailable, no_space
from .format import Entry
from .indexer import Indexer
from .log import Record, SegmentLog
from .options import JournalOptions

log = logging.getLogger("ooo_storage.journal")


class Journal:
    """A durable, bounded, segmented append log of ``bytes`` items in one directory.

    ``Journal(directory, options, **overrides)``: ``overrides`` replace fields of ``options``
    (``Journal(path, sync=True, max_files=4)``). Use ``async with`` or :meth:`close`.
    """

    def __init__(
        self, directory: str | os.PathLike[str], options: JournalOptions | None = None, **overrides: Any
    ) -> None:
        self.options = replace(options or JournalOptions(), **overrides)
        self.log = SegmentLog(directory, self.options, fsync=False)
        self._waiters: list[asyncio.Future[None]] = []
        self._sync_wanted = False
        self._committer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._changed: asyncio.Future[None] | None = None
        self._tail = self.log.segments[-1].first
        self._indexer = Indexer(
            self.log.directory, self.options.indexer_rate, self._refresh, self.options.indexer != "poll"
        )
        self.commits = 0
        """fsync rounds done: appends / commits is the group size."""

    # -- state ---------------------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self.log.directory

    @property
    def length(self) -> int:
        """Live items (see :attr:`SegmentLog.length`)."""
        return self.log.length

    @property
    def oldest(self) -> int | None:
        """The lowest live index, None when the journal holds no live item."""
        return self.log.oldest

    @property
    def newest(self) -> int | None:
        """The highest live index, None when the journal holds no live item."""
        return self.log.newest

    @property
    def next_index(self) -> int:
        """The index the next append gets (indexes are never reused, even after a prune)."""
        return self.log.next_index

    @property
    def size(self) -> int:
        """Bytes on disk, at most ``max_files * max_file_size``."""
        return self.log.size

    # -- writing -------------------------------------------------------------------------------
    async def append(self, *items: bytes) -> int:
        """Append ``items`` in one write; returns the index of the first (the others follow).

        With ``sync`` it returns once they are durable. Raises JournalFull when there is no room
        (``when_full="error"``), ValueError for an item larger than ``options.max_item``."""
        first = self.append_nowait(*items)
        if self.options.sync:
            await self._commit()
        return first

    async def append_tagged(self, *records: Record) -> int:
        """Append ``(tag, item)`` records: the tag is a u64 that never decreases along the
        journal (a revision, a timestamp) and :meth:`seek` finds the first entry after a tag."""
        first = self.append_tagged_nowait(*records)
        if self.options.sync:
            await self._commit()
        return first

    def append_nowait(self, *items: bytes) -> int:
        """:meth:`append` without waiting for the disk, even with ``sync``: for a caller that
        appends inside its own commit and then awaits :meth:`flush` (followers see the items at
        once; durability comes with the flush)."""
        first = self.log.append(*items)
        self._written()
        return first

    def append_tagged_nowait(self, *records: Record) -> int:
        """:meth:`append_tagged` without waiting for the disk (see :meth:`append_nowait`)."""
        first = self.log.append_tagged(*records)
        self._written()
        return first

    def _written(self) -> None:
        self._notify()
        if not self.options.sync and self.log.segments[-1].first != self._tail:
            self._tail = self.log.segments[-1].first
            self._sync_wanted = True  # a segment was sealed: fsync it in the background
            self._start_committer()

    async def flush(self) -> None:
        """Return once everything appended or deleted so far is durable (fsynced), whatever
        ``sync`` says: appends made with ``sync=False`` or with :meth:`append_nowait` become
        durable together, in one group."""
        await self._commit()

    def truncate(self, index: int) -> int:
        """Drop the items from ``index`` on, durably (see :meth:`SegmentLog.truncate`)."""
        removed = self.log.truncate(index)
        self._tail = self.log.segments[-1].first
        return removed

    def delete(self, *indexes: int) -> int:
        """Mark ``indexes`` deleted (ignoring absent ones); returns how many were live. With
        ``sync`` the deletes are fsynced with the next commit, not before this returns: an item
        deleted just before a crash may come back (at-least-once), an appended one never goes."""
        removed = self.log.delete(*indexes)
        if removed and self.options.sync:
            self._sync_wanted = True
            self._start_committer()
        return removed

    def prune(self, max_age: float | None = None) -> int:
        """Remove segments whose items are all deleted and, with ``max_age`` seconds, segments
        whose newest item is older; returns how many were removed."""
        return self.log.prune(max_age)

    # -- reading -------------------------------------------------------------------------------
    def read(self, *indexes: int) -> list[bytes]:
        """The items at ``indexes`` (together at most ``max_chunk`` bytes). Raises NotFound for a
        deleted, pruned or future index, CorruptObject for an item that fails its CRC."""
        return self.log.read(*indexes)

    def entry(self, index: int) -> Entry:
        """The index entry (tag, time, size) of live item ``index``."""
        return self.log.entry(index)

    def seek(self, tag: int) -> int:
        """The index of the first entry whose tag is greater than ``tag`` (``next_index`` when
        none): ``follow(seek(revision))`` replays what came after ``revision``."""
        return self.log.seek(tag)

    async def follow(self, start: int | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """``(index, item)`` for every live item from ``start`` (default: the oldest live item)
        on, then for each new one as it is appended, by this process or (through the indexer)
        by another one; it never ends by itself.

        Reads one chunk of at most ``max_chunk`` bytes at a time. Raises HistoryTrimmed when the
        items at the position reached were pruned before being read."""
        index = start if start is not None else self.log.first_index
        while True:
            chunk = self.log.chunk(index)
            index = chunk.next
            for pair in chunk:
                yield pair
            del chunk  # not held while waiting
            if index >= self.log.next_index:
                await self.wait(index)

    async def wait(self, index: int) -> None:
        """Return once item ``index`` has been appended (by any process); JournalError when the
        journal is (or gets) closed."""
        if self.log.closed:
            raise JournalError("journal: closed")
        self._indexer.start()
        self._refresh()  # appends made before the indexer watched, or since its last look
        while self.log.closed or self.log.next_index <= index:
            if self.log.closed:
                raise JournalError("journal: closed")
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)

    def _notify(self) -> None:
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    def _refresh(self) -> None:
        """The indexer's callback: take in other processes' appends and wake the followers."""
        try:
            if self.log.refresh():
                self._notify()
        except OSError as exc:
            log.warning("%s: indexer: %s", self.directory, exc)

    # -- durability ----------------------------------------------------------------------------
    def _commit(self) -> asyncio.Future[None]:
        """Join the pending group; resolves once everything written before it is durable."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._start_committer()
        return fut

    def _start_committer(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._run_commits())

    async def _run_commits(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ooo-journal-sync")
        while self._waiters or self._sync_wanted:
            group, self._waiters, self._sync_wanted = self._waiters, [], False
            segments, directory = self.log.take_dirty()
            try:
                await loop.run_in_executor(self._executor, self.log.sync_files, segments, directory)
            except OSError as exc:
                self.log.redirty(segments, directory)
                error: StorageUnavailable = (NoSpace if no_space(exc) else StorageUnavailable)(
                    f"journal: fsync of {self.directory} failed: {exc}"
                )
                for fut in group:
                    if not fut.done():
                        fut.set_exception(error)
                if not group:
                    log.error("%s", error)
            else:
                self.commits += 1
                for fut in group:
                    if not fut.done():
                        fut.set_result(None)
            finally:
                self.log.unpin()

    # -- closing -------------------------------------------------------------------------------
    async def close(self) -> None:
        """Finish pending fsyncs, stop the indexer, wake followers (JournalError) and close."""
        if self.log.closed:
            return
        self._indexer.stop()
        self._sync_wanted = True  # what was written reaches the disk before close returns
        self._start_committer()
        assert self._committer is not None
        await asyncio.shield(self._committer)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.log.close()
        self._notify()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
