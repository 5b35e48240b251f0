"""Transactions (issue 12): ``Layered.commit``, ``store.transaction()``, ``transaction_run``, the
rules of ``protocol.txn`` and the events a transaction emits, on every layer that supports them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, NotFound, Options
from ooo_storage.errors import (
    Conflict,
    InvalidTransaction,
    NoSpace,
    NotSupported,
    StorageError,
    TransactionTimeout,
)
from ooo_storage.layered import HistoryOptions
from ooo_storage.layers import SOSLayer
from ooo_storage.protocol.objects import make_object
from ooo_storage.protocol.txn import MAX_KEY_BYTES, Committed, TxnOp, conflicts, plan, version
from ooo_storage.transaction import Transaction

BACKENDS = ["memory", "leveldb", "memory+leveldb", "memory+leveldb-sync"]


def _open(backend: str, path: Path) -> Layered:
    memory = MemoryLayer() if backend.startswith("memory") else None
    embedded = None
    if "leveldb" in backend:
        embedded = LevelDBLayer(str(path / "db"), sync=backend.endswith("-sync"))
    return Layered(memory=memory, embedded=embedded)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Layered]:
    s = _open(request.param, tmp_path)
    await s.start(Options(lossless_watch=True))
    yield s
    await s.close()


def _set(key: str, data: Any) -> TxnOp:
    return TxnOp("set", key, data)


async def _value(store: Layered, key: str) -> Any:
    try:
        return (await store.get(key)).value
    except NotFound:
        return None


# -- the rules (pure) --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ops", "expect", "why"),
    [
        ([], None, "no ops"),
        ([_set("a", 1), _set("a", 2)], None, '"a" appears twice'),
        ([_set("a", 1), TxnOp("del", "a")], None, '"a" appears twice'),
        ([_set("a/*", 1)], None, "set on the glob a/\\*"),
        ([TxnOp("patch", "a/*", {})], None, "patch on the glob"),
        ([TxnOp("del", "a/*"), _set("a/1", 1)], None, 'the delete of "a/\\*" also matches "a/1"'),
        ([TxnOp("del", "a/*"), TxnOp("del", "a/1")], None, 'also matches "a/1"'),
        ([TxnOp("put", "a", 1)], None, "unknown op 'put'"),  # type: ignore[arg-type]
        ([_set("a//b", 1)], None, "invalid path"),
        ([_set("a", None)], None, "set of a without data"),
        (["set a 1"], None, "not an op"),
        ([_set("a", 1)], {"a": 0}, "0 is not a version"),
        ([_set("a", 1)], {"a": True}, "True is not a version"),
        ([_set("a", 1)], {"a": "5"}, "'5' is not a version"),
        ([_set("a", 1)], {"b/*": None}, 'invalid key "b/\\*"'),
    ],
)
def test_malformed_transactions_are_refused_with_the_rule_broken(ops: Any, expect: Any, why: str) -> None:
    with pytest.raises(InvalidTransaction, match=f"^storage: invalid transaction: .*{why}"):
        plan(ops, expect)


@pytest.mark.parametrize(
    ("ops", "expect", "why"),
    [
        ([_set("a" * (MAX_KEY_BYTES + 1), 1)], None, f"op 0: key longer than {MAX_KEY_BYTES} bytes"),
        ([TxnOp("del", "a/" + "*" * MAX_KEY_BYTES)], None, f"op 0: key longer than {MAX_KEY_BYTES} bytes"),
        ([_set("a", 1)], {"k" * 150_000: None}, f"expect: key longer than {MAX_KEY_BYTES} bytes"),
    ],
)
def test_keys_longer_than_a_url_can_carry_are_refused(ops: Any, expect: Any, why: str) -> None:
    """A 150 000-character key was committed, then no GET or DELETE could reach it (request line
    over 8 190 bytes); the refusal shows only the first 100 characters of the key."""
    with pytest.raises(InvalidTransaction) as caught:
        plan(ops, expect)
    text = str(caught.value)
    assert text.startswith(f"storage: invalid transaction: {why}: "), text[:200]
    assert len(text) < 250


def test_the_longest_key_is_accepted() -> None:
    key = "k/" + "a" * (MAX_KEY_BYTES - 2)
    assert plan([_set(key, 1)], {key: None}).locked == (key,)


@pytest.mark.parametrize(
    ("ops", "expect", "why"),
    [
        ([_set("a\x00" + "b" * 500, 1)], None, 'op 0: invalid path "a\\u0000' + "b" * 98 + '"'),
        ([_set("a", 1)], {"x\ty" + "z" * 500: None}, 'expect: invalid key "x\\ty' + "z" * 97 + '" (a key'),
        ([_set("c" * 500, 1), _set("c" * 500, 2)], None, 'op 1: "' + "c" * 100 + '" appears twice'),
        ([TxnOp("del", "d" * 300 + "/*"), _set("d" * 300 + "/1", 1)], None,
         'the delete of "' + "d" * 100 + '" also matches "' + "d" * 100 + '": split'),
    ],
    ids=["invalid-path", "invalid-key", "twice", "also-matches"],
)
def test_refusals_show_the_client_key_quoted_as_json_and_cut(ops: Any, expect: Any, why: str) -> None:
    """They used to echo the whole key in Python repr ('a\\x00b')."""
    with pytest.raises(InvalidTransaction) as caught:
        plan(ops, expect)
    assert why in str(caught.value), str(caught.value)[:300]
    assert "'" not in str(caught.value)


def test_a_plan_locks_written_and_expected_keys_in_sorted_order() -> None:
    p = plan([_set("b", 1), TxnOp("del", "x/*"), TxnOp("patch", "a", {})], {"c": None, "b": 7})
    assert p.locked == ("a", "b", "c") and p.globs
    assert p.expect == {"c": None, "b": 7}
    # plain tuples are ops too; two glob deletes may overlap each other
    assert not plan([("set", "k", 1)]).globs
    assert plan([TxnOp("del", "x/*"), TxnOp("del", "*")]).locked == ()


def test_a_version_tells_a_recreated_key_from_the_old_one() -> None:
    fresh = make_object(10, 0, "a", "a", b"1")
    assert version(fresh) == 10 and version(fresh._replace(updated=12)) == 12
    recreated = make_object(20, 0, "a", "a", b"1")
    assert conflicts({"a": version(fresh)}, {"a": recreated}) == ["a"]
    assert conflicts({"a": None, "b": 10}, {"a": None, "b": fresh}) == []
    assert conflicts({"b": None, "a": 10}, {"a": None, "b": fresh}) == ["a", "b"]


# -- commit ------------------------------------------------------------------------------------------
async def test_a_transaction_applies_every_op_with_one_revision(store: Layered) -> None:
    seen: list[Event] = []
    store.on_commit(seen.append)
    await store.set("acc/a", {"balance": 100, "owner": "ana"})
    await store.set("hold/1", 1)
    a = await store.get("acc/a")
    before = store.revision
    done = await store.commit(
        [
            TxnOp("patch", "acc/a", {"balance": 90}),
            _set("acc/b", b'{"balance": 10}'),
            TxnOp("del", "hold/1"),
            TxnOp("del", "hold/2"),  # missing: changes nothing, no event
        ],
        expect={"acc/a": version(a), "acc/b": None},
    )
    assert done == Committed(before + 1, ["a", "b", "", ""]) and store.revision == before + 1
    assert await _value(store, "acc/a") == {"balance": 90, "owner": "ana"}
    assert await _value(store, "acc/b") == {"balance": 10}
    assert await _value(store, "hold/1") is None
    events = seen[2:]
    assert [(e.key, e.operation, e.revision, e.txn, e.more) for e in events] == [
        ("acc/a", "set", before + 1, 3, True),
        ("acc/b", "set", before + 1, 3, True),
        ("hold/1", "del", before + 1, 3, False),
    ]
    assert events[0].object == await store.get("acc/a") and events[2].object is not None
    assert (seen[0].txn, seen[0].more) == (0, False)  # a plain write's event


async def test_a_conflict_applies_nothing_and_names_the_keys(store: Layered) -> None:
    await store.set("a", 1)
    a = await store.get("a")
    await store.set("a", 2)  # somebody changed it since
    await store.set("c", 3)
    seen: list[Event] = []
    store.on_commit(seen.append)
    revision = store.revision
    with pytest.raises(Conflict) as caught:
        await store.commit(
            [_set("a", 10), _set("b", 20), TxnOp("del", "c")],
            expect={"a": version(a), "c": None, "d": None},
        )
    assert caught.value.keys == ["a", "c"] and isinstance(caught.value, StorageError)
    assert str(caught.value) == "storage: conflict: a, c changed since read; read again and retry"
    assert [await _value(store, k) for k in "abc"] == [2, None, 3]
    assert seen == [] and store.revision == revision


async def test_a_key_deleted_and_created_again_conflicts(store: Layered) -> None:
    await store.set("k", 1)
    old = version(await store.get("k"))
    await store.delete("k")
    await store.set("k", 1)  # same data, fresh object: updated 0 again
    with pytest.raises(Conflict):
        await store.commit([_set("k", 2)], expect={"k": old})
    fresh = await store.get("k")
    assert fresh.updated == 0
    await store.commit([_set("k", 2)], expect={"k": version(fresh)})
    updated = await store.get("k")
    assert updated.created == fresh.created and version(updated) == updated.updated > 0
    await store.commit([_set("k", 3)], expect={"k": version(updated)})
    assert await _value(store, "k") == 3


async def test_bad_data_or_a_failed_merge_applies_nothing(store: Layered) -> None:
    await store.set("doc", {"a": {"b": 1}})
    revision = store.revision
    with pytest.raises(InvalidTransaction, match=r"^storage: invalid transaction: op 1 \(y\): .*not JSON"):
        await store.commit([_set("x", 1), _set("y", b"{nope")])
    with pytest.raises(InvalidTransaction, match=r"op 1 \(doc\): merge: patch value must be object"):
        await store.commit([_set("x", 1), TxnOp("patch", "doc", {"a": 5})])
    with pytest.raises(NotFound, match=r"^storage: not found: gone \(op 1 patches a missing key\)"):
        await store.commit([_set("x", 1), TxnOp("patch", "gone", {"a": 5})])
    assert await _value(store, "x") is None and store.revision == revision
    assert await _value(store, "doc") == {"a": {"b": 1}}


async def test_check_merged_sees_each_merged_patch_and_a_refusal_applies_nothing(store: Layered) -> None:
    await store.set("doc", {"a": 1})
    revision, seen = store.revision, []

    def at_most_20_bytes(key: str, merged: bytes) -> None:
        seen.append((key, merged))
        if len(merged) > 20:
            raise ValueError(f"{key}: {len(merged)} bytes")

    with pytest.raises(ValueError, match="^doc: 21 bytes$"):
        await store.commit([_set("x", 1), TxnOp("patch", "doc", {"b": "y" * 7})], check_merged=at_most_20_bytes)
    assert await _value(store, "x") is None and store.revision == revision
    assert await _value(store, "doc") == {"a": 1}
    await store.commit([_set("x", 1), TxnOp("patch", "doc", {"b": "y" * 6})], check_merged=at_most_20_bytes)
    assert seen == [("doc", b'{"a":1,"b":"yyyyyyy"}'), ("doc", b'{"a":1,"b":"yyyyyy"}')]
    assert await _value(store, "doc") == {"a": 1, "b": "yyyyyy"}


async def test_a_glob_delete_in_a_transaction_is_one_event_after_earlier_ones(store: Layered) -> None:
    for i in range(3):
        await store.set(f"tmp/{i}", i)
    delivered: list[Event] = []
    store.watch(delivered.append)
    seen: list[Event] = []
    store.on_commit(seen.append)
    done = await store.commit([TxnOp("del", "tmp/*"), _set("log/1", ["cleared"])])
    assert await store.get_list("tmp/*") == [] and await _value(store, "log/1") == ["cleared"]
    assert [(e.key, e.operation, e.object, e.txn, e.more) for e in seen] == [
        ("tmp/*", "del", None, 2, True),
        ("log/1", "set", seen[1].object, 2, False),
    ]
    assert done.revision == seen[0].revision == seen[1].revision
    assert store._chan is not None
    await store._chan.drain()
    assert sorted(e.key for e in delivered) == ["log/1", "tmp/*"]
    # a glob that matches nothing changes nothing
    revision = store.revision
    assert (await store.commit([TxnOp("del", "none/*")])).revision == revision


async def test_transactions_persist_across_a_restart(tmp_path: Path) -> None:
    for backend in ("leveldb", "memory+leveldb-sync"):
        path = tmp_path / backend
        store = _open(backend, path)
        await store.start()
        await store.set("gone", 0)
        await store.commit([_set("a", 1), _set("b", 2), TxnOp("del", "gone")])
        await store.close()
        again = _open(backend, path)
        await again.start()
        assert [o.path for o in await again.get_list("*")] == ["a", "b"]
        await again.close()


# -- locks and deadlines -------------------------------------------------------------------------------
async def test_a_transaction_waits_for_a_lock_holder_and_then_sees_its_write(store: Layered) -> None:
    await store.set("a", 1)
    seen = version(await store.get("a"))
    held = await store.get_and_lock("a")
    commit = asyncio.ensure_future(store.commit([_set("a", 100)], expect={"a": seen}))
    for _ in range(20):  # it cannot get past the lock, however long it runs
        await asyncio.sleep(0)
    assert not commit.done()
    await store.set_and_unlock("a", held.value + 1)
    with pytest.raises(Conflict):  # the holder's write came first: the expectation is stale
        await commit
    assert await _value(store, "a") == 2


async def test_a_lock_held_past_the_deadline_fails_the_transaction_whole(store: Layered) -> None:
    await store.set("b", 1)
    await store.get_and_lock("b")
    revision = store.revision
    with pytest.raises(TransactionTimeout, match=r"^storage: transaction timeout: b still locked after 0.05 s") as caught:
        await store.commit([_set("a", 1), _set("b", 2)], timeout=0.05)
    assert isinstance(caught.value, Conflict) and caught.value.keys == ["b"]
    assert await _value(store, "a") is None and store.revision == revision
    await store.unlock("b")
    # the timed-out transaction left no lock behind: both keys are writable at once
    await store.commit([_set("a", 1), _set("b", 2)], timeout=0.05)
    assert store._locks.busy("a") is False and len(store._locks) == 0


async def test_concurrent_transfers_keep_the_total(store: Layered) -> None:
    """64 tasks moving money between 5 accounts with retries: no update is lost, the total holds
    at every commit (checked by an observer on every transaction's last event)."""
    accounts = [f"acc/{i}" for i in range(5)]
    for key in accounts:
        await store.set(key, 100)
    totals: list[int] = []

    def audit(event: Event) -> None:
        if not event.more:
            totals.append(sum(store.peek(k).value for k in accounts) if store.mirrored else 500)

    store.on_commit(audit)

    async def transfer(n: int) -> None:
        src, dst = accounts[n % 5], accounts[(n * 3 + 1) % 5]

        async def move(tx: Transaction) -> None:
            a, b = await tx.get(src), await tx.get(dst)
            assert a is not None and b is not None
            if src != dst:
                tx.set(src, a.value - 7)
                tx.set(dst, b.value + 7)

        await store.transaction_run(move, retries=200)

    await asyncio.gather(*(transfer(n) for n in range(64)))
    assert sum([await _value(store, k) for k in accounts]) == 500
    assert totals and set(totals) == {500}


# -- the transaction object ------------------------------------------------------------------------
async def test_the_context_manager_commits_on_exit_and_nothing_on_error(store: Layered) -> None:
    await store.set("a", {"n": 1})
    async with store.transaction() as tx:
        a = await tx.get("a")
        assert a is not None and await tx.get("missing") is None
        tx.set("b", {"n": a.value["n"] + 1})
        tx.patch("a", {"m": 2})
        tx.delete("missing")
        with pytest.raises(InvalidTransaction, match="b written twice"):
            tx.set("b", 0)
    assert tx.committed is not None and tx.committed.indexes == ["b", "a", ""]
    assert await _value(store, "a") == {"m": 2, "n": 1} and await _value(store, "b") == {"n": 2}

    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            tx.set("c", 1)
            raise RuntimeError("changed my mind")
    assert await _value(store, "c") is None


async def test_a_key_read_as_missing_that_appears_is_a_conflict(store: Layered) -> None:
    with pytest.raises(Conflict) as caught:
        async with store.transaction() as tx:
            assert await tx.get("new") is None
            await store.set("new", ["someone else"])  # between the read and the commit
            tx.set("new", ["mine"])
    assert caught.value.keys == ["new"] and await _value(store, "new") == ["someone else"]
    with pytest.raises(Conflict):  # a second read that sees a change fails at once
        async with store.transaction() as tx:
            await tx.get("new")
            await store.set("new", ["again"])
            await tx.get("new")


async def test_a_transaction_past_its_deadline_commits_nothing(store: Layered) -> None:
    with pytest.raises(TransactionTimeout, match="deadline passed before the commit"):
        async with store.transaction(timeout=0.0) as tx:
            tx.set("late", 1)
    assert await _value(store, "late") is None


async def test_transaction_run_retries_conflicts_then_gives_up(store: Layered) -> None:
    await store.set("n", 0)
    attempts = 0

    async def bump(tx: Transaction) -> int:
        nonlocal attempts
        attempts += 1
        n = await tx.get("n")
        assert n is not None
        if attempts <= 2:
            await store.set("n", n.value + 100)  # a concurrent writer wins twice
        tx.set("n", n.value + 1)
        return attempts

    assert await store.transaction_run(bump, retries=3) == 3
    assert await _value(store, "n") == 201

    async def always_loses(tx: Transaction) -> None:
        n = await tx.get("n")
        assert n is not None
        await store.set("n", n.value + 1)
        tx.set("n", 0)

    with pytest.raises(Conflict):
        await store.transaction_run(always_loses, retries=2)
    assert await _value(store, "n") == 204


# -- layers without an atomic batch, failures -------------------------------------------------------
async def test_sos_refuses_transactions_clearly(tmp_path: Path) -> None:
    store = Layered(memory=MemoryLayer(), embedded=SOSLayer(str(tmp_path / "sos")))
    await store.start()
    try:
        with pytest.raises(NotSupported, match="transactions are not supported by SOSLayer"):
            await store.commit([_set("a", 1)])
        assert await _value(store, "a") is None
    finally:
        await store.close()


@pytest.mark.parametrize("sync", [False, True])
async def test_a_transaction_that_fills_the_disk_applies_nothing(tmpfs: Any, sync: bool) -> None:
    """A real 2 MiB filesystem: a transaction too large for it fails whole (NoSpace), memory and
    watchers untouched; after freeing space, a restart finds none of it."""
    root = tmpfs("2m")
    ballast = root / "ballast"
    ballast.write_bytes(b"\0" * 1_200_000)
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(root / "db"), sync=sync))
    await store.start()
    await store.set("keep", 1)
    seen: list[Event] = []
    store.on_commit(seen.append)
    ops = [_set("keep", 2), *(_set(f"big/{i}", {"x": "x" * 200_000}) for i in range(6))]
    with pytest.raises(NoSpace):
        await store.commit(ops)
    assert seen == [] and await _value(store, "keep") == 1 and await store.keys() == ["keep"]
    ballast.unlink()
    await store.close()
    again = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(root / "db")))
    await again.start()
    assert await again.keys() == ["keep"] and await _value(again, "keep") == 1
    await again.close()


