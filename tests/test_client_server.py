"""The client against the real server: REST round trips, error statuses, live states, resume."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.client import Client, ClientError, ClientOptions, Entry, Subscription
from ooo_storage.server import Server, ServerRunner
from ooo_storage.server.connection import Connection
from ooo_storage.server.hub import Pool

FAST = ClientOptions(reconnect_initial=0.01, reconnect_max=0.05, heartbeat=None)
EMPTY = {"created": 0, "updated": 0, "index": "", "data": {}}


@pytest.fixture
async def store() -> AsyncIterator[Layered]:
    async with Layered(memory=MemoryLayer()) as store:
        yield store


@pytest.fixture
async def runner(store: Layered) -> AsyncIterator[ServerRunner]:
    async with ServerRunner(store, port=0) as runner:
        yield runner


@pytest.fixture
async def client(runner: ServerRunner) -> AsyncIterator[Client]:
    async with Client(runner.url, options=FAST) as client:
        yield client


async def next_state(sub: Subscription) -> Any:
    return await asyncio.wait_for(anext(sub), 5)


class Joins:
    """Counts the streams that joined a pool of one server, so that a test can await a join: a
    stream resumed with ``?v=`` while nothing changed gets no frame to wait for. Wraps that
    server's ``Pools.join``; create it before the streams connect."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self._changed = asyncio.Condition()
        join = server.pools.join

        async def counted(key: str, conn: Connection, version: int | None) -> Pool:
            pool = await join(key, conn, version)
            self.counts[key] += 1
            async with self._changed:
                self._changed.notify_all()
            return pool

        monkeypatch.setattr(server.pools, "join", counted)

    async def reach(self, key: str, count: int) -> None:
        """Return once ``count`` streams of ``key`` have joined their pool (within 5 s)."""
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: self.counts[key] >= count)


async def one(client: Client, key: str) -> Entry:
    obj = await client.get(key)
    assert isinstance(obj, dict)
    return obj


async def test_rest_round_trip(client: Client) -> None:
    assert await client.set("users/1", {"name": "ada", "tags": ["x"]}) == "1"
    obj = await one(client, "users/1")
    assert obj["data"] == {"name": "ada", "tags": ["x"]} and obj["created"] > 0
    assert await client.patch("users/1", {"age": 36}) == "1"
    assert (await one(client, "users/1"))["data"] == {"age": 36, "name": "ada", "tags": ["x"]}
    index = await client.push("users/*", "plain text")
    assert len(index) == 16
    listed = await client.get("users/*")
    assert isinstance(listed, list)
    assert [e["data"] for e in listed] == ["plain text", {"age": 36, "name": "ada", "tags": ["x"]}]
    assert await client.set("raw", b"[1, 2]") == "raw"
    assert (await one(client, "raw"))["data"] == [1, 2]
    assert await client.keys() == sorted(["raw", f"users/{index}", "users/1"])
    await client.delete("users/*")
    assert await client.get("users/*") == []


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.get("missing"), 404, "ooo: empty key"),
        (lambda c: c.delete("missing"), 404, "storage: not found"),
        (lambda c: c.patch("missing", {"a": 1}), 404, "ooo: not found"),
        (lambda c: c.set("bad", b"{nope"), 400, None),
        (lambda c: c.set("bad", b""), 400, None),
    ],
)
async def test_errors_carry_status_and_message(client: Client, call: Any, status: int,
                                               message: str | None) -> None:
    with pytest.raises(ClientError) as caught:
        await call(client)
    assert caught.value.status == status
    if message is not None:
        assert caught.value.message == message


async def test_subscribe_single_key(client: Client) -> None:
    async with client.subscribe("box") as sub:
        assert await next_state(sub) == EMPTY
        await client.set("box", {"n": 1})
        created = await next_state(sub)
        assert created["data"] == {"n": 1} and created["updated"] == 0
        await client.set("box", {"n": 2})
        updated = await next_state(sub)
        assert updated["data"] == {"n": 2} and updated["created"] == created["created"] > 0
        assert updated == await client.get("box")
        await client.delete("box")
        assert await next_state(sub) == EMPTY


async def test_subscribe_glob_follows_random_writes(client: Client) -> None:
    rng = random.Random(3)
    async with client.subscribe("list/*") as sub:
        assert await next_state(sub) == []
        names = [f"k{i}" for i in range(6)]
        for _ in range(40):
            roll = rng.random()
            if roll < 0.4:
                await client.set(f"list/{rng.choice(names)}", {"v": rng.randrange(100)})
            elif roll < 0.6:
                await client.push("list/*", rng.randrange(100))
            elif roll < 0.9:
                try:
                    await client.delete(f"list/{rng.choice(names)}")
                except ClientError as exc:
                    assert exc.status == 404
            else:
                await client.delete("list/*")
        expected = await client.get("list/*")
        async with asyncio.timeout(5):
            while sub.state != expected:
                await anext(sub)


