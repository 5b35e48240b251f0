"""A real server on 127.0.0.1 (any free port) over a real store, and real HTTP/websocket clients.

The server is served by the lean HTTP front (``server/front.py``, which hands what it does not serve
to aiohttp); the modules of :data:`BOTH_ENGINES`, the protocol-level REST tests, run once per engine
(``engine`` is ``lean`` or ``aiohttp``) so that both answer alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_live import ENGINES, Live, LiveFactory

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import Server, ServerRunner

BOTH_ENGINES = frozenset({
    "test_server_rest",
    "test_server_numbers",
    "test_server_origin",
    "test_server_auth",
    "test_server_limits",
    "test_server_disk_full",
    "test_server_lists",
})
"""Test modules run against both HTTP engines."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "engine" in metafunc.fixturenames and module in BOTH_ENGINES:
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The ``http_engine`` of the servers of a test (lean unless parametrized)."""
    return str(getattr(request, "param", "lean"))


@pytest.fixture
async def make_live(tmp_path: Path, engine: str) -> AsyncIterator[LiveFactory]:
    opened: list[tuple[Layered, ServerRunner, aiohttp.ClientSession]] = []

    async def make(backend: str = "memory", **options: Any) -> Live:
        memory = MemoryLayer() if backend != "leveldb" else None
        embedded = LevelDBLayer(str(tmp_path / f"db{len(opened)}")) if "leveldb" in backend else None
        store = Layered(memory=memory, embedded=embedded)
        await store.start()
        server = Server(store, **{"shutdown_timeout": 1.0, "http_engine": engine, **options})
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
