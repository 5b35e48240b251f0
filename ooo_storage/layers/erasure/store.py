"""ErasureStore: the erasure-coded byte store over k + m drive folders (ADAPTERS §5.3).

Every write is a new generation of k + m shard files (small objects: m + 1 whole copies; deletes:
a tombstone on every drive), written in parallel, one worker task per drive, and committed once
``write_quorum`` drives hold it. Shards are never rewritten in place: a crash leaves the old
generation intact and readers fall back to it. Reads need any k valid shards, so the store keeps
working with up to m drives gone; the repair queue (in memory, and logged on the healthy drives)
remembers what to rebuild when they return.

The blocking work lives in :mod:`.drives` (one worker submission per logical operation), the
coding in :mod:`.codec`, the file format in :mod:`.format`.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ...errors import CorruptObject, QuorumNotReached, StorageUnavailable, no_space
from ...locks import KeyLocks
from ..fs.atomic import DURABILITY_LEVELS, Durability
from ..fs.checksum import crc32c
from ..fs.temp import TempNamer
from ..fs.workers import WorkerPool, finish
from ..memory import KeyIndex
from .codec import DEFAULT_BACKEND, DEFAULT_STRIPE, Codec, backend_version, tune_malloc
from .drives import DriveSet, KeyReport, Located, ReadResult
from .format import FLAG_REPLICA, FLAG_TOMBSTONE, Generations

__all__ = ["ErasureConfig", "ErasureStore", "CorruptObject", "QuorumNotReached"]

T = TypeVar("T")
RepairMode = Literal["read", "background", "off"]
Shards = dict[int, list[bytes]]  # shard index -> payload parts
Progress = Callable[[int, int], None]

_ENCODE_INLINE = 1 << 20  # encoding one stripe (~100 µs) on the loop costs about one thread hop
_BATCH = 256  # keys per executor submission for multi-key reads
_BATCH_DELETES = 16  # deletes in flight for a glob delete or clear


@dataclass
class ErasureConfig:
    """Options of an :class:`ErasureStore` (all but the geometry may change between runs)."""

    k: int = 4  #: data shards; any k valid shards rebuild an object
    m: int = 2  #: parity shards; up to m drives may be lost
    write_quorum: int | None = None  #: shards that must land for a write to commit (None = k)
    ec_backend: str = DEFAULT_BACKEND  #: pyeclib backend (pinned in the drive markers)
    durability: Durability = "full"  #: "full" | "data" | "none", as in SOS
    repair: RepairMode = "background"  #: who rebuilds degraded objects (see :class:`ErasureStore`)
    #: values shorter than this are stored as m + 1 whole copies instead of k + m coded shards:
    #: for a 1 KiB object six files are pure overhead, three copies are cheaper and as safe.
    inline_threshold: int = 8 << 10
    stripe_size: int = DEFAULT_STRIPE  #: bytes encoded per pyeclib call (bounds memory)
    workers: int | None = None  #: executor threads (None = k + m + 2: all drives in parallel)
    grace: float = 60.0  #: a too-small generation younger than this may be an in-flight write
    tmp_grace: float = 3600.0  #: temp files of other hosts older than this are removed at start
    scrub_interval: float | None = 24 * 3600.0  #: background full scrub period (None = never)
    retry_interval: float = 5.0  #: background repairer retry delay while a drive is unavailable
    repair_rate: float = 64e6  #: background repair budget in bytes per second
    repair_iops: float = 500.0  #: background repair budget in shard files written per second

    def __post_init__(self) -> None:
        if self.k < 1 or self.m < 1 or self.k + self.m > 255:
            raise ValueError("need k >= 1, m >= 1 and k + m <= 255")
        if self.write_quorum is None:
            self.write_quorum = self.k
        if not self.k <= self.write_quorum <= self.k + self.m:
            raise ValueError("write_quorum must be between k and k + m")
        if self.durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}")
        if self.repair not in ("read", "background", "off"):
            raise ValueError('repair must be "read", "background" or "off"')


class ErasureStore:
    """A key -> bytes store erasure-coded over ``k + m`` drive folders.

    ``repair``: ``"background"`` (default) queues degraded objects for a background task that
    rebuilds them and scrubs every ``scrub_interval``; ``"read"`` rebuilds a degraded object right
    after the read that noticed it; ``"off"`` only queues (call :meth:`repair`).

    Within one process, writes of one key are serialised and ordered; across processes the newest
    generation wins (last writer wins). ``keys()``/``list()`` use an index built at start and
    kept up to date by this process's writes.

    Known limits: keys written by other processes after :meth:`start` are readable with
    :meth:`get` but missing from ``keys()`` until a restart; :meth:`mdelete` (a glob delete of
    the Layer) is key by key, not atomic; a drive swapped with another one *while running* is only
    noticed at the next start (writes check a drive's ``.tmp``, not its marker); :func:`tune_malloc`
    changes glibc's thresholds for the whole process; a delete writes a tombstone on every drive,
    so when more than ``k + m - write_quorum`` drives are full, deletes are refused like writes
    (:class:`QuorumNotReached` naming the full drives): free space on the drives or add capacity.
    """

    name = "erasure"

    def __init__(
        self,
        drives: list[str] | tuple[str, ...],
        k: int = 4,
        m: int = 2,
        write_quorum: int | None = None,
        **options: Any,
    ) -> None:
        self.config = ErasureConfig(k=k, m=m, write_quorum=write_quorum, **options)
        self.drives = [os.fspath(d) for d in drives]
        if len(self.drives) != k + m:
            raise ValueError(f"need exactly k + m = {k + m} drives, got {len(self.drives)}")
        if len({os.path.realpath(d) for d in self.drives}) != len(self.drives):
            raise ValueError("drives must be distinct folders")
        cfg = self.config
        self.codec = Codec(k, m, cfg.ec_backend, cfg.stripe_size)
        self._namer = TempNamer()
        self._io = DriveSet(self.drives, self.codec, self._namer, cfg.durability, cfg.grace)
        self._gens = Generations()
        self._locks = KeyLocks()
        self._index = KeyIndex()
        self._pool: WorkerPool | None = None
        self._offline: set[int] = set()
        self._full: set[int] = set()  # drives whose last write failed for lack of space
        self._replaced: set[int] = set()  # new empty drives not yet fully rebuilt
        self._queue: dict[str, int] = {}  # key -> shard repairs known (>= 1 per degraded key)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._repairing: set[str] = set()  # keys with a read-triggered repair under way
        self._repairer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None  # set by close(): background work ends
        self._passes = 0  # background passes completed (see :meth:`flush`)
        self._busy = False
        self._passed: asyncio.Condition | None = None
        self._last_scrub: dict[str, Any] | None = None
        self._repaired = 0
        self._errors = 0
        self._store_id = ""
        self._log_dirty = False  # repair log records exist on some drive

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Validate the drives, clean temp files, load the repair queue and build the index."""
        if self._pool is not None:
            return
        tune_malloc()
        cfg = self.config
        self._pool = WorkerPool(cfg.workers or self.codec.n + 2, "ooo-erasure")
        try:
            states = await self._run(
                self._io.open_drives, cfg.ec_backend, backend_version(), cfg.tmp_grace
            )
            keys, logged = await self._run(lambda: (self._io.scan(), self._io.load_repairs()))
        except BaseException:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise
        self._store_id = states.store
        self._offline = set(states.offline)
        self._replaced = set(states.replaced)
        self._index = KeyIndex(key for key, exists in keys.items() if exists)
        for key in logged:
            self._queue.setdefault(key, 1)
        self._log_dirty = bool(logged)
        if states.replaced:  # a full rebuild: every key may have lost a shard
            for key in keys:
                self._queue.setdefault(key, 1)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._passed = asyncio.Condition()
        if cfg.repair == "background":
            self._repairer = asyncio.create_task(self._background(), name="ooo-erasure-repair")
            if self._queue:
                self._wake.set()

    async def close(self) -> None:
        """Stop the repairer, wait for pending garbage collection, release the threads."""
        if self._pool is None:
            return
        if self._repairer is not None:
            # An explicit signal, not cancel(): on Python 3.11 a cancellation that lands in the
            # iteration where the repairer's wake-up event fires is swallowed by wait_for, and
            # close() then waited forever. The repairer stops at its next check (after its
            # current key at most); asyncio.wait leaves it alone if close() itself is cancelled.
            assert self._stop is not None and self._wake is not None
            self._stop.set()
            self._wake.set()
            await asyncio.wait({self._repairer})
            self._repairer = None
        await self._settle_tasks()
        pool, self._pool = self._pool, None
        await asyncio.to_thread(pool.shutdown, True)

    async def __aenter__(self) -> ErasureStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the store's worker pool (one submission)."""
        return await self._workers().run(fn, *args)

    def _workers(self) -> WorkerPool:
        if self._pool is None:
            raise StorageUnavailable("storage: erasure store is not open")
        return self._pool

    # -- reads -------------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        """The value of ``key`` or None; :class:`CorruptObject` if no k shards are valid."""
        loc = self._io.locate(key)
        result: ReadResult = await self._run(self._io.read, loc)
        if result.degraded:
            self._enqueue(key)
        return result.value

    async def get_str(self, key: str) -> str | None:
        value = await self.get(key)
        return None if value is None else value.decode()

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (None where missing), one executor hop per batch."""
        out: list[bytes | None] = []
        locate = self._io.locate
        for start in range(0, len(keys), _BATCH):
            locs = [locate(key) for key in keys[start : start + _BATCH]]
            for loc, result in await self._run(self._io.read_many, locs):
                if result.degraded:
                    self._enqueue(loc.key)
                out.append(result.value)
        return out

    async def load_all(self) -> dict[str, bytes]:
        """Every key of the index and its value (cold start of :class:`ErasureLayer`)."""
        keys = await self.keys()
        values = await self.mget(keys)
        return {key: value for key, value in zip(keys, values, strict=True) if value is not None}

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys of this store in ascending order (from the index)."""
        return list(self._index.with_prefix(prefix))

    async def list(self, pattern: str) -> builtins.list[str]:
        """Keys matching the glob ``pattern`` of PROTOCOL §1.3, ascending."""
        return builtins.list(self._index.matching_keys(pattern))

    async def check(self, key: str) -> str:
        """``"ok"`` (readable, maybe degraded) | ``"corrupted"`` | ``"missing"``, every shard verified."""
        report: KeyReport = await self._run(self._io.inspect, self._io.locate(key), False)
        if report.state == "lost":
            return "corrupted"
        return "ok" if report.state in ("ok", "degraded") else "missing"

    # -- writes ------------------------------------------------------------------------------
    async def store(self, key: str, data: bytes) -> None:
        """Write ``data`` as a new generation; :class:`QuorumNotReached` if too few drives took it."""
        data = bytes(data)
        crc = crc32c(data)
        if len(data) < self.config.inline_threshold:
            copies = self.config.m + 1
            shards = {i: [data] for i in range(copies)}
            await self._write(key, FLAG_REPLICA, len(data), crc, shards)
            return
        if len(data) <= _ENCODE_INLINE:
            encoded = self.codec.encode(data)
        else:
            encoded = await self._run(self.codec.encode, data)
        await self._write(key, 0, len(data), crc, dict(enumerate(encoded)))

    async def store_str(self, key: str, text: str) -> None:
        await self.store(key, text.encode())

    async def delete(self, key: str) -> bool:
        """Write a tombstone on every drive; True if the key existed."""
        existed = key in self._index
        if not existed:  # maybe written by another process: look on the drives
            try:
                existed = await self.get(key) is not None
            except CorruptObject:
                existed = True  # deleting is how a corrupt object is cleared
            if not existed:
                return False
        await self._write(key, FLAG_TOMBSTONE, 0, 0, {i: [] for i in range(self.codec.n)})
        return True

    async def mdelete(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` (not atomically), a few at a time so the drives' work overlaps; return
        how many existed."""
        removed = 0
        for start in range(0, len(keys), _BATCH_DELETES):
            batch = keys[start : start + _BATCH_DELETES]
            removed += sum(await asyncio.gather(*(self.delete(key) for key in batch)))
        return removed

    async def clear(self) -> int:
        """Delete every key of the index; return how many existed."""
        return await self.mdelete(await self.keys())

    async def _write(
        self, key: str, flags: int, size: int, crc: int, shards: Shards
    ) -> None:
        """Write one generation. A caller cancelled midway still waits for the whole write: its
        shard writes run in threads and cannot be stopped, so returning early would release the
        key's lock under them and skip the commit's bookkeeping (index, GC, repair queue)."""
        self._workers()  # raises if the store is not open
        await finish(asyncio.ensure_future(self._write_now(key, flags, size, crc, shards)))

    async def _write_now(
        self, key: str, flags: int, size: int, crc: int, shards: Shards
    ) -> None:
        cfg = self.config
        assert cfg.write_quorum is not None
        # Replicas need as many copies as coded writes tolerate failures (n - quorum lost).
        required = max(1, len(shards) - (self.codec.n - cfg.write_quorum))
        loc = self._io.locate(key)
        await self._locks.acquire(key)
        try:
            if flags & FLAG_REPLICA:
                await self._check_drives(loc)
            generation = self._gens.next()
            submit, write = self._workers().submit, self._io.write_shard
            futures = [
                submit(write, loc, i, flags, size, generation, crc, payload)
                for i, payload in shards.items()
            ]
            # Any exception of a shard write (OSError or not) is that drive failing this write.
            results = await asyncio.gather(*futures, return_exceptions=True)
            errors = {
                self._io.drive_of(loc, i): r
                for i, r in zip(shards, results, strict=True)
                if isinstance(r, Exception)
            }
            done = [i for i in shards if self._io.drive_of(loc, i) not in errors]
            failed = [i for i in shards if i not in done]
            self._note_drives([self._io.drive_of(loc, i) for i in shards], errors)
            self._errors += len(errors)
            if len(done) < required:
                self._errors += 1
                await self._run(self._io.remove_generation, loc, generation, done)
                raise QuorumNotReached(
                    f"storage: write quorum not reached for {key!r}: {len(done)} of "
                    f"{len(shards)} shards written, {required} needed ({self._why(errors)})"
                )
            if flags & FLAG_TOMBSTONE:
                self._index.discard(key)
            else:
                self._index.add(key)
            if failed:
                self._queue[key] = self._queue.get(key, 0) + len(failed)
            self._spawn(self._after_commit(loc, generation, flags, failed, done))
        finally:
            self._locks.release(key)

    def _note_drives(self, positions: Sequence[int], errors: dict[int, Exception]) -> None:
        """Track which drives a write found offline or full (a full drive is still online)."""
        for pos in positions:
            exc = errors.get(pos)
            self._full.discard(pos)
            self._offline.discard(pos)
            if exc is not None:
                (self._full if no_space(exc) else self._offline).add(pos)

    def _why(self, errors: dict[int, Exception]) -> str:
        """Per-drive reasons of a failed write, and what to do about full drives."""
        drives: dict[str, builtins.list[str]] = {}  # reason -> drives that failed for it
        for pos, exc in sorted(errors.items()):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            drives.setdefault(reason, []).append(self.drives[pos])
        reasons = "; ".join(f"{reason} on {', '.join(paths)}" for reason, paths in drives.items())
        if any(no_space(exc) for exc in errors.values()):
            reasons += (
                " - free space on the full drives or add capacity"
                " (a delete needs room too: it writes a tombstone on each drive)"
            )
        return reasons

    async def _check_drives(self, loc: Located) -> None:
        """Replicas touch only m + 1 drives: refuse up front when the store lost its quorum."""
        assert self.config.write_quorum is not None
        if self.codec.n - len(self._offline) >= self.config.write_quorum:
            return
        self._offline = set(await self._run(self._io.probe))
        if self.codec.n - len(self._offline) < self.config.write_quorum:
            raise QuorumNotReached(
                f"storage: write quorum not reached for {loc.key!r}: only "
                f"{self.codec.n - len(self._offline)} drives online, "
                f"{self.config.write_quorum} needed (offline: {self._offline_paths()})"
            )

    async def _after_commit(
        self, loc: Located, generation: int, flags: int, failed: builtins.list[int], done: builtins.list[int]
    ) -> None:
        """Off the request path: drop older generations and log shards a repair must restore."""
        drop_tombstone = bool(flags & FLAG_TOMBSTONE) and not failed

        def work() -> None:
            self._io.collect(loc, generation, drop_tombstone)
            if failed:
                records = [(loc.key, generation, i) for i in failed]
                self._io.log_repairs(records, [self._io.drive_of(loc, i) for i in done])

        self._log_dirty |= bool(failed)
        try:
            await self._run(work)
        except Exception:
            self._errors += 1  # GC is best effort: a later repair or scrub collects the rest
        if failed:
            self._wake_repairer(loc.key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- repair ------------------------------------------------------------------------------
    def _enqueue(self, key: str) -> None:
        self._queue.setdefault(key, 1)
        self._wake_repairer(key)

    def _wake_repairer(self, key: str) -> None:
        mode = self.config.repair
        if mode == "background" and self._wake is not None:
            self._wake.set()
        elif mode == "read" and self._pool is not None and key not in self._repairing:
            self._repairing.add(key)  # many readers of one degraded key start one repair
            self._spawn(self._repair_quietly(key))

    async def _repair_quietly(self, key: str) -> None:
        try:
            await self._repair_key(key)
        except Exception:
            self._errors += 1
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
        cfg = self.config
        self._replaced.update(await self._run(self._io.rejoin, cfg.ec_backend, backend_version()))
        replaced = sorted(self._replaced)
        self._offline = set(await self._run(self._io.probe))
        totals = await self._pass(True, progress)
        if replaced and not totals["degraded"] and not totals["lost"] and not self._offline:
            # Never declare a rebuild complete while something is still missing (rustfs#5869).
            await self._run(self._io.rebuilt, replaced)
            self._replaced.clear()
        counts = await self._run(self._io.shard_counts)
        await self._forget_repaired()
        rebuilt = totals.pop("rebuilt")
        return {
            **totals,
            "repaired": rebuilt,
            "offline_drives": self._offline_paths(),
            "replaced_drives": [self.drives[pos] for pos in replaced],
            "shards_per_drive": dict(zip(self.drives, counts, strict=True)),
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
        self._offline = set(await self._run(self._io.probe))
        totals = await self._pass(False, progress)
        report = {
            "checked": totals["checked"],
            "degraded": totals["degraded"],
            "lost": totals["lost"],
            "missing_shards": totals["missing_shards"],
            "corrupt_shards": totals["corrupt_shards"],
            "corrupt_files": totals["corrupt_files"],
            "offline_drives": self._offline_paths(),
            "seconds": round(time.monotonic() - t0, 3),
            "time": time.time(),
        }
        self._last_scrub = report
        if self._queue and self.config.repair == "background" and self._wake is not None:
            self._wake.set()
        return report

    async def _pass(self, fix: bool, progress: Progress | None) -> dict[str, Any]:
        """One key at a time over every key directory on disk (not only the index)."""
        keys = sorted(await self._run(self._io.scan))
        totals: dict[str, Any] = dict.fromkeys(
            ("checked", "degraded", "lost", "missing_shards", "corrupt_shards", "rebuilt", "removed"),
            0,
        )
        corrupt_files: builtins.list[str] = []
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
        cfg = self.config
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
        cfg = self.config
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

    async def flush(self) -> None:
        """Wait until garbage collection and repairs started so far are done.

        In ``"background"`` mode this includes one full pass of the repairer over the queue
        (entries whose drive is still absent stay queued). Returns early if the store closes.
        """
        await self._settle_tasks()
        if self._repairer is None or self._passed is None or self._wake is None:
            return
        stop = self._stop
        assert stop is not None
        async with self._passed:
            target = self._passes + (2 if self._busy else 1)
            self._wake.set()
            await self._passed.wait_for(lambda: self._passes >= target or stop.is_set())

    async def _settle_tasks(self) -> None:
        """Wait for the garbage collection and read repairs spawned so far (and any they spawn).

        ``asyncio.wait``, not ``gather``: a caller cancelled while waiting must not cancel
        them (their executor work would go on, unobserved).
        """
        while self._tasks:
            await asyncio.wait(list(self._tasks))

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
            self._errors += 1
            return None

    def stats(self) -> dict[str, Any]:
        """``{"objects", "degraded", "offline_drives", "full_drives", "queued_repairs", ...}``.

        ``full_drives``: drives whose last write failed for lack of space (still online: reads
        use them); ``offline_drives``: drives that were unreachable or failed otherwise.
        """
        return {
            "objects": len(self._index),
            "degraded": len(self._queue),
            "queued_repairs": sum(self._queue.values()),
            "offline_drives": self._offline_paths(),
            "full_drives": [self.drives[pos] for pos in sorted(self._full)],
            "rebuilding_drives": [self.drives[pos] for pos in sorted(self._replaced)],
            "last_scrub": self._last_scrub,
            "repaired": self._repaired,
            "errors": self._errors,
            "store": self._store_id,
            "k": self.codec.k,
            "m": self.codec.m,
        }

    def _offline_paths(self) -> builtins.list[str]:
        return [self.drives[pos] for pos in sorted(self._offline)]


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
