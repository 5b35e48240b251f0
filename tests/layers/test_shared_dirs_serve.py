"""Shared directories through the server (issue 11): two ``ooo-storage serve --sos ROOT`` processes
on one directory; a websocket subscriber on A sees every write made over HTTP on B, in per-key
order, and both servers end with the same state as GET."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from serve_process import serve_process

from ooo_storage.protocol.jsonpatch import apply_patch

KEYS = [f"k/{i}" for i in range(5)]


async def _serve(root: Path, cwd: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc, port = await serve_process("--sos", str(root), "--indexer-rate", "0.05", cwd=cwd)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    root = tmp_path / "sos"
    a, base_a = await _serve(root, tmp_path)
    b, base_b = await _serve(root, tmp_path)
    try:
        yield base_a, base_b
    finally:
        for proc in (a, b):
            proc.terminate()
        assert [await a.wait(), await b.wait()] == [0, 0]
    assert not (tmp_path / "data").exists()  # --sos: no LevelDB directory made beside it


class Stream:
    """A websocket subscription: its state, and the data of each frame's state, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.state: Any = None
        self.history: list[Any] = []

    async def step(self) -> None:
        msg = await asyncio.wait_for(self.ws.receive(), 15)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        frame = orjson.loads(msg.data)
        self.state = frame["data"] if frame["snapshot"] else apply_patch(self.state, frame["data"])
        self.history.append(self.state)

    async def until(self, done: Any) -> None:
        while not done(self.state):
            await self.step()


def _data(obj: dict[str, Any]) -> Any:
    return obj.get("data") if obj.get("index") else None  # the empty object: the key is missing


async def test_subscriber_on_a_sees_every_write_made_on_b(two_servers: tuple[str, str]) -> None:
    base_a, base_b = two_servers
    ws_a = base_a.replace("http", "ws")
    async with aiohttp.ClientSession() as http:
        singles = {key: Stream(await http.ws_connect(f"{ws_a}/{key}")) for key in KEYS}
        glob = Stream(await http.ws_connect(f"{ws_a}/k/*"))
        for stream in (*singles.values(), glob):
            await stream.step()  # the first snapshot
        writes = [(KEYS[n % len(KEYS)], {"n": n}) for n in range(100)]
        for key, value in writes:
            async with http.post(f"{base_b}/{key}", data=orjson.dumps(value)) as resp:
                assert resp.status == 200
        for key, stream in singles.items():
            expected = [value for k, value in writes if k == key]
            await stream.until(lambda state, last=expected[-1]: _data(state) == last)
            assert [_data(state) for state in stream.history[1:]] == expected  # each write, in order
        await glob.until(lambda state: sorted(_data(o)["n"] for o in state) == list(range(95, 100)))

        async with http.delete(f"{base_b}/k/0") as resp:
            assert resp.status == 204
        await singles["k/0"].until(lambda state: _data(state) is None)
        async with http.post(f"{base_b}/other", data=b"1") as resp:
            assert resp.status == 200
        async with http.delete(f"{base_b}/k/*") as resp:
            assert resp.status == 204
        await glob.until(lambda state: state == [])
        for key in KEYS[1:]:
            await singles[key].until(lambda state: _data(state) is None)

        for base in (base_a, base_b):
            async with http.get(f"{base}/k/*") as resp:
                assert await resp.json() == glob.state == []
            async with http.get(f"{base}/other") as resp:
                assert (await resp.json())["data"] == 1
        for stream in (*singles.values(), glob):
            await stream.ws.close()


async def test_writes_both_ways_reach_subscribers_on_both(two_servers: tuple[str, str]) -> None:
    base_a, base_b = two_servers
    async with aiohttp.ClientSession() as http:
        streams = [Stream(await http.ws_connect(base.replace("http", "ws") + "/w/*")) for base in two_servers]
        for stream in streams:
            await stream.step()
        for n in range(20):
            base = base_a if n % 2 else base_b
            async with http.post(f"{base}/w/{n % 4}", data=orjson.dumps({"n": n})) as resp:
                assert resp.status == 200
        want = sorted(range(16, 20))
        for stream in streams:
            await stream.until(lambda state: sorted(_data(o)["n"] for o in state) == want)
        for base, stream in zip(two_servers, streams, strict=True):
            async with http.get(f"{base}/w/*") as resp:
                assert await resp.json() == stream.state
            await stream.ws.close()


async def test_a_restarted_server_does_not_resurrect_old_values(tmp_path: Path) -> None:
    root = tmp_path / "sos"
    a, base_a = await _serve(root, tmp_path)
    b, base_b = await _serve(root, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            stream = Stream(await http.ws_connect(base_b.replace("http", "ws") + "/k"))
            await stream.step()
            for base, value in ((base_a, {"v": "old"}), (base_b, {"v": "new"})):
                async with http.post(f"{base}/k", data=orjson.dumps(value)) as resp:
                    assert resp.status == 200
            gone = Stream(await http.ws_connect(base_b.replace("http", "ws") + "/gone"))
            await gone.step()
            async with http.post(f"{base_a}/gone", data=b"1") as resp:
                assert resp.status == 200
            await gone.until(lambda state: _data(state) == 1)  # b knows it now
            await gone.ws.close()
            async with http.delete(f"{base_b}/gone") as resp:  # b deletes what a wrote
                assert resp.status == 204
            a.terminate()
            assert await a.wait() == 0
            a, base_a = await _serve(root, tmp_path)  # a's old journal still says k=old, gone=1
            async with http.post(f"{base_a}/k", data=orjson.dumps({"v": "newest"})) as resp:
                assert resp.status == 200
            await stream.until(lambda state: _data(state) == {"v": "newest"})
            assert [_data(state) for state in stream.history[1:]] == [{"v": "old"}, {"v": "new"}, {"v": "newest"}]
            for base in (base_a, base_b):
                async with http.get(f"{base}/k") as resp:
                    assert (await resp.json())["data"] == {"v": "newest"}
                async with http.get(f"{base}/gone") as resp:
                    assert resp.status == 404
            await stream.ws.close()
    finally:
        for proc in (a, b):
            proc.terminate()
            await proc.wait()
