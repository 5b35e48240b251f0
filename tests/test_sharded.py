"""Event routing: FNV-1a vectors, per-key order, barriers, drops."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage.protocol.objects import Event
from ooo_storage.sharded import ShardedChan, fnv1a32, fnv1a32_py


@pytest.mark.parametrize("fn", [fnv1a32, fnv1a32_py])
def test_fnv_vectors(fn) -> None:  # type: ignore[no-untyped-def]
    assert fn(b"test") == 0xAFD071E5
    assert fn(b"users/1") == 0x7AA3339F
    assert fn(b"") == 0x811C9DC5


@given(st.binary(max_size=64))
def test_fast_fnv_equals_reference(data: bytes) -> None:
    assert fnv1a32(data) == fnv1a32_py(data)


def test_shard_for() -> None:
    chan = ShardedChan(6)
    assert chan.shard_for("test") == 0xAFD071E5 % 6
    assert chan.shard_for("users/1") == 0x7AA3339F % 6


def ev(key: str, rev: int) -> Event:
    return Event(key, "set", None, rev)


async def test_per_key_order_with_full_queues() -> None:
    chan = ShardedChan(3, maxsize=2, lossless=True)
    got: list[Event] = []

    async def watcher(e: Event) -> None:
        await asyncio.sleep(0)
        got.append(e)

    chan.subscribe(watcher)
    chan.start()
    rev = 0
    pending = []
    for _ in range(30):
        for key in ("a", "b", "c", "d"):
            rev += 1
            fut = chan.put(ev(key, rev))
            if fut is not None:
                pending.append(fut)
    await asyncio.gather(*pending)
    await chan.drain()
    for key in "abcd":
        revs = [e.revision for e in got if e.key == key]
        assert revs == sorted(revs) and len(revs) == 30
    await chan.close()


async def test_drain_is_a_barrier() -> None:
    chan = ShardedChan(4)
    got: list[str] = []
    chan.subscribe(lambda e: got.append(e.key))
    chan.start()
    for i in range(100):
        chan.put(ev(f"k{i}", i))
    await chan.drain()
    assert len(got) == 100
    await chan.close()


async def test_watcher_exception_does_not_stop_delivery() -> None:
    chan = ShardedChan(1)
    got: list[str] = []

    def bad(e: Event) -> None:
        raise RuntimeError("boom")

    chan.subscribe(bad)
    chan.subscribe(lambda e: got.append(e.key))
    chan.start()
    chan.put(ev("x", 1))
    chan.put(ev("y", 2))
    await chan.drain()
    assert got == ["x", "y"]
    await chan.close()


async def test_close_counts_undeliverable_events_as_dropped() -> None:
    chan = ShardedChan(1, maxsize=1, drop_timeout=0.05)
    never = asyncio.Event()

    async def stuck(e: Event) -> None:
        await never.wait()

    chan.subscribe(stuck)
    chan.start()
    chan.put(ev("a", 1))
    await asyncio.sleep(0)  # the consumer takes "a" and blocks in the watcher
    chan.put(ev("b", 2))
    waiter = chan.put(ev("c", 3))
    assert waiter is not None
    await chan.close(timeout=0.05)
    assert waiter.done() and chan.dropped >= 1


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        ShardedChan(0)
    with pytest.raises(ValueError):
        ShardedChan(2, maxsize=0)


async def test_close_returns_even_if_a_watcher_swallows_cancellation() -> None:
    """A watcher that never returns and ignores cancellation cannot hang ``close`` (it used to
    cancel the consumers and wait for them without a bound)."""
    import ooo_storage.sharded as sharded

    chan = ShardedChan(2, drop_timeout=0.1)
    entered = asyncio.Event()

    async def stubborn(event: Event) -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # a badly written watcher: swallows one cancellation

    chan.subscribe(stubborn)
    chan.start()
    chan.put(Event("k", "set", None, 1))
    await entered.wait()
    grace, sharded._STOP_GRACE = sharded._STOP_GRACE, 0.1
    try:
        async with asyncio.timeout(5):
            await chan.close()
    finally:
        sharded._STOP_GRACE = grace
