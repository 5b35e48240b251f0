"""``Client.subscribe(version=...)`` resumes with ``?v=`` only when it holds the state of that version.

A ``?v=`` tells the server "I hold the state of this version": it then sends nothing, or patches
against that state. A subscription given a version but no state could apply none of them, so it
must ask for a snapshot at once instead of connecting twice (the resume, then the resync).
The server's own count of the streams that joined, and the version each one sent, is observed by
wrapping its ``Pools.join``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ooo_storage import Layered, MemoryLayer
from ooo_storage.client import Client, ClientOptions, Connected, Status
from ooo_storage.server import ServerRunner
from ooo_storage.server.connection import Connection
from ooo_storage.server.hub import Pool

FAST = ClientOptions(reconnect_initial=0.01, reconnect_max=0.05, heartbeat=None)


class Joins:
    """The versions (None: a snapshot was asked) sent by each stream that joined a pool, in order."""

    def __init__(self, runner: ServerRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.versions: list[int | None] = []
        self.joined = asyncio.Event()
        join = runner.server.pools.join

        async def recorded(key: str, conn: Connection, version: int | None) -> Pool:
            self.versions.append(version)
            pool = await join(key, conn, version)
            self.joined.set()
            return pool

        monkeypatch.setattr(runner.server.pools, "join", recorded)


@pytest.fixture
async def runner() -> AsyncIterator[ServerRunner]:
    async with Layered(memory=MemoryLayer()) as store, ServerRunner(store, port=0) as runner:
        yield runner


@pytest.fixture
async def client(runner: ServerRunner) -> AsyncIterator[Client]:
    async with Client(runner.url, options=FAST) as client:
        yield client


async def held(client: Client, key: str) -> tuple[str, Any]:
    """The version and state a first subscription of ``key`` holds after its snapshot."""
    async with client.subscribe(key) as first:
        state = await anext(first)
        assert first.version is not None
        return first.version, state


async def test_a_version_without_its_state_asks_for_a_snapshot_on_one_connection(
    runner: ServerRunner, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.set("doc", {"n": 1})
    version, _ = await held(client, "doc")
    joins = Joins(runner, monkeypatch)
    statuses: list[Status] = []
    async with client.subscribe("doc", version=version, on_status=statuses.append) as sub:
        pending = asyncio.ensure_future(anext(sub))
        async with asyncio.timeout(5):
            await joins.joined.wait()
        await client.set("doc", {"n": 2})  # a patch against {"n": 1}: only a snapshot holder can apply it
        states = [await asyncio.wait_for(pending, 5)]
        while states[-1]["data"] != {"n": 2}:
            states.append(await asyncio.wait_for(anext(sub), 5))
        assert sub.connections == 1
    assert joins.versions == [None]  # one stream, and it did not claim a state it lacks
    assert statuses == [Connected("doc", 0, resumed=False, reconnect=False)]


async def test_a_version_with_its_state_still_resumes_without_a_snapshot(
    runner: ServerRunner, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.set("doc", {"n": 1})
    version, state = await held(client, "doc")
    joins = Joins(runner, monkeypatch)
    statuses: list[Status] = []
    async with client.subscribe("doc", version=version, state=state,
                                on_status=statuses.append) as sub:
        assert sub.state == state  # the state resumed from, before any frame
        pending = asyncio.ensure_future(anext(sub))
        async with asyncio.timeout(5):  # joined with nothing new: there is no frame to await
            await joins.joined.wait()
        await client.set("doc", {"n": 2})
        after = await asyncio.wait_for(pending, 5)  # had a snapshot come, this would be {"n": 1}
        assert after["data"] == {"n": 2}
        assert sub.connections == 1
    assert joins.versions == [int(version, 16)]
    assert statuses == [Connected("doc", 0, resumed=True, reconnect=False)]
