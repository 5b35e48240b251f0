"""One segment of a journal: a ``*.dat`` file of item bytes and its ``*.idx`` file of entries.

A segment is named after the index of its first entry (``<prefix>_<first:020d>.idx``), so an
empty segment still carries the position of the next append across restarts. Entries are read on
demand with ``pread``; the segment keeps only counters in memory.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from types import TracebackType

from .format import DELETED_BYTE, ENTRY_SIZE, FLAGS_OFFSET, Entry, unpack

_OPEN = os.O_RDWR | os.O_CLOEXEC


# fdatasync: appended bytes and the new file size, without the timestamps fsync also writes.
_datasync = getattr(os, "fdatasync", os.fsync)


def segment_pattern(prefix: str) -> re.Pattern[str]:
    """Matches the index file names of a journal with ``prefix``; group 1 is the first index."""
    return re.compile(re.escape(prefix) + r"_(\d{20})\.idx")


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    done = os.pwrite(fd, data, offset)
    if done < len(data):
        view = memoryview(data)[done:]
        while view:
            done = os.pwrite(fd, view, offset := offset + done)
            view = view[done:]


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``, or fewer if the file ends first."""
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        size, offset = size - len(part), offset + len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Segment:
    """Open files and counters of one segment (entries ``first`` .. ``stop - 1``)."""

    __slots__ = (
        "first",
        "count",
        "deleted",
        "data_end",
        "last_tag",
        "last_stamp",
        "idx_path",
        "dat_path",
        "idx_fd",
        "dat_fd",
    )

    def __init__(self, directory: Path, prefix: str, first: int, create: bool) -> None:
        name = f"{prefix}_{first:020d}"
        self.first = first
        self.count = 0
        self.deleted = 0
        self.data_end = 0
        self.last_tag = 0
        self.last_stamp = 0
        self.dat_path = directory / f"{name}.dat"
        self.idx_path = directory / f"{name}.idx"
        # A new segment gets its data file first: the index file is what makes a segment exist for
        # other processes. An existing one is opened index first, so a probe for a segment that
        # is not there creates nothing.
        if create:
            self.dat_fd = os.open(self.dat_path, _OPEN | os.O_CREAT, 0o644)
            self.idx_fd = os.open(self.idx_path, _OPEN | os.O_CREAT, 0o644)
        else:
            self.idx_fd = os.open(self.idx_path, _OPEN)
            try:
                self.dat_fd = os.open(self.dat_path, _OPEN | os.O_CREAT, 0o644)
            except BaseException:
                os.close(self.idx_fd)
                raise

    @property
    def stop(self) -> int:
        """The index the next entry of this segment would get."""
        return self.first + self.count

    @property
    def size(self) -> int:
        """Bytes this segment holds on disk (data and index)."""
        return self.data_end + self.count * ENTRY_SIZE

    @property
    def empty(self) -> bool:
        """True when every entry is deleted (or there is none)."""
        return self.deleted >= self.count

    def index_bytes(self) -> int:
        """Current size of the index file (other processes may have appended)."""
        return os.fstat(self.idx_fd).st_size

    def raw_entries(self, lo: int, hi: int) -> bytes:
        """The index bytes of entries ``lo`` .. ``hi - 1`` (absolute indexes)."""
        return pread_exact(self.idx_fd, (hi - lo) * ENTRY_SIZE, (lo - self.first) * ENTRY_SIZE)

    def entry(self, index: int) -> Entry | None:
        """Entry ``index`` as stored now (deleted flag included), None if it does not check out."""
        raw = self.raw_entries(index, index + 1)
        if len(raw) < ENTRY_SIZE:
            return None
        entry = unpack(raw)
        return entry if entry is not None and entry.index == index else None

    def mark_deleted(self, index: int) -> None:
        """Set the deleted flag of entry ``index`` in place (a one-byte write)."""
        pwrite_all(self.idx_fd, DELETED_BYTE, (index - self.first) * ENTRY_SIZE + FLAGS_OFFSET)

    def cut(self, count: int, data_end: int) -> None:
        """Keep only the first ``count`` entries and ``data_end`` bytes of data (a torn tail)."""
        os.ftruncate(self.idx_fd, count * ENTRY_SIZE)
        os.ftruncate(self.dat_fd, data_end)
        self.count, self.data_end = count, data_end

    def sync_data(self) -> None:
        _datasync(self.dat_fd)

    def sync_index(self) -> None:
        _datasync(self.idx_fd)

    def close(self) -> None:
        for fd in (self.idx_fd, self.dat_fd):
            os.close(fd)
        self.idx_fd = self.dat_fd = -1

    def remove(self) -> None:
        """Unlink both files, the index first: without it the segment no longer exists."""
        for path in (self.idx_path, self.dat_path):
            path.unlink(missing_ok=True)


class FileLock:
    """An exclusive ``flock`` on a lock file, held around each write of the journal.

    ``flock`` (not ``lockf``): it belongs to the open file, so two journals opened on one
    directory in the same process exclude each other too; Linux maps it to POSIX locks on NFS.
    The lock is never held across an ``await``.

    The file also holds the *claim*: the ``next_index`` the last writer was about to reach,
    written before its data. A writer whose own ``next_index`` equals the claim knows that nobody
    appended, rotated, or died half-way since its last write, and skips re-reading the index
    files: two syscalls instead of a handful per append. Claims only grow, as indexes do.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, _OPEN | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def claimed(self) -> int | None:
        """The last claim (None before the first one)."""
        raw = os.pread(self.fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    def claim(self, next_index: int) -> None:
        pwrite_all(self.fd, next_index.to_bytes(8, "little"), 0)

    def close(self) -> None:
        os.close(self.fd)
