"""Repair of the erasure-coded store: the queue of degraded keys, the background repairer, scrub
and repair passes, and when the drives' repair logs may be truncated.

A key is queued when a read finds it degraded, when a write commits with shards missing (those
are also logged on the drives that took the write, so a restart still knows), and for every key
when a replaced drive must be rebuilt. ``repair="background"`` drains the queue in a task that
retries while drives are absent and scrubs every ``scrub_interval``; ``"read"`` rebuilds a key
right after the read that found it degraded; ``"off"`` only queues. Every rebuild of a key runs
under the key's write lock, in the store's worker pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from ...errors import StorageUnavailable
from ...locks import KeyLocks
from .codec import backend_version
from .config import ErasureConfig
from .drives import DriveSet, KeyReport

__all__ = ["Health", "Repairer", "Progress"]

Progress = Callable[[int, int], None]
Run = Callable[..., Awaitable[Any]]


@dataclass
class Health:
    """What went wrong lately, shared by the store's writes and its repairs (and shown in stats)."""

    offline: set[int] = field(default_factory=set)  # drives unreachable or failing otherwise
    full: set[int] = field(default_factory=set)  # drives whose last write failed for lack of space
    replaced: set[int] = field(default_factory=set)  # new empty drives not yet fully rebuilt
    errors: int = 0  # failed shard writes, garbage collections and repairs


