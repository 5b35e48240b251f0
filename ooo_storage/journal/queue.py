"""JournalQueue: a FIFO of ``bytes`` items that survives restarts, on a :class:`Journal`.

``put`` appends, ``get`` hands out the oldest item not yet handed out (waiting for one),
``ack`` deletes it. Delivery is at-least-once: an item handed out but not acknowledged before a
restart (or a crash) is handed out again. Any number of processes may ``put`` into one directory
(with ``lock``); one process consumes it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import HistoryTrimmed
from .journal import Journal
from .options import JournalOptions

log = logging.getLogger("ooo_storage.journal")


class JournalQueue:
    """A persistent FIFO: ``put``/``get``/``ack`` over a journal directory."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._next = journal.log.first_index  # the next index to look at for get()

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], options: JournalOptions | None = None, **overrides: Any
    ) -> JournalQueue:
        """A queue on a new :class:`Journal` of ``directory`` (same arguments)."""
        return cls(Journal(directory, options, **overrides))

    def __len__(self) -> int:
        """Items put and not yet acknowledged (handed out or not)."""
        return self.journal.length

    async def put(self, *items: bytes) -> int:
        """Append ``items`` at the tail; returns the index of the first."""
        return await self.journal.append(*items)

    async def get(self) -> tuple[int, bytes]:
        """``(index, item)`` of the oldest item not handed out yet, waiting until there is one.
        Pass ``index`` to :meth:`ack` once the item is dealt with."""
        while True:
            found = self.get_nowait()
            if found is not None:
                return found
            await self.journal.wait(self._next)

    def get_nowait(self) -> tuple[int, bytes] | None:
        """Like :meth:`get`, or None when no item is waiting."""
        while self._next < self.journal.next_index:
            try:
                chunk = self.journal.log.chunk(self._next, max_items=1)
            except HistoryTrimmed as exc:  # only with when_full="evict": those items are gone
                log.warning("%s: %s", self.journal.directory, exc)
                self._next = self.journal.log.first_index
                continue
            self._next = chunk.next
            for index, item in chunk:
                self._next = index + 1
                return index, item
        return None

    def ack(self, *indexes: int) -> int:
        """Delete the items at ``indexes`` (done with them); returns how many were still there."""
        return self.journal.delete(*indexes)

    async def close(self) -> None:
        await self.journal.close()

    async def __aenter__(self) -> JournalQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
