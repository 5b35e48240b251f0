"""JournalQueue: FIFO order, ack, at-least-once redelivery after a restart, waiting get."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ooo_storage import JournalQueue as LazyQueue
from ooo_storage.errors import JournalFull
from ooo_storage.journal import JournalQueue


async def test_fifo_with_ack_survives_a_restart(tmp_path: Path) -> None:
    async with JournalQueue.open(tmp_path, sync=True) as queue:
        await queue.put(b"one", b"two")
        await queue.put(b"three")
        first = await queue.get()
        second = await queue.get()
        assert (first, second) == ((0, b"one"), (1, b"two"))
        assert queue.ack(first[0]) == 1
        assert len(queue) == 2
    async with JournalQueue.open(tmp_path, sync=True) as queue:
        # "two" was handed out but never acknowledged: it comes again, before "three"
        assert [await queue.get(), await queue.get()] == [(1, b"two"), (2, b"three")]
        assert queue.get_nowait() is None
        queue.ack(1, 2)
        assert len(queue) == 0
    async with JournalQueue.open(tmp_path) as queue:
        assert queue.get_nowait() is None
        assert await queue.put(b"four") == 3  # indexes are never reused


async def test_get_waits_for_a_put(tmp_path: Path) -> None:
    async with LazyQueue.open(tmp_path) as queue:
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)  # the getter is now waiting
        assert not getter.done()
        await queue.put(b"late")
        assert await asyncio.wait_for(getter, 5) == (0, b"late")


async def test_a_full_queue_refuses_puts_until_items_are_acknowledged(tmp_path: Path) -> None:
    async with JournalQueue.open(tmp_path, max_files=2, max_file_size=500, max_chunk=500) as queue:
        put = 0
        with pytest.raises(JournalFull):
            while True:
                await queue.put(b"p" * 100)
                put += 1
        indexes = [(await queue.get())[0] for _ in range(put)]
        queue.ack(*indexes)
        await queue.put(b"room again")
        assert await queue.get() == (put, b"room again")
