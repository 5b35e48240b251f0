"""Shared directories through two server processes (issue 11, "How it is checked"), on an SOS root
and on one set of erasure drives (which ``serve`` has no flag for: each process here runs
``ServerRunner`` over ``ErasureLayer(shared=True)`` itself). Several clients write concurrently
through B, each to its own key; a glob subscriber on A must see every write, each key's in the order
it was acknowledged, and end with GET's state on both servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ooo_storage.protocol.jsonpatch import apply_patch

REPO = str(Path(__file__).resolve().parents[2])
KEYS = [f"g/{k}" for k in range(5)]
PER_KEY = 40

SERVER = r"""
import asyncio, json, signal, sys
from ooo_storage import Layered, MemoryLayer
from ooo_storage.layers.shared import SharedOptions
from ooo_storage.server import ServerRunner

async def main():
    spec = json.loads(sys.argv[1])
    shared = SharedOptions(indexer_rate=0.05)
    if spec["kind"] == "sos":
        from ooo_storage.layers.sos import SOSLayer
        layer = SOSLayer(spec["root"], shared=shared, durability="none")
    else:
        from ooo_storage.layers.erasure import ErasureLayer
        layer = ErasureLayer(spec["drives"], k=2, m=1, shared=shared, durability="none", repair="off")
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, shutdown_timeout=1.0)
    port = await runner.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.stop()
    await store.close()

asyncio.run(main())
"""


async def _server(spec: dict[str, Any]) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, json.dumps(spec), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip().isdigit(), f"the server did not start (exit {proc.returncode})"
    return proc, f"http://127.0.0.1:{int(line)}"


@pytest.fixture(params=["sos", "erasure"])
async def two_servers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    if request.param == "sos":
        spec: dict[str, Any] = {"kind": "sos", "root": str(tmp_path / "sos")}
    else:
        spec = {"kind": "erasure", "drives": [str(tmp_path / f"drive{i}") for i in range(3)]}
    procs: list[asyncio.subprocess.Process] = []
    bases = []
    try:
        for _ in range(2):
            proc, base = await _server(spec)
            procs.append(proc)
            bases.append(base)
        yield bases[0], bases[1]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        assert [await proc.wait() for proc in procs] == [0] * len(procs)


async def test_concurrent_writes_on_b_reach_a_glob_subscriber_on_a_in_key_order(
    two_servers: tuple[str, str],
) -> None:
    base_a, base_b = two_servers
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(base_a.replace("http", "ws") + "/g/*")
        first = orjson.loads((await ws.receive(timeout=10)).data)
        state: list[dict[str, Any]] = first["data"]
        assert first["snapshot"] and state == []
        seen: dict[str, list[int]] = {key: [] for key in KEYS}

        async def writer(key: str) -> None:  # one key each, every write acknowledged before the next
            for n in range(PER_KEY):
                async with http.post(f"{base_b}/{key}", data=orjson.dumps({"n": n})) as resp:
                    assert resp.status == 200

        def values(items: list[dict[str, Any]]) -> dict[str, int]:
            return {item["path"]: item["data"]["n"] for item in items}

        async def subscriber() -> None:
            nonlocal state
            while values(state) != {key: PER_KEY - 1 for key in KEYS}:
                msg = await ws.receive(timeout=15)
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                frame = orjson.loads(msg.data)
                assert not frame["snapshot"], "a subscriber that reads got a snapshot"
                before = values(state)
                state = apply_patch(state, frame["data"])
                for key, n in values(state).items():
                    if before.get(key) != n:
                        seen[key].append(n)

        async with asyncio.timeout(60):
            await asyncio.gather(subscriber(), *(writer(key) for key in KEYS))
        assert seen == {key: list(range(PER_KEY)) for key in KEYS}  # every write, in key order
        for base in (base_a, base_b):
            async with http.get(f"{base}/g/*") as resp:
                assert orjson.loads(await resp.read()) == state
        await ws.close()
