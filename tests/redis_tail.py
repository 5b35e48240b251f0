"""Helpers for tests of RedisLayer nodes: reach a node's layer, wait for its stream tail, and stop or
restart that tail (a node that lags behind, as a SIGSTOPped one does)."""

from __future__ import annotations

import asyncio

from ooo_storage import Layered
from ooo_storage.layers import RedisLayer


def layer_of(store: Layered) -> RedisLayer:
    layer = store.embedded
    assert isinstance(layer, RedisLayer)
    return layer


async def caught_up(store: Layered, revision: int) -> None:
    """Until ``store`` has applied the shared stream up to ``revision``."""
    async with asyncio.timeout(10):
        while layer_of(store).position < revision:
            await asyncio.sleep(0.005)  # the tail runs in its own task; nothing to await on it


async def stop_tail(store: Layered) -> None:
    """The node lags (as a SIGSTOPped one): its tail stops."""
    tail = layer_of(store)._tail
    assert tail is not None
    tail.cancel()
    await asyncio.gather(tail, return_exceptions=True)


def start_tail(store: Layered) -> None:
    layer = layer_of(store)
    layer._tail = asyncio.get_running_loop().create_task(layer._run())
