"""Replays of the event history are bounded (issue 11, finding 2 of the outside attack): anyone with
``read`` may resume from an old version (``?v=``, ``GET ?since=``), and each replay held a chunk of
the journal as large as a segment; a hundred at once held a gigabyte. Now at most ``AT_ONCE`` read
at once, with chunks of at most 1 MiB, and one that waits too long for its turn gets a snapshot
(``?v=``) or a 410 (``?since=``) instead; the server keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from server_live import Live

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import Server, ServerRunner
from ooo_storage.server.resume import AT_ONCE

HISTORY = 16 << 20  # 8 segments of 2 MiB: a chunk of a segment each before
WRITES = 3_000
PAD = "y" * 4000  # 12 MB of events: the replays span several segments
REPLAYS = 24  # half ?since=, half ?v=


@pytest.fixture
async def hist(tmp_path: Path) -> AsyncIterator[Live]:
    store = Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(str(tmp_path / "db")),
        history=HistoryOptions(tmp_path / "history", max_bytes=HISTORY),
    )
    await store.start()
    server = Server(store, shutdown_timeout=1.0)
    runner = ServerRunner(store, "127.0.0.1", 0, server=server)
    await runner.start()
    live = Live(store, server, runner, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    yield live
    await live.http.close()
    await runner.stop()
    await store.close()


async def _since(live: Live, key: str, version: str) -> tuple[int, bytes]:
    return await live.request("GET", f"{key}?since={version}")


async def _resume(live: Live, key: str, version: str) -> bool:
    """A websocket resume from ``version``: whether its first frame is a snapshot (else a patch)."""
    ws = await live.ws(key, params={"v": version})
    try:
        msg = await ws.receive(timeout=60)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        frame = orjson.loads(msg.data)
        assert frame["data"] == []  # the glob never had a key: an empty patch or snapshot
        return bool(frame["snapshot"])
    finally:
        await ws.close()


async def test_many_concurrent_replays_hold_little_memory_and_others_are_answered(hist: Live) -> None:
    store = hist.store
    version = format(store.revision, "x")
    for i in range(WRITES):
        await store.set(f"q/k{i % 100}", {"i": i, "pad": PAD})
    answered = 0
    done = asyncio.Event()

    async def reader() -> None:  # another client, reading while the replays run
        nonlocal answered
        while not done.is_set():
            status, _ = await hist.request("GET", "q/k1")
            assert status == 200
            answered += 1

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        other = asyncio.create_task(reader())
        results = await asyncio.gather(
            *(_since(hist, f"zs{i}/*", version) for i in range(REPLAYS // 2)),
            *(_resume(hist, f"zw{i}/*", version) for i in range(REPLAYS // 2)),
        )
        during = answered
        done.set()
        await other
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: each replay held a chunk of a whole segment (2 MiB here): ~50 MB for 24 at once.
    assert peak < 16 << 20, f"{REPLAYS} concurrent replays peaked at {peak >> 20} MiB"
    for status, body in results[: REPLAYS // 2]:
        assert isinstance(body, bytes)
        if status == 200:
            assert orjson.loads(body)["data"] == []
        else:
            assert status == 410 and b"too many resumes at once" in body, (status, body)
    assert during > 0  # the other client was answered while the replays ran


async def test_a_replay_waiting_too_long_gets_a_snapshot_or_410(hist: Live) -> None:
    store = hist.store
    version = format(store.revision, "x")
    for i in range(200):
        await store.set(f"q/k{i % 10}", {"i": i})
    gate = hist.server.pools.replays
    gate.wait = 0.05
    for _ in range(AT_ONCE):  # every slot taken, as by long replays
        await gate._slots.acquire()
    status, body = await _since(hist, "q/*", version)
    assert status == 410 and b"too many resumes at once" in body, (status, body)
    assert await _resume(hist, "zw/*", version)  # a snapshot, at once
    for _ in range(AT_ONCE):
        gate._slots.release()
    assert gate.refused == 2
    status, body = await _since(hist, "q/*", version)  # a free slot: the patch
    assert status == 200
    assert orjson.loads(body)["data"], body
