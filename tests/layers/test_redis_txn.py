"""Transactions on RedisLayer (issue 14 with issue 12): the storage transaction tests of
tests/test_transactions.py on a real Redis, and across two stores (nodes) on one Redis: one
revision and one stream entry per transaction, applied whole by every node, conflicts and locks
across nodes, a node whose view is behind, glob deletes and lock holders as in one process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
import test_transactions as shared_suite
from redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)
from redis_tail import caught_up, layer_of

from ooo_storage import Event, Layered, MemoryLayer, NotFound, Options
from ooo_storage.errors import Conflict, TransactionTimeout
from ooo_storage.layers import RedisLayer
from ooo_storage.protocol.txn import Committed, TxnOp, version

# The storage transaction tests that take a ``store``, here on Redis (with and without a mirror).
for _name in (
    "test_a_transaction_applies_every_op_with_one_revision",
    "test_a_conflict_applies_nothing_and_names_the_keys",
    "test_a_key_deleted_and_created_again_conflicts",
    "test_bad_data_or_a_failed_merge_applies_nothing",
    "test_check_merged_sees_each_merged_patch_and_a_refusal_applies_nothing",
    "test_a_glob_delete_in_a_transaction_is_one_event_after_earlier_ones",
    "test_a_transaction_waits_for_a_lock_holder_and_then_sees_its_write",
    "test_a_lock_held_past_the_deadline_fails_the_transaction_whole",
    "test_concurrent_transfers_keep_the_total",
    "test_the_context_manager_commits_on_exit_and_nothing_on_error",
    "test_a_key_read_as_missing_that_appears_is_a_conflict",
    "test_a_transaction_past_its_deadline_commits_nothing",
    "test_transaction_run_retries_conflicts_then_gives_up",
):
    globals()[_name] = getattr(shared_suite, _name)


@pytest.fixture(params=["memory+redis", "redis"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Layered]:  # noqa: F811
    memory = MemoryLayer() if request.param.startswith("memory") else None
    s = Layered(memory, RedisLayer(redis_server.url, f"t{uuid.uuid4().hex[:12]}"))
    await s.start(Options(lossless_watch=True))
    yield s
    await s.close()


class Two:
    """Two stores (nodes) on one Redis namespace, each recording what its observer saw."""

    def __init__(self, url: str) -> None:
        self.namespace = f"t{uuid.uuid4().hex[:12]}"
        self.url = url
        self.stores: list[Layered] = []
        self.seen: list[list[Event]] = []

    async def open(self) -> Layered:
        store = Layered(MemoryLayer(), RedisLayer(self.url, self.namespace))
        await store.start()
        seen: list[Event] = []
        store.on_commit(seen.append)
        self.stores.append(store)
        self.seen.append(seen)
        return store


@pytest.fixture
async def two(redis_server: RedisServer) -> AsyncIterator[tuple[Layered, Layered]]:  # noqa: F811
    group = Two(redis_server.url)
    a, b = await group.open(), await group.open()
    yield a, b
    for s in group.stores:
        await s.close()




def hold_tail(store: Layered) -> asyncio.Event:
    """Stop ``store``'s tail before it applies what it reads, until the returned event is set:
    that node's view falls behind the others' writes."""
    redis_layer = layer_of(store)
    release = asyncio.Event()
    apply = redis_layer._entries

    async def held(entries: Any, sent: int) -> None:
        await release.wait()
        await apply(entries, sent)

    redis_layer._entries = held  # type: ignore[method-assign]
    return release


async def release_when_waiting(store: Layered, release: asyncio.Event) -> None:
    """Let the held tail go once the store waits to catch up with it (what is tested)."""
    async with asyncio.timeout(10):
        while not layer_of(store)._catching:
            await asyncio.sleep(0.001)  # a private dict of the layer: no event to await
    release.set()


async def value(store: Layered, key: str) -> Any:
    try:
        return (await store.get(key)).value
    except NotFound:
        return None


# -- one entry, one revision, applied whole everywhere ---------------------------------------------
async def test_a_transaction_is_one_stream_entry_applied_whole_by_every_node(
    two: tuple[Layered, Layered], redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = two
    for i in range(3):
        await a.set(f"acc/{i}", 100)
    await a.set("tmp/1", 0)
    await caught_up(b, a.revision)
    views: list[tuple[str, int, int, bool, int]] = []

    def audit(event: Event) -> None:  # b's mirror at each event of the transaction: all or nothing
        total = sum(v.value for v in (b.peek(f"acc/{i}") for i in range(3)) if v is not None)
        views.append((event.key, event.revision, event.txn, event.more, total))

    b.on_commit(audit)
    x = await a.get("acc/0")
    done = await a.commit(
        [TxnOp("set", "acc/0", 70), TxnOp("set", "acc/1", 130), TxnOp("del", "tmp/*"),
         TxnOp("del", "acc/9")],
        expect={"acc/0": version(x)},
    )
    assert done == Committed(a.revision, ["0", "1", "", ""])
    await caught_up(b, done.revision)
    r = done.revision
    assert views == [("acc/0", r, 3, True, 300), ("acc/1", r, 3, True, 300), ("tmp/*", r, 3, False, 300)]
    assert b.revision == a.revision == done.revision
    assert [await value(b, f"acc/{i}") for i in range(3)] == [70, 130, 100]
    assert await b.get_list("tmp/*") == []
    from ooo_storage.layers.redis import unpack_txn  # (here: a module of the old code lacks it)

    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    try:
        entries = await client.xrange(f"{layer_of(a).namespace}:log", min=f"{done.revision}-0")
    finally:
        await client.aclose()
    assert len(entries) == 1 and entries[0][1][b"o"] == b"t"
    assert [(k, o is None) for k, o in unpack_txn(entries[0][1][b"v"])] == [
        ("acc/0", False), ("acc/1", False), ("tmp/*", True)  # acc/9 was missing: changed nothing
    ]


# -- conflicts, views behind, locks across nodes ---------------------------------------------------
async def test_a_conflict_across_nodes_applies_nothing_anywhere(two: tuple[Layered, Layered]) -> None:
    a, b = two
    await a.set("k", 1)
    read = await a.get("k")
    changed = await b.set("k", 2)  # b changes it after a read it
    assert changed
    await caught_up(a, b.revision)
    revision = a.revision
    with pytest.raises(Conflict) as caught:
        await a.commit([TxnOp("set", "k", 10), TxnOp("set", "other", 1)], expect={"k": version(read)})
    assert caught.value.keys == ["k"]
    for s in (a, b):
        assert await value(s, "k") == 2 and await value(s, "other") is None
    assert layer_of(a).head == revision  # no revision taken


async def test_a_node_behind_cannot_lose_another_node_s_update(two: tuple[Layered, Layered]) -> None:
    """b's mirror has not applied a's write yet: b's transaction, right by b's view, is checked
    against Redis, b catches up and then sees the conflict (no lost update)."""
    a, b = two
    await a.set("k", 1)
    await caught_up(b, a.revision)
    seen = version(await b.get("k"))
    release = hold_tail(b)
    await a.set("k", 2)
    assert await value(b, "k") == 1  # b is behind
    commit = asyncio.ensure_future(b.commit([TxnOp("set", "k", 100)], expect={"k": seen}))
    await release_when_waiting(b, release)
    with pytest.raises(Conflict):
        await commit
    assert await value(a, "k") == 2 and await value(b, "k") == 2


async def test_a_node_behind_commits_on_what_another_node_wrote(two: tuple[Layered, Layered]) -> None:
    """A client writes through a, then commits through b (behind) expecting what a answered: b
    catches up instead of answering a false conflict, and builds on a's value."""
    a, b = two
    release = hold_tail(b)
    await a.set("doc", {"n": 1})
    fresh = await a.get("doc")
    commit = asyncio.ensure_future(
        b.commit([TxnOp("patch", "doc", {"m": 2})], expect={"doc": version(fresh)})
    )
    await release_when_waiting(b, release)
    done = await commit
    await caught_up(a, done.revision)
    assert await value(a, "doc") == await value(b, "doc") == {"n": 1, "m": 2}


