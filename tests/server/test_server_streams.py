"""Websocket streams (PROTOCOL.md §5) with real clients; patches applied with ``jsonpatch``."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest
from server_live import Follower, Live, LiveFactory, next_frame, no_frame

EMPTY = {"created": 0, "updated": 0, "index": "", "data": {}}


async def test_single_key_lifecycle(live: Live) -> None:
    f = Follower(await live.ws("users/1"))
    first = await f.step()
    assert first["snapshot"] is True and f.state == EMPTY
    assert int(first["version"], 16) == live.store.revision

    await live.request("POST", "users/1", {"name": "ada", "age": 3})
    created = await f.step()
    assert created["snapshot"] is True
    assert f.state == await live.get("users/1")

    await live.request("POST", "users/1", {"name": "bob", "age": 3})
    patched = await f.step()
    assert patched["snapshot"] is False
    ops = {op["path"]: op["op"] for op in patched["data"]}
    assert ops == {"/updated": "replace", "/data/name": "replace"}
    assert f.state == await live.get("users/1")

    await live.request("PATCH", "users/1", {"age": 4})
    await f.step()
    assert f.state == await live.get("users/1")

    await live.request("POST", "users/2", 1)  # unrelated: no frame, version unchanged
    await live.request("DELETE", "users/1")
    deleted = await f.step()
    assert deleted["snapshot"] is False and f.state == EMPTY
    versions = [int(fr["version"], 16) for fr in f.frames]
    assert versions == sorted(set(versions))
    await no_frame(f.ws)


async def test_frames_are_binary_with_exact_envelope(live: Live) -> None:
    ws = await live.ws("k")
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.BINARY
    assert msg.data == (
        b'{"snapshot":true,"version":"%x","data":{"created":0,"updated":0,"index":"","data":{}}}'
        % live.store.revision
    )
    await live.request("POST", "k", {"a": 1})
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.BINARY
    assert msg.data.startswith(b'{"snapshot":true,"version":"')


async def test_list_lifecycle(live: Live) -> None:
    f = Follower(await live.ws("logs/*"))
    assert (await f.step())["data"] == []
    indexes = []
    for i in range(4):
        _, body = await live.request("POST", "logs/*", {"i": i})
        indexes.append(orjson.loads(body)["index"])
        frame = await f.step()
        assert frame["data"][0]["op"] == "add" and frame["data"][0]["path"] == "/0"
    assert f.state == await live.get("logs/*")

    await live.request("POST", f"logs/{indexes[1]}", {"i": 10})
    frame = await f.step()
    assert frame["data"][0]["op"] == "replace" and frame["data"][0]["path"] == "/2"
    assert f.state == await live.get("logs/*")

    await live.request("DELETE", f"logs/{indexes[2]}")
    frame = await f.step()
    assert frame["data"] == [{"op": "remove", "path": "/1"}]
    assert f.state == await live.get("logs/*")

    # A late joiner gets the pool's list in the same order.
    late = Follower(await live.ws("logs/*"))
    await late.step()
    assert late.state == f.state

    await live.request("DELETE", "logs/*")
    frame = await f.step()
    assert frame == {"snapshot": True, "version": frame["version"], "data": []}
    await no_frame(f.ws)
    await late.until([])
    await no_frame(late.ws)


async def test_nested_globs(live: Live) -> None:
    f = Follower(await live.ws("box/*/things/*"))
    await f.step()
    await live.request("POST", "box/1/things/a", 1)
    await live.request("POST", "box/1/other/a", 2)  # not matching
    await live.request("POST", "box/2/things/b", 3)
    await live.request("POST", "box/2/things", 4)  # fewer segments
    await f.until(await live.get("box/*/things/*"))
    assert sorted(o["data"] for o in f.state) == [1, 3]
    await live.request("DELETE", "box/1/things/a")
    await f.until(await live.get("box/*/things/*"))
    assert [o["data"] for o in f.state] == [3]


async def test_version_resume_skips_initial_frame(live: Live) -> None:
    await live.request("POST", "r/1", 1)
    f = Follower(await live.ws("r/*"))
    await f.step()
    version = f.version
    await live.request("POST", "other", 1)  # unrelated write
    resumed = await live.ws(f"r/*?v={version}")
    await no_frame(resumed)
    await live.request("POST", "r/2", 2)
    frame = await next_frame(resumed)
    assert frame["snapshot"] is False and int(frame["version"], 16) > int(version, 16)
    stale = await live.ws("r/*?v=1")
    assert (await next_frame(stale))["snapshot"] is True


async def test_resume_after_pool_was_pruned(live: Live) -> None:
    ends = stream_ends(live)
    await live.request("POST", "gone/1", 1)
    first = Follower(await live.ws("gone/*"))
    await first.step()
    await close_stream(first.ws, ends, "gone/*")
    assert live.server.pools.pools == {}
    await live.request("POST", "unrelated", 1)
    resumed = Follower(await live.ws(f"gone/*?v={first.version}"))
    await no_frame(resumed.ws)
    resumed.state, resumed.version = first.state, first.version
    await live.request("POST", "gone/2", 2)
    assert (await resumed.step())["snapshot"] is False
    assert resumed.state == await live.get("gone/*")
    # a change while nobody listened: the state differs, so a snapshot
    await close_stream(resumed.ws, ends, "gone/*")
    assert live.server.pools.pools == {}
    await live.request("POST", "gone/3", 3)
    again = Follower(await live.ws(f"gone/*?v={resumed.version}"))
    assert (await again.step())["snapshot"] is True
    assert again.state == await live.get("gone/*")


def stream_ends(live: Live) -> asyncio.Queue[str]:
    """The key of each stream the server lets go from now on, put once the stream has left its
    pool (and an emptied pool was pruned): the server runs ``on_unsubscribe`` after that."""
    ends: asyncio.Queue[str] = asyncio.Queue()
    live.server.on_unsubscribe = ends.put_nowait
    return ends


async def close_stream(ws: aiohttp.ClientWebSocketResponse, ends: asyncio.Queue[str], key: str) -> None:
    """Close ``ws`` and wait until the server is done with its stream."""
    await ws.close()
    assert await asyncio.wait_for(ends.get(), 5) == key


async def test_single_key_resume(live: Live) -> None:
    f = Follower(await live.ws("solo"))
    await f.step()
    again = await live.ws(f"solo?v={f.version}")
    await no_frame(again)


async def test_many_subscribers_converge(live: Live) -> None:
    """1 000 subscribers, 200 concurrent writes: every subscriber receives the very same frame bytes,
    and applying them (with ``jsonpatch``) gives the GET result."""
    n_subs, n_writes = 1000, 200
    sockets = await asyncio.gather(*(live.ws("many/*") for _ in range(n_subs)))
    first = Follower(sockets[0])
    await first.step()

    async def write(i: int) -> None:
        if i % 5 == 0:
            await live.request("POST", "many/*", {"i": i})
        else:
            await live.request("POST", f"many/{i % 37}", {"i": i})

    async def raw_frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[bytes]:
        frames = []
        async with asyncio.timeout(60):
            for _ in range(count):
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                frames.append(msg.data)
        return frames

    await asyncio.gather(*(write(i) for i in range(n_writes)))
    expected = await live.get("many/*")
    await first.until(expected, timeout=60)
    others = await asyncio.gather(*(raw_frames(ws, len(first.raw)) for ws in sockets[1:]))
    for frames in others:
        assert frames == first.raw  # the very same bytes, in the same order
    state = orjson.loads((await live.request("GET", "?api=state"))[1])
    assert state["pools"][0]["connections"] == n_subs
    assert state["slowDisconnects"] == 0
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_join_during_writes_is_consistent(live: Live) -> None:
    """Subscribers joining while writes stream in never miss or duplicate an event."""
    stop = asyncio.Event()
    wrote = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await live.request("POST", f"race/{i % 20}", {"i": i})
            wrote.set()
            i += 1

    task = asyncio.create_task(writer())
    followers = []
    for _ in range(20):
        followers.append(Follower(await live.ws("race/*")))
        wrote.clear()
        await asyncio.wait_for(wrote.wait(), 5)  # a write commits between two joins
    stop.set()
    await task
    expected = await live.get("race/*")
    await asyncio.gather(*(f.until(expected) for f in followers))


async def test_no_patch_mode(make_live: LiveFactory) -> None:
    live = await make_live(no_patch=True)
    f = Follower(await live.ws("np/*"))
    await f.step()
    await live.request("POST", "np/1", 1)
    await live.request("POST", "np/1", 2)
    for _ in range(2):
        assert (await f.step())["snapshot"] is True
    assert f.state == await live.get("np/*")


async def test_clock_stream(make_live: LiveFactory) -> None:
    live = await make_live(tick=0.05)
    async with live.http.ws_connect(live.ws_base + "/") as ws:
        first = await ws.receive(timeout=5)
        second = await ws.receive(timeout=5)
        assert first.type is second.type is aiohttp.WSMsgType.BINARY
        assert int(second.data) > int(first.data) > 0


async def test_handshake_rejections(make_live: LiveFactory) -> None:
    live = await make_live(allowed_origins=["http://good.example"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("a//b")
    assert err.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("k", origin="http://evil.example")
    assert err.value.status == 403
    await (await live.ws("k", origin="http://good.example")).close()
    host = live.base.removeprefix("http://")
    await (await live.ws("k", origin=f"http://{host}")).close()
    await (await live.ws("k")).close()  # no Origin


async def test_bearer_subprotocol(live: Live) -> None:
    ws = await live.ws("k", protocols=("bearer", "secret-token"))
    assert ws.protocol == "bearer"
    await next_frame(ws)


async def test_pong_timeout_drops_silent_client(make_live: LiveFactory) -> None:
    live = await make_live(ping_interval=0.05, pong_timeout=0.3)
    # Both read with autoping=False: one answers every ping itself, the other none.
    alive = await live.ws("quiet", autoping=False)
    silent = await live.ws("quiet", autoping=False)
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    # Pings come at least ping_interval apart, so 8 answered pings span 0.35 s or more: longer
    # than pong_timeout, which a client that answers none does not outlive (it gets at most 6).
    outlived = asyncio.Event()

    async def pump() -> None:
        answered = 0
        async for msg in alive:
            if msg.type is aiohttp.WSMsgType.PING:
                await alive.pong(msg.data)
                answered += 1
                if answered == 8:
                    outlived.set()
            else:
                frames.put_nowait(msg.data)

    reader = asyncio.create_task(pump())
    msgs = []
    with contextlib.suppress(aiohttp.ClientConnectionResetError):
        async with asyncio.timeout(5):
            while not silent.closed:
                msgs.append((await silent.receive()).type)
    assert aiohttp.WSMsgType.PING in msgs
    assert msgs[-1] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await asyncio.wait_for(outlived.wait(), 5)
    await live.request("POST", "quiet", 1)
    async with asyncio.timeout(5):
        assert orjson.loads(await frames.get())["data"]["created"] == 0
        assert orjson.loads(await frames.get())["data"]["data"] == 1
    await alive.close()
    await reader


async def test_empty_pools_pruned(live: Live) -> None:
    ends = stream_ends(live)
    ws = await live.ws("prune/*")
    await next_frame(ws)
    assert len(live.server.pools.pools) == 1
    await close_stream(ws, ends, "prune/*")
    assert live.server.pools.pools == {}
