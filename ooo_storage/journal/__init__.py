"""``ooo_storage.journal``: a durable, bounded, segmented append log, and a FIFO queue on it.

Items are ``bytes`` with consecutive indexes. A directory holds at most ``max_files`` segments of
at most ``max_file_size`` bytes: a ``<prefix>_<first index>.dat`` file of item bytes and an
``.idx`` file of fixed 48-byte entries (index, tag, time, offset, length, CRC-32C of the data, CRC
of the entry, deleted flag), so item *i* is found with one ``pread``. Reads hold at most
``max_chunk`` bytes of items. A torn tail left by a crash is cut when the journal is opened; a
damaged item is reported (CorruptObject), never returned. Several processes may append to one
directory (``lock``); followers in other processes see their appends through the indexer
(inotify, or polling every ``indexer_rate`` seconds).

- :class:`Journal`: the asyncio API (``append``, ``read``, ``delete``, ``prune``, ``follow``...).
- :class:`SegmentLog`: the same files without asyncio (scripts, threads).
- :class:`JournalQueue`: ``put``/``get``/``ack``, at-least-once, across restarts.
"""

from __future__ import annotations

from ..errors import HistoryTrimmed, JournalError, JournalFull
from .format import Entry
from .journal import Journal
from .log import SegmentLog
from .options import JournalOptions
from .queue import JournalQueue

__all__ = [
    "Entry",
    "HistoryTrimmed",
    "Journal",
    "JournalError",
    "JournalFull",
    "JournalOptions",
    "JournalQueue",
    "SegmentLog",
]