async def test_a_write_on_a_view_behind_updates_the_object_another_node_created(
    two: tuple[Layered, Layered],
) -> None:
    """No expect: the keys written are checked all the same, so b, behind, does not build its set
    as a fresh object over the one a created (its created stamp is kept, updated is set)."""
    a, b = two
    release = hold_tail(b)
    await a.set("k", 1)
    made = await a.get("k")
    commit = asyncio.ensure_future(b.commit([TxnOp("set", "k", 2)]))
    await release_when_waiting(b, release)
    done = await commit
    await caught_up(a, done.revision)
    for s in (a, b):
        obj = await s.get("k")
        assert (obj.value, obj.created) == (2, made.created) and obj.updated > made.created


async def test_a_transaction_waits_for_a_lock_held_on_another_node(two: tuple[Layered, Layered]) -> None:
    a, b = two
    await a.set("k", 1)
    await a.set("j", 1)
    await caught_up(b, a.revision)
    held = await b.get_and_lock("k")
    revision = a.revision
    with pytest.raises(TransactionTimeout, match=r"^storage: transaction timeout: k still locked after 0.2 s"):
        await a.commit([TxnOp("set", "j", 2), TxnOp("set", "k", 2)], timeout=0.2)
    assert await value(a, "j") == 1 and layer_of(a).head == revision
    read = version(await a.get("k"))
    commit = asyncio.ensure_future(a.commit([TxnOp("set", "k", 50)], expect={"k": read}))
    await asyncio.sleep(0.05)  # the commit keeps waiting for b's lock however long it runs
    assert not commit.done()
    await b.set_and_unlock("k", held.value + 1)
    with pytest.raises(Conflict):  # the holder's write came first: a's expectation is stale
        await commit
    assert await value(a, "k") == 2
    read = version(await a.get("k"))
    await a.commit([TxnOp("set", "k", 50)], expect={"k": read})  # free now
    await caught_up(b, a.revision)
    assert await value(b, "k") == 50


