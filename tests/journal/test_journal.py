"""Journal (asyncio): follow, group commit, seek-then-follow, the indexer, closing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from ooo_storage import Journal as LazyJournal
from ooo_storage.errors import HistoryTrimmed, JournalError
from ooo_storage.journal import Journal, JournalOptions, SegmentLog
from ooo_storage.journal.indexer import inotify_watch


async def _take(journal: Journal, count: int, start: int | None = None) -> list[tuple[int, bytes]]:
    got = []
    async for pair in journal.follow(start):
        got.append(pair)
        if len(got) == count:
            break
    return got


async def test_follow_replays_then_waits_for_new_items(tmp_path: Path) -> None:
    async with Journal(tmp_path, max_file_size=300, max_chunk=200) as journal:
        await journal.append(b"a", b"b")
        journal.delete(1)
        follower = asyncio.create_task(_take(journal, 4))
        await journal.append(b"c")
        await asyncio.gather(journal.append(b"d" * 150), journal.append(b"e"))
        assert await asyncio.wait_for(follower, 5) == [(0, b"a"), (2, b"c"), (3, b"d" * 150), (4, b"e")]
        assert len(journal.log.segments) > 1  # the follower crossed segments


async def test_sync_appends_share_fsyncs_and_survive_reopen(tmp_path: Path) -> None:
    async with Journal(tmp_path, sync=True) as journal:
        firsts = await asyncio.gather(*(journal.append(b"%d" % n) for n in range(50)))
        assert sorted(firsts) == list(range(50))
        assert journal.commits < 50  # group commit: concurrent appends shared fsyncs
    with SegmentLog(tmp_path) as log:
        assert sorted(log.read(*range(50))) == sorted(b"%d" % n for n in range(50))


@pytest.mark.parametrize("sync", [False, True])
async def test_appends_without_waiting_then_one_flush(tmp_path: Path, sync: bool) -> None:
    async with Journal(tmp_path, sync=sync) as journal:
        follower = asyncio.create_task(_take(journal, 10))
        for number in range(10):  # as a store's commit would, on the loop
            journal.append_tagged_nowait((number, b"event %d" % number))
        assert journal.commits == 0
        await asyncio.gather(journal.flush(), journal.flush())
        assert journal.commits == 1  # one fsync round for all of them
        assert [item for _, item in await asyncio.wait_for(follower, 5)] == [
            b"event %d" % n for n in range(10)
        ]


async def test_resume_after_a_tag_across_a_restart(tmp_path: Path) -> None:
    async with Journal(tmp_path) as journal:
        for revision in (3, 7, 8, 12):
            await journal.append_tagged((revision, b"rev %d" % revision))
    async with Journal(tmp_path) as journal:
        assert await _take(journal, 2, journal.seek(7)) == [(2, b"rev 8"), (3, b"rev 12")]
        assert journal.seek(12) == journal.next_index == 4
        assert journal.entry(3).tag == 12


async def test_a_follower_behind_evicted_segments_gets_history_trimmed(tmp_path: Path) -> None:
    options = JournalOptions(max_files=2, max_file_size=400, max_chunk=400, when_full="evict")
    async with Journal(tmp_path, options) as journal:
        for _ in range(10):
            await journal.append(b"x" * 100)
        with pytest.raises(HistoryTrimmed, match="start again from a snapshot"):
            await _take(journal, 1, 0)


async def test_close_wakes_followers(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    follower = asyncio.create_task(_take(journal, 1))
    await asyncio.sleep(0)  # let it start waiting
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await asyncio.wait_for(follower, 5)


@pytest.mark.parametrize("indexer", ["poll", "inotify"])
async def test_the_indexer_sees_another_writer(tmp_path: Path, indexer: str) -> None:
    """A second log on the directory (its own files and lock) stands for another process. With
    inotify the poll is set to 30 s: only inotify can wake the follower within the timeout."""
    rate = 0.05 if indexer == "poll" else 30
    async with Journal(tmp_path, indexer=indexer, indexer_rate=rate) as journal:
        received = asyncio.Event()

        async def take() -> list[bytes]:
            got = []
            async for _, item in journal.follow(0):
                got.append(item)
                received.set()
                if len(got) == 4:
                    return got
            raise AssertionError("follow() ended")

        follower = asyncio.create_task(take())
        await journal.append(b"own")
        await received.wait()  # the follower got it and now sleeps, waiting for index 1
        with SegmentLog(tmp_path, journal.options) as other:
            other.append(b"from", b"another")
            other.append(b"writer")
        assert await asyncio.wait_for(follower, 5) == [b"own", b"from", b"another", b"writer"]
        assert journal._indexer.watching is (indexer == "inotify")


def test_inotify_is_available_on_linux(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.fail("this check is for Linux, where the journal's indexer must use inotify")
    fd = inotify_watch(tmp_path)
    assert fd is not None, "inotify_init1/inotify_add_watch failed: the indexer would only poll"


def test_the_package_exports_it_lazily() -> None:
    assert LazyJournal is Journal
