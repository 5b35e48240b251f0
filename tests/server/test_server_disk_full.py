"""A real ``ooo-storage serve`` on a real, small filesystem that fills up: writes get 503 and reads
keep working while it is full; once space is freed every write acknowledged after that survives a
restart, in default and ``--sync`` mode; a server started while the disk is full answers 503 and
opens the database as soon as it can."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import orjson
import pytest
from test_server_durable import start_server


async def _until(http: aiohttp.ClientSession, method: str, url: str, body: Any, want: int) -> None:
    """Repeat a request while it gets 503 (the database reopens with a short backoff)."""
    data = None if body is None else orjson.dumps(body)
    async with asyncio.timeout(20):
        while True:
            async with http.request(method, url, data=data) as resp:
                if resp.status == want:
                    return
                assert resp.status == 503, (resp.status, await resp.text())
            await asyncio.sleep(0.05)  # no event to wait on from outside the server


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        assert await proc.wait() == 0


@pytest.mark.parametrize("mode", [(), ("--sync",)], ids=["default", "sync"])
async def test_acknowledged_writes_survive_a_disk_full_episode(tmpfs: Any, mode: tuple[str, ...]) -> None:
    root = tmpfs("3m")
    ballast = root / "ballast"
    ballast.write_bytes(b"\0" * 600_000)
    data = root / "db"
    proc, port = await start_server(data, *mode)
    base = f"http://127.0.0.1:{port}"
    acked: list[int] = []
    async with aiohttp.ClientSession() as http:
        try:
            for n in range(1000):
                async with http.post(f"{base}/fill/{n}", data=orjson.dumps({"n": n, "x": "x" * 20_000})) as r:
                    if r.status == 503:
                        assert "No space left on device" in await r.text()
                        break
                    assert r.status == 200
                    acked.append(n)
            else:
                raise AssertionError("the filesystem never filled up")
            async with http.get(f"{base}/fill/0") as r:
                assert r.status == 200  # reads are served while writes are refused
            async with http.post(f"{base}/after/0", data=b"0") as r:
                assert r.status == 503

            ballast.unlink()
            for k in range(20):
                await _until(http, "POST", f"{base}/after/{k}", {"k": k}, 200)
            await _until(http, "DELETE", f"{base}/fill/0", None, 204)
        finally:
            await _stop(proc)

        proc, port = await start_server(data, *mode)
        base = f"http://127.0.0.1:{port}"
        try:
            async with http.get(f"{base}/after/*") as r:
                after = sorted(o["data"]["k"] for o in orjson.loads(await r.read()))
            assert after == list(range(20))
            async with http.get(f"{base}/fill/*") as r:
                fill = sorted(o["data"]["n"] for o in orjson.loads(await r.read()))
            assert fill == acked[1:]  # every acknowledged fill but the deleted one
        finally:
            await _stop(proc)


async def test_started_on_a_full_disk_serves_503_then_opens(tmpfs: Any) -> None:
    root = tmpfs("2m")
    data = root / "db"
    proc, port = await start_server(data)
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        try:
            for n in range(5):
                await _until(http, "POST", f"{base}/k/{n}", {"n": n}, 200)
        finally:
            await _stop(proc)
        ballast = root / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
        try:  # fill every last block
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

        proc, port = await start_server(data)
        base = f"http://127.0.0.1:{port}"
        try:
            async with http.get(f"{base}/k/1") as r:
                assert r.status == 503
            async with http.ws_connect(f"ws://127.0.0.1:{port}/k/*") as ws:  # refused before the upgrade
                raise AssertionError(f"subscribed while the store is not open: {ws}")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503
            ballast.unlink()
            await _until(http, "GET", f"{base}/k/1", None, 200)
            async with http.get(f"{base}/k/*") as r:
                assert sorted(o["data"]["n"] for o in orjson.loads(await r.read())) == list(range(5))
            await _until(http, "POST", f"{base}/k/9", {"n": 9}, 200)
        finally:
            await _stop(proc)