async def test_concurrent_transfers_through_two_nodes_keep_the_total(two: tuple[Layered, Layered]) -> None:
    """32 tasks on each node move money between 5 accounts with retries; each node's observer
    checks the total on its own mirror at every event, and both end equal."""
    accounts = [f"acc/{i}" for i in range(5)]
    for key in accounts:
        await two[0].set(key, 100)
    await caught_up(two[1], two[0].revision)
    totals: list[int] = []
    for s in two:
        def audit(event: Event, s: Layered = s) -> None:
            if event.key.startswith("acc/"):
                totals.append(sum(s.peek(k).value for k in accounts))  # type: ignore[union-attr]

        s.on_commit(audit)

    def transfer(n: int) -> Callable[[Any], Awaitable[None]]:
        src, dst = accounts[n % 5], accounts[(n * 3 + 1) % 5]

        async def move(tx: Any) -> None:
            x, y = await tx.get(src), await tx.get(dst)
            if src != dst:
                tx.set(src, x.value - 7)
                tx.set(dst, y.value + 7)

        return move

    await asyncio.gather(*(two[n % 2].transaction_run(transfer(n), retries=500) for n in range(64)))
    last = max(s.revision for s in two)
    for s in two:
        await caught_up(s, last)
    values = [[await value(s, k) for k in accounts] for s in two]
    assert values[0] == values[1] and sum(values[0]) == 500
    assert totals and set(totals) == {500}