# -- history --------------------------------------------------------------------------------------------
async def test_the_history_replays_a_transaction_whole(tmp_path: Path) -> None:
    def open_() -> Layered:
        return Layered(
            memory=MemoryLayer(),
            embedded=LevelDBLayer(str(tmp_path / "db")),
            history=HistoryOptions(tmp_path / "history"),
        )

    store = open_()
    await store.start()
    await store.set("a", 1)
    since = store.revision
    await store.set("b", 1)
    await store.commit([_set("a", 2), TxnOp("del", "b"), _set("c", 3)])
    await store.close()
    again = open_()
    await again.start()
    try:
        replayed = []
        async for event in again.events(since=since):
            replayed.append(event)
            if len(replayed) == 4:
                break
        txn = replayed[1:]
        assert [(e.key, e.operation, e.txn, e.more) for e in txn] == [
            ("a", "set", 3, True), ("b", "del", 3, True), ("c", "set", 3, False),
        ]
        assert len({e.revision for e in txn}) == 1 and txn[0].revision > replayed[0].revision
        assert txn[0].object is not None and txn[0].object.value == 2
        assert (replayed[0].txn, replayed[0].more) == (0, False)
    finally:
        await again.close()


async def test_a_commit_cancelled_while_its_durable_write_is_in_flight_is_applied_whole(
    tmp_path: Path,
) -> None:
    """Once the batch is handed to the group commit it reaches the disk whatever the caller does:
    a cancelled committer still puts it in memory and tells the observers (then is cancelled), so
    memory never falls behind the disk."""
    layer = LevelDBLayer(str(tmp_path / "db"), sync=True)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    commit = asyncio.ensure_future(store.commit([_set("a", 1), _set("b", 2)]))
    while not layer._pending and layer._committer is None:  # until the batch is handed over
        await asyncio.sleep(0)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert [await _value(store, k) for k in "ab"] == [1, 2]
    assert [(e.key, e.txn, e.more) for e in seen] == [("a", 2, True), ("b", 2, False)]
    assert len(store._locks) == 0 and store._gate.idle
    await store.close()
    again = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")))
    await again.start()
    assert [await _value(again, k) for k in "ab"] == [1, 2]
    await again.close()