class Repairer:
    """The repair side of one :class:`~.store.ErasureStore`.

    ``run(fn, *args)`` runs blocking drive work in the store's worker pool; ``spawn(coro)`` starts a
    task the store waits for before it closes; ``locks`` are the store's per-key write locks.
    """

    def __init__(
        self,
        io: DriveSet,
        config: ErasureConfig,
        locks: KeyLocks,
        health: Health,
        run: Run,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._io = io
        self._config = config
        self._drives = io.paths
        self._locks = locks
        self._health = health
        self._run = run
        self._spawn = spawn
        self._active = False
        self._queue: dict[str, int] = {}  # key -> shard repairs known (>= 1 per degraded key)
        self._repairing: set[str] = set()  # keys with a read-triggered repair under way
        self._repairer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None  # set by stop(): background work ends
        self._passes = 0  # background passes completed (see :meth:`next_pass`)
        self._busy = False
        self._passed: asyncio.Condition | None = None
        self._last_scrub: dict[str, Any] | None = None
        self._repaired = 0
        self._log_dirty = False  # repair log records exist on some drive

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, logged: Iterable[str], rebuild: Iterable[str]) -> None:
        """Queue the keys of the drives' repair logs (``logged``) and those a replaced drive must
        get back (``rebuild``), then start repairing."""
        logged = list(logged)
        for key in logged:
            self._queue.setdefault(key, 1)
        self._log_dirty = bool(logged)
        for key in rebuild:
            self._queue.setdefault(key, 1)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._passed = asyncio.Condition()
        self._active = True
        if self._config.repair == "background":
            self._repairer = asyncio.create_task(self._background(), name="ooo-erasure-repair")
            if self._queue:
                self._wake.set()

    async def stop(self) -> None:
        """Stop the background repairer (after its current key at most)."""
        self._active = False
        if self._repairer is not None:
            # An explicit signal, not cancel(): on Python 3.11 a cancellation that lands in the
            # iteration where the repairer's wake-up event fires is swallowed by wait_for, and
            # close() then waited forever. The repairer stops at its next check (after its
            # current key at most); asyncio.wait leaves it alone if close() itself is cancelled.
            assert self._stop is not None and self._wake is not None  # set by start()
            self._stop.set()
            self._wake.set()
            await asyncio.wait({self._repairer})
            self._repairer = None

    # -- the queue ---------------------------------------------------------------------------
    def failed_shards(self, key: str, count: int) -> None:
        """A write of ``key`` committed without ``count`` of its shards (they are being logged)."""
        self._queue[key] = self._queue.get(key, 0) + count
        self._log_dirty = True

    def enqueue(self, key: str) -> None:
        """A read found ``key`` degraded."""
        self._queue.setdefault(key, 1)
        self.wake(key)

    def wake(self, key: str) -> None:
        """Get ``key`` repaired as the mode says: wake the background repairer, or (``"read"``)
        start one repair of it unless one is under way."""
        mode = self._config.repair
        if mode == "background" and self._wake is not None:
            self._wake.set()
        elif mode == "read" and self._active and key not in self._repairing:
            self._repairing.add(key)  # many readers of one degraded key start one repair
            self._spawn(self._repair_quietly(key))

    async def _repair_quietly(self, key: str) -> None:
        try:
            await self._repair_key(key)
        except Exception:
            self._health.errors += 1
        finally:
            self._repairing.discard(key)

    async def _repair_key(self, key: str, fix: bool = True) -> KeyReport:
        """Check (and with ``fix`` rebuild) one key under its write lock; update the queue."""
        async with self._locks.hold(key):
            report: KeyReport = await self._run(self._io.inspect, self._io.locate(key), fix)
        if fix:
            self._repaired += report.rebuilt
            if report.state in ("ok", "missing", "deleted"):
                self._queue.pop(key, None)
        elif report.state in ("degraded", "lost") or report.missing or report.corrupt:
            self._queue.setdefault(key, max(1, report.missing + report.corrupt))
        return report

    async def repair(self, progress: Progress | None = None) -> dict[str, Any]:
        """Rebuild every missing or corrupt shard now (replaced drives included) and collect garbage.

        Returns ``{"checked", "repaired", "removed", "degraded", "lost", "offline_drives",
        "replaced_drives", "shards_per_drive", "seconds"}``: ``repaired`` counts rebuilt shards,
        ``degraded`` objects still short of shards (their drive is absent), ``lost`` objects with
        fewer than k valid shards.
        """
        t0 = time.monotonic()
        cfg = self._config
        self._health.replaced.update(await self._run(self._io.rejoin, cfg.ec_backend, backend_version()))
        replaced = sorted(self._health.replaced)
        self._health.offline = set(await self._run(self._io.probe))
        totals = await self._pass(True, progress)
        if replaced and not totals["degraded"] and not totals["lost"] and not self._health.offline:
            # Never declare a rebuild complete while something is still missing (rustfs#5869).
            await self._run(self._io.rebuilt, replaced)
            self._health.replaced.clear()
        counts = await self._run(self._io.shard_counts)
        await self._forget_repaired()
        rebuilt = totals.pop("rebuilt")
        return {
            **totals,
            "repaired": rebuilt,
            "offline_drives": self._paths(self._health.offline),
            "replaced_drives": [self._drives[pos] for pos in replaced],
            "shards_per_drive": dict(zip(self._drives, counts, strict=True)),
            "seconds": round(time.monotonic() - t0, 3),
        }

    async def scrub(self, progress: Progress | None = None) -> dict[str, Any]:
        """Verify every shard of every object; degraded objects are queued for repair.

        Returns ``{"checked", "degraded", "lost", "missing_shards", "corrupt_shards",
        "corrupt_files", "offline_drives", "seconds", "time"}``; ``degraded`` counts objects
        degraded now; ``corrupt_files`` names the (first 100) shard files that failed their CRC
        or header check.
        """
        t0 = time.monotonic()
        self._health.offline = set(await self._run(self._io.probe))
        totals = await self._pass(False, progress)
        report = {
            "checked": totals["checked"],
            "degraded": totals["degraded"],
            "lost": totals["lost"],
            "missing_shards": totals["missing_shards"],
            "corrupt_shards": totals["corrupt_shards"],
            "corrupt_files": totals["corrupt_files"],
            "offline_drives": self._paths(self._health.offline),
            "seconds": round(time.monotonic() - t0, 3),
            "time": time.time(),
        }
        self._last_scrub = report
        if self._queue and self._config.repair == "background" and self._wake is not None:
            self._wake.set()
        return report

    async def _pass(self, fix: bool, progress: Progress | None) -> dict[str, Any]:
        """One key at a time over every key directory on disk (not only the index)."""
        keys = sorted(await self._run(self._io.scan))
        totals: dict[str, Any] = dict.fromkeys(
            ("checked", "degraded", "lost", "missing_shards", "corrupt_shards", "rebuilt", "removed"),
            0,
        )
        corrupt_files: list[str] = []
        totals["corrupt_files"] = corrupt_files  # which files failed their CRC (first 100)
        for done, key in enumerate(keys, 1):
            if self._stop is not None and self._stop.is_set():
                raise _Closing()  # a pass over millions of keys must not hold close() up
            report = await self._repair_key(key, fix)
            corrupt_files.extend(report.corrupt_files[: 100 - len(corrupt_files)])
            totals["checked"] += 1
            totals["missing_shards"] += report.missing
            totals["corrupt_shards"] += report.corrupt
            totals["rebuilt"] += report.rebuilt
            totals["removed"] += report.removed
            if report.state == "lost":
                totals["lost"] += 1
            elif report.state == "degraded" or (
                not fix and (report.missing or report.corrupt) and report.state != "missing"
            ):
                totals["degraded"] += 1
            if progress is not None:
                progress(done, len(keys))
        if progress is not None and not keys:
            progress(0, 0)
        return totals

    async def _background(self) -> None:
        """Drain the repair queue; retry while drives are absent; scrub every ``scrub_interval``.

        Runs until :meth:`close` sets ``_stop``; it checks the flag after every wait and between
        keys, and is never cancelled (see :meth:`close`).
        """
        cfg = self._config
        assert self._wake is not None and self._passed is not None and self._stop is not None
        next_scrub = (
            time.monotonic() + cfg.scrub_interval if cfg.scrub_interval is not None else None
        )
        stalled: frozenset[int] | None = None  # offline drives when the last pass left work
        try:
            while not self._stop.is_set():
                timeout = cfg.retry_interval if self._queue else None
                if next_scrub is not None:
                    until = max(0.0, next_scrub - time.monotonic())
                    timeout = until if timeout is None else min(timeout, until)
                woken = await _wait_event(self._wake, timeout)
                self._wake.clear()
                if self._stop.is_set():
                    break
                self._busy = True
                if next_scrub is not None and time.monotonic() >= next_scrub:
                    next_scrub = time.monotonic() + (cfg.scrub_interval or 0.0)
                    await self._guarded(self.scrub())
                stalled = await self._background_pass(woken, stalled)
                self._busy = False
                async with self._passed:
                    self._passes += 1
                    self._passed.notify_all()
        finally:
            self._busy = False
            async with self._passed:
                self._passed.notify_all()  # flush() callers stop waiting for passes

    async def _background_pass(
        self, woken: bool, stalled: frozenset[int] | None
    ) -> frozenset[int] | None:
        """One pass over the repair queue; returns the offline drives if work is left.

        While the queue cannot drain because drives are absent, a timed retry (not ``woken``)
        first probes the drives and skips the pass if the same ones are still gone.
        """
        cfg = self._config
        assert self._stop is not None
        if not woken and stalled is not None:
            offline = frozenset(await self._guarded(self._run(self._io.probe)) or ())
            if offline == stalled:
                return stalled
        for key in list(self._queue):
            if self._stop.is_set():
                return None
            report = await self._guarded(self._repair_key(key))
            if isinstance(report, KeyReport) and report.rebuilt:
                # Rate limit: leave the drives to foreground traffic for as long as the
                # rebuilt shards are worth at ``repair_rate`` / ``repair_iops``.
                pause = max(report.rebuilt_bytes / cfg.repair_rate, report.rebuilt / cfg.repair_iops)
                await _wait_event(self._stop, pause)
        await self._guarded(self._forget_repaired())
        if self._queue and not self._stop.is_set():
            return frozenset(await self._guarded(self._run(self._io.probe)) or ())
        return None

    async def next_pass(self) -> None:
        """In ``"background"`` mode, wait for one full pass of the repairer over the queue that
        starts after this call (entries whose drive is still absent stay queued); returns early
        if the repairer stops."""
        if self._repairer is None or self._passed is None or self._wake is None:
            return
        stop = self._stop
        assert stop is not None  # set together with _passed by start()
        async with self._passed:
            target = self._passes + (2 if self._busy else 1)
            self._wake.set()
            await self._passed.wait_for(lambda: self._passes >= target or stop.is_set())

    async def _forget_repaired(self) -> None:
        """Truncate the drives' repair logs once nothing is left to repair."""
        if self._log_dirty and not self._queue:
            self._log_dirty = False
            await self._run(self._io.clear_repairs)

    async def _guarded(self, coro: Any) -> Any:
        try:
            return await coro
        except _Closing:
            return None
        except Exception:
            self._health.errors += 1
            return None

    def stats(self) -> dict[str, Any]:
        """``degraded`` keys, ``queued_repairs`` (shards), ``last_scrub`` report, ``repaired`` shards."""
        return {
            "degraded": len(self._queue),
            "queued_repairs": sum(self._queue.values()),
            "last_scrub": self._last_scrub,
            "repaired": self._repaired,
        }

    def _paths(self, positions: Iterable[int]) -> list[str]:
        return [self._drives[pos] for pos in sorted(positions)]


class _Closing(StorageUnavailable):
    """A scrub or repair pass stopped because the store is closing."""

    message = "storage: erasure store is closing"


async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds have passed (False).

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns normally when
    a cancellation of the caller arrives in the iteration where the event fires.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()
