"""RedisLayer's write batching: one set script in flight per node, the sets that arrive meanwhile go
together in the next one, each still its own revision and stream entry, acknowledged only after
Redis answered (real Redis, real sockets)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, serve_redis

from ooo_storage import Layered, MemoryLayer, StorageUnavailable
from ooo_storage.layers import RedisLayer
from ooo_storage.protocol.objects import Event

WRITERS = 64


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path / "redis", fsync="always")


class Node:
    """A store on the test's Redis with the events its observers saw."""

    def __init__(self, store: Layered) -> None:
        self.store = store
        self.events: list[tuple[int, str, str]] = []
        store.on_commit(self._observe)

    def _observe(self, event: Event) -> None:
        self.events.append((event.revision, event.operation, event.key))

    @property
    def layer(self) -> RedisLayer:
        layer = self.store.embedded
        assert isinstance(layer, RedisLayer)
        return layer

    async def caught_up(self, revision: int) -> None:
        async with asyncio.timeout(10):
            while self.layer.position < revision:
                await asyncio.sleep(0.005)  # the tail runs in its own task: nothing to await on it


@pytest.fixture
async def open_node(own_redis: RedisServer) -> AsyncIterator[object]:
    opened: list[Layered] = []

    async def open_() -> Node:
        store = Layered(MemoryLayer(), RedisLayer(own_redis.url, "b", write_timeout=5.0))
        await store.start()
        opened.append(store)
        return Node(store)

    yield open_
    for store in opened:
        await store.close()


async def redis_call(url: str, *command: object) -> object:
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


async def script_calls(url: str) -> int:
    """How many write scripts Redis has run since its statistics were reset."""
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def late_set(store: Layered, turns: int, key: str, value: int) -> None:
    """A set made ``turns`` loop iterations from now: the writers arrive one iteration apart."""
    for _ in range(turns):
        await asyncio.sleep(0)
    await store.set(key, value)


async def test_sets_arriving_while_a_script_is_in_flight_go_in_the_next_script(
    own_redis: RedisServer, open_node: object
) -> None:
    a, b = await open_node(), await open_node()  # type: ignore[operator]
    await redis_call(own_redis.url, "CONFIG", "RESETSTAT")
    # Redis holds write scripts for 300 ms: the first set's script is in flight while the others
    # arrive, one loop iteration apart.
    await redis_call(own_redis.url, "CLIENT", "PAUSE", "300", "WRITE")
    await asyncio.gather(*(late_set(a.store, i, f"k/{i}", i) for i in range(WRITERS)))
    # the first script, then one with the 63 sets that came meanwhile (before: one per iteration)
    assert await script_calls(own_redis.url) <= 3
    ours = [e for e in a.events if e[2].startswith("k/")]
    assert [key for _, _, key in ours] == [f"k/{i}" for i in range(WRITERS)]  # arrival order kept
    revisions = [revision for revision, _, _ in ours]
    assert revisions == list(range(revisions[0], revisions[0] + WRITERS))  # one each, no gap
    await b.caught_up(revisions[-1])
    assert [e for e in b.events if e[2].startswith("k/")] == ours  # the other node: the same order
    entries = await redis_call(own_redis.url, "XRANGE", "b:log", f"{revisions[0]}-0", "+")
    assert len(entries) == WRITERS  # type: ignore[arg-type]


async def test_a_cancelled_writer_in_a_batch_fails_no_other_and_every_node_sees_it(
    own_redis: RedisServer, open_node: object
) -> None:
    a, b = await open_node(), await open_node()  # type: ignore[operator]
    start = a.store.revision
    await redis_call(own_redis.url, "CLIENT", "PAUSE", "200", "WRITE")
    tasks = [asyncio.create_task(late_set(a.store, i, f"c/{i}", i)) for i in range(10)]
    for _ in range(12):  # every writer has queued its set; the first script waits in Redis
        await asyncio.sleep(0)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [None] * 9
    # the cancelled set was sent with its batch: it has its revision and reaches every node in order
    await b.caught_up(a.layer.position)
    ours = [e for e in a.events if e[0] > start]
    assert [key for _, _, key in ours] == [f"c/{i}" for i in range(10)]
    assert [r for r, _, _ in ours] == list(range(ours[0][0], ours[0][0] + 10))
    assert [e for e in b.events if e[0] > start] == ours
    assert (await b.store.get("c/3")).value == 3