async def test_resume_with_version_gets_no_initial_frame(
    store: Layered, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = ServerRunner(store, port=0)
    port = await runner.start()
    async with Client(runner.url, options=FAST) as other:
        sub = other.subscribe("resume/me")
        states = [await next_state(sub)]
        await runner.stop()  # the connection drops; the client retries until the server is back
        runner = ServerRunner(store, port=port)
        joins = Joins(runner.server, monkeypatch)
        await runner.start()
        try:
            next_frame = asyncio.ensure_future(next_state(sub))
            await joins.reach("resume/me", 1)
            await other.set("resume/me", 1)
            states.append(await next_frame)
        finally:
            await sub.close()
            await runner.stop()
    assert sub.connections == 2
    # Had the server sent a snapshot on the resumed stream, it would come before the write's frame.
    assert states[0] == EMPTY and states[1]["data"] == 1


async def test_bearer_token_subscription(runner: ServerRunner) -> None:
    client = Client(runner.url, token="tok", options=FAST)
    async with client, client.subscribe("secure") as sub:
        assert await next_state(sub) == EMPTY


async def test_heartbeat_pings_are_answered(runner: ServerRunner) -> None:
    """With a short client heartbeat the connection survives several ping periods."""
    options = ClientOptions(reconnect_initial=0.01, heartbeat=0.1)
    async with Client(runner.url, options=options) as client, client.subscribe("beat") as sub:
        assert await next_state(sub) == EMPTY
        await asyncio.sleep(0.6)  # the duration under test: six heartbeats, each needing a pong
        await client.set("beat", 1)
        assert (await next_state(sub))["data"] == 1
        assert sub.connections == 1


async def test_a_resume_after_a_restart_with_new_data_ends_in_the_server_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's repro: the client held {"on": true} while the restarted server held {"on": false};
    the next patch then applied to the stale state. Whatever the server sends on the resumed stream,
    the client must end up equal to GET."""
    path = str(tmp_path / "db")
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path))
    await store.start()
    runner = ServerRunner(store, port=0)
    port = await runner.start()
    lost = asyncio.Event()
    client = Client(runner.url, options=FAST)
    sub = client.subscribe("flag", on_status=lambda s: lost.set() if s.attempt >= 2 else None)
    try:
        assert await next_state(sub) == EMPTY
        await client.set("flag", {"on": True})
        assert (await next_state(sub))["data"] == {"on": True}
        pending = asyncio.ensure_future(next_state(sub))
        await runner.stop()
        await store.close()
        await asyncio.wait_for(lost.wait(), 5)  # retrying against the stopped server
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path))
        await store.start()
        while store.revision < int(sub.version or "0", 16) - 1:  # reach the version the client holds
            await store.set("other", store.revision)
        await store.set("flag", {"on": False})
        runner = ServerRunner(store, port=port)
        joins = Joins(runner.server, monkeypatch)
        await runner.start()
        await joins.reach("flag", 1)
        await client.set("flag", {"on": False, "n": 2})
        states = [await pending]
        async with asyncio.timeout(5):
            while "n" not in states[-1]["data"]:
                states.append(await anext(sub))
        assert states[-1] == await client.get("flag")
    finally:
        await client.close()
        await runner.stop()
        await store.close()


async def test_glob_get_follows_pages_and_get_page_pages() -> None:
    """The server returns glob lists in pages: ``get`` reads them all, ``get_page`` one at a time."""
    store = Layered(memory=MemoryLayer())
    await store.start()
    runner = ServerRunner(store, port=0, list_limit=7)
    port = await runner.start()
    try:
        async with Client(f"http://127.0.0.1:{port}") as c:
            for i in range(20):
                await c.set(f"p/{i}", {"i": i})
            everything = await c.get("p/*")
            assert [o["data"]["i"] for o in everything] == list(range(19, -1, -1))
            first, cursor = await c.get_page("p/*", limit=5)
            assert [o["data"]["i"] for o in first] == [19, 18, 17, 16, 15] and cursor is not None
            await c.set("p/new", {"i": 99})  # written between two pages: before the cursor
            second, cursor = await c.get_page("p/*", limit=5, cursor=cursor)
            assert [o["data"]["i"] for o in second] == [14, 13, 12, 11, 10]
            more, cursor = await c.get_page("p/*", limit=100, cursor=cursor)  # capped at list_limit
            assert [o["data"]["i"] for o in more] == [9, 8, 7, 6, 5, 4, 3] and cursor is not None
            rest, cursor = await c.get_page("p/*", cursor=cursor)
            assert [o["data"]["i"] for o in rest] == [2, 1, 0] and cursor is None
    finally:
        await runner.stop()
        await store.close()
