"""``GET /{key}?since=<version>``: the changes since a version for clients without websockets
(docs/protocol.md §4): a frame's payload (a patch, or a single key's document), 410 with the reason
when the history cannot say, 400 for a bad version; on both HTTP engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
from server_live import Live

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import Server, ServerRunner


async def _live(tmp_path: Path, engine: str, history: bool = True) -> Live:
    store = Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(str(tmp_path / "db")),
        history=HistoryOptions(tmp_path / "history", max_bytes=1 << 20) if history else None,
    )
    await store.start()
    server = Server(store, shutdown_timeout=1.0, http_engine=engine)
    runner = ServerRunner(store, "127.0.0.1", 0, server=server)
    await runner.start()
    return Live(store, server, runner, aiohttp.ClientSession())


@pytest.fixture(params=["lean", "aiohttp"])
async def hist(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Live]:
    live = await _live(tmp_path, request.param)
    yield live
    await live.http.close()
    await live.runner.stop()
    await live.store.close()


async def _since(live: Live, key: str, version: str) -> tuple[int, Any]:
    status, body = await live.request("GET", f"{key}?since={version}")
    return status, orjson.loads(body) if status == 200 else body.decode()


def _version(live: Live) -> str:
    return format(live.store.revision, "x")


async def test_a_glob_since_a_version_is_a_patch_that_leads_to_get(hist: Live) -> None:
    store = hist.store
    for n in range(20):
        await store.set(f"g/{n}", {"n": n})
    state, version = await hist.get("g/*"), _version(hist)
    for n in range(300):
        await store.set(f"g/{n % 7}", {"n": n})
    await store.delete("g/15")
    await store.push("g/*", {"new": True})
    await store.set("elsewhere", 1)
    status, answer = await _since(hist, "g/*", version)
    assert status == 200 and answer["snapshot"] is False
    assert len(answer["data"]) == 9  # 7 replaces, a remove, an add
    state = jsonpatch.JsonPatch(answer["data"]).apply(state)
    assert state == await hist.get("g/*")
    # The answer's version is the next since: nothing changed since.
    status, again = await _since(hist, "g/*", answer["version"])
    assert status == 200 and again["data"] == []


async def test_a_single_key_since_a_version(hist: Live) -> None:
    await hist.store.set("one", {"a": 1})
    version = _version(hist)
    await hist.store.set("two", 1)
    status, answer = await _since(hist, "one", version)
    assert status == 200 and answer["snapshot"] is False and answer["data"] == []
    await hist.store.set("one", {"a": 2})
    status, answer = await _since(hist, "one", version)
    assert status == 200 and answer["snapshot"] is True
    assert answer["data"] == await hist.get("one")
    assert answer["version"] == _version(hist)
    await hist.store.delete("one")
    status, answer = await _since(hist, "one", version)
    assert answer["data"] == {"created": 0, "updated": 0, "index": "", "data": {}}


async def test_what_the_history_cannot_say_is_410_with_the_reason(hist: Live) -> None:
    await hist.store.set("g/1", 1)
    version = _version(hist)
    await hist.store.delete("g/*")
    status, reason = await _since(hist, "g/*", version)
    assert status == 410 and "GET it again" in reason
    future = format(hist.store.revision + 100, "x")
    assert (await _since(hist, "g/*", future))[0] == 410


@pytest.mark.parametrize("bad", ["", "xyz", "-1", "0x10", "1" * 40])
async def test_a_bad_version_is_400(hist: Live, bad: str) -> None:
    status, reason = await _since(hist, "g/*", bad)
    assert status == 400 and reason.startswith("ooo: since must be a version")


async def test_without_history_410_says_so(tmp_path: Path) -> None:
    live = await _live(tmp_path, "lean", history=False)
    try:
        await live.store.set("g/1", 1)
        status, reason = await _since(live, "g/*", _version(live))
        assert status == 410 and "no event history" in reason
        # A plain GET is unchanged.
        assert [o["data"] for o in await live.get("g/*")] == [1]
    finally:
        await live.http.close()
        await live.runner.stop()
        await live.store.close()


async def test_more_changes_than_a_page_is_410_and_a_large_answer_is_paced(tmp_path: Path) -> None:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")),
                    history=HistoryOptions(tmp_path / "history", max_bytes=8 << 20))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0, list_limit=20))
    await runner.start()
    live = Live(store, runner.server, runner, aiohttp.ClientSession())
    try:
        version = _version(live)
        for n in range(20):  # a page's worth, each 10 KB: over one chunk of the answer
            await store.set(f"big/{n:02}", {"pad": "p" * 10_000})
        async with live.http.get(live.url(f"big/*?since={version}")) as resp:
            assert resp.status == 200 and resp.content_length and resp.content_length > 200_000
            answer = orjson.loads(await resp.read())
        assert jsonpatch.JsonPatch(answer["data"]).apply([]) == await live.get("big/*?limit=20")
        await store.set("big/20", 1)
        status, reason = await _since(live, "big/*", version)
        assert status == 410 and reason == (
            f"ooo: more than 20 items of big/* changed since version {int(version, 16):x}: "
            "GET it again (in pages)"
        )
    finally:
        await live.http.close()
        await runner.stop()
        await store.close()
