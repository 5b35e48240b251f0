"""``serve --sync``: every write acknowledged with 200 survives kill -9 of the server process."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
from serve_process import serve_process


async def start_server(data: Path, *extra: str) -> tuple[asyncio.subprocess.Process, int]:
    return await serve_process("--data", str(data), *extra)

def value(key: str) -> dict[str, object]:
    w, seq = key.split("/")[1:]
    return {"key": key, "w": w, "seq": int(seq), "pad": "p" * (int(seq) % 40)}


async def write_until_killed(
    http: aiohttp.ClientSession, base: str, prefix: str, acked: list[str], target: int, enough: asyncio.Event
) -> None:
    """POST new keys one after another; record a key only once its POST returned 200."""
    for seq in range(10_000):
        key = f"{prefix}/{seq}"
        try:
            async with http.post(f"{base}/{key}", data=orjson.dumps(value(key))) as resp:
                if resp.status != 200:
                    return
        except aiohttp.ClientError:
            return  # the server died with this request in flight: not acknowledged
        acked.append(key)
        if len(acked) >= target:
            enough.set()


async def test_acknowledged_posts_survive_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "db"
    rng = random.Random(5)
    acked: list[str] = []  # acknowledged by the previous server process, verified by the next one
    checked = 0
    async with aiohttp.ClientSession() as http:
        for round_ in range(21):
            proc, port = await start_server(data, "--sync")
            base = f"http://127.0.0.1:{port}"
            try:
                for key in acked:
                    async with http.get(f"{base}/{key}") as resp:
                        assert resp.status == 200, f"acknowledged {key} lost after kill -9 (round {round_})"
                        obj = orjson.loads(await resp.read())
                    assert obj["data"] == value(key) and obj["path"] == key
                checked += len(acked)
                if round_ == 20:
                    break
                acked = []
                enough = asyncio.Event()
                target = rng.randint(20, 300)

                writers = [
                    asyncio.create_task(write_until_killed(http, base, f"r{round_}/w{w}", acked, target, enough))
                    for w in range(64)
                ]
                async with asyncio.timeout(60):
                    await enough.wait()
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                await asyncio.gather(*writers)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert checked >= 20 * 20


async def test_locked_database_is_a_clean_error(tmp_path: Path) -> None:
    data = tmp_path / "db"
    first, _ = await start_server(data)
    try:
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--data", str(data),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1
        assert b"locked by another process" in err and b"Traceback" not in err
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.wait(), 30)
