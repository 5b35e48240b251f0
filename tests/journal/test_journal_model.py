"""SegmentLog against an in-memory model: appends, reads, deletes, prunes and restarts in any order
(hypothesis), with small segments so that rotation, reclaim and the size bound are exercised."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ooo_storage.errors import HistoryTrimmed, JournalFull, NotFound
from ooo_storage.journal import JournalOptions, SegmentLog

items = st.binary(min_size=0, max_size=120)


class LogModel(RuleBasedStateMachine):
    """The model: ``live`` maps index -> item; ``next`` is the next index. With ``evict``, the
    journal may drop its oldest segments: what remains must be the model's items from
    ``first_index`` on."""

    evict = False

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="journal-model-"))
        self.options = JournalOptions(
            max_files=4, max_file_size=600, max_chunk=300, when_full="evict" if self.evict else "error"
        )
        self.log = SegmentLog(self.directory, self.options)
        self.live: dict[int, bytes] = {}
        self.next = 0

    def _forget_evicted(self) -> None:
        for index in [i for i in self.live if i < self.log.first_index]:
            del self.live[index]

    @rule(batch=st.lists(items, min_size=1, max_size=5))
    def append(self, batch: list[bytes]) -> None:
        try:
            first = self.log.append(*batch)
        except JournalFull:
            event("append refused: journal full")
            assert not self.evict
            assert self.log.next_index == self.next  # nothing of a refused append is written
            return
        assert first == self.next
        for offset, item in enumerate(batch):
            self.live[first + offset] = item
        self.next += len(batch)
        if self.log.first_index > min(self.live, default=self.next):
            event("oldest segment evicted")
        self._forget_evicted()

    @precondition(lambda self: self.next > 0)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, self.next))
        if index in self.live:
            assert self.log.read(index) == [self.live[index]]
        else:
            with pytest.raises(NotFound):
                self.log.read(index)

    @precondition(lambda self: self.next > 0)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        indexes = data.draw(st.lists(st.integers(0, self.next), max_size=6))
        expected = len({i for i in indexes if i in self.live})
        assert self.log.delete(*indexes) == expected
        for index in indexes:
            self.live.pop(index, None)
        self._forget_evicted()

    @rule()
    def prune(self) -> None:
        self.log.prune()
        self._forget_evicted()
        assert all(index >= self.log.first_index for index in self.live)  # prune drops no live item

    @rule()
    def restart(self) -> None:
        self.log.close()
        self.log = SegmentLog(self.directory, self.options)

    @invariant()
    def matches_the_model(self) -> None:
        assert self.log.next_index == self.next
        assert self.log.length == len(self.live)
        assert self.log.oldest == min(self.live, default=None)
        assert self.log.newest == max(self.live, default=None)
        try:
            assert list(self.log.scan()) == sorted(self.live.items())
        except HistoryTrimmed:
            assert self.evict

    @invariant()
    def within_the_bound(self) -> None:
        on_disk = sum(path.stat().st_size for path in self.directory.iterdir())
        assert on_disk <= self.options.max_files * self.options.max_file_size
        assert len(list(self.directory.glob("*.idx"))) <= self.options.max_files

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class EvictingLogModel(LogModel):
    evict = True


_SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLogModel = LogModel.TestCase
TestLogModel.settings = _SETTINGS
TestEvictingLogModel = EvictingLogModel.TestCase
TestEvictingLogModel.settings = _SETTINGS