# -- glob deletes and lock holders: as in one process ------------------------------------------------
async def _glob_delete_while_locked(holder: Layered, deleter: Layered, settle: Callable[[], Awaitable[None]]) -> Sequence[Any]:
    await holder.set("g/1", 1)
    await holder.set("g/2", 2)
    await settle()
    held = await holder.get_and_lock("g/1")
    async with asyncio.timeout(5):  # it does not wait for the holder
        await deleter.delete("g/*")
    await settle()
    after_delete = [o.path for o in await holder.get_list("g/*")]
    await holder.set_and_unlock("g/1", held.value + 10)  # the holder's write still goes through
    await settle()
    return after_delete, [(o.path, o.value) for o in await deleter.get_list("g/*")]


async def test_a_glob_delete_does_not_wait_for_lock_holders_on_any_node(two: tuple[Layered, Layered]) -> None:
    """docs/layers.md: a glob delete excludes every concurrent write but does not wait for a
    get_and_lock holder, in one process as across nodes; the holder's set_and_unlock then writes."""
    one = Layered(MemoryLayer())
    await one.start()

    async def nothing() -> None:
        return None

    a, b = two

    async def both() -> None:
        await caught_up(a, b.revision)
        await caught_up(b, a.revision)

    try:
        alone = await _glob_delete_while_locked(one, one, nothing)
    finally:
        await one.close()
    assert alone == ([], [("g/1", 11)])
    assert await _glob_delete_while_locked(b, a, both) == alone


async def test_a_commit_cancelled_before_its_turn_is_applied_whole_by_its_own_node(
    two: tuple[Layered, Layered],
) -> None:
    """The script ran (the transaction is in Redis) but its committer is cancelled before its
    turn: its own node's tail applies it like another node's, whole, with one revision."""
    a, b = two
    seen: list[Event] = []
    a.on_commit(seen.append)
    release = hold_tail(a)
    commit = asyncio.ensure_future(a.commit([TxnOp("set", "p", 1), TxnOp("set", "q", 2)]))
    async with asyncio.timeout(10):
        while not layer_of(a)._waiters:  # its script has answered: it waits for its turn
            await asyncio.sleep(0.001)  # a private dict of the layer: no event to await
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    release.set()
    revision = max(layer_of(a).head, layer_of(b).head)
    await caught_up(a, revision)
    await caught_up(b, revision)
    assert [(e.key, e.revision, e.txn, e.more) for e in seen] == [("p", revision, 2, True), ("q", revision, 2, False)]
    for s in (a, b):
        assert [await value(s, k) for k in "pq"] == [1, 2] and s.revision == revision
    assert len(a._locks) == 0 and a._gate.idle


async def test_a_transaction_that_times_out_waiting_for_a_paused_redis_is_a_503_not_a_409(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A commit stuck on Redis (paused: SIGSTOP) holds its keys; another commit of the same keys
    times out waiting for them. That wait was for Redis, not for other writers: StorageUnavailable
    (503), not TransactionTimeout (409, "contended keys"); once Redis answers again, a timeout is
    a 409 again (before: a 409 blaming the keys in both cases)."""
    import signal as signals

    from ooo_storage.errors import StorageUnavailable

    group = Two(redis_server.url)
    a = await group.open()
    try:
        await a.set("p/x", 0)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signals.SIGSTOP)
        try:
            stuck = asyncio.ensure_future(a.commit([TxnOp("set", "p/x", 1)], timeout=10))
            async with asyncio.timeout(5):
                while not a._locks.locked("p/x"):  # it takes the key's lock, then waits for Redis
                    await asyncio.sleep(0.001)  # the store's lock table: no event to await
            with pytest.raises(StorageUnavailable) as refused:
                await a.commit([TxnOp("set", "p/x", 2)], timeout=0.5)
            assert not isinstance(refused.value, TransactionTimeout)
            assert "nothing applied" in str(refused.value)
        finally:
            redis_server.proc.send_signal(signals.SIGCONT)
        await asyncio.gather(stuck, return_exceptions=True)
        lock = await a.get_and_lock("p/x")
        try:
            with pytest.raises(TransactionTimeout):
                await a.commit([TxnOp("set", "p/x", 3)], timeout=0.3)
        finally:
            await a.unlock("p/x")
        assert lock is not None
    finally:
        await a.close()
