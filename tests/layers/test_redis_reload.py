"""RedisLayer (issue 14, outside attack): a node that reloads after a gap applies the reload as ONE
unit at a revision every node shares, and cuts its history there; its versions are the shared
order's (a clear, another node's start); own writes the reload covers are not published on their
own; namespaces follow a grammar; a start retried registers the node once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)
from redis_tail import caught_up, layer_of, start_tail, stop_tail

from ooo_storage import HistoryTrimmed, Layered, MemoryLayer, StorageUnavailable
from ooo_storage.layered import HistoryOptions
from ooo_storage.layers import RedisLayer
from ooo_storage.layers.redis import check_namespace
from ooo_storage.protocol.objects import Event


class Nodes:
    """Stores on one Redis namespace of the test's own, each with a history and its events."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url, self.tmp_path = url, tmp_path
        self.namespace = f"r{uuid.uuid4().hex[:10]}"
        self.stores: list[Layered] = []
        self.seen: dict[int, list[Event]] = {}

    async def open(self, name: str, **options: object) -> Layered:
        layer = RedisLayer(self.url, self.namespace, **options)  # type: ignore[arg-type]
        store = Layered(MemoryLayer(), layer, history=HistoryOptions(str(self.tmp_path / name)))
        await store.start()
        self.seen[id(store)] = []
        store.on_commit(self.seen[id(store)].append)
        self.stores.append(store)
        return store

    def events(self, store: Layered) -> list[Event]:
        return self.seen[id(store)]

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture
async def nodes(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Nodes]:  # noqa: F811
    group = Nodes(redis_server.url, tmp_path)
    yield group
    await group.close()






async def trim(url: str, namespace: str) -> None:
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        await client.xtrim(f"{namespace}:log", maxlen=1, approximate=False)
    finally:
        await client.aclose()


def state(store: Layered) -> dict[str, tuple[int, bytes]]:
    assert store.memory is not None
    names = store.memory.keys()
    return {k: (o.created, o.data) for k in names if (o := store.memory.get(k))}


async def test_a_reload_is_one_unit_at_the_shared_revision_and_cuts_the_history(nodes: Nodes) -> None:
    """trim.py: 20 keys rewritten together while b is away, one of them deleted and written again
    (a new ``created``). b's watchers get the reload as ONE transaction (one frame per pool) at a's
    revision (where a's state is b's), and b resumes nothing from before it."""
    a, b = await nodes.open("a"), await nodes.open("b")
    for i in range(20):
        await a.set(f"tr/{i:02d}", {"g": 0})
    await caught_up(b, a.revision)
    before = b.revision
    assert list(b.replay(before - 1))  # resumable before the gap
    events = nodes.events(b)
    events.clear()
    await stop_tail(b)
    for g in range(1, 30):
        async with a.transaction() as txn:
            for i in range(20):
                txn.set(f"tr/{i:02d}", {"g": g})
    await a.delete("tr/05")
    await a.set("tr/05", {"g": 99})  # moved: a new created
    await trim(nodes.url, nodes.namespace)
    start_tail(b)
    await caught_up(b, a.revision)
    assert layer_of(b).resyncs == 1
    assert state(a) == state(b)
    assert {e.revision for e in events} == {a.revision}  # one revision, the one a has this state at
    assert len(events) == 20 and all(e.txn == 20 for e in events)
    assert [e.more for e in events] == [True] * 19 + [False]
    with pytest.raises(HistoryTrimmed):  # a patch across the reload would keep tr/05's old created
        list(b.replay(before))
    assert list(b.replay(b.revision)) == []  # from the reload's version on: resumable
    await a.set("tr/00", {"g": 100})
    await caught_up(b, a.revision)
    assert [e.key for e in b.replay(events[0].revision)] == ["tr/00"]


async def test_own_writes_the_reload_covers_are_not_published_at_their_own_revision(nodes: Nodes) -> None:
    """b's write whose turn had not come when b reloaded: its revision on b would show a state
    that never existed (without a's writes before it). It fails with a 503 saying it is applied."""
    a, b = await nodes.open("a"), await nodes.open("b")
    await a.set("k/a", 0)
    await caught_up(b, a.revision)
    await stop_tail(b)
    write = asyncio.create_task(b.set("k/b", 1))  # committed in Redis, its turn never comes
    async with asyncio.timeout(10):
        while not layer_of(b)._waiters:
            await asyncio.sleep(0.005)  # its script's answer registers the turn
    for i in range(5):
        await a.set("k/a", i + 1)
    await trim(nodes.url, nodes.namespace)
    events = nodes.events(b)
    events.clear()
    start_tail(b)
    with pytest.raises(StorageUnavailable, match="the reload applied it"):
        await write
    await caught_up(b, a.revision)
    assert state(a) == state(b) and (await b.get("k/b")).value == 1
    assert {e.revision for e in events} == {a.revision}  # k/b and k/a in the reload's one unit
    assert sorted(e.key for e in events) == ["k/a", "k/b"]


async def test_another_node_s_start_moves_the_store_s_revision(nodes: Nodes) -> None:
    """A node's start moves the shared counter (a 'b' entry): every node's revision follows, so a
    version a client gets from the new node is one the others have reached."""
    a = await nodes.open("a")
    b = await nodes.open("b")
    await caught_up(a, layer_of(b).position)
    assert a.revision == b.revision


async def test_clear_cuts_the_history_at_its_shared_revision(nodes: Nodes) -> None:
    """A clear takes a revision in the shared order: the store's version after it is that one,
    not a local one that another node gives to another write."""
    a = await nodes.open("a")
    await a.set("c/1", 1)
    b = await nodes.open("b")  # its start's 'b' entry is the last before the clear
    await caught_up(a, layer_of(b).position)
    await a.clear()
    assert a.revision == layer_of(a).last_revision  # the clear's own revision
    await b.set("c/2", 2)
    await caught_up(a, b.revision)
    assert a.revision == b.revision and state(a) == state(b)
    assert [e.key for e in a.replay(a.revision - 1)] == ["c/2"]


@pytest.mark.parametrize("name", ["t1:lock", "", "a b", "x*", ":", "a" * 65, "é"])
def test_a_namespace_outside_the_grammar_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid namespace"):
        RedisLayer("redis://127.0.0.1:1/0", name)


def test_namespaces_in_the_grammar_are_taken() -> None:
    for name in ("ooo", "t-1.x_2", "A" * 64):
        assert check_namespace(name) == name
        assert RedisLayer("redis://127.0.0.1:1/0", name).namespace == name


async def test_a_start_retried_registers_the_node_once(nodes: Nodes) -> None:
    """A node whose store cannot start (its history directory held by another process) retries:
    each retry starts the layer again, which must not take another push slot (INCR nodes)."""
    await nodes.open("held")
    layer = RedisLayer(nodes.url, nodes.namespace)
    blocked = Layered(MemoryLayer(), layer, history=HistoryOptions(str(nodes.tmp_path / "held")))
    for _ in range(3):
        with pytest.raises(StorageUnavailable, match="history"):
            await blocked.start()
    client = aioredis.Redis.from_url(nodes.url, protocol=2)
    try:
        assert int(await client.get(f"{nodes.namespace}:nodes")) == 2
    finally:
        await client.aclose()
