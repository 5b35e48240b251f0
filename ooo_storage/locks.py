"""Per-key asyncio locks (refcounted, reclaimed when free) and a store-wide shared/exclusive gate."""

from __future__ import annotations

import asyncio
from types import TracebackType


class _Entry:
    __slots__ = ("lock", "refs")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.refs = 0


class KeyLocks:
    """One :class:`asyncio.Lock` per key, created on demand and dropped when nobody holds or waits.

    A lock may be released by another task than the one that acquired it (``set_and_unlock``).
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def busy(self, key: str) -> bool:
        """True if some task holds or waits on ``key``."""
        return key in self._entries

    def locked(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.lock.locked()

    async def acquire(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.refs += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._unref(key, entry)
            raise

    def release(self, key: str) -> None:
        entry = self._entries[key]
        entry.lock.release()
        self._unref(key, entry)

    def _unref(self, key: str, entry: _Entry) -> None:
        entry.refs -= 1
        if entry.refs == 0:
            del self._entries[key]

    def hold(self, key: str) -> _Held:
        """``async with locks.hold(key): ...``"""
        return _Held(self, key)


class _Held:
    __slots__ = ("_locks", "_key")

    def __init__(self, locks: KeyLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        await self._locks.acquire(self._key)

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._locks.release(self._key)


class Gate:
    """Shared/exclusive gate: many writers share it, a glob delete or clear takes it alone.

    Writer preference is avoided: once an exclusive holder waits, new shared holders queue behind it,
    so a stream of sets cannot starve a glob delete.
    """

    __slots__ = ("_shared", "_exclusive", "_waiting_exclusive", "_cond")

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._cond = asyncio.Condition()

    @property
    def idle(self) -> bool:
        """True if nobody holds or waits for the gate (writers may then skip it entirely)."""
        return not self._shared and not self._exclusive and not self._waiting_exclusive

    async def acquire_shared(self) -> None:
        if not self._exclusive and not self._waiting_exclusive:
            self._shared += 1
            return
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._shared += 1

    async def release_shared(self) -> None:
        self._shared -= 1
        if self._shared == 0 and self._waiting_exclusive:
            async with self._cond:
                self._cond.notify_all()

    async def acquire_exclusive(self) -> None:
        async with self._cond:
            self._waiting_exclusive += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            except BaseException:
                # Shared holders queued behind this waiter would wait for a wake-up that no
                # release will send: give it now.
                self._waiting_exclusive -= 1
                self._cond.notify_all()
                raise
            self._waiting_exclusive -= 1
            self._exclusive = True

    async def release_exclusive(self) -> None:
        async with self._cond:
            self._exclusive = False
            self._cond.notify_all()
