"""A real server on 127.0.0.1 (any free port) over a real store, and real HTTP/websocket clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_live import Live, LiveFactory

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import Server, ServerRunner


@pytest.fixture
async def make_live(tmp_path: Path) -> AsyncIterator[LiveFactory]:
    opened: list[tuple[Layered, ServerRunner, aiohttp.ClientSession]] = []

    async def make(backend: str = "memory", **options: Any) -> Live:
        memory = MemoryLayer() if backend != "leveldb" else None
        embedded = LevelDBLayer(str(tmp_path / f"db{len(opened)}")) if "leveldb" in backend else None
        store = Layered(memory=memory, embedded=embedded)
        await store.start()
        server = Server(store, **{"shutdown_timeout": 1.0, **options})
        runner = ServerRunner(store, "127.0.0.1", 0, server=server)
        await runner.start()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        opened.append((store, runner, session))
        return Live(store, server, runner, session)

    yield make
    for store, runner, session in reversed(opened):
        await session.close()
        await runner.stop()
        await store.close()


@pytest.fixture
async def live(make_live: LiveFactory) -> Live:
    return await make_live()
