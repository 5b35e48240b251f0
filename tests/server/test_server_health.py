"""``GET /healthz`` and ``GET /readyz`` (``server/health.py``) on a real server: live while it
answers, ready only while the store is open and takes writes (a real LevelDB on a real, full
tmpfs refuses them: 503 with the reason), both outside access control."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import orjson
import pytest
from server_live import LiveFactory, next_frame

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.protocol.access import Policy
from ooo_storage.server import Server, ServerRunner

BOTH = pytest.mark.parametrize("engine", ["lean", "aiohttp"], indirect=True)


@BOTH
async def test_live_and_ready(make_live: LiveFactory) -> None:
    live = await make_live("memory+leveldb")
    assert await live.request("GET", "healthz") == (200, b"ok")
    assert await live.request("GET", "readyz") == (200, b"ready")
    async with live.http.head(live.url("readyz")) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert await live.request("GET", "readyz?probe=1") == (200, b"ready")  # a query is ignored


@BOTH
async def test_health_needs_no_token(make_live: LiveFactory) -> None:
    nobody = Policy.from_dict({"anonymous": {"rules": [{"paths": ["nothing/*"], "rights": ["read"]}]}})
    live = await make_live(auth=nobody)
    assert (await live.request("GET", "healthz"))[0] == 200
    assert (await live.request("GET", "readyz"))[0] == 200
    assert (await live.request("GET", "other"))[0] == 401


@BOTH
async def test_health_paths_stay_keys(make_live: LiveFactory) -> None:
    live = await make_live()
    assert (await live.request("POST", "healthz", {"k": 1}))[0] == 200
    assert await live.request("GET", "healthz") == (200, b"ok")  # the endpoint
    ws = await live.ws("healthz")
    assert (await next_frame(ws))["data"]["data"] == {"k": 1}  # the key
    await ws.close()
    assert (await live.request("DELETE", "healthz"))[0] == 204

    off = await make_live(health=False)
    await off.request("POST", "readyz", {"k": 2})
    assert (await off.get("readyz"))["data"] == {"k": 2}
    assert (await off.request("GET", "healthz"))[0] == 404  # no such key


async def test_not_ready_before_the_store_opens() -> None:
    store = Layered(memory=MemoryLayer())
    runner = ServerRunner(store, "127.0.0.1", 0)
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{runner.url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{runner.url}/readyz") as resp:
                text = await resp.text()
                assert resp.status == 503, text
                assert text == "ooo: not ready: the store is not open (not started yet)"
            await store.start()
            async with http.get(f"{runner.url}/readyz") as resp:
                assert resp.status == 200
    finally:
        await runner.stop()
        await store.close()


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> int:
    async with http.post(url, data=orjson.dumps(body)) as resp:
        return resp.status


@BOTH
async def test_not_ready_while_leveldb_refuses_writes(tmpfs: Any, engine: str) -> None:
    """A full disk: a write fails, LevelDB refuses writes until it reopens; /readyz says so (503
    and why) while /healthz stays 200; once there is room and a write went through, ready again."""
    root = tmpfs("3m")
    ballast = root / "ballast"
    ballast.write_bytes(b"\0" * 600_000)
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(root / "db")))
    await store.start()
    server = Server(store, http_engine=engine)
    runner = ServerRunner(store, "127.0.0.1", 0, server=server)
    await runner.start()
    base = runner.url
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(1000):
                if await _post(http, f"{base}/fill/{n}", {"n": n, "x": "x" * 20_000}) == 503:
                    break
            else:
                raise AssertionError("the filesystem never filled up")
            async with http.get(f"{base}/readyz") as resp:
                text = await resp.text()
                assert resp.status == 503, text
                assert text.startswith("ooo: not ready: LevelDB refuses writes"), text
                assert "No space left on device" in text
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200

            ballast.unlink()
            async with asyncio.timeout(20):  # LevelDB reopens on a write, with a backoff
                while await _post(http, f"{base}/after", 1) != 200:
                    await asyncio.sleep(0.05)  # nothing to wait on: the retry is the next write
            async with http.get(f"{base}/readyz") as resp:
                assert (resp.status, await resp.text()) == (200, "ready")
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            assert "ooo_leveldb_refusing_writes 0.0" in text
            assert "ooo_leveldb_reopens_total 1.0" in text
    finally:
        await runner.stop()
        await store.close()


async def _status_text(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


@BOTH
async def test_not_ready_while_the_reserve_is_spent(tmpfs: Any, engine: str) -> None:
    """The disk fills, LevelDB reopens, but its free-space reserve is spent: every write that adds
    data is refused (503). /readyz says so and the refusal gauge is 1 (before: 200 ``ready`` and
    0); once there is room again, /readyz alone (no write) rebuilds the reserve and is ready."""
    root = tmpfs("12m")
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(root / "db"), reserve_bytes=5_000_000))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, http_engine=engine))
    await runner.start()
    base = runner.url
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(1000):
                if await _post(http, f"{base}/fill/{n}", {"x": os.urandom(75_000).hex()}) == 503:
                    break
            else:
                raise AssertionError("the filesystem never filled up")
            async with http.delete(f"{base}/fill/0") as resp:  # the reopen: writes not refused now
                assert resp.status == 204
            assert await _post(http, f"{base}/more", {"x": 1}) == 503  # the reserve is spent
            status, text = await _status_text(http, f"{base}/readyz")
            assert status == 503, text
            assert text.startswith("ooo: not ready: LevelDB refuses writes that add data"), text
            assert "reserve is spent" in text
            _, metrics = await _status_text(http, f"{base}/metrics")
            assert "ooo_leveldb_refusing_writes 1.0" in metrics
            assert "ooo_leveldb_low_space 1.0" in metrics

            async with http.delete(f"{base}/fill/*") as resp:  # room again (compacted at once)
                assert resp.status == 204
            async with asyncio.timeout(10):  # /readyz retries at most every 2 s: no write needed
                while (await _status_text(http, f"{base}/readyz")) != (200, "ready"):
                    await asyncio.sleep(0.2)
            _, metrics = await _status_text(http, f"{base}/metrics")
            assert "ooo_leveldb_refusing_writes 0.0" in metrics
            assert "ooo_leveldb_low_space 0.0" in metrics
    finally:
        await runner.stop()
        await store.close()
