"""SimpleObjectStore: the SOS byte store (see the package docstring for its design and limits)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import inspect
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal, TypeVar

from ...errors import CorruptObject, NoSpace, StorageError, StorageUnavailable, no_space
from ...locks import KeyLocks
from ...protocol.keys import glob_prefix, match
from ..fs.atomic import (
    DURABILITY_LEVELS,
    Durability,
    fsync_dir,
    makedirs_durable,
    write_file_atomic,
    write_file_with,
)
from ..fs.layout import ensure_marker, fanout_path, iter_fanout
from ..fs.reads import read_exact, read_with
from ..fs.temp import TMP_DIR, TempNamer, clean_temp, unlink_quiet
from ..fs.workers import WorkerPool
from .record import (
    CHUNK,
    VERSION,
    BadRecord,
    Key,
    decode_key,
    encode_key,
    encode_record,
    read_key,
    read_record,
    stream_record,
)

__all__ = ["SimpleObjectStore", "ReadMode", "RecordFormat"]

T = TypeVar("T")
ReadMode = Literal["link", "direct"]
RecordFormat = Literal["sos1", "raw"]


class SimpleObjectStore:
    """A byte store in ``root`` (the package docstring, ``layers.sos``, gives its design and limits).

    ``durability``: ``"full"`` | ``"data"`` | ``"none"``; ``read_mode``: ``"link"`` | ``"direct"``;
    ``workers``: threads of the store's own worker pool; ``tmp_grace``: seconds after which a temp file of
    another host (or of a live pid) counts as abandoned; ``record``: ``"sos1"`` or ``"raw"`` (Go SOS
    compatible values, no checksum, no listing).

    Methods return None/False for a missing key and raise :class:`StorageError` subclasses for
    failures: :class:`CorruptObject` for damaged records, :class:`StorageUnavailable` for I/O errors
    (the ``OSError`` is chained as ``__cause__``).
    """

    name = "sos"

    def __init__(
        self,
        root: str | os.PathLike[str],
        durability: Durability = "full",
        read_mode: ReadMode = "link",
        *,
        workers: int = 4,
        tmp_grace: float = 3600.0,
        record: RecordFormat = "sos1",
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}")
        if read_mode not in ("link", "direct"):
            raise ValueError("read_mode must be 'link' or 'direct'")
        if record not in ("sos1", "raw"):
            raise ValueError("record must be 'sos1' or 'raw'")
        self.root = os.path.abspath(os.fspath(root))
        self.durability: Durability = durability
        self.read_mode: ReadMode = read_mode
        self.workers = workers
        self.tmp_grace = tmp_grace
        self.record: RecordFormat = record
        self._tmp = os.path.join(self.root, TMP_DIR)
        self._namer = TempNamer()
        self._locks = KeyLocks()
        self._pool: WorkerPool | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def format(self) -> dict[str, Any]:
        """The format marker fields a store must match to be opened (``root/.format.json``)."""
        return {
            "magic": "ooo-storage/sos",
            "format_version": 1,
            "fanout": "sha256:2/2/60",
            "record": "SOS1" if self.record == "sos1" else "raw",
            "record_version": VERSION,
            "checksum": "crc32c",
        }

    async def start(self) -> None:
        """Create the root, validate or write the format marker, remove abandoned temp files."""
        if self._pool is not None:
            return
        pool = WorkerPool(self.workers, "sos")
        try:
            await pool.run(self._start_sync)
        except OSError as exc:
            pool.shutdown(wait=False)
            raise StorageUnavailable(
                f"storage: can't open SOS store {self.root}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            pool.shutdown(wait=False)
            raise
        self._pool = pool

    def _start_sync(self) -> None:
        os.makedirs(os.path.dirname(self.root), exist_ok=True)
        makedirs_durable(self._tmp, os.path.dirname(self.root), durable=self.durability == "full")
        ensure_marker(self.root, self.format, self._namer)
        clean_temp(self._tmp, self.tmp_grace, self._namer.host)

    async def close(self) -> None:
        """Wait for in-flight operations, then stop the worker threads. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)

    async def destroy(self) -> None:
        """Delete the whole store: rename the root away (other processes see it vanish at once),
        then remove the renamed tree. The store is closed afterwards."""
        await self._run("destroy", "", self._destroy_sync)
        await self.close()

    def _destroy_sync(self) -> None:
        doomed = f"{self.root}.deleted.{secrets.token_hex(4)}"
        try:
            os.rename(self.root, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed)

    async def _run(self, op: str, key: Key, fn: Callable[..., T], *args: Any) -> T:
        """One pool submission for one logical operation; ``OSError`` → StorageUnavailable."""
        pool = self._pool
        if pool is None:
            raise StorageUnavailable(f"storage: SOS store {self.root} is not open")
        try:
            return await pool.run(fn, *args)
        except OSError as exc:
            message = f"storage: SOS {op} {key!r} failed: {exc.strerror or exc}"
            if no_space(exc):
                raise NoSpace(f"{message} in {self.root}: free space to store again") from exc
            raise StorageUnavailable(message) from exc

    # -- paths and records ---------------------------------------------------------------------
    def path(self, key: Key) -> str:
        """Absolute path of the object file of ``key``."""
        return os.path.join(self.root, fanout_path(encode_key(key)))

    def _chunks(self, key: bytes, value: bytes) -> list[bytes]:
        if self.record == "raw":
            return [value]
        return [encode_record(key, value), value]

    def _open(self, path: str, reader: Callable[[int, os.stat_result], T]) -> T | None:
        if self.read_mode == "link":
            return read_with(path, reader, self._tmp, self._namer)
        return read_with(path, reader)

    def _decode(self, key: bytes, path: str) -> Callable[[int, os.stat_result], bytes]:
        def reader(fd: int, st: os.stat_result) -> bytes:
            if self.record == "raw":
                return read_exact(fd, st.st_size)
            try:
                return read_record(fd, st.st_size, key, None)[1]
            except BadRecord as exc:
                raise _corrupt(key, path, exc) from None

        return reader

    def _load(self, key: bytes, path: str) -> bytes | None:
        return self._open(path, self._decode(key, path))

    # -- writes --------------------------------------------------------------------------------
    async def store(self, key: Key, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``key`` (create or replace), durably per ``durability``."""
        value = bytes(data) if not isinstance(data, bytes) else data
        async with self._locks.hold(_lock_name(key)):
            await self._run("store", key, self._store_sync, encode_key(key), value)

    async def store_str(self, key: Key, text: str) -> None:
        """Store ``text`` encoded as UTF-8."""
        await self.store(key, text.encode())

    async def store_from(self, key: Key, reader: Any) -> None:
        """Store everything read from ``reader`` until EOF.

        A synchronous binary reader (``read(n) -> bytes``) is streamed inside the one pool
        call, so large values never sit in memory; an asynchronous one (``await read(n)``, e.g.
        ``asyncio.StreamReader``) is gathered on the event loop first, because each of its reads
        would otherwise cost a thread hop.
        """
        read = reader.read
        if inspect.iscoroutinefunction(read):
            parts = []
            while chunk := await read(CHUNK):
                parts.append(chunk)
            await self.store(key, b"".join(parts))
            return
        async with self._locks.hold(_lock_name(key)):
            await self._run("store", key, self._store_stream_sync, encode_key(key), read)

    def _store_sync(self, key: bytes, value: bytes, exclusive: bool = False) -> bool:
        return write_file_atomic(
            self.path(key), self._chunks(key, value), self.root, self._namer, self.durability,
            exclusive, self._tmp,
        )  # fmt: skip

    def _store_stream_sync(self, key: bytes, read: Callable[[int], bytes]) -> None:
        raw = self.record == "raw"
        write_file_with(
            self.path(key), lambda fd: stream_record(fd, key, read, raw), self.root, self._namer,
            self.durability, tmp_dir=self._tmp,
        )  # fmt: skip

    async def delete(self, key: Key) -> bool:
        """Remove ``key``; False if it did not exist."""
        async with self._locks.hold(_lock_name(key)):
            return await self._run("delete", key, self._delete_sync, encode_key(key))

    def _delete_sync(self, key: bytes) -> bool:
        path = self.path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        if self.durability == "full":
            fsync_dir(os.path.dirname(path))
        return True

    async def mdelete(self, keys: Iterable[Key]) -> int:
        """Remove several keys in one pool call; return how many existed. Not atomic."""
        doomed = [encode_key(k) for k in keys]
        return await self._run("delete", "*", self._mdelete_sync, doomed)

    def _mdelete_sync(self, keys: list[bytes]) -> int:
        return self._unlink_all(self.path(key) for key in keys)

    def _unlink_all(self, paths: Iterable[str]) -> int:
        """Unlink object files (missing ones skipped), then fsync each touched leaf directory once."""
        removed = set()
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.add(path)
        if self.durability == "full":
            for leaf in sorted({os.path.dirname(p) for p in removed}):
                fsync_dir(leaf)
        return len(removed)

    async def store_if_absent(self, key: Key, data: bytes) -> bool:
        """Store ``data`` only if ``key`` does not exist (atomic across processes: ``link`` of a
        complete temp file onto the final name). False if the key existed."""
        async with self._locks.hold(_lock_name(key)):
            return await self._run("store", key, self._store_sync, encode_key(key), bytes(data), True)

    async def get_and_delete(self, key: Key) -> bytes | None:
        """Remove ``key`` and return its value, atomically across processes: the object is renamed
        to a private temp name first, so exactly one caller gets it. A corrupt object is put back
        (unless a new value took its place) and raises. A caller killed between the claim and the
        return loses the value, as with any destructive read."""
        async with self._locks.hold(_lock_name(key)):
            return await self._run("get_and_delete", key, self._take_sync, encode_key(key))

    def _take_sync(self, key: bytes) -> bytes | None:
        path = self.path(key)
        claimed = self._claim(path)
        if claimed is None:
            return None
        try:
            value = read_with(claimed, self._decode(key, path))
            if value is None:  # pragma: no cover - our private name cannot vanish
                raise FileNotFoundError(claimed)
            if self.durability == "full":
                fsync_dir(os.path.dirname(path))
            return value
        except BaseException:
            self._put_back(claimed, path)
            raise
        finally:
            unlink_quiet(claimed)

    def _claim(self, path: str) -> str | None:
        """Rename the object at ``path`` to a private temp name (None if missing): from then on no
        other process can read, replace-and-lose or take it."""
        claimed = os.path.join(self._tmp, self._namer.name("r"))
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None
        return claimed

    @staticmethod
    def _put_back(claimed: str, path: str) -> None:
        # Best effort; EEXIST means a newer value was stored meanwhile: it wins.
        with contextlib.suppress(OSError):
            os.link(claimed, path)

    async def rename(self, old: Key, new: Key) -> bool:
        """Move the value of ``old`` to ``new`` (replacing it); False if ``old`` is missing.

        The record embeds its key, so it is rewritten under ``new`` before ``old`` is removed: a
        crash in between leaves both keys, never neither. ``old`` is removed only if it still is
        the object that was copied (another process may have replaced it meanwhile).
        """
        if encode_key(old) == encode_key(new):
            return await self.metadata(old) is not None
        first, second = sorted((_lock_name(old), _lock_name(new)))
        async with self._locks.hold(first), self._locks.hold(second):
            return await self._run("rename", old, self._rename_sync, encode_key(old), encode_key(new))

    def _rename_sync(self, old: bytes, new: bytes) -> bool:
        path = self.path(old)
        decode = self._decode(old, path)
        copied = self._open(path, lambda fd, st: (decode(fd, st), (st.st_dev, st.st_ino)))
        if copied is None:
            return False
        value, identity = copied
        self._store_sync(new, value)
        claimed = self._claim(path)
        if claimed is None:
            return True  # deleted meanwhile by someone else
        try:
            st = os.lstat(claimed)
            if (st.st_dev, st.st_ino) != identity:
                self._put_back(claimed, path)  # replaced meanwhile: keep the newer value
        finally:
            unlink_quiet(claimed)
        if self.durability == "full":
            fsync_dir(os.path.dirname(path))
        return True

    async def clone(self, src: Key, dst: Key) -> bool:
        """Copy the value of ``src`` to ``dst``; False if ``src`` is missing."""
        async with self._locks.hold(_lock_name(dst)):
            return await self._run("clone", src, self._clone_sync, encode_key(src), encode_key(dst))

    def _clone_sync(self, src: bytes, dst: bytes) -> bool:
        value = self._load(src, self.path(src))
        if value is None:
            return False
        self._store_sync(dst, value)
        return True

    async def clear(self) -> int:
        """Remove every object (not the marker); return how many. Other processes may add more."""
        return await self._run("clear", "*", self._clear_sync)

    def _clear_sync(self) -> int:
        return self._unlink_all(path for path, _ in iter_fanout(self.root))

    # -- reads ---------------------------------------------------------------------------------
    async def get(self, key: Key) -> bytes | None:
        """The value of ``key``, or None. Raises CorruptObject for a damaged record."""
        k = encode_key(key)
        return await self._run("get", key, self._load, k, self.path(k))

    async def get_str(self, key: Key) -> str | None:
        """The value of ``key`` decoded as UTF-8, or None."""
        value = await self.get(key)
        return None if value is None else value.decode()

    async def get_into(self, key: Key, writer: Any) -> bool:
        """Write the value of ``key`` to ``writer`` (``write`` sync or async, ``drain`` awaited if
        present); False if missing. The whole value is verified before its first byte is written,
        so a writer never receives data that later turns out corrupt."""
        value = await self.get(key)
        if value is None:
            return False
        result = writer.write(value)
        if inspect.isawaitable(result):
            await result
        drain = getattr(writer, "drain", None)
        if drain is not None:
            await drain()
        return True

    async def mget(self, keys: Iterable[Key]) -> list[bytes | None]:
        """Values of several keys (None where missing) in one pool call."""
        encoded = [encode_key(k) for k in keys]
        return await self._run("get", "*", self._mget_sync, encoded)

    def _mget_sync(self, keys: list[bytes]) -> list[bytes | None]:
        return [self._load(k, self.path(k)) for k in keys]

    async def metadata(self, key: Key) -> dict[str, Any] | None:
        """``{"size": value bytes, "mtime": seconds}`` of ``key``, or None. Verifies the record."""
        k = encode_key(key)
        path = self.path(k)
        decode = self._decode(k, path)

        def reader(fd: int, st: os.stat_result) -> dict[str, Any]:
            return {"size": len(decode(fd, st)), "mtime": st.st_mtime}

        return await self._run("metadata", key, self._open, path, reader)

    async def check(self, key: Key) -> Literal["ok", "corrupted", "missing"]:
        """Verify ``key``'s record: ``"ok"``, ``"corrupted"`` or ``"missing"``."""
        try:
            value = await self.get(key)
        except CorruptObject:
            return "corrupted"
        return "missing" if value is None else "ok"

    async def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted, by walking the tree (sees every process)."""
        return await self._run("keys", prefix, self._walk_keys, lambda k: k.startswith(prefix))

    async def list(self, pattern: str) -> list[str]:
        """Keys matching ``pattern`` (docs/protocol.md §1.2 glob), sorted, by walking the tree."""
        prefix = glob_prefix(pattern)
        return await self._run(
            "list", pattern, self._walk_keys, lambda k: k.startswith(prefix) and match(pattern, k)
        )

    def _walk_keys(self, keep: Callable[[str], bool]) -> builtins.list[str]:
        self._require_records("listing")
        found = []
        for path, name in iter_fanout(self.root):
            try:
                raw = read_with(path, partial(read_key, name=name))
            except BadRecord:
                continue  # unreadable header: its key is unknown (scrub reports it)
            except OSError as exc:
                if not _vanished(exc):
                    raise
                continue
            if raw is not None and keep(key := decode_key(raw)):
                found.append(key)
        found.sort()
        return found

    async def load_all(self) -> dict[str, bytes]:
        """Every key and verified value, in one pool call (cold start of :class:`SOSLayer`).

        Raises CorruptObject on the first damaged record: starting with a value silently missing
        would turn corruption into "not found"."""
        return await self._run("load", "*", self._load_all_sync)

    def _load_all_sync(self) -> dict[str, bytes]:
        self._require_records("loading")
        out: dict[str, bytes] = {}
        for path, name in iter_fanout(self.root):
            try:
                record = read_with(path, partial(_record_at, name=name))
            except BadRecord as exc:
                raise _corrupt(None, path, exc) from None
            except OSError as exc:
                if not _vanished(exc):
                    raise
                continue
            if record is not None:
                out[decode_key(record[0])] = record[1]
        return out

    async def scrub(self) -> dict[str, Any]:
        """Verify every record's CRC and slot. Report: ``checked``, ``ok``, ``corrupted``,
        ``corrupt_paths`` (relative), ``bytes`` verified, ``vanished`` (deleted during the walk)."""
        return await self._run("scrub", "*", self._scrub_sync)

    def _scrub_sync(self) -> dict[str, Any]:
        self._require_records("scrub")
        report: dict[str, Any] = {
            "checked": 0, "ok": 0, "corrupted": 0, "corrupt_paths": [], "bytes": 0, "vanished": 0,
        }  # fmt: skip
        for path, name in iter_fanout(self.root):
            report["checked"] += 1
            try:
                size = read_with(path, partial(_scrub_one, name=name))
            except BadRecord:
                report["corrupted"] += 1
                report["corrupt_paths"].append(os.path.relpath(path, self.root))
                continue
            except OSError as exc:
                if not _vanished(exc):
                    raise
                size = None
            if size is None:
                report["vanished"] += 1
            else:
                report["ok"] += 1
                report["bytes"] += size
        return report

    def _require_records(self, what: str) -> None:
        if self.record == "raw":
            raise StorageError(f"storage: {what} needs the SOS1 record format (raw mode)")


def _record_at(fd: int, st: os.stat_result, name: str) -> tuple[bytes, bytes]:
    """The verified ``(key, value)`` of the record at ``fd``, found under the object name ``name``."""
    return read_record(fd, st.st_size, None, name)


def _scrub_one(fd: int, st: os.stat_result, name: str) -> int:
    read_record(fd, st.st_size, None, name)
    return st.st_size


def _vanished(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ESTALE)


def _lock_name(key: Key) -> str:
    return key if isinstance(key, str) else decode_key(key)


def _corrupt(key: bytes | None, path: str, exc: BadRecord) -> CorruptObject:
    shown = "?" if key is None else decode_key(key)
    return CorruptObject(f"storage: corrupt object {shown!r} at {path}: {exc.args[0]}")
