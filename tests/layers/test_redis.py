"""RedisLayer: several stores (nodes) on one real Redis share one order of writes; gaps reload; Redis
unreachable is a 503 naming it while reads go on from the mirror."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, serve_redis
from redis_tail import caught_up

from ooo_storage import Layered, MemoryLayer, NotFound, StorageUnavailable
from ooo_storage.layers import RedisLayer
from ooo_storage.layers.redis import lex_range, lua_pattern, redact
from ooo_storage.protocol import keys
from ooo_storage.protocol.objects import Event


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path / "redis", fsync="no")


class Nodes:
    """Stores on one Redis namespace, each with its commit observer's events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stores: list[Layered] = []
        self.seen: dict[int, list[tuple[int, str, str, bytes | None]]] = {}

    async def open(self, **options: object) -> Layered:
        store = Layered(MemoryLayer(), RedisLayer(self.url, "n", **options))  # type: ignore[arg-type]
        await store.start()
        events = self.seen[id(store)] = []

        def observe(e: Event) -> None:
            events.append((e.revision, e.operation, e.key, e.object.data if e.object else None))

        store.on_commit(observe)
        self.stores.append(store)
        return store

    def events(self, store: Layered) -> list[tuple[int, str, str, bytes | None]]:
        return self.seen[id(store)]

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture
async def nodes(own_redis: RedisServer) -> AsyncIterator[Nodes]:
    group = Nodes(own_redis.url)
    yield group
    await group.close()



