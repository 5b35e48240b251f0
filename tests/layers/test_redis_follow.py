"""A Redis node's tail applies what it reads in batches (``Layered.apply_remote_raw``: one call for a
run of sets and deletes): every write once, in stream order, with its writer's revision; a node's own
writes read back are not parsed again; a damaged object stops the run where it is and reloads (real
Redis, real sockets)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, serve_redis
from redis_tail import caught_up, layer_of, start_tail, stop_tail

from ooo_storage import Layered, MemoryLayer
from ooo_storage.layers import RedisLayer
from ooo_storage.layers.redis import _Wire
from ooo_storage.protocol import objects
from ooo_storage.protocol.objects import Event, Object

Seen = list[tuple[int, str, str, bytes | None]]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path / "redis", fsync="no")


@pytest.fixture
async def nodes(own_redis: RedisServer) -> AsyncIterator[list[tuple[Layered, Seen]]]:
    """Two stores on one namespace, each with the events its commit observer saw."""
    opened: list[tuple[Layered, Seen]] = []
    for _ in range(2):
        store = Layered(MemoryLayer(), RedisLayer(own_redis.url, "f"))
        await store.start()
        seen: Seen = []

        def observe(e: Event, seen: Seen = seen) -> None:
            seen.append((e.revision, e.operation, e.key, e.object.data if e.object else None))

        store.on_commit(observe)
        opened.append((store, seen))
    yield opened
    for store, _ in opened:
        await store.close()


async def test_a_batch_of_another_nodes_writes_is_applied_in_order_each_published_once(
    nodes: list[tuple[Layered, Seen]],
) -> None:
    (a, seen_a), (b, seen_b) = nodes
    await stop_tail(b)  # b reads everything below in one XREAD once its tail goes on
    for round_ in range(5):
        for i in range(4):
            await a.set(f"k/{i}", {"round": round_, "i": i})
        await a.delete(f"k/{round_ % 4}")
    await a.set("g/1", 1)
    await a.set("g/2", 2)
    await a.delete("g/*")
    await a.delete_silent("k/3")  # applied on b without an event, as on a
    await a.set("k/3", {"again": True})
    assert len(seen_a) == 5 * 5 + 3 + 1
    start_tail(b)
    await caught_up(b, a.revision)
    assert seen_b == seen_a  # every write once, in a's order, with a's revisions and objects
    assert [r for r, *_ in seen_b] == sorted({r for r, *_ in seen_b})
    assert {o.index: o.data for o in await b.get_list("k/*")} == {
        o.index: o.data for o in await a.get_list("k/*")
    }
    assert await b.get_list("g/*") == [] and b.revision == a.revision


async def test_a_node_does_not_parse_its_own_writes_read_back(
    nodes: list[tuple[Layered, Seen]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its writer published each write with the object it built; the tail reads the entry back
    only for its turn. Before: one JSON parse of the object per write, for nothing."""
    (a, _), (b, seen_b) = nodes
    parsed: list[bytes] = []
    real = objects.Object.from_json

    def counting(raw: bytes) -> Object:
        parsed.append(raw)
        return real(raw)

    await stop_tail(b)  # b's parses (it applies a's writes) are not counted: same process
    monkeypatch.setattr(objects.Object, "from_json", staticmethod(counting))
    for i in range(20):
        await a.set(f"own/{i}", i)
    assert parsed == []
    start_tail(b)
    await caught_up(b, a.revision)
    assert len(parsed) == 20 and len(seen_b) == 20  # another node's writes are parsed, once each


async def test_a_damaged_object_in_a_batch_applies_the_writes_before_it_then_reloads(
    nodes: list[tuple[Layered, Seen]], own_redis: RedisServer
) -> None:
    (a, seen_a), (b, seen_b) = nodes
    await stop_tail(b)
    await a.set("d/1", 1)
    await a.set("d/2", 2)
    client = aioredis.Redis.from_url(own_redis.url, protocol=2)
    try:  # a damaged set after them, in the same batch, in its place in the order
        rev = int(await client.incr("f:rev"))
        await client.xadd("f:log", {"o": "s", "k": "d/bad", "v": "{not json", "n": "x", "p": rev - 1},
                          id=f"{rev}-0")
    finally:
        await client.aclose()
    start_tail(b)
    await caught_up(b, rev)
    assert seen_b[:2] == seen_a[:2]  # applied and published before the damage, at a's revisions
    assert layer_of(b).resyncs == 1  # then the reload (the damaged key is not in Redis's data)
    assert {o.index: o.value for o in await b.get_list("d/*")} == {"1": 1, "2": 2}


async def test_a_request_redis_does_not_answer_times_out_with_the_others_in_flight_then_reconnects(
    own_redis: RedisServer,
) -> None:
    """The hot-path connection's timeout (the tail's XREAD, the set scripts): one timer per
    request; the request that times out says so and what it means, those behind it fail with it
    (their replies would be taken for the wrong requests), the next request connects again."""
    options = _Wire.options_of(own_redis.url)
    assert options is not None
    wire = _Wire(options, 0.3)
    try:
        assert await wire.call(b"PING") == b"PONG"
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            first = asyncio.ensure_future(wire.call(b"PING"))
            await asyncio.sleep(0)  # the first request is sent before the second
            second = asyncio.ensure_future(wire.call(b"ECHO", b"x"))
            results = await asyncio.gather(first, second, return_exceptions=True)
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert isinstance(results[0], TimeoutError)
        assert "no answer from redis within 0.3 s (a write may have been applied" in str(results[0])
        assert isinstance(results[1], TimeoutError | ConnectionError)
        assert await wire.call(b"ECHO", b"back") == b"back"
    finally:
        wire.close()
