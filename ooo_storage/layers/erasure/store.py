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
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ...errors import CorruptObject, QuorumNotReached, StorageUnavailable, no_space
from ...locks import KeyLocks
from ..fs.checksum import crc32c
from ..fs.temp import TempNamer
from ..fs.workers import WorkerPool, finish
from ..memory import KeyIndex
from .codec import Codec, backend_version, tune_malloc
from .config import ErasureConfig
from .drives import DriveSet, Located, ReadResult
from .format import FLAG_REPLICA, FLAG_TOMBSTONE, Generations
from .repair import Health, Progress, Repairer

__all__ = ["ErasureStore", "CorruptObject", "QuorumNotReached"]

T = TypeVar("T")
Shards = dict[int, list[bytes]]  # shard index -> payload parts

_ENCODE_INLINE = 1 << 20  # encoding one stripe (~100 µs) on the loop costs about one thread hop
_BATCH = 256  # keys per executor submission for multi-key reads
_BATCH_DELETES = 16  # deletes in flight for a glob delete or clear


class ErasureStore:
    """A key -> bytes store erasure-coded over ``k + m`` drive folders.

    ``repair``: ``"background"`` (default) queues degraded objects for a background task that
    rebuilds them and scrubs every ``scrub_interval``; ``"read"`` rebuilds a degraded object right
    after the read that noticed it; ``"off"`` only queues (call :meth:`repair`).

    Within one process, writes of one key are serialised and ordered; across processes the newest
    generation wins (last writer wins). ``keys()``/``list()`` use an index built at start and
    kept up to date by this process's writes.

    Known limits: keys written by other processes after :meth:`start` are readable with
    :meth:`get` but missing from ``keys()`` until a restart (unless an ``ErasureLayer(shared=True)``
    tells it through :meth:`note`); :meth:`mdelete` (a glob delete of
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
        self._health = Health()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._repairs = Repairer(self._io, cfg, self._locks, self._health, self._run, self._spawn)
        self._store_id = ""

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
        self._health.offline = set(states.offline)
        self._health.replaced = set(states.replaced)
        self._index = KeyIndex(key for key, exists in keys.items() if exists)
        # A replaced drive means a full rebuild: every key may have lost a shard.
        self._repairs.start(logged, keys if states.replaced else ())

    async def close(self) -> None:
        """Stop the repairer, wait for pending garbage collection, release the threads."""
        if self._pool is None:
            return
        await self._repairs.stop()
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
            self._repairs.enqueue(key)
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
                    self._repairs.enqueue(loc.key)
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
        report = await self._run(self._io.inspect, self._io.locate(key), False)
        if report.state == "lost":
            return "corrupted"
        return "ok" if report.state in ("ok", "degraded") else "missing"

    def note(self, key: str, present: bool) -> None:
        """Another process wrote (``present``) or deleted ``key``: keep :meth:`keys` up to date."""
        if present:
            self._index.add(key)
        else:
            self._index.discard(key)

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
            self._health.errors += len(errors)
            if len(done) < required:
                self._health.errors += 1
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
                self._repairs.failed_shards(key, len(failed))
            self._spawn(self._after_commit(loc, generation, flags, failed, done))
        finally:
            self._locks.release(key)

    def _note_drives(self, positions: Sequence[int], errors: dict[int, Exception]) -> None:
        """Track which drives a write found offline or full (a full drive is still online)."""
        for pos in positions:
            exc = errors.get(pos)
            health = self._health
            health.full.discard(pos)
            health.offline.discard(pos)
            if exc is not None:
                (health.full if no_space(exc) else health.offline).add(pos)

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
        health = self._health
        if self.codec.n - len(health.offline) >= self.config.write_quorum:
            return
        health.offline = set(await self._run(self._io.probe))
        if self.codec.n - len(health.offline) < self.config.write_quorum:
            raise QuorumNotReached(
                f"storage: write quorum not reached for {loc.key!r}: only "
                f"{self.codec.n - len(health.offline)} drives online, "
                f"{self.config.write_quorum} needed (offline: {self._paths(health.offline)})"
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

        try:
            await self._run(work)
        except Exception:
            self._health.errors += 1  # GC is best effort: a later repair or scrub collects the rest
        if failed:
            self._repairs.wake(loc.key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_tasks(self) -> None:
        """Wait for the garbage collection and read repairs spawned so far (and any they spawn).

        ``asyncio.wait``, not ``gather``: a caller cancelled while waiting must not cancel
        them (their worker-pool work would go on, unobserved).
        """
        while self._tasks:
            await asyncio.wait(builtins.list(self._tasks))

    # -- repair (see :mod:`.repair`) ---------------------------------------------------------
    async def repair(self, progress: Progress | None = None) -> dict[str, Any]:
        """Rebuild every missing or corrupt shard now and collect garbage (:meth:`Repairer.repair`)."""
        return await self._repairs.repair(progress)

    async def scrub(self, progress: Progress | None = None) -> dict[str, Any]:
        """Verify every shard of every object; queue the degraded ones (:meth:`Repairer.scrub`)."""
        return await self._repairs.scrub(progress)

    async def flush(self) -> None:
        """Wait until garbage collection and repairs started so far are done.

        In ``"background"`` mode this includes one full pass of the repairer over the queue
        (entries whose drive is still absent stay queued). Returns early if the store closes.
        """
        await self._settle_tasks()
        await self._repairs.next_pass()

    def stats(self) -> dict[str, Any]:
        """``{"objects", "degraded", "offline_drives", "full_drives", "queued_repairs", ...}``.

        ``full_drives``: drives whose last write failed for lack of space (still online: reads
        use them); ``offline_drives``: drives that were unreachable or failed otherwise.
        """
        health, repairs = self._health, self._repairs.stats()
        return {
            "objects": len(self._index),
            "degraded": repairs["degraded"],
            "queued_repairs": repairs["queued_repairs"],
            "offline_drives": self._paths(health.offline),
            "full_drives": self._paths(health.full),
            "rebuilding_drives": self._paths(health.replaced),
            "last_scrub": repairs["last_scrub"],
            "repaired": repairs["repaired"],
            "errors": health.errors,
            "store": self._store_id,
            "k": self.codec.k,
            "m": self.codec.m,
        }

    def _paths(self, positions: set[int]) -> builtins.list[str]:
        return [self.drives[pos] for pos in sorted(positions)]
