"""Reading a large journal holds about ``max_chunk`` of it in memory, not the journal: 64 MiB read
with ``max_chunk`` = 1 MiB (traced with tracemalloc, which sees every ``bytes`` read)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import pytest

from ooo_storage.journal import Journal, JournalOptions, SegmentLog

MiB = 1 << 20
OPTIONS = JournalOptions(max_files=8, max_file_size=16 * MiB, max_chunk=MiB)
ITEM = 64 << 10
COUNT = 64 * MiB // ITEM


@pytest.fixture(scope="module")
def big_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("big")
    with SegmentLog(directory, OPTIONS) as log:
        for number in range(0, COUNT, 8):
            log.append(*(bytes([n % 251]) * ITEM for n in range(number, number + 8)))
    return directory


def _peak_while(read: Callable[[], object]) -> int:
    """Bytes allocated at the peak of ``read()``, beyond what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        read()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_scanning_holds_one_chunk(big_journal: Path) -> None:
    with SegmentLog(big_journal, OPTIONS) as log:
        crc = 0
        seen = 0

        def read() -> None:
            nonlocal crc, seen
            for _, item in log.scan():
                crc = google_crc32c.extend(crc, item)
                seen += len(item)

        peak = _peak_while(read)
    assert seen == 64 * MiB
    assert peak < 1.5 * MiB, f"reading 64 MiB with max_chunk 1 MiB peaked at {peak / MiB:.1f} MiB"


async def test_following_holds_one_chunk(big_journal: Path) -> None:
    async with Journal(big_journal, OPTIONS) as journal:
        seen = 0

        async def follow() -> None:
            nonlocal seen
            async for index, item in journal.follow(0):
                seen += len(item)
                if index == COUNT - 1:
                    return

        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            await follow()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert seen == 64 * MiB
    assert peak < 1.5 * MiB, f"following 64 MiB with max_chunk 1 MiB peaked at {peak / MiB:.1f} MiB"


def test_opening_reads_the_newest_segment_only_in_bounded_pieces(big_journal: Path) -> None:
    peak = _peak_while(lambda: SegmentLog(big_journal, OPTIONS).close())
    assert peak < 0.5 * MiB
