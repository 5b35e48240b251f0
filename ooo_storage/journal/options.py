"""JournalOptions: the configuration of a journal directory, with documented defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .format import ENTRY_SIZE

MiB = 1 << 20


@dataclass(frozen=True)
class JournalOptions:
    """How a journal lays out, bounds and syncs its files.

    ``max_files`` segments of at most ``max_file_size`` bytes each (``*.dat`` plus ``*.idx`` together),
    so the directory never holds more than ``max_files * max_file_size`` bytes of journal. ``max_chunk``
    bounds the item bytes one read holds in memory; an item larger than it is refused at append, unless
    ``max_item_size`` allows it (up to a segment): such an item is read alone (a chunk holds at least
    one item), so one read then holds at most that many bytes. ``when_full`` says what an append that
    needs a new segment does when ``max_files`` are in use and none is entirely deleted: ``"error"``
    raises :class:`~ooo_storage.errors.JournalFull` (a queue must not lose items), ``"evict"`` drops the
    oldest segment (a bounded history). ``lock`` takes an exclusive ``flock`` on ``<prefix>.lock``
    around every write, so several processes may append to one directory; without it one process must
    own the directory. ``sync`` makes each append durable (fsync of the data, then of the index) before
    it returns. The indexer, which notices appends made by other processes, uses inotify when
    ``indexer`` allows it and the platform has it, and polls every ``indexer_rate`` seconds in any case
    (inotify does not see writes made on another NFS client).
    """

    max_files: int = 16
    max_file_size: int = 64 * MiB
    max_chunk: int = 4 * MiB
    max_item_size: int = 0
    """The largest item an append accepts (0: ``max_chunk``); at most a segment's data."""
    prefix: str = "journal"
    lock: bool = True
    sync: bool = False
    when_full: Literal["error", "evict"] = "error"
    indexer: Literal["auto", "inotify", "poll"] = "auto"
    indexer_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.max_files < 2:
            raise ValueError("journal: max_files must be at least 2 (one segment is always kept)")
        if self.max_file_size < 2 * ENTRY_SIZE:
            raise ValueError(f"journal: max_file_size must be at least {2 * ENTRY_SIZE} bytes")
        if self.max_chunk < 1:
            raise ValueError("journal: max_chunk must be positive")
        if self.max_item_size < 0:
            raise ValueError("journal: max_item_size must be 0 (max_chunk) or positive")
        if not self.prefix or not self.prefix.replace("-", "").replace("_", "").isalnum():
            raise ValueError("journal: prefix must be letters, digits, '-' or '_'")
        if self.when_full not in ("error", "evict"):
            raise ValueError("journal: when_full must be 'error' or 'evict'")
        if self.indexer not in ("auto", "inotify", "poll"):
            raise ValueError("journal: indexer must be 'auto', 'inotify' or 'poll'")
        if not self.indexer_rate > 0:
            raise ValueError("journal: indexer_rate must be a positive number of seconds")

    @property
    def max_item(self) -> int:
        """The largest item an append accepts: it must fit in one read (``max_chunk``, or
        ``max_item_size`` read alone) and in one segment."""
        return min(self.max_item_size or self.max_chunk, self.max_file_size - ENTRY_SIZE)
