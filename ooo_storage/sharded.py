"""ShardedChan: committed-write events routed by FNV-1a-32 of the key to N bounded queues.

One consumer task per shard delivers events to the watchers, so the events of one key are delivered
in commit order while different keys proceed in parallel. A queue is a plain deque plus a list of
waiting producers: enqueueing is a list append on the hot path (no asyncio.Queue machinery), and a
producer that finds its shard full waits *in order* behind the earlier waiters, so a full queue never
reorders the events of a key.

Full queue policy: by default a producer waits up to ``drop_timeout`` seconds and the event is then
dropped (counted in ``dropped``, reported to ``on_drop``); with ``lossless=True`` it waits as long as
it takes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .protocol.objects import Event

log = logging.getLogger("ooo_storage.events")

Callback = Callable[[Event], Awaitable[Any] | Any]

_STOP_GRACE = 2.0  # seconds a consumer gets to finish its watcher call at close

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32_py(data: bytes) -> int:
    """FNV-1a 32-bit, reference implementation."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


fnv1a32: Callable[[bytes], int]
try:  # a C implementation; the pure-Python reference above gives identical results
    from fnv_hash_fast import fnv1a_32 as fnv1a32
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    fnv1a32 = fnv1a32_py


class _Marker:
    """A barrier travelling through a shard: resolved when every earlier event was delivered."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future


class WatchHandle:
    """Returned by ``watch``: ``cancel()`` stops the deliveries to that callback."""

    __slots__ = ("_chan", "_entry")

    def __init__(self, chan: ShardedChan, entry: tuple[Callback, bool]) -> None:
        self._chan = chan
        self._entry = entry

    def cancel(self) -> None:
        self._chan._unsubscribe(self._entry)


class ShardedChan:
    """``shards`` bounded queues, one consumer task each, delivering to every watcher."""

    def __init__(
        self,
        shards: int = 6,
        maxsize: int = 1024,
        drop_timeout: float = 5.0,
        lossless: bool = False,
        on_drop: Callable[[Event], Any] | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.shards = shards
        self.maxsize = maxsize
        self.drop_timeout = drop_timeout
        self.lossless = lossless
        self.on_drop = on_drop
        self.dropped = 0
        self._queues: list[deque[Event | _Marker]] = [deque() for _ in range(shards)]
        # Producers waiting for room, in arrival order: [item, future, timer handle].
        self._waiting: list[deque[list[Any]]] = [deque() for _ in range(shards)]
        self._idle: list[asyncio.Future[None] | None] = [None] * shards
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: tuple[tuple[Callback, bool], ...] = ()
        self._stopping = False

    @property
    def queued(self) -> int:
        """Events not yet delivered: in the queues, and put by writers still waiting for room (a
        gauge for ``GET /metrics``, read at scrape time: a sum over the shards)."""
        return sum(map(len, self._queues)) + sum(map(len, self._waiting))

    # -- routing -------------------------------------------------------------------------------
    def shard_for(self, key: str) -> int:
        return fnv1a32(key.encode()) % self.shards

    # -- watchers ------------------------------------------------------------------------------
    def subscribe(self, callback: Callback) -> WatchHandle:
        entry = (callback, inspect.iscoroutinefunction(callback))
        self._watchers = (*self._watchers, entry)
        return WatchHandle(self, entry)

    def _unsubscribe(self, entry: tuple[Callback, bool]) -> None:
        self._watchers = tuple(w for w in self._watchers if w is not entry)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks:
            return
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._consume(i), name=f"ooo-shard-{i}") for i in range(self.shards)
        ]

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``, default ``drop_timeout``), then stop."""
        if not self._tasks:
            return
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.drop_timeout):
                await self.drain()
        except TimeoutError:
            log.warning("closing with undelivered events")
        await self._stop_consumers()
        for waiting in self._waiting:
            while waiting:
                item, fut, timer = waiting.popleft()
                if timer is not None:
                    timer.cancel()
                if isinstance(item, Event):
                    self.count_drop(item)
                if not fut.done():
                    fut.set_result(None)

    async def _stop_consumers(self) -> None:
        """Stop the consumers by a flag they check (cancellation is a last resort: a watcher may
        swallow it), never waiting more than a few seconds."""
        self._stopping = True
        for i, idle in enumerate(self._idle):
            self._idle[i] = None
            if idle is not None and not idle.done():
                idle.set_result(None)
        tasks, self._tasks = self._tasks, []
        _, busy = await asyncio.wait(tasks, timeout=_STOP_GRACE)
        for task in busy:  # inside a watcher callback that does not return
            task.cancel()
        if busy:
            _, stuck = await asyncio.wait(busy, timeout=_STOP_GRACE)
            if stuck:
                log.error("%d event consumer(s) ignored cancellation inside a watcher", len(stuck))

    # -- producing -----------------------------------------------------------------------------
    def put(self, event: Event) -> asyncio.Future[None] | None:
        """Enqueue ``event`` now, or register it in order behind the waiting producers.

        Returns None when the event is queued, else a future the caller awaits (resolved once the
        event is queued or dropped). Either way the event's position is fixed before this returns.
        """
        i = fnv1a32(event.key.encode()) % self.shards
        if self._try_append(i, event):
            return None
        return self._wait_for_room(i, event, not self.lossless)

    def _try_append(self, i: int, item: Event | _Marker) -> bool:
        """Queue ``item`` on shard ``i`` if it has room and nobody waits before it; wake its consumer."""
        queue = self._queues[i]
        if len(queue) >= self.maxsize or self._waiting[i]:
            return False
        queue.append(item)
        idle = self._idle[i]
        if idle is not None:
            self._idle[i] = None
            if not idle.done():
                idle.set_result(None)
        return True

    def _wait_for_room(self, i: int, item: Event | _Marker, may_drop: bool) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry: list[Any] = [item, fut, None]
        if may_drop:
            entry[2] = loop.call_later(self.drop_timeout, self._expire, i, entry)
        self._waiting[i].append(entry)
        return fut

    def _expire(self, i: int, entry: list[Any]) -> None:
        try:
            self._waiting[i].remove(entry)
        except ValueError:
            return
        self.count_drop(entry[0])
        if not entry[1].done():
            entry[1].set_result(None)

    def count_drop(self, event: Event) -> None:
        """Count ``event`` as dropped and tell ``on_drop`` (also for drops decided by a watcher's
        own buffer, such as ``Layered.events``)."""
        self.dropped += 1
        log.warning("event dropped (watchers too slow): %s %s", event.operation, event.key)
        if self.on_drop is not None:
            try:
                self.on_drop(event)
            except Exception:
                log.exception("on_drop callback failed")

    async def drain(self) -> None:
        """Return once every event put before this call has been delivered to every watcher."""
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(self.shards):
            fut: asyncio.Future[None] = loop.create_future()
            marker = _Marker(fut)
            if not self._try_append(i, marker):
                self._wait_for_room(i, marker, may_drop=False)
            futures.append(fut)
        await asyncio.gather(*futures)

    # -- consuming -----------------------------------------------------------------------------
    async def _consume(self, i: int) -> None:
        queue = self._queues[i]
        waiting = self._waiting[i]
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not queue:
                idle: asyncio.Future[None] = loop.create_future()
                self._idle[i] = idle
                await idle
                continue
            item = queue.popleft()
            while waiting and len(queue) < self.maxsize:
                moved, fut, timer = waiting.popleft()
                if timer is not None:
                    timer.cancel()
                queue.append(moved)
                if not fut.done():
                    fut.set_result(None)
            if isinstance(item, _Marker):
                if not item.future.done():
                    item.future.set_result(None)
                continue
            for callback, is_async in self._watchers:
                try:
                    result = callback(item)
                    if is_async or (result is not None and inspect.isawaitable(result)):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("watcher failed on %s %s", item.operation, item.key)
