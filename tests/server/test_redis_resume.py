"""Resuming with ``?v=`` across Redis nodes (issue 14, outside attack F1 and F2): a node behind the
version a client resumes from catches up (bounded) instead of sending it back in time; a version a
node's reload gave resumes on another node into the right state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)
from redis_tail import caught_up, layer_of, start_tail, stop_tail

from ooo_storage import Layered, MemoryLayer
from ooo_storage.layered import HistoryOptions
from ooo_storage.layers import RedisLayer
from ooo_storage.server import ServerRunner


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def node(url: str, namespace: str, history: Path) -> Layered:
    return Layered(MemoryLayer(), RedisLayer(url, namespace), history=HistoryOptions(str(history)))






def ws_url(runner: ServerRunner, path: str) -> str:
    return runner.url.replace("http", "ws", 1) + path


async def first_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(10):
        return dict(orjson.loads((await ws.receive()).data))


def rebuilt(state: Any, frame: dict[str, Any]) -> Any:
    return frame["data"] if frame["snapshot"] else jsonpatch.apply_patch(state, frame["data"])


async def test_a_node_behind_catches_up_to_the_version_a_client_resumes_from(
    redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession  # noqa: F811
) -> None:
    """lagresume.py: the client holds V from a; b lags 199 writes behind it. Asked for ``?v=V``, b
    waits for its tail to reach V, then answers from V (before: at once, a snapshot older than V,
    without writes the client had seen)."""
    namespace = f"r{uuid.uuid4().hex[:10]}"
    a, b = node(redis_server.url, namespace, tmp_path / "a"), node(redis_server.url, namespace, tmp_path / "b")
    async with a, b, ServerRunner(a, "127.0.0.1", 0) as ra, ServerRunner(b, "127.0.0.1", 0) as rb:
        await a.set("lr/x", 0)
        await caught_up(b, a.revision)
        await stop_tail(b)
        for i in range(199):
            await a.set(f"lr/{i % 10}", i)
        async with http.ws_connect(ws_url(ra, "/lr/*")) as on_a:
            held = await first_frame(on_a)
        version = int(held["version"], 16)
        assert version == a.revision
        async with http.ws_connect(ws_url(rb, f"/lr/*?v={held['version']}")) as on_b:
            answer = asyncio.ensure_future(on_b.receive())
            async with asyncio.timeout(10):
                while not layer_of(b)._catching and not answer.done():
                    await asyncio.sleep(0.005)  # b asks Redis for the counter, then waits for its tail
            start_tail(b)  # b catches up
            await a.set("lr/x", {"after": True})  # a frame comes either way
            async with asyncio.timeout(10):
                frame = dict(orjson.loads((await answer).data))
            assert int(frame["version"], 16) >= version, "sent back before the version it holds"
            state = rebuilt(held["data"], frame)
            while int(frame["version"], 16) < a.revision:
                frame = await first_frame(on_b)
                state = rebuilt(state, frame)
        async with http.get(f"{ra.url}/lr/*") as resp:
            assert state == await resp.json()


async def test_a_version_from_a_reload_resumes_on_another_node(
    redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession  # noqa: F811
) -> None:
    """trim.py: b reloads after its stream position was trimmed away, while its subscriber of
    ``tr/*`` watches (20 keys rewritten together, some deleted and written again). Every version
    the subscriber holds resumes on a and on b into the right state (before: a reload per key,
    at revisions only b had: a resumed them with an empty patch, b with a wrong one)."""
    namespace = f"r{uuid.uuid4().hex[:10]}"
    a, b = node(redis_server.url, namespace, tmp_path / "a"), node(redis_server.url, namespace, tmp_path / "b")
    async with a, b, ServerRunner(a, "127.0.0.1", 0) as ra, ServerRunner(b, "127.0.0.1", 0) as rb:
        async with a.transaction() as txn:
            for i in range(20):
                txn.set(f"tr/{i:02d}", {"g": 0})
        await caught_up(b, a.revision)
        held: list[tuple[str, Any]] = []
        async with http.ws_connect(ws_url(rb, "/tr/*")) as watch:
            frame = await first_frame(watch)
            state = rebuilt(None, frame)
            held.append((frame["version"], state))
            await stop_tail(b)
            for g in range(1, 80):
                async with a.transaction() as txn:
                    if g % 25 == 0:
                        txn.delete("tr/*")
                    else:
                        for i in range(20):
                            txn.set(f"tr/{i:02d}", {"g": g})
            client = aioredis.Redis.from_url(redis_server.url, protocol=2)
            try:
                await client.xtrim(f"{namespace}:log", maxlen=3, approximate=False)
            finally:
                await client.aclose()
            start_tail(b)
            await caught_up(b, a.revision)
            while int(frame["version"], 16) < a.revision:
                frame = await first_frame(watch)
                state = rebuilt(state, frame)
                assert len({o["data"]["g"] for o in state}) <= 1, "a frame mixing generations"
                held.append((frame["version"], state))
        await a.set("other", 1)  # both nodes move on
        await caught_up(b, a.revision)
        async with http.get(f"{ra.url}/tr/*") as resp:
            truth = await resp.json()
        assert held[-1][1] == truth and layer_of(b).resyncs == 1
        for version, old in held:
            for runner in (ra, rb):
                async with http.ws_connect(ws_url(runner, f"/tr/*?v={version}")) as resumed:
                    try:
                        async with asyncio.timeout(1):  # no frame: the client is current
                            answer = dict(orjson.loads((await resumed.receive()).data))
                        now = rebuilt(old, answer)
                    except TimeoutError:
                        now = old
                assert now == truth, (version, runner.port)


async def test_get_since_on_a_node_behind_catches_up_to_the_version(
    redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession  # noqa: F811
) -> None:
    """``GET ?since=V`` with V from a node ahead: the node behind waits for its tail to reach V,
    then answers from V (before: 410, a version it never had)."""
    namespace = f"r{uuid.uuid4().hex[:10]}"
    a, b = node(redis_server.url, namespace, tmp_path / "a"), node(redis_server.url, namespace, tmp_path / "b")
    async with a, b, ServerRunner(a, "127.0.0.1", 0), ServerRunner(b, "127.0.0.1", 0) as rb:
        await a.set("gs/x", 0)
        await caught_up(b, a.revision)
        await stop_tail(b)
        for i in range(50):
            await a.set(f"gs/{i % 5}", i)
        version = a.revision
        answer = asyncio.ensure_future(http.get(f"{rb.url}/gs/*?since={version:x}"))
        async with asyncio.timeout(10):
            while not layer_of(b)._catching and not answer.done():
                await asyncio.sleep(0.005)  # b asks Redis for the counter, then waits for its tail
        start_tail(b)
        async with asyncio.timeout(10):
            resp = await answer
        async with resp:
            assert resp.status == 200, await resp.text()
            frame = await resp.json()
        assert int(frame["version"], 16) >= version
        assert frame["data"] == [] and frame["snapshot"] is False
