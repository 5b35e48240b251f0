"""SegmentLog: the journal's files, synchronous and without asyncio.

Items get consecutive indexes, never reused. They are written to the newest segment (one
``pwrite`` of the data, then one of the index entries per batch) and read back with ``pread``
from any segment, so memory holds counters, not entries. The newest segment is checked entry by
entry when the log is opened and a torn tail (a partial or unchecked entry, data that is missing
or fails its CRC) is cut; older segments were complete when the log moved on from them, and every
read checks the entry and data CRCs again, so a damaged item is reported, never returned.

:class:`~ooo_storage.journal.Journal` is the asyncio face of this class; use this one directly
from threads or scripts.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptObject, HistoryTrimmed, JournalError, JournalFull, NotFound
from .format import ENTRY_SIZE, Entry, count_deleted, crc32c, pack, unpack
from .options import JournalOptions
from .segment import FileLock, Segment, pread_exact, pwrite_all, segment_pattern

log = logging.getLogger("ooo_storage.journal")

_CHUNK_ENTRIES = 4096  # entries per chunk: bounds the bookkeeping beside the max_chunk of data

Record = tuple[int | None, bytes]
"""An item to append and its tag (None: the tag of the entry before it)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive live items read with one ``pread``: ``span`` holds their bytes, ``items`` their
    ``(index, start, end)`` in it, ``next`` the index to read from afterwards."""

    span: bytes
    items: list[tuple[int, int, int]]
    next: int

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(index, item)`` pairs, each item copied out only when asked for."""
        view = memoryview(self.span)
        for index, start, end in self.items:
            yield index, bytes(view[start:end])


