"""KeyLocks and Gate without a store: who holds, who waits, in which order, and what is reclaimed.

Every step is synchronised on events and tasks, never on time. A task that sets an event right
before calling ``acquire`` has queued on the lock by the time the waiter of that event runs: the
call runs without suspending up to the point where it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ooo_storage.locks import Gate, KeyLocks


async def queued(
    acquire: Callable[[], Awaitable[None]], then: Callable[[], None] | None = None
) -> asyncio.Task[None]:
    """Start ``acquire()`` in a task and return once it holds or waits; ``then`` runs once it holds."""
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await acquire()
        if then is not None:
            then()

    task = asyncio.create_task(run())
    await started.wait()
    return task


# -- KeyLocks ----------------------------------------------------------------------------------------


async def test_a_free_lock_is_reclaimed() -> None:
    locks = KeyLocks()
    assert len(locks) == 0 and not locks.busy("k") and not locks.locked("k")
    await locks.acquire("k")
    assert len(locks) == 1 and locks.busy("k") and locks.locked("k")
    assert not locks.busy("other")
    locks.release("k")
    assert len(locks) == 0 and not locks.busy("k") and not locks.locked("k")


async def test_waiters_get_the_lock_in_arrival_order_and_the_last_one_reclaims_it() -> None:
    locks = KeyLocks()
    order: list[str] = []
    await locks.acquire("k")
    first = await queued(lambda: locks.acquire("k"), lambda: order.append("first"))
    second = await queued(lambda: locks.acquire("k"), lambda: order.append("second"))
    assert order == [] and len(locks) == 1  # one entry, three references

    locks.release("k")
    await first
    assert order == ["first"] and locks.locked("k") and not second.done()
    locks.release("k")  # by another task than the holder, as set_and_unlock does
    await second
    assert order == ["first", "second"] and locks.busy("k")
    locks.release("k")
    assert len(locks) == 0


async def test_keys_are_independent() -> None:
    locks = KeyLocks()
    await locks.acquire("a")
    await asyncio.wait_for(locks.acquire("b"), 5)  # "a" held: "b" is still free
    assert locks.locked("a") and locks.locked("b") and len(locks) == 2
    locks.release("a")
    assert not locks.busy("a") and locks.locked("b") and len(locks) == 1
    locks.release("b")
    assert len(locks) == 0


async def test_a_cancelled_waiter_drops_its_reference() -> None:
    locks = KeyLocks()
    await locks.acquire("k")
    waiter = await queued(lambda: locks.acquire("k"))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert locks.locked("k")  # the holder keeps it
    locks.release("k")
    assert len(locks) == 0 and not locks.busy("k")


async def test_hold_releases_on_error() -> None:
    locks = KeyLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            assert locks.locked("k")
            raise RuntimeError("boom")
    assert len(locks) == 0
    async with locks.hold("k"):
        assert locks.locked("k")
    assert len(locks) == 0


async def test_release_of_a_key_nobody_holds_fails_loudly() -> None:
    with pytest.raises(KeyError):
        KeyLocks().release("k")


# -- Gate --------------------------------------------------------------------------------------------


async def test_shared_holders_do_not_exclude_each_other() -> None:
    gate = Gate()
    assert gate.idle
    for _ in range(3):
        await asyncio.wait_for(gate.acquire_shared(), 5)
    assert not gate.idle
    for _ in range(3):
        await gate.release_shared()
    assert gate.idle


async def test_exclusive_waits_for_every_shared_holder() -> None:
    gate = Gate()
    log: list[str] = []
    await gate.acquire_shared()
    await gate.acquire_shared()
    exclusive = await queued(gate.acquire_exclusive, lambda: log.append("exclusive"))
    await gate.release_shared()
    assert log == [] and not exclusive.done()
    await gate.release_shared()
    await exclusive
    assert log == ["exclusive"] and not gate.idle
    await gate.release_exclusive()
    assert gate.idle


async def test_exclusive_holder_excludes_shared_and_exclusive() -> None:
    gate = Gate()
    log: list[str] = []
    await gate.acquire_exclusive()
    shared = await queued(gate.acquire_shared, lambda: log.append("shared"))
    other = await queued(gate.acquire_exclusive, lambda: log.append("exclusive"))
    assert log == [] and not shared.done() and not other.done()
    await gate.release_exclusive()
    # The waiting exclusive goes first: shared holders queue behind it.
    await other
    assert log == ["exclusive"] and not shared.done()
    await gate.release_exclusive()
    await shared
    assert log == ["exclusive", "shared"]
    await gate.release_shared()
    assert gate.idle


async def test_a_waiting_exclusive_blocks_new_shared_holders() -> None:
    """Once a glob delete waits, new writers queue behind it: a stream of sets cannot starve it."""
    gate = Gate()
    log: list[str] = []
    await gate.acquire_shared()  # a write in progress
    exclusive = await queued(gate.acquire_exclusive, lambda: log.append("exclusive"))
    late = await queued(gate.acquire_shared, lambda: log.append("late shared"))
    assert log == [] and not late.done()  # shared with the first write would have been allowed
    await gate.release_shared()
    await exclusive
    assert log == ["exclusive"] and not late.done()
    await gate.release_exclusive()
    await late
    assert log == ["exclusive", "late shared"]
    await gate.release_shared()
    assert gate.idle


async def test_a_cancelled_exclusive_waiter_lets_the_shared_holders_behind_it_go() -> None:
    """A glob delete cancelled while it waits for the gate must not leave the writers queued
    behind it blocked forever (they waited for a wake-up no release would send)."""
    gate = Gate()
    await gate.acquire_shared()
    exclusive = await queued(gate.acquire_exclusive)
    late = await queued(gate.acquire_shared)
    exclusive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await exclusive
    await asyncio.wait_for(late, 5)
