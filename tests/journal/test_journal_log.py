"""SegmentLog: format, torn tails, bounds, tags, deletes and prunes (synchronous, no event loop)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ooo_storage.errors import CorruptObject, HistoryTrimmed, JournalFull, NotFound, StorageError
from ooo_storage.journal import JournalOptions, SegmentLog
from ooo_storage.journal.format import ENTRY_SIZE

SMALL = JournalOptions(max_files=4, max_file_size=1024, max_chunk=512)


def _files(directory: Path, suffix: str) -> list[Path]:
    return sorted(directory.glob(f"*{suffix}"))


def _disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def test_append_read_delete_and_reopen(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        assert (log.oldest, log.newest, log.length, log.next_index) == (None, None, 0, 0)
        assert log.append(b"a", b"bb") == 0
        assert log.append(b"ccc") == 2
        assert log.read(2, 0) == [b"ccc", b"a"]
        assert log.delete(0, 0, 99) == 1  # repeated and absent indexes are ignored
        with pytest.raises(NotFound, match="entry 0 was deleted"):
            log.read(0)
        with pytest.raises(NotFound, match="not appended yet"):
            log.read(3)
    with SegmentLog(tmp_path) as log:
        assert (log.oldest, log.newest, log.length, log.next_index) == (1, 2, 2, 3)
        assert list(log.scan()) == [(1, b"bb"), (2, b"ccc")]


def test_items_must_be_bytes_and_fit_in_a_read(tmp_path: Path) -> None:
    with SegmentLog(tmp_path, SMALL) as log:
        with pytest.raises(TypeError, match="bytes"):
            log.append("text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="larger than max_chunk"):
            log.append(b"x" * 513)
        log.append(b"x" * 300, b"y" * 300)
        with pytest.raises(ValueError, match="exceeds max_chunk"):
            log.read(0, 1)
        assert log.next_index == 2


@pytest.mark.parametrize("damage", ["half entry", "bad entry crc", "data missing", "bad data", "orphan data"])
def test_a_torn_tail_is_cut_at_open_and_never_returned(tmp_path: Path, damage: str) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(b"first", b"second", b"third")
    idx, dat = _files(tmp_path, ".idx")[0], _files(tmp_path, ".dat")[0]
    if damage == "half entry":
        os.truncate(idx, 2 * ENTRY_SIZE + 20)
    elif damage == "bad entry crc":
        raw = bytearray(idx.read_bytes())
        raw[2 * ENTRY_SIZE + 3] ^= 1
        idx.write_bytes(raw)
    elif damage == "data missing":
        os.truncate(dat, len(b"firstsecond") + 2)
    elif damage == "bad data":
        raw = bytearray(dat.read_bytes())
        raw[-1] ^= 0x40
        dat.write_bytes(raw)
    else:  # an append that died after its data, before its entries
        with dat.open("ab") as out:
            out.write(b"never indexed")
    with SegmentLog(tmp_path) as log:
        kept = 3 if damage == "orphan data" else 2
        assert [item for _, item in log.scan()] == [b"first", b"second", b"third"][:kept]
        assert log.append(b"after") == kept  # the next append takes the cut place
        assert log.read(kept) == [b"after"]
    assert idx.stat().st_size == (kept + 1) * ENTRY_SIZE
    assert dat.stat().st_size == len(b"firstsecondthird"[: 5 + 6 + 5 * (kept == 3)]) + len(b"after")


def test_a_data_file_left_without_its_index_is_removed(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(b"kept")
    orphan = tmp_path / f"journal_{7:020d}.dat"  # a prune that died between its two unlinks
    orphan.write_bytes(b"old data")
    with SegmentLog(tmp_path) as log:
        assert list(log.scan()) == [(0, b"kept")]
    assert not orphan.exists()


def test_damage_in_an_older_item_is_reported_not_returned(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(b"one", b"two", b"three")
    dat = _files(tmp_path, ".dat")[0]
    raw = bytearray(dat.read_bytes())
    raw[4] ^= 1  # inside "two"; the newest item is fine, so nothing is cut
    dat.write_bytes(raw)
    with SegmentLog(tmp_path) as log:
        assert log.read(0, 2) == [b"one", b"three"]
        with pytest.raises(CorruptObject, match="data of entry 1"):
            log.read(1)
        with pytest.raises(CorruptObject):
            list(log.scan())
        assert isinstance(CorruptObject(), StorageError)


def test_segments_rotate_and_files_never_exceed_the_bound(tmp_path: Path) -> None:
    options = JournalOptions(max_files=3, max_file_size=1000, max_chunk=400, when_full="error")
    with SegmentLog(tmp_path, options) as log:
        appended = 0
        with pytest.raises(JournalFull, match="full .3 files of 1000 bytes.*when_full='evict'"):
            while True:
                log.append(b"z" * 100)
                appended += 1
                assert _disk_bytes(tmp_path) <= 3 * 1000
        assert appended == 3 * (1000 // (100 + ENTRY_SIZE))
        assert len(_files(tmp_path, ".idx")) == 3
        # consuming the oldest segment makes room again (it is removed as soon as it is all deleted)
        log.delete(*range(6))
        assert len(_files(tmp_path, ".idx")) == 2
        log.append(b"z" * 100)
        assert _disk_bytes(tmp_path) <= 3 * 1000


def test_evict_keeps_the_newest_items_within_the_bound(tmp_path: Path) -> None:
    options = JournalOptions(max_files=3, max_file_size=1000, max_chunk=400, when_full="evict")
    with SegmentLog(tmp_path, options) as log:
        for number in range(100):
            log.append(b"%03d" % number + b"." * 97)
            assert _disk_bytes(tmp_path) <= 3 * 1000
        assert log.newest == 99 and log.oldest is not None and log.oldest > 80
        with pytest.raises(HistoryTrimmed, match="pruned"):
            log.chunk(0)
        assert [int(item[:3]) for _, item in log.scan(log.oldest)] == list(range(log.oldest, 100))
    with SegmentLog(tmp_path, options) as log:  # after a restart, what is before is unknown: trimmed
        with pytest.raises(HistoryTrimmed):
            log.chunk(log.first_index - 1)
        assert log.next_index == 100


def test_indexes_continue_after_everything_was_pruned(tmp_path: Path) -> None:
    options = JournalOptions(max_files=2, max_file_size=400, max_chunk=400)
    with SegmentLog(tmp_path, options) as log:
        for _ in range(4):
            log.append(b"q" * 100)
        log.delete(*range(4))
        log.prune()
        assert (log.length, log.oldest) == (0, None)
    with SegmentLog(tmp_path, options) as log:
        assert log.append(b"next") == 4
        assert list(log.scan()) == [(4, b"next")]


def test_prune_by_age_drops_old_segments_but_keeps_the_newest(tmp_path: Path) -> None:
    options = JournalOptions(max_files=8, max_file_size=400, max_chunk=400)
    with SegmentLog(tmp_path, options) as log:
        for _ in range(6):
            log.append(b"o" * 150)
        assert len(log.segments) == 3
        assert log.prune(max_age=3600) == 0
        time.sleep(0.01)  # the items must be older than max_age: this is the age, not a sync
        assert log.prune(max_age=0.005) == 2
        assert [index for index, _ in log.scan(4)] == [4, 5]


def test_seek_finds_the_first_entry_after_a_tag(tmp_path: Path) -> None:
    options = JournalOptions(max_files=8, max_file_size=300, max_chunk=300)
    with SegmentLog(tmp_path, options) as log:
        for revision in range(1, 40, 3):
            log.append_tagged((revision, b"r%d" % revision), (None, b"same revision"))
        assert len(log.segments) > 3
        for tag in range(0, 45):
            index = log.seek(tag)
            tags = [log.entry(i).tag for i in range(log.next_index)]
            assert index == next((i for i, t in enumerate(tags) if t > tag), log.next_index)
        with pytest.raises(ValueError, match="never decrease"):
            log.append_tagged((5, b"back in time"))
    with SegmentLog(tmp_path, options) as log:
        assert log.seek(34) == log.seek(36) == log.next_index - 2


def test_two_logs_with_the_lock_append_without_overlap(tmp_path: Path) -> None:
    options = JournalOptions(max_files=50, max_file_size=500, max_chunk=500)
    with SegmentLog(tmp_path, options) as one, SegmentLog(tmp_path, options) as two:
        for number in range(40):
            (one if number % 3 else two).append(b"n%d" % number)
        assert one.refresh() >= 0 and two.refresh() >= 0
        assert [item for _, item in one.scan()] == [b"n%d" % n for n in range(40)]
        assert one.next_index == two.next_index == 40


def test_a_co_writer_that_died_half_way_is_cut_by_the_next_writer(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as one, SegmentLog(tmp_path) as two:
        one.append(b"a", b"b")
        two.append(b"c" * 10, b"d" * 10)  # "two" dies in the middle of writing its entries:
        idx = _files(tmp_path, ".idx")[0]
        os.truncate(idx, 3 * ENTRY_SIZE + 30)
        assert one.append(b"e") == 3  # entry 2 is whole and kept, the torn half of 3 is cut
        assert list(one.scan()) == [(0, b"a"), (1, b"b"), (2, b"c" * 10), (3, b"e")]
    with SegmentLog(tmp_path) as log:
        assert [item for _, item in log.scan()] == [b"a", b"b", b"c" * 10, b"e"]


def test_prune_counts_deletes_made_by_another_process(tmp_path: Path) -> None:
    options = JournalOptions(max_files=8, max_file_size=400, max_chunk=400)
    with SegmentLog(tmp_path, options) as producer, SegmentLog(tmp_path, options) as consumer:
        for _ in range(6):
            producer.append(b"w" * 150)  # segments of 2 items: [0, 1] [2, 3] [4, 5]
        consumer.refresh()
        consumer.delete(2, 3)  # not the oldest segment: the consumer leaves it to prune
        assert producer.length == 6  # the producer has not met those deletes yet
        assert producer.prune() == 1  # it reads the flags: [2, 3] is all deleted
        assert [index for index, _ in producer.scan()] == [0, 1, 4, 5]
        consumer.delete(0, 1)  # the oldest segment: dropped at once by the consumer
        assert producer.prune() == 0
        assert [index for index, _ in producer.scan()] == [4, 5]