async def test_keys_without_events_leave_the_markers_right_for_each_observer(tmp_path: Path) -> None:
    """``no_broadcast_keys``: an observer sees the transaction's broadcast events only, marked as
    a whole (its last one ends it); a silent observer sees all of them, marked as a whole too."""
    store = Layered(memory=MemoryLayer())
    await store.start(Options(no_broadcast_keys=["quiet/*"]))
    loud: list[Event] = []
    every: list[Event] = []
    store.on_commit(loud.append)
    store.on_commit(every.append, silent=True)
    await store.commit([_set("a", 1), _set("quiet/1", 2)])
    assert [(e.key, e.txn, e.more) for e in loud] == [("a", 1, False)]
    assert [(e.key, e.txn, e.more) for e in every] == [("a", 2, True), ("quiet/1", 2, False)]
    await store.close()


async def test_a_set_cancelled_while_its_durable_write_is_in_flight_still_reaches_memory(
    tmp_path: Path,
) -> None:
    """The same for a plain durable ``set``: its group commit writes it whatever the caller does,
    so memory and the watchers get it too (they missed it before: memory behind the disk, no
    event) and only then is the caller cancelled."""
    layer = LevelDBLayer(str(tmp_path / "db"), sync=True)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    write = asyncio.ensure_future(store.set("a", 1))
    while not layer._pending and layer._committer is None:  # until the write is handed over
        await asyncio.sleep(0)
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert await _value(store, "a") == 1
    assert [(e.key, e.operation) for e in seen] == [("a", "set")]
    assert len(store._locks) == 0 and store._gate.idle
    await store.close()
    again = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")))
    await again.start()
    assert await _value(again, "a") == 1
    await again.close()
