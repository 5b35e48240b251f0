"""Subscriptions to large globs: built in steps that let other requests in, exact under writes made
during the build, and refused beyond ``max_subscription_items``."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

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


def _count_steps(live: Any, monkeypatch: pytest.MonkeyPatch, tick: list[int]) -> list[tuple[str, int]]:
    """Record each build step of the real store as (glob, loop tick it ran in)."""
    steps: list[tuple[str, int]] = []
    scan = live.store.peek_scan

    def counted(pattern: str, after: str | None, visit: int) -> Any:
        steps.append((pattern, tick[0]))
        return scan(pattern, after, visit)

    monkeypatch.setattr(live.store, "peek_scan", counted)
    return steps


async def _ticking(tick: list[int], done: asyncio.Event) -> None:
    while not done.is_set():
        tick[0] += 1
        await asyncio.sleep(0)


async def test_builds_take_turns_one_step_per_loop_iteration(
    make_live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several glob builds side by side run one step per event-loop iteration in all: 20 builds
    used to run 20 steps in each iteration, and nobody else was answered for 25 s."""
    monkeypatch.setattr(hub, "SCAN_STEP", 5)
    live = await make_live()
    for i in range(200):
        await live.store.set(f"t/{i % 4}/{i:03d}", i)
    tick, done = [0], asyncio.Event()
    steps = _count_steps(live, monkeypatch, tick)
    ticking = asyncio.create_task(_ticking(tick, done))
    try:
        followers = [Follower(await live.ws(f"t/{g}/*")) for g in range(4)]
        for follower in followers:
            await follower.step(timeout=30)
    finally:
        done.set()
        await ticking
    assert len({glob for glob, _ in steps}) == 4 and len(steps) > 40
    per_tick: dict[int, int] = {}
    first: set[str] = set()
    for glob, at in steps:
        if glob in first:  # a subscription's first step runs in its own request, at once
            per_tick[at] = per_tick.get(at, 0) + 1
        first.add(glob)
    assert max(per_tick.values()) == 1, per_tick
    for g, follower in enumerate(followers):
        assert follower.state == await live.get(f"t/{g}/*")


async def test_a_build_nobody_waits_for_stops(
    make_live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscriber of a large glob leaves before its snapshot: the build stops (it went on for
    tens of seconds after the client had gone) and the pool is forgotten."""
    monkeypatch.setattr(hub, "SCAN_STEP", 2)
    live = await make_live()
    for i in range(400):
        await live.store.set(f"gone/{i:03d}", i)
    steps = _count_steps(live, monkeypatch, [0])
    reader, writer = await asyncio.open_connection("127.0.0.1", live.runner.port)
    writer.write(
        b"GET /gone/* HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    while len(steps) < 3:
        await asyncio.sleep(0.001)  # the build is under way
    writer.close()  # the client vanishes without a close handshake
    async with asyncio.timeout(10):
        while "gone/*" in live.server.pools.pools:
            await asyncio.sleep(0.001)
    assert len(steps) < 150  # a whole build is 200 steps
    follower = Follower(await live.ws("gone/*"))  # a new subscriber gets a new, whole build
    await follower.step(timeout=30)
    assert follower.state == await live.get("gone/*")


async def test_a_client_waits_for_few_builds_at_once(
    make_live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client address may have BUILDS_PER_CLIENT subscriptions waiting for a build; the next
    is closed with the reason at once instead of queueing more work."""
    monkeypatch.setattr(hub, "SCAN_STEP", 1)
    live = await make_live()
    for i in range(300):
        await live.store.set(f"c/{i % 6}/{i:03d}", i)
    waiting = [await live.ws(f"c/{g}/*") for g in range(hub.BUILDS_PER_CLIENT)]
    while sum(len(p.waiting) for p in live.server.pools.pools.values()) < hub.BUILDS_PER_CLIENT:
        await asyncio.sleep(0.001)
    refused = await live.ws(f"c/{hub.BUILDS_PER_CLIENT}/*")
    msg = await refused.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert "still being prepared" in (msg.extra or "")
    for g, ws in enumerate(waiting):
        follower = Follower(ws)
        await follower.step(timeout=30)
        assert follower.state == await live.get(f"c/{g}/*")
    follower = Follower(await live.ws(f"c/{hub.BUILDS_PER_CLIENT}/*"))  # its turn now
    await follower.step(timeout=30)