async def test_redis_killed_mid_batch_loses_nothing_acknowledged(
    own_redis: RedisServer, open_node: object
) -> None:
    a = await open_node()  # type: ignore[operator]
    acknowledged: list[str] = []
    failed: list[BaseException] = []

    async def writer(n: int) -> None:
        for i in range(1000):
            key = f"w{n}/{i}"
            try:
                await a.store.set(key, i)
            except StorageUnavailable as exc:
                failed.append(exc)
                return
            acknowledged.append(key)

    tasks = [asyncio.create_task(writer(n)) for n in range(16)]
    async with asyncio.timeout(10):
        while len(acknowledged) < 300:  # batches are in flight
            await asyncio.sleep(0.002)
    own_redis.stop(signal.SIGKILL)
    async with asyncio.timeout(15):  # every writer ends: acknowledged or a 503, none hangs
        await asyncio.gather(*tasks)
    assert len(failed) == 16
    assert all(str(exc).startswith("storage: unavailable: ") for exc in failed)
    own_redis.start()  # the same append-only file, written with appendfsync always
    stored = await redis_call(own_redis.url, "HKEYS", "b:data")
    assert set(acknowledged) <= {k.decode() for k in stored}  # type: ignore[union-attr]



async def test_the_write_connection_selects_the_url_s_db_authenticates_and_reloads_lost_scripts(
    own_redis: RedisServer,
) -> None:
    await redis_call(own_redis.url, "CONFIG", "SET", "requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/2"
    store = Layered(MemoryLayer(), RedisLayer(url, "b", write_timeout=5.0))
    await store.start()
    try:
        await store.set("db/1", 1)
        await redis_call(url, "SCRIPT", "FLUSH")  # as after a restart: EVALSHA answers NOSCRIPT
        await store.set("db/2", 2)
        assert sorted(await redis_call(url, "HKEYS", "b:data")) == [b"db/1", b"db/2"]  # type: ignore[call-overload]
        assert [k for k in await store.keys() if k.startswith("db/")] == ["db/1", "db/2"]
    finally:
        await store.close()
        await redis_call(url, "CONFIG", "SET", "requirepass", "")


async def test_more_sets_than_one_script_carries_go_in_several_in_order(
    own_redis: RedisServer, open_node: object
) -> None:
    a = await open_node()  # type: ignore[operator]
    start = a.store.revision
    await redis_call(own_redis.url, "CONFIG", "RESETSTAT")
    await redis_call(own_redis.url, "CLIENT", "PAUSE", "300", "WRITE")
    await asyncio.gather(*(late_set(a.store, min(i, 1), f"m/{i}", i) for i in range(600)))
    calls = await script_calls(own_redis.url)
    assert 3 <= calls <= 5  # 1, then the 599 that came meanwhile in scripts of at most 256
    ours = [e for e in a.events if e[0] > start]
    assert [key for _, _, key in ours] == [f"m/{i}" for i in range(600)]
    assert [r for r, _, _ in ours] == list(range(start + 1, start + 601))


async def test_a_wrong_password_says_redis_refused_the_credentials(own_redis: RedisServer) -> None:
    """Redis answers but refuses the password: the store says so, not "can't reach it" (before)."""
    await redis_call(own_redis.url, "CONFIG", "SET", "requirepass", "s3cret")
    store = Layered(MemoryLayer(), RedisLayer(f"redis://:wrong@127.0.0.1:{own_redis.port}/0", "w"))
    try:
        with pytest.raises(StorageUnavailable) as refused:
            await store.start()
        assert "refused the credentials" in str(refused.value), refused.value
        assert "wrong" not in str(refused.value)  # the password stays hidden
    finally:
        await store.close()
        await redis_call(f"redis://:s3cret@127.0.0.1:{own_redis.port}/0", "CONFIG", "SET", "requirepass", "")
