"""Resuming a subscription with ``?v=``: the snapshot is skipped only when the client provably
holds the current state (PROTOCOL.md §5.3–5.4), across restarts and under concurrent writers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server_live import Follower, Live, no_frame

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import ServerRunner
from ooo_storage.sharded import fnv1a32


async def _serve(path: Path) -> tuple[Layered, ServerRunner]:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, shutdown_timeout=1.0)
    await runner.start()
    return store, runner


async def _stop(store: Layered, runner: ServerRunner) -> None:
    await runner.stop()
    await store.close()


async def test_resume_after_restart_gets_the_new_state(live: Live, tmp_path: Path) -> None:
    """A version seen before a restart never names another state after it (revisions used to
    start again at 0, so the same number came back with different data and no snapshot)."""
    path = tmp_path / "db"
    store, runner = await _serve(path)
    ws_url = runner.url.replace("http://", "ws://")
    try:
        f = Follower(await live.http.ws_connect(f"{ws_url}/flag"))
        await f.step()
        await store.set("flag", {"on": True})
        await f.step()
        assert f.state["data"] == {"on": True}
        seen = int(f.version, 16)
        await f.ws.close()
    finally:
        await _stop(store, runner)

    store, runner = await _serve(path)
    ws_url = runner.url.replace("http://", "ws://")
    try:
        # Bring the store to the very revision the client saw, if it is not past it already.
        n = 0
        while store.revision < seen - 1:
            await store.set(f"other/{n}", n)
            n += 1
        await store.set("flag", {"on": False})
        f = Follower(await live.http.ws_connect(f"{ws_url}/flag?v={seen:x}"))
        frame = await f.step()
        assert frame["snapshot"] is True and f.state["data"] == {"on": False}
    finally:
        await _stop(store, runner)


def _keys_on_two_shards(shards: int) -> tuple[str, str, str]:
    """``(blocker, a, b)``: blocker and ``g/a``-like key share a shard, ``b`` is on another."""
    names = [f"g/{i}" for i in range(100)]
    a = names[0]
    shard_a = fnv1a32(a.encode()) % shards
    b = next(k for k in names if fnv1a32(k.encode()) % shards != shard_a)
    blocker = next(f"h/{i}" for i in range(1000) if fnv1a32(f"h/{i}".encode()) % shards == shard_a)
    return blocker, a, b


async def test_slow_library_watcher_neither_delays_nor_desynchronises_subscribers(live: Live) -> None:
    """A library watcher that is slow on one event shard used to hold back that shard's events for
    the websocket pools too: a glob pool then saw revisions out of order, its version ran ahead of
    the store's revision, and after a prune a resume with that version skipped a needed snapshot."""
    store, server = live.store, live.server
    blocker, a, b = _keys_on_two_shards(store.options.workers)
    gate = asyncio.Event()
    blocked = asyncio.Event()

    async def slow(event: Event) -> None:
        if event.key == blocker:
            blocked.set()
            await gate.wait()

    handle = store.watch(slow)
    left = asyncio.Event()
    server.on_unsubscribe = lambda key: left.set()
    try:
        f = Follower(await live.ws("g/*"))
        await f.step()
        await store.set(blocker, 0)
        await blocked.wait()
        await store.set(a, {"v": "a"})
        rev_a = store.revision
        await store.set(b, {"v": "b"})
        rev_b = store.revision
        # Both changes reach the subscriber while the library watcher is still stuck.
        await f.step()
        await f.step()
        assert [int(fr["version"], 16) for fr in f.frames[1:]] == [rev_a, rev_b]
        assert sorted(o["data"]["v"] for o in f.state) == ["a", "b"]
    finally:
        gate.set()
        handle.cancel()

    await f.ws.close()
    await left.wait()  # the pool is pruned: the next subscriber builds it again
    assert "g/*" not in server.pools.pools
    await store.set("g/c", {"v": "c"})
    resumed = Follower(await live.ws(f"g/*?v={f.version}"))
    frame = await resumed.step()
    assert frame["snapshot"] is True
    assert sorted(o["data"]["v"] for o in resumed.state) == ["a", "b", "c"]
    assert resumed.state == await live.get("g/*")

    # And a resume with the current version owes nothing.
    again = Follower(await live.ws(f"g/*?v={resumed.version}"))
    await no_frame(again.ws)


async def test_resume_under_concurrent_writers_always_converges(live: Live) -> None:
    """64 writers over 16 keys while one subscriber disconnects and resumes with its last version
    again and again: after every resume its state converges to what GET shows."""
    store = live.store
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            await store.set(f"items/{(w * 7 + n) % 16}", {"w": w, "n": n})
            n += 1
            await asyncio.sleep(0)

    writers = [asyncio.create_task(writer(w)) for w in range(64)]
    try:
        f = Follower(await live.ws("items/*"))
        await f.step()
        for _ in range(20):
            for _ in range(3):
                await f.step()
            await f.ws.close()
            f.ws = await live.ws(f"items/*?v={f.version}")
    finally:
        stop.set()
        await asyncio.gather(*writers)
    expected = await live.get("items/*")
    await f.until(expected)
