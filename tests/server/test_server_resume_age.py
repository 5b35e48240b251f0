"""The event history is bounded by age too (issue 11: ``HistoryOptions(max_age=...)``, ``serve
--history-age``): once the events after a version are older than ``max_age``, a client resuming
from it gets a snapshot and ``GET ?since=`` a 410, while a recent version still gets a patch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
from server_live import Follower, Live

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import Server, ServerRunner

MAX_AGE = 1.0
PAD = "x" * 1500  # a few events fill a 4 KiB segment: the old ones end up in older segments


async def test_events_older_than_max_age_are_dropped_and_resume_takes_a_snapshot(tmp_path: Path) -> None:
    history = HistoryOptions(tmp_path / "history", max_bytes=8 * 4096, max_age=MAX_AGE)
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")), history=history)
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    live = Live(store, runner.server, runner, aiohttp.ClientSession())
    try:
        await store.set("a/0", {"n": 0})
        old = format(store.revision, "x")
        for n in range(1, 7):  # ~9 KB of events after ``old``: over two segments
            await store.set(f"a/{n % 3}", {"n": n, "pad": PAD})
        assert (await live.request("GET", f"a/*?since={old}"))[0] == 200  # still kept
        await asyncio.sleep(MAX_AGE * 1.5)  # the time the test is about: those events grow old
        await store.set("a/1", {"n": 7})  # a recent event, in the newest segment (always kept)
        recent = format(store.revision, "x")
        await store.set("a/2", {"n": 8})

        async with asyncio.timeout(10):  # the pruner runs every max_age / 4 seconds
            while (status := (await live.request("GET", f"a/*?since={old}"))[0]) == 200:
                await asyncio.sleep(MAX_AGE / 4)
        assert status == 410

        expected = await live.get("a/*")
        resumed = Follower(await live.ws(f"a/*?v={old}"))
        frame = await resumed.step()
        assert frame["snapshot"] is True and resumed.state == expected

        status, body = await live.request("GET", f"a/*?since={recent}")  # recent: still a patch
        answer = orjson.loads(body)
        assert status == 200 and answer["snapshot"] is False
        assert [op["op"] for op in answer["data"]] == ["replace"]
    finally:
        await live.http.close()
        await runner.stop()
        await store.close()
