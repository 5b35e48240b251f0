"""Transactions against a serial model (issue 12, hypothesis stateful): plain writes and batches of
concurrent transactions (``asyncio.gather`` of several commits) with current, stale and
must-not-exist expectations. After each batch the store must equal the model after applying the
committed transactions one at a time in the order of their revisions, each one's expectations
holding at its turn; a transaction refused with Conflict must have had an expectation broken
before the batch or by a committed transaction of the batch; every committed transaction's events
share its revision, come in op order and are marked ``txn``/``more``."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, Options
from ooo_storage.errors import Conflict
from ooo_storage.protocol.merge import merge
from ooo_storage.protocol.txn import Committed, TxnOp, version

KEYS = ["k0", "k1", "k2", "g/0", "g/1"]

keys_ = st.sampled_from(KEYS)
ops_ = st.lists(
    st.tuples(st.sampled_from(["set", "patch", "del"]), keys_, st.integers(0, 9)),
    min_size=1, max_size=3, unique_by=lambda op: op[1],
)
expects_ = st.dictionaries(keys_, st.sampled_from(["current", "stale", "absent"]), max_size=3)
txns_ = st.lists(st.tuples(ops_, expects_, st.booleans()), min_size=1, max_size=4)

State = dict[str, tuple[Any, int]]
"""The model: key -> (value, generation); every change of a key gives it a new generation."""


class TxnModel(RuleBasedStateMachine):
    sync = False

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="txn-model-"))
        self.loop = asyncio.new_event_loop()
        self.store = Layered(
            memory=MemoryLayer(), embedded=LevelDBLayer(str(self.directory / "db"), sync=self.sync)
        )
        self.run(self.store.start(Options(lossless_watch=True)))
        self.events: list[Event] = []
        self.store.on_commit(self.events.append)
        self.state: State = {}
        self.generation = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _fresh(self) -> int:
        self.generation += 1
        return self.generation

    @rule(key=keys_, n=st.integers(0, 9))
    def plain_set(self, key: str, n: int) -> None:
        self.run(self.store.set(key, {"v": n}))
        self.state[key] = ({"v": n}, self._fresh())

    @rule(key=keys_)
    def plain_delete(self, key: str) -> None:
        if key in self.state:
            self.run(self.store.delete(key))
            del self.state[key]

    @rule(txns=txns_)
    def concurrent_transactions(self, txns: list[tuple[list[Any], dict[str, str], bool]]) -> None:
        before = dict(self.state)
        specs = [self._spec(ops, expects, glob, before) for ops, expects, glob in txns]
        start = len(self.events)

        async def together() -> list[Any]:
            commits = (self.store.commit(ops, expect) for ops, expect, _ in specs)
            return await asyncio.gather(*commits, return_exceptions=True)

        results = self.run(together())
        done = sorted(
            (result.revision, i) for i, result in enumerate(results) if isinstance(result, Committed)
        )
        state = dict(before)
        touched: set[str] = set()
        changing = []  # the committed transactions that changed something (no-ops emit nothing)
        for revision, i in done:
            ops, _, wanted = specs[i]
            for key, want in wanted.items():
                have = state.get(key)
                assert want == (None if have is None else have[1]), (
                    f"txn {i} committed though {key} was {have}, expected generation {want}"
                )
            changed = self._apply(ops, state)
            if changed:
                changing.append((revision, ops))
            touched |= changed
        for i, result in enumerate(results):
            if isinstance(result, Committed):
                continue
            assert isinstance(result, Conflict), result
            _, _, wanted = specs[i]
            broken = [
                k for k, want in wanted.items()
                if k in touched or want != (before[k][1] if k in before else None)
            ]
            assert broken, f"txn {i} refused with no broken expectation: {result}"
        self.state = state
        assert len({revision for revision, _ in changing}) == len(changing)
        self._check_events(self.events[start:], changing)

    def _spec(
        self, ops: list[Any], expects: dict[str, str], glob: bool, before: State
    ) -> tuple[list[TxnOp], dict[str, int | None], dict[str, int | None | str]]:
        """The commit's ops and expect, and what the model expects (generations, "stale")."""
        expect: dict[str, int | None] = {}
        wanted: dict[str, int | None | str] = {}
        for key, kind in expects.items():
            obj = self.store.peek(key)
            if kind == "absent":
                expect[key], wanted[key] = None, None
            elif kind == "current" and obj is not None:
                expect[key], wanted[key] = version(obj), before[key][1]
            else:  # stale: a version the key does not have
                expect[key], wanted[key] = (version(obj) - 1 if obj else 1), "stale"
        txn_ops = []
        for op, key, n in ops:
            if glob and key.startswith("g/"):
                continue
            if op == "patch" and not (expects.get(key) == "current" and key in before):
                op = "set"  # a patch needs a key that exists when the transaction commits
            txn_ops.append(TxnOp(op, key, {"p" if op == "patch" else "v": n} if op != "del" else None))
        if glob or not txn_ops:
            txn_ops.append(TxnOp("del", "g/*"))
        return txn_ops, expect, wanted

    def _apply(self, ops: list[TxnOp], state: State) -> set[str]:
        changed = set()
        for op in ops:
            doomed = [k for k in state if k.startswith("g/")] if op.key == "g/*" else [op.key]
            if op.op == "del":
                for key in doomed:
                    if state.pop(key, None) is not None:
                        changed.add(key)
                continue
            old = state[op.key][0] if op.op == "patch" else None
            state[op.key] = (merge(old, op.data) if op.op == "patch" else op.data, self._fresh())
            changed.add(op.key)
        return changed

    def _check_events(self, events: list[Event], committed: list[tuple[int, list[TxnOp]]]) -> None:
        by_revision: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_revision[event.revision].append(event)
        for revision, ops in committed:
            got = by_revision.get(revision, [])
            order = [op.key for op in ops]
            assert [e.key for e in got] == sorted((e.key for e in got), key=order.index)
            assert [(e.txn, e.more) for e in got] == [
                (len(got), i < len(got) - 1) for i in range(len(got))
            ], got

    @invariant()
    def store_equals_model(self) -> None:
        keys = self.run(self.store.keys())
        assert keys == sorted(self.state)
        for key in keys:
            assert self.store.peek(key).value == self.state[key][0]  # type: ignore[union-attr]


class DurableTxnModel(TxnModel):
    """The same with ``sync=True``: commits await the group commit, so they really interleave."""

    sync = True


_SETTINGS = settings(
    max_examples=40, stateful_step_count=12, deadline=None, database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain: its tracing is slow
    suppress_health_check=[HealthCheck.too_slow],
)
TestTxnModel = TxnModel.TestCase
TestTxnModel.settings = _SETTINGS
TestDurableTxnModel = DurableTxnModel.TestCase
TestDurableTxnModel.settings = _SETTINGS