def test_redact_hides_every_form_of_a_redis_password() -> None:
    assert redact("redis://u:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact("rediss://:pw@h/0?password=pw2&db=1") == "rediss://***@h/0?password=***&db=1"
    assert redact("at redis://h/0?db=1&Password=pw: refused") == "at redis://h/0?db=1&Password=***: refused"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


async def test_start_errors_do_not_show_the_password() -> None:
    layer = RedisLayer("redis://u:s3cretpw@127.0.0.1:1/0?password=s3cretpw")
    with pytest.raises(StorageUnavailable) as caught:
        await layer.start()
    assert "s3cretpw" not in str(caught.value)
    assert "redis at redis://***@127.0.0.1:1/0?password=***: can't reach it" in str(caught.value)


def test_glob_translation_matches_the_protocol() -> None:
    names = ["a", "a.b", "a-b", "ab", "a/b", "a/b/c", "x/a.b", "xa-b", "a/bb", "ab/c"]
    for pattern in ("*", "a*", "a.*", "a-*", "a/*", "*/b", "a/*/c", "*.b", "a*b", "x/*"):
        regex = re.compile(lua_pattern(pattern).replace("%", "\\"))
        for name in names:
            assert bool(regex.match(name)) == keys.match(pattern, name), (pattern, name)
        start, end = lex_range(pattern)
        prefix = keys.glob_prefix(pattern).encode()
        assert (start, end) == ((b"-", b"+") if not prefix else (b"[" + prefix, b"[" + prefix + b"\xff"))


async def test_two_nodes_one_order_under_concurrent_writes(nodes: Nodes) -> None:
    """Concurrent writes to the same keys through two stores: both mirrors end equal, and both saw
    the same events with the same revisions in the same order."""
    a, b = await nodes.open(), await nodes.open()

    async def writer(store: Layered, name: str) -> None:
        for i in range(30):
            await store.set(f"k/{i % 5}", {"by": name, "i": i})
            if i % 7 == 0:
                await store.push("log/*", [name])
            if i == 20:
                with contextlib.suppress(NotFound):
                    await store.delete("k/3")

    await asyncio.gather(*(writer(s, f"{n}{w}") for n, s in (("a", a), ("b", b)) for w in range(4)))
    await b.delete("log/*")
    await caught_up(a, b.revision)
    await caught_up(b, a.revision)
    assert nodes.events(a) == nodes.events(b)
    revisions = [e[0] for e in nodes.events(a)]
    assert revisions == sorted(set(revisions))
    assert {k: (await a.get(k)).to_json() for k in await a.keys()} == {
        k: (await b.get(k)).to_json() for k in await b.keys()
    }
    assert a.revision == b.revision


async def test_a_write_is_read_back_on_its_node_and_seen_by_the_other(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    await a.set("x", 1)
    assert (await a.get("x")).value == 1  # read-your-writes on the writing node
    await caught_up(b, a.revision)
    assert (await b.get("x")).value == 1
    await b.delete("x")
    await caught_up(a, b.revision)
    with pytest.raises(NotFound):
        await a.get("x")


async def test_a_silent_delete_is_silent_on_every_node(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    silent: list[tuple[str, str]] = []
    b.on_commit(lambda e: silent.append((e.operation, e.key)), silent=True)
    for key in ("k", "g/1", "g/2"):
        await a.set(key, 1)
    await a.delete_silent("k")  # as a limit filter trims
    await a.delete_silent("g/*")
    await a.set("after", 1)
    await caught_up(b, a.revision)
    assert await b.keys() == ["after"]
    assert [(op, key) for _, op, key, _ in nodes.events(b)] == [
        ("set", "k"), ("set", "g/1"), ("set", "g/2"), ("set", "after")
    ]
    assert nodes.events(a) == nodes.events(b)
    assert ("del", "k") in silent and ("del", "g/*") in silent  # bookkeeping observers see them


async def test_a_cancelled_writer_still_reaches_every_mirror_in_order(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    task = asyncio.create_task(a.set("c/1", 1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.set("c/2", 2)
    client = aioredis.Redis.from_url(nodes.url, protocol=2)
    try:
        last = int(await client.get("n:rev"))
    finally:
        await client.aclose()
    await caught_up(a, last)
    await caught_up(b, last)
    # the write may have been sent before the cancellation, or not: either way, one order
    assert nodes.events(a) == nodes.events(b)
    assert sorted(await a.keys()) == sorted(await b.keys())


async def test_redis_unreachable_writes_503_reads_from_mirror_then_resumes(own_redis: RedisServer) -> None:
    group = Nodes(own_redis.url)
    try:
        a, b = await group.open(), await group.open()
        await a.set("k", 1)
        own_redis.stop()
        with pytest.raises(StorageUnavailable, match=f"^storage: unavailable: redis at {own_redis.url}: "):
            await a.set("k", 2)
        assert (await a.get("k")).value == 1  # the mirror still serves reads
        own_redis.start()  # same port, same append-only file
        async with asyncio.timeout(15):
            while True:  # the first command after the restart may meet a dead connection
                try:
                    await a.set("k", 3)
                    break
                except StorageUnavailable:
                    await asyncio.sleep(0.05)
        await caught_up(b, a.revision)
        assert (await b.get("k")).value == 3
        assert group.events(a) == group.events(b)
    finally:
        await group.close()


async def test_a_node_behind_a_trimmed_stream_reloads_and_tells_its_watchers(nodes: Nodes) -> None:
    a = await nodes.open(maxlen=10)
    b = await nodes.open(maxlen=10)
    for i in range(5):
        await a.set(f"t/{i}", i)
    await caught_up(b, a.revision)
    layer = b.embedded
    assert isinstance(layer, RedisLayer)
    tail = layer._tail  # b "disconnects": its tail stops while a writes on
    assert tail is not None
    tail.cancel()
    await asyncio.gather(tail, return_exceptions=True)
    for i in range(400):
        await a.set(f"t/{i % 20}", -i)
    await a.delete("t/0")
    layer._tail = asyncio.create_task(layer._run())  # b comes back behind the trimmed stream
    await caught_up(b, a.revision)
    assert layer.resyncs == 1
    assert {k: (await a.get(k)).value for k in await a.keys()} == {
        k: (await b.get(k)).value for k in await b.keys()
    }
    last = {key: data for _, op, key, data in nodes.events(b)}  # what b's watchers were told
    assert "t/0" in last and last["t/0"] is not None  # the delete reached them (with its object)
    revisions = [e[0] for e in nodes.events(b)]
    assert revisions == sorted(revisions) and revisions[-1] == a.revision  # the reload: a's last one


async def test_clear_on_one_node_empties_the_others(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    await a.set("c/1", 1)
    await b.set("c/2", 2)
    await caught_up(a, b.revision)
    await a.clear()
    assert await a.keys() == []
    await b.set("after", 1)
    await caught_up(b, b.revision)
    assert await b.keys() == ["after"]
    await caught_up(a, b.revision)
    assert await a.keys() == ["after"]


async def test_restart_continues_above_every_revision_seen(nodes: Nodes, own_redis: RedisServer) -> None:
    a = await nodes.open()
    await a.set("r", 1)
    before = a.revision
    await a.close()
    again = await nodes.open()
    assert (await again.get("r")).value == 1
    await again.set("r", 2)
    assert again.revision > before
    client = aioredis.Redis.from_url(own_redis.url, protocol=2)
    try:
        assert int(await client.get("n:rev")) == again.revision
    finally:
        await client.aclose()


async def test_get_and_lock_holds_across_nodes(nodes: Nodes) -> None:
    """Read-modify-write of one counter from two nodes at once: no update is lost (each holder
    reads the last value written by the other node, which waited for the lock)."""
    a, b = await nodes.open(), await nodes.open()
    await a.set("counter", 0)
    await caught_up(b, a.revision)

    async def bump(store: Layered, times: int) -> None:
        for _ in range(times):
            obj = await store.get_and_lock("counter")
            await store.set_and_unlock("counter", obj.value + 1)

    await asyncio.gather(bump(a, 15), bump(b, 15), bump(a, 5), bump(b, 5))
    await caught_up(a, b.revision)
    await caught_up(b, a.revision)
    assert (await a.get("counter")).value == (await b.get("counter")).value == 40


async def test_a_plain_write_on_another_node_waits_for_the_lock_holder(nodes: Nodes) -> None:
    """As one process's key locks: between get_and_lock and set_and_unlock on node A, a set or a
    delete of that key on node B waits, and lands after A's write."""
    a, b = await nodes.open(), await nodes.open()
    await a.set("k", 0)
    await caught_up(b, a.revision)
    await a.get_and_lock("k")
    layer = b.embedded
    assert isinstance(layer, RedisLayer)
    setting = asyncio.create_task(b.set("k", 2))
    async with asyncio.timeout(10):  # until Redis has answered B's script once (nothing to await)
        while layer._sent < 1 or layer._pending:
            await asyncio.sleep(0.005)
    assert not setting.done()  # refused while A holds the lock: B sends it again later
    await a.set_and_unlock("k", 1)
    await setting
    await caught_up(a, b.revision)
    assert (await a.get("k")).value == (await b.get("k")).value == 2
    await a.get_and_lock("k")
    deleting = asyncio.create_task(b.delete("k"))
    async with asyncio.timeout(10):
        while layer._sent < 3 or layer._pending:
            await asyncio.sleep(0.005)
    assert not deleting.done()
    await a.set_and_unlock("k", 3)
    await deleting
    await caught_up(a, b.revision)
    assert await a.keys() == await b.keys() == []


async def test_a_crashed_holder_s_lock_expires(nodes: Nodes) -> None:
    a = await nodes.open(lock_ttl=0.2)
    b = await nodes.open(lock_ttl=0.2)
    await a.set("k", 1)
    await caught_up(b, a.revision)
    layer = a.embedded
    assert isinstance(layer, RedisLayer)
    await a.get_and_lock("k")
    layer._tokens.clear()  # a forgets its lock, as a node killed while holding it
    async with asyncio.timeout(5):
        obj = await b.get_and_lock("k")  # free once the lock expired
    await b.set_and_unlock("k", obj.value + 1)
    assert (await b.get("k")).value == 2


async def test_push_keys_unique_and_time_ordered_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    layers = [a.embedded, b.embedded]
    assert all(isinstance(layer, RedisLayer) for layer in layers)
    ra, rb = (layer for layer in layers if isinstance(layer, RedisLayer))
    assert ra.slot != rb.slot
    same = 1_800_000_000_000_000_000  # the same nanosecond on both nodes
    stamps = [ra.push_stamp(lambda: same), rb.push_stamp(lambda: same), ra.push_stamp(lambda: same)]
    assert len(set(stamps)) == 3 and stamps[2] > stamps[0]
    assert all(abs(s - same) < 2048 for s in stamps)  # still the clock, to the microsecond
    indexes = await asyncio.gather(*(s.push("p/*", i) for i in range(20) for s in (a, b)))
    assert len(set(indexes)) == 40
    await caught_up(a, b.revision)
    await caught_up(b, a.revision)
    assert len(await a.get_list("p/*")) == len(await b.get_list("p/*")) == 40


async def test_a_damaged_stream_entry_reloads_instead_of_stopping_the_tail(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    await a.set("d/1", 1)
    client = aioredis.Redis.from_url(nodes.url, protocol=2)
    try:  # an entry whose object is not object JSON, in its place in the order
        rev = int(await client.incr("n:rev"))
        await client.xadd("n:log", {"o": "s", "k": "d/2", "v": "{not json", "n": "x", "p": rev - 1},
                          id=f"{rev}-0")
    finally:
        await client.aclose()
    # Both tails go on (after reloading) and see it. Its writer's turn came after the damaged
    # entry: the reload applied it, and published alone at its revision it would show a state
    # that never was (test_redis_reload): a 503 says it is committed and applied.
    with pytest.raises(StorageUnavailable, match="the reload applied it"):
        await a.set("d/3", 3)
    await caught_up(b, a.revision)
    assert (await b.get("d/3")).value == 3 and (await b.get("d/1")).value == 1
