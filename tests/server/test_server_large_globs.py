"""Subscriptions to large globs: built in steps that let other requests in, exact under writes made
during the build, and refused beyond ``max_subscription_items``."""

from __future__ import annotations

import asyncio
import contextlib
import random

import aiohttp
import pytest
from server_live import Follower, LiveFactory

from ooo_storage import NotFound
from ooo_storage.server import hub


async def test_glob_built_in_steps_under_writes_converges(
    make_live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "SCAN_STEP", 7)  # 400 keys: ~60 steps, each an await
    live = await make_live()
    store = live.store
    for i in range(400):
        await store.set(f"big/{i:03d}", {"i": i})
    rng = random.Random(8)
    steps = during_build = 0
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal steps, during_build
        while not done.is_set():
            pool = live.server.pools.pools.get("big/*")
            during_build += pool is not None and pool.loading is not None
            i = rng.randrange(450)
            roll = rng.random()
            if roll < 0.6:
                await store.set(f"big/{i:03d}", {"i": i, "w": steps})
            elif roll < 0.95:
                with contextlib.suppress(NotFound):
                    await store.delete(f"big/{i:03d}")
            else:
                await store.delete(f"big/{i // 100}*")
            steps += 1
            await asyncio.sleep(0)

    writing = asyncio.create_task(writer())
    try:
        follower = Follower(await live.ws("big/*"))
        await follower.step(timeout=30)  # the snapshot, once the build is done
        assert during_build > 10  # other work ran between the steps of the build
    finally:
        done.set()
        await writing
    await follower.until(await live.get("big/*"), timeout=30)


async def test_a_glob_larger_than_the_subscription_limit_is_refused(make_live: LiveFactory) -> None:
    live = await make_live(max_subscription_items=50)
    for i in range(100):
        await live.store.set(f"many/{i}", i)
    small = Follower(await live.ws("many/1*"))  # 11 items: fine
    await small.step()
    ws = await live.ws("many/*")
    msg = await ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert "matches more than 50 items" in (msg.extra or "")
    assert "many/*" not in live.server.pools.pools


async def test_a_patch_larger_than_the_document_is_sent_as_a_snapshot(make_live: LiveFactory) -> None:
    live = await make_live()
    await live.store.set("arr", list(range(5000)))
    follower = Follower(await live.ws("arr"))
    await follower.step()
    await live.store.set("arr", [])  # 5 000 removes: far more bytes than the new document
    frame = await follower.step()
    assert frame["snapshot"] is True and follower.state["data"] == []
    await live.store.set("arr", [1])  # small changes stay patches
    frame = await follower.step()
    assert frame["snapshot"] is False and follower.state["data"] == [1]