class SegmentLog:
    """A directory of journal segments (see the package docstring for the format).

    With ``fsync`` (default: ``options.sync``) every write is durable before it returns;
    without it nothing is fsynced here, and :meth:`take_dirty`/:meth:`sync_files` let a caller
    (the asyncio :class:`~ooo_storage.journal.Journal`) sync in another thread. One thread uses
    a log at a time (other processes may share the directory through the lock). Writes hold the
    lock for their ``pwrite`` calls only; a prune, or an append that finds the journal full,
    holds it while it reads the deleted flags of the older segments.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        options: JournalOptions | None = None,
        fsync: bool | None = None,
    ) -> None:
        self.options = options or JournalOptions()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = self.options.sync if fsync is None else fsync
        self._max_item = self.options.max_item
        self._pattern = segment_pattern(self.options.prefix)
        self._lock = FileLock(self.directory / f"{self.options.prefix}.lock") if self.options.lock else None
        self.segments: list[Segment] = []
        self._dirty: dict[int, Segment] = {}  # written since the last sync, by first index
        self._dir_dirty = False
        self._pins = 0  # syncs running in another thread: closing a segment waits for them
        self._graveyard: list[Segment] = []
        self._lost_below = 0  # entries below this index may have been dropped unread
        self.closed = False
        with self._locked():
            self._load()

    # -- state ---------------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        """The index the next appended item gets."""
        return self.segments[-1].stop

    @property
    def first_index(self) -> int:
        """The first index still on disk (live or deleted); ``next_index`` when there is none."""
        return self.segments[0].first

    @property
    def length(self) -> int:
        """Live items (appended, not deleted, not pruned). Deletes made by other processes are
        counted once this process meets them (reads, prunes) or reopens the log."""
        return sum(seg.count - seg.deleted for seg in self.segments)

    @property
    def size(self) -> int:
        """Bytes of journal on disk (data and index files)."""
        return sum(seg.size for seg in self.segments)

    @property
    def last_tag(self) -> int:
        """The tag of the newest entry (0 for an empty journal)."""
        for seg in reversed(self.segments):
            if seg.count:
                return seg.last_tag
        return 0

    @property
    def oldest(self) -> int | None:
        """The lowest live index, None if there is none."""
        return next(self._live(self.first_index, 1), None)

    @property
    def newest(self) -> int | None:
        """The highest live index, None if there is none."""
        return next(self._live(self.next_index - 1, -1), None)

    # -- opening -------------------------------------------------------------------------------
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The write lock (a no-op without ``lock``); JournalError once closed."""
        if self.closed:
            raise JournalError(f"journal: {self.directory} is closed")
        return self._lock or contextlib.nullcontext()

    def _load(self) -> None:
        names = os.listdir(self.directory)
        firsts = sorted(int(m.group(1)) for m in map(self._pattern.fullmatch, names) if m)
        self._remove_orphans(names, firsts)
        if not firsts:
            self._new_segment(0)
            return
        for first in firsts:
            seg = Segment(self.directory, self.options.prefix, first, create=False)
            self.segments.append(seg)
            self._scan(seg, newest=first == firsts[-1])
        self._lost_below = self.first_index

    def _remove_orphans(self, names: list[str], firsts: list[int]) -> None:
        """Remove data files without an index file: left by a prune or a segment creation that
        died half-way (both happen under the lock, which we hold)."""
        indexed = {f"{self.options.prefix}_{first:020d}.dat" for first in firsts}
        for name in names:
            if name.endswith(".dat") and self._pattern.fullmatch(name[:-4] + ".idx") and name not in indexed:
                (self.directory / name).unlink(missing_ok=True)

    def _entry_batches(self, seg: Segment, start: int) -> Iterator[tuple[int, bytes]]:
        """``(index, raw entries)`` of the whole entries of ``seg`` from ``start`` on, in pieces of
        at most ``max_chunk`` bytes."""
        stop = seg.first + seg.index_bytes() // ENTRY_SIZE
        step = max(1, min(_CHUNK_ENTRIES, self.options.max_chunk // ENTRY_SIZE))
        for lo in range(start, stop, step):
            yield lo, seg.raw_entries(lo, min(stop, lo + step))

    def _scan(self, seg: Segment, newest: bool) -> None:
        """Count the entries of ``seg``. The newest segment is checked entry by entry, data
        included, and cut after the last entry whose data checks out (what follows is a torn
        tail; a damaged item before it is kept, and reported when read). An older segment is
        trusted when its last entry checks out (reads check every item anyway), and checked like
        the newest otherwise (it was the newest when the system went down)."""
        if not newest and self._trust(seg):
            return
        last_good: Entry | None = None
        for lo, raw in self._entry_batches(seg, seg.first):
            entries = self._accept(seg, lo, raw)
            last_good = next(self._good_data(seg, entries[::-1]), last_good)
            if len(entries) < len(raw) // ENTRY_SIZE:
                break
        if last_good is None:
            seg.count = seg.deleted = seg.data_end = 0
        elif last_good.index + 1 < seg.stop:
            seg.count, seg.data_end = last_good.index + 1 - seg.first, last_good.end
            seg.last_tag, seg.last_stamp = last_good.tag, last_good.stamp
        if seg.index_bytes() != seg.count * ENTRY_SIZE or os.fstat(seg.dat_fd).st_size != seg.data_end:
            self._cut(seg)
            self._recount(seg)

    def _trust(self, seg: Segment) -> bool:
        """Take the counters of ``seg`` from its last entry, if that entry is whole and in place."""
        count = seg.index_bytes() // ENTRY_SIZE
        last = seg.entry(seg.first + count - 1) if count else None
        if last is None or count * ENTRY_SIZE != seg.index_bytes():
            return False
        seg.count, seg.data_end = count, last.end
        seg.last_tag, seg.last_stamp = last.tag, last.stamp
        self._recount(seg)
        return True

    def _accept(self, seg: Segment, lo: int, raw: bytes) -> list[Entry]:
        """Add the valid entries of ``raw`` (entries ``lo`` on) to ``seg``'s counters, stopping at
        the first that is torn or out of place; returns the accepted ones."""
        entries: list[Entry] = []
        for position in range(0, len(raw) - ENTRY_SIZE + 1, ENTRY_SIZE):
            entry = unpack(raw, position)
            expected_offset = entries[-1].end if entries else seg.data_end
            if entry is None or entry.index != lo + len(entries) or entry.offset != expected_offset:
                break
            entries.append(entry)
        if entries:
            seg.count += len(entries)
            seg.deleted += count_deleted(raw[: len(entries) * ENTRY_SIZE])
            seg.data_end = entries[-1].end
            seg.last_tag, seg.last_stamp = entries[-1].tag, entries[-1].stamp
        return entries

    def _good_data(self, seg: Segment, entries: list[Entry]) -> Iterator[Entry]:
        """Those of ``entries`` whose data is all there and passes its CRC, read one entry at a
        time (the newest segment is checked from its end: usually only its last entry is read)."""
        for entry in entries:
            item = pread_exact(seg.dat_fd, entry.length, entry.offset)
            if len(item) == entry.length and crc32c(item) == entry.data_crc:
                yield entry

    def _cut(self, seg: Segment) -> None:
        """Drop what follows the accepted entries of ``seg`` (a torn tail), durably."""
        dropped = seg.index_bytes() // ENTRY_SIZE - seg.count
        if dropped:
            log.warning(
                "%s: cut a torn tail of %d entr%s after index %d",
                seg.idx_path,
                dropped,
                "y" if dropped == 1 else "ies",
                seg.stop - 1,
            )
        seg.cut(seg.count, seg.data_end)
        seg.sync_data()
        seg.sync_index()

    # -- appending -----------------------------------------------------------------------------
    def append(self, *items: bytes) -> int:
        """Append ``items`` (each with the tag of the entry before it); returns the first index."""
        return self._append([(None, item) for item in items])

    def append_tagged(self, *records: Record) -> int:
        """Append ``(tag, item)`` records; tags must never decrease along the journal (None keeps
        the previous one). Returns the index of the first record."""
        return self._append(records)

    def _append(self, records: Sequence[Record]) -> int:
        self._check_items(records)
        with self._locked():
            if self._lock is not None and self._lock.claimed() != self.next_index:
                self.refresh(cut=True)  # another writer appended, rotated, or died half-way
            resolved = self._resolve_tags(records)
            first = self.next_index
            if resolved:
                self._write(resolved)
        if self.fsync and records:
            self.sync()
        return first

    def _check_items(self, records: Sequence[Record]) -> None:
        max_item = self._max_item
        for _, item in records:
            if not isinstance(item, bytes):
                raise TypeError(f"journal: items are bytes, not {type(item).__name__}")
            if len(item) > max_item:
                raise ValueError(
                    f"journal: an item of {len(item)} bytes is larger than max_chunk (or "
                    f"max_item_size) and max_file_size allow ({self.options.max_item}); split it or "
                    "raise them"
                )

    def _resolve_tags(self, records: Sequence[Record]) -> list[tuple[int, bytes]]:
        tag = self.last_tag
        resolved = []
        for wanted, item in records:
            if wanted is not None:
                if wanted < tag or wanted >= 1 << 64:
                    raise ValueError(
                        f"journal: tag {wanted} is below the last tag {tag} (tags never decrease)"
                    )
                tag = wanted
            resolved.append((tag, item))
        return resolved

    def _write(self, records: list[tuple[int, bytes]]) -> None:
        groups = self._plan(records)
        self._make_room(len(groups) - 1)
        if self._lock is not None:
            self._lock.claim(self.next_index + len(records))
        stamp = time.time_ns()
        for number, group in enumerate(groups):
            if number:
                self._new_segment(self.next_index)
            if group:
                self._write_group(self.segments[-1], group, stamp)

    def _plan(self, records: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
        """``records`` split by segment: the first group goes to the newest segment, each other
        one to a new segment."""
        limit = self.options.max_file_size
        groups: list[list[tuple[int, bytes]]] = [[]]
        size = self.segments[-1].size
        for record in records:
            need = len(record[1]) + ENTRY_SIZE
            if size and size + need > limit:
                groups.append([])
                size = 0
            groups[-1].append(record)
            size += need
        return groups

    def _write_group(self, seg: Segment, group: list[tuple[int, bytes]], stamp: int) -> None:
        offset = seg.data_end
        entries = []
        for number, (tag, item) in enumerate(group):
            entries.append(pack(seg.stop + number, tag, stamp, offset, item))
            offset += len(item)
        # Data before entries: an entry a reader can see always has its data in place.
        pwrite_all(seg.dat_fd, b"".join(item for _, item in group), seg.data_end)
        pwrite_all(seg.idx_fd, b"".join(entries), seg.count * ENTRY_SIZE)
        seg.count += len(group)
        seg.data_end = offset
        seg.last_tag, seg.last_stamp = group[-1][0], stamp
        self._dirty[seg.first] = seg

    def _make_room(self, new_segments: int) -> None:
        """Free ``new_segments`` places under ``max_files``: drop deleted segments, then (when
        allowed) the oldest ones; the newest segment is always kept."""
        limit = self.options.max_files
        if new_segments >= limit:
            raise JournalFull(
                f"journal: one append of {new_segments} segments cannot fit in {limit} files of "
                f"{self.options.max_file_size} bytes; append fewer items at once"
            )
        if len(self.segments) + new_segments > limit:
            self._forget_vanished()  # pruned by another process
        while len(self.segments) + new_segments > limit:
            oldest = self.segments[0]
            self._recount(oldest)
            if oldest.empty or self.options.when_full == "evict":
                self._drop(oldest, lost=not oldest.empty)
                continue
            self._drop_deleted()
            if len(self.segments) + new_segments > limit:
                raise JournalFull(
                    f"journal: {self.directory} is full ({limit} files of {self.options.max_file_size} "
                    "bytes); delete what was consumed and prune, or open it with when_full='evict'"
                )

    def _new_segment(self, first: int) -> None:
        seg = Segment(self.directory, self.options.prefix, first, create=True)
        self.segments.append(seg)
        self._dirty[seg.first] = seg
        self._dir_dirty = True

    # -- other processes -----------------------------------------------------------------------
    def refresh(self, cut: bool = False) -> int:
        """Take in what other processes appended (and notice segments they pruned); returns the
        number of new entries. With ``cut`` (only under the write lock) a torn tail left by a
        writer that died is cut; without it such a tail is merely not taken in."""
        self._forget_vanished()
        added = 0
        while True:
            seg = self.segments[-1]
            for lo, raw in self._entry_batches(seg, seg.stop):
                accepted = len(self._accept(seg, lo, raw))
                added += accepted
                if accepted < len(raw) // ENTRY_SIZE:
                    break
            if cut and (
                seg.index_bytes() != seg.count * ENTRY_SIZE or os.fstat(seg.dat_fd).st_size != seg.data_end
            ):
                self._cut(seg)  # left by a writer that died: nobody else writes while we hold the lock
            if seg.index_bytes() != seg.count * ENTRY_SIZE or not seg.count:
                return added
            if not (self._open_next(seg.stop) or self._open_after_eviction(seg)):
                return added

    def _open_next(self, first: int) -> bool:
        try:
            seg = Segment(self.directory, self.options.prefix, first, create=False)
        except FileNotFoundError:
            return False
        self.segments.append(seg)
        return True

    def _open_after_eviction(self, seg: Segment) -> bool:
        """When ``seg``, our newest segment, was removed by a writer that evicted it (and maybe the
        ones after it) while we lagged, open the oldest segment still on disk after it: what lay in
        between is lost (reads from there raise HistoryTrimmed), the rest is followed again."""
        if seg.idx_path.exists():
            return False
        later = sorted(
            first for m in map(self._pattern.fullmatch, os.listdir(self.directory))
            if m and (first := int(m.group(1))) >= seg.stop
        )  # fmt: skip
        for first in later:
            if self._open_next(first):
                self._lost_below = max(self._lost_below, first)
                return True
        return False

    def _forget_vanished(self) -> None:
        while len(self.segments) > 1 and not self.segments[0].idx_path.exists():
            seg = self.segments.pop(0)
            self._lost_below = max(self._lost_below, seg.stop)
            self._close(seg)

    # -- reading -------------------------------------------------------------------------------
    def _segment_of(self, index: int) -> Segment | None:
        position = bisect.bisect_right(self.segments, index, key=lambda seg: seg.first) - 1
        if position < 0:
            return None
        seg = self.segments[position]
        return seg if index < seg.stop else None

    def entry(self, index: int) -> Entry:
        """The index entry of live item ``index``.

        Raises NotFound if it is deleted or not in the journal, CorruptObject if it is damaged."""
        seg = self._segment_of(index)
        if seg is None:
            raise NotFound(f"journal: no entry {index} (pruned, or not appended yet)")
        entry = seg.entry(index)
        if entry is None:
            raise CorruptObject(f"journal: the index entry of {index} in {seg.idx_path} is damaged")
        if entry.deleted:
            raise NotFound(f"journal: entry {index} was deleted")
        return entry

    def read(self, *indexes: int) -> list[bytes]:
        """The items at ``indexes``, in that order; together at most ``max_chunk`` bytes (one
        item alone may be larger: ``max_item_size``)."""
        entries = [self.entry(index) for index in indexes]
        total = sum(entry.length for entry in entries)
        if total > self.options.max_chunk and len(entries) > 1:
            raise ValueError(
                f"journal: reading {total} bytes at once exceeds max_chunk ({self.options.max_chunk}); "
                "read fewer indexes per call"
            )
        return [self._data(entry) for entry in entries]

    def _data(self, entry: Entry) -> bytes:
        seg = self._segment_of(entry.index)
        assert seg is not None  # entry() found it
        item = pread_exact(seg.dat_fd, entry.length, entry.offset)
        if len(item) != entry.length or crc32c(item) != entry.data_crc:
            raise CorruptObject(f"journal: the data of entry {entry.index} in {seg.dat_path} is damaged")
        return item

    def chunk(self, start: int, max_items: int | None = None) -> Chunk:
        """Live items from ``start`` on, as many as fit in ``max_chunk`` bytes (at least one), at
        most ``max_items``, all from one segment; an empty chunk when none is there yet.

        Raises HistoryTrimmed if entries from ``start`` on were pruned before they were deleted
        (or, after a restart, if ``start`` is before what is left)."""
        if start < self._lost_below:
            raise HistoryTrimmed(
                f"journal: entries before {self._lost_below} were pruned (asked from {start}); "
                "start again from a snapshot"
            )
        start = max(start, self.first_index)
        seg = self._segment_of(start)
        while seg is None and start < self.next_index:  # a deleted segment was pruned: skip it
            start = min(s.first for s in self.segments if s.first > start)
            seg = self._segment_of(start)
        if seg is None:
            return Chunk(b"", [], start)
        entries = self._entries(seg, start, max_items)
        if not entries:
            return Chunk(b"", [], seg.stop)
        base = entries[0].offset
        span = pread_exact(seg.dat_fd, entries[-1].end - base, base)
        items = []
        for entry in entries:
            if entry.deleted:
                continue
            lo, hi = entry.offset - base, entry.end - base
            if hi > len(span) or crc32c(span[lo:hi]) != entry.data_crc:
                raise CorruptObject(f"journal: the data of entry {entry.index} in {seg.dat_path} is damaged")
            items.append((entry.index, lo, hi))
        return Chunk(span, items, entries[-1].index + 1)

    def _entries(self, seg: Segment, start: int, max_items: int | None) -> list[Entry]:
        """Entries of ``seg`` from ``start`` whose data spans at most ``max_chunk`` (at least
        one), at most ``_CHUNK_ENTRIES``, stopping after ``max_items`` live ones."""
        wanted = _CHUNK_ENTRIES if max_items is None else min(_CHUNK_ENTRIES, max_items)
        entries: list[Entry] = []
        live = 0
        position = start
        while position < seg.stop and live < wanted and len(entries) < _CHUNK_ENTRIES:
            stop = min(seg.stop, position + max(wanted - live, 16))  # a few deleted ones may follow
            raw = seg.raw_entries(position, stop)
            if len(raw) < (stop - position) * ENTRY_SIZE:
                raise CorruptObject(f"journal: {seg.idx_path} is shorter than its {seg.count} entries")
            for offset in range(0, len(raw) - ENTRY_SIZE + 1, ENTRY_SIZE):
                entry = unpack(raw, offset)
                if entry is None or entry.index != position:
                    raise CorruptObject(
                        f"journal: the index entry of {position} in {seg.idx_path} is damaged"
                    )
                if entries and entry.end - entries[0].offset > self.options.max_chunk:
                    return entries
                entries.append(entry)
                live += not entry.deleted
                position += 1
                if live >= wanted or len(entries) >= _CHUNK_ENTRIES:
                    return entries
        return entries

    def scan(self, start: int | None = None) -> Iterator[tuple[int, bytes]]:
        """``(index, item)`` of every live item from ``start`` (default: the oldest) to the
        current end, holding one chunk at a time."""
        index = self.first_index if start is None else start
        while index < self.next_index:
            chunk = self.chunk(index)
            index = chunk.next
            yield from chunk
            del chunk  # before the next one is read

    def seek(self, tag: int) -> int:
        """The index of the first entry whose tag is greater than ``tag`` (``next_index`` if
        none): where to resume after the entry tagged ``tag``. Deleted entries count too."""
        candidates = [seg for seg in self.segments if seg.count]
        position = bisect.bisect_right(candidates, tag, key=lambda seg: seg.last_tag)
        if position == len(candidates):
            return self.next_index
        seg = candidates[position]
        lo, hi = seg.first, seg.stop - 1  # entry hi has a tag > tag
        while lo < hi:
            middle = (lo + hi) // 2
            found = seg.entry(middle)
            if found is None:
                raise CorruptObject(f"journal: the index entry of {middle} in {seg.idx_path} is damaged")
            if found.tag > tag:
                hi = middle
            else:
                lo = middle + 1
        return lo

    def _live(self, index: int, step: int) -> Iterator[int]:
        """Live indexes from ``index`` going up (``step`` 1) or down (-1), reading flags from disk
        (other processes' deletes count)."""
        for seg in self.segments if step > 0 else self.segments[::-1]:
            if seg.empty or (index >= seg.stop if step > 0 else index < seg.first):
                continue
            index = max(index, seg.first) if step > 0 else min(index, seg.stop - 1)
            while seg.first <= index < seg.stop:
                entry = seg.entry(index)
                if entry is not None and not entry.deleted:
                    yield index
                index += step

    # -- deleting and pruning -------------------------------------------------------------------
    def truncate(self, index: int) -> int:
        """Drop the entries from ``index`` on, durably; returns how many. For a writer that
        appends them again from a copy of its own (a damaged tail lost at a power failure):
        their indexes are given again, so no other process may have consumed them."""
        with self._locked():
            dropped = 0
            while len(self.segments) > 1 and self.segments[-1].first >= index:
                seg = self.segments[-1]
                dropped += seg.count
                self._drop(seg, lost=False)
            seg = self.segments[-1]
            keep = min(max(index - seg.first, 0), seg.count)
            if keep == seg.count:
                return dropped
            last = seg.entry(seg.first + keep - 1) if keep else None
            if keep and last is None:
                raise CorruptObject(f"journal: the index entry of {index - 1} in {seg.idx_path} is damaged")
            dropped += seg.count - keep
            seg.cut(keep, last.end if last is not None else 0)
            if last is not None:
                seg.last_tag, seg.last_stamp = last.tag, last.stamp
            seg.sync_data()
            seg.sync_index()
            self._recount(seg)
            if self._lock is not None:
                self._lock.claim(self.next_index)
        return dropped

    def delete(self, *indexes: int) -> int:
        """Mark ``indexes`` deleted (absent or already deleted ones are ignored: an ack may be
        repeated); returns how many were live. A segment whose items are all deleted is removed
        when it is the oldest."""
        removed = 0
        with self._locked():
            for index in indexes:
                seg = self._segment_of(index)
                entry = seg.entry(index) if seg is not None else None
                if seg is None or entry is None or entry.deleted:
                    continue
                seg.mark_deleted(index)
                seg.deleted += 1
                removed += 1
                self._dirty[seg.first] = seg
            while len(self.segments) > 1 and self.segments[0].count and self.segments[0].empty:
                self._drop(self.segments[0], lost=False)
        if self.fsync and removed:
            self.sync()
        return removed

    def prune(self, max_age: float | None = None) -> int:
        """Remove the segments whose items are all deleted (by any process) and, with
        ``max_age`` (seconds), those whose newest item is older than that; the newest segment is
        kept. Returns how many segments were removed."""
        with self._locked():
            self.refresh(cut=self._lock is not None)
            before = len(self.segments)
            self._drop_deleted()
            if max_age is not None:
                oldest_kept = time.time_ns() - int(max_age * 1e9)
                while len(self.segments) > 1 and self.segments[0].last_stamp < oldest_kept:
                    self._drop(self.segments[0], lost=not self.segments[0].empty)
        return before - len(self.segments)

    def _drop_deleted(self) -> None:
        """Drop (except the newest) the segments whose entries are all deleted, recounting the
        flags from disk so that other processes' deletes count."""
        for seg in self.segments[:-1]:
            self._recount(seg)
            if seg.empty:
                self._drop(seg, lost=False)

    def _recount(self, seg: Segment) -> None:
        """Count the deleted flags of ``seg`` on disk (other processes may have deleted too)."""
        seg.deleted = sum(count_deleted(raw) for _, raw in self._entry_batches(seg, seg.first))

    def _drop(self, seg: Segment, lost: bool) -> None:
        self.segments.remove(seg)
        self._dirty.pop(seg.first, None)
        if lost:
            self._lost_below = max(self._lost_below, seg.stop)
        seg.remove()
        self._dir_dirty = True
        self._close(seg)

    # -- durability ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Make everything written so far durable (fsync in this thread)."""
        segments, directory = self.take_dirty()
        try:
            self.sync_files(segments, directory)
        finally:
            self.unpin()

    def take_dirty(self) -> tuple[list[Segment], bool]:
        """The segments written since the last call and whether the directory changed; they stay
        open (pinned) until :meth:`unpin`, so that :meth:`sync_files` may run in another thread."""
        dirty, self._dirty = list(self._dirty.values()), {}
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        self._pins += 1
        return dirty, dir_dirty

    def redirty(self, segments: list[Segment], directory: bool) -> None:
        """Put back what a failed :meth:`sync_files` did not make durable (the next sync retries)."""
        for seg in segments:
            if seg in self.segments:
                self._dirty[seg.first] = seg
        self._dir_dirty = self._dir_dirty or directory

    def sync_files(self, segments: list[Segment], directory: bool) -> None:
        """fsync the data files, then the index files, then the directory: an index entry is
        durable only after its data. Safe in another thread while the segments are pinned."""
        for seg in segments:
            seg.sync_data()
        for seg in segments:
            seg.sync_index()
        if directory:
            fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def unpin(self) -> None:
        """Release the segments pinned by :meth:`take_dirty` (on the thread that owns the log)."""
        self._pins -= 1
        if not self._pins:
            for seg in self._graveyard:
                seg.close()
            self._graveyard.clear()

    def _close(self, seg: Segment) -> None:
        if self._pins:
            self._graveyard.append(seg)
        else:
            seg.close()

    def close(self) -> None:
        """Close every file (after a final fsync when ``fsync`` is on)."""
        if self.closed:
            return
        if self.fsync:
            self.sync()
        self.closed = True
        for seg in self.segments:
            self._close(seg)
        self.segments = []
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
