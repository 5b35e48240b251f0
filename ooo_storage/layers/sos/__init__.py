"""SOS: a simple object store in a directory tree shared by many processes (ADAPTERS.md §5.2).

Why it exists: LevelDB is single-process, while a directory of files can be shared by several
processes, or machines over NFS, with nothing but ``rename`` and hard links for atomicity (the
design of Go SOS, whose layout it keeps: ``root/xx/yy/<60 hex>`` of ``sha256(key)``, ``root/.tmp``,
directories 0700, files 0600).

Each object file is a self-describing record, little-endian::

    magic "SOS1" | u8 version | u8 flags | u16 key_len | u64 value_len | u32 crc32c | key | value

with the CRC-32C over the 16 header bytes before it, the key and the value. One ``rename`` publishes
key, value and checksum together; the embedded key makes keys listable and catches a file moved into
another key's slot. Any mismatch raises :class:`~ooo_storage.errors.CorruptObject`: a damaged object
is never returned as data, nor as "not found", until it is rewritten or deleted.
``record="raw"`` is the Go SOS compatible mode (bare values, no checksum, no listing).

Writes go temp file (``O_EXCL``) → write → fsync → rename → fsync directory (durability ``"full"``,
the default: acknowledged means durable); ``"data"`` skips the directory fsync (never a torn object,
but the rename may be lost on power failure); ``"none"`` is Go SOS (no fsync). Reads hard-link the
object to a private temp name first (``read_mode="link"``), so a concurrent overwrite or delete by
any process, even over NFS, cannot cut the read short; ``"direct"`` opens the file itself (local
filesystems, where an open descriptor pins the inode). Every blocking step of one logical operation
runs in one submission to the store's own bounded worker pool (``fs.workers.WorkerPool``); writes of
one key are serialised per process so they complete in the order they are acknowledged.

Known limits:

* no ordering across processes: concurrent writers of one key get last-writer-wins by ``rename``;
* ``rename``/``clone`` rewrite the record under the new key (the key is inside the record): a crash
  between publishing the new key and removing the old one leaves both;
* ``get_and_delete`` is a destructive read: a caller killed after claiming the object loses it;
* :class:`SOSLayer` watch events (through ``Layered``) cover only this process's writes; inotify could
  add local-filesystem notifications, never NFS. Its key index is built once (cold start or first
  use) and then updated by this process's writes only: keys written or deleted by other processes
  appear in it after a restart (``get`` sees them at once), while :meth:`SimpleObjectStore.keys` /
  :meth:`SimpleObjectStore.list` walk the tree and see every process;
* walking the tree is O(number of objects) (one header read per object); listing checks each
  header and slot, values are verified by ``get``/``check``/``scrub``;
* ``get_into`` verifies the whole value before writing it, so it holds one value in memory
  (``store_from`` with a synchronous reader streams);
* NFS negative lookup caching can hide keys created by other clients for up to ``acdirmax`` seconds
  unless the share is mounted with ``lookupcache=positive``;
* a failed directory fsync after the rename reports an error although the new value is already
  visible (it may not survive a power failure): the caller sees old-or-new, never a torn value;
* on a full filesystem writes fail with :class:`~ooo_storage.errors.NoSpace` (nothing is left
  behind); deletes and reads keep working (a read that cannot make its hard link for lack of
  space or inodes opens the object directly, as ``"direct"`` mode does), and so does ``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import secrets
import shutil
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from ...errors import CorruptObject, NoSpace, StorageError, StorageUnavailable, no_space
from ...locks import KeyLocks
from ...protocol.keys import glob_prefix, has_glob, match
from ...protocol.objects import EMPTY, Object, load_object
from ..fs.atomic import (
    DURABILITY_LEVELS,
    Durability,
    fsync_dir,
    makedirs_durable,
    write_all,
    write_file_atomic,
    write_file_with,
)
from ..fs.checksum import crc32c
from ..fs.layout import ensure_marker, fanout_path, hash_hex, iter_fanout
from ..fs.reads import read_exact, read_with
from ..fs.temp import TMP_DIR, TempNamer, clean_temp, unlink_quiet
from ..fs.workers import WorkerPool
from ..memory import MemoryLayer

__all__ = ["SimpleObjectStore", "SOSLayer", "CorruptObject", "encode_record", "MAGIC", "VERSION"]

T = TypeVar("T")
Key = str | bytes
ReadMode = Literal["link", "direct"]
RecordFormat = Literal["sos1", "raw"]

MAGIC = b"SOS1"
VERSION = 1
_FIELDS = struct.Struct("<4sBBHQ")  # the CRC covers these 16 bytes, then key and value
_CRC = struct.Struct("<I")
HEADER_SIZE = _FIELDS.size + _CRC.size  # 20
MAX_KEY = 0xFFFF
_SMALL = 64 * 1024  # records up to this size are read with one read() call
_KEY_PEEK = 4096  # listing reads this much, enough for the header and any usual key
_STREAM_CHUNK = 1024 * 1024


class _Bad(Exception):
    """A record failed validation (reason in args[0]); callers turn it into CorruptObject."""


def encode_key(key: Key) -> bytes:
    """Key bytes as hashed and recorded: UTF-8, non-UTF-8 bytes kept through surrogateescape."""
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def decode_key(raw: bytes) -> str:
    """Inverse of :func:`encode_key`: any byte string maps to a ``str`` that encodes back to it."""
    return raw.decode("utf-8", "surrogateescape")


def encode_record(key: bytes, value: bytes) -> bytes:
    """Header and key of the record of ``key``/``value`` (the value is written after it, unjoined)."""
    _check_key_len(key)
    fields = _FIELDS.pack(MAGIC, VERSION, 0, len(key), len(value))
    return fields + _CRC.pack(crc32c(value, crc32c(key, crc32c(fields)))) + key


def _check_key_len(key: bytes) -> None:
    if len(key) > MAX_KEY:
        raise ValueError(f"SOS keys are limited to {MAX_KEY} bytes (u16 key_len)")


def _parse_header(head: bytes, size: int) -> tuple[int, int, int]:
    """``(key_len, value_len, crc)`` of a record header, checked against the file ``size``."""
    if len(head) < HEADER_SIZE:
        raise _Bad("truncated header")
    magic, version, flags, klen, vlen = _FIELDS.unpack_from(head)
    if magic != MAGIC:
        raise _Bad("bad magic")
    if version != VERSION or flags:
        raise _Bad(f"unknown record version {version} flags {flags}")
    if HEADER_SIZE + klen + vlen != size:
        raise _Bad(f"size {size} does not match header ({klen}+{vlen})")
    return klen, vlen, _CRC.unpack_from(head, _FIELDS.size)[0]


def _read_record(fd: int, size: int, want: bytes | None, name: str | None) -> tuple[bytes, bytes]:
    """Read and fully verify the record open at ``fd``; return ``(key, value)``.

    ``want`` is the expected key (a get); ``name`` the 64-hex object name (a walk), checked against
    the SHA-256 of the embedded key. Small records take one ``read``; large ones read the value as
    its own ``bytes`` object, so it is never copied out of a bigger buffer.
    """
    if size <= _SMALL:
        data = read_exact(fd, size)
        klen, vlen, crc = _parse_header(data, len(data))
        key = data[HEADER_SIZE : HEADER_SIZE + klen]
        value = data[HEADER_SIZE + klen :]
    else:
        # Header and (expected) key in one read; the value then lands in its own bytes object.
        head = read_exact(fd, HEADER_SIZE + (len(want) if want is not None else 0))
        klen, vlen, crc = _parse_header(head, size)
        key = head[HEADER_SIZE:]
        if len(key) != klen:
            if want is not None:
                raise _Bad("key mismatch")
            key = read_exact(fd, klen)
        value = read_exact(fd, vlen)
        if len(value) != vlen:
            raise _Bad("truncated value")
        data = head
    if crc32c(value, crc32c(key, crc32c(data[: _FIELDS.size]))) != crc:
        raise _Bad("checksum mismatch")
    _check_key(key, want, name)
    return key, value


def _check_key(key: bytes, want: bytes | None, name: str | None) -> None:
    if want is not None and key != want:
        raise _Bad("key mismatch (file in another key's slot)")
    if name is not None and hash_hex(key) != name:
        raise _Bad("key does not hash to its file name")


def _read_key(fd: int, st: os.stat_result, name: str) -> bytes:
    """The embedded key of the record at ``fd`` (header checks only, the value is not read)."""
    head = read_exact(fd, min(st.st_size, _KEY_PEEK))
    klen, _, _ = _parse_header(head, st.st_size)
    key = head[HEADER_SIZE : HEADER_SIZE + klen]
    if len(key) < klen:
        key += read_exact(fd, klen - len(key))
    _check_key(key, None, name)
    return key


class SimpleObjectStore:
    """A byte store in ``root`` (see the module docstring for the format and guarantees).

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
                return _read_record(fd, st.st_size, key, None)[1]
            except _Bad as exc:
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
            while chunk := await read(_STREAM_CHUNK):
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
        if not raw:
            _check_key_len(key)

        def fill(fd: int) -> None:
            # The header holds the value length, known only at EOF: reserve it, stream the value,
            # then write the real header in place (the file is still our private temp).
            prefix = b"" if raw else bytes(HEADER_SIZE) + key
            write_all(fd, [prefix])
            head_len = _FIELDS.size + len(key)
            tail_crc, size = _zeros_crc(head_len, 0), 0
            while chunk := read(_STREAM_CHUNK):
                chunk = bytes(chunk)
                write_all(fd, [chunk])
                tail_crc = crc32c(chunk, tail_crc)
                size += len(chunk)
            if not raw:
                fields = _FIELDS.pack(MAGIC, VERSION, 0, len(key), size)
                crc = _crc_concat(crc32c(key, crc32c(fields)), tail_crc, head_len, size)
                os.pwrite(fd, fields + _CRC.pack(crc), 0)

        write_file_with(
            self.path(key), fill, self.root, self._namer, self.durability, tmp_dir=self._tmp
        )

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
        """Keys matching ``pattern`` (PROTOCOL.md §1.3 glob), sorted, by walking the tree."""
        prefix = glob_prefix(pattern)
        return await self._run(
            "list", pattern, self._walk_keys, lambda k: k.startswith(prefix) and match(pattern, k)
        )

    def _walk_keys(self, keep: Callable[[str], bool]) -> list[str]:
        self._require_records("listing")
        found = []
        for path, name in iter_fanout(self.root):
            try:
                raw = read_with(path, lambda fd, st, n=name: _read_key(fd, st, n))
            except _Bad:
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
                record = read_with(path, lambda fd, st, n=name: _read_record(fd, st.st_size, None, n))
            except _Bad as exc:
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
                size = read_with(path, lambda fd, st, n=name: _scrub_one(fd, st, n))
            except _Bad:
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


def _scrub_one(fd: int, st: os.stat_result, name: str) -> int:
    _read_record(fd, st.st_size, None, name)
    return st.st_size


def _zeros_crc(n: int, crc: int) -> int:
    """Continue ``crc`` over ``n`` zero bytes."""
    zeros = bytes(min(n, _STREAM_CHUNK))
    while n > 0:
        crc = crc32c(zeros[:n] if n < len(zeros) else zeros, crc)
        n -= len(zeros)
    return crc


def _crc_concat(head_crc: int, tail_crc: int, head_len: int, tail_len: int) -> int:
    """CRC of ``head + tail`` from ``head_crc = crc(head)`` and ``tail_crc = crc(0*head_len + tail)``.

    A CRC is affine over GF(2), so for three messages of equal length
    ``crc(x ^ y ^ z) = crc(x) ^ crc(y) ^ crc(z)``; with ``x = head + 0s``, ``y = 0s + tail`` and
    ``z = 0s`` this rebuilds the streamed record's CRC without a second pass over the value, at
    the cost of CRC-ing zeros (memory speed, no I/O).
    """
    return _zeros_crc(tail_len, head_crc) ^ tail_crc ^ _zeros_crc(head_len + tail_len, 0)


def _vanished(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ESTALE)


def _lock_name(key: Key) -> str:
    return key if isinstance(key, str) else decode_key(key)


def _corrupt(key: bytes | None, path: str, exc: _Bad) -> CorruptObject:
    shown = "?" if key is None else decode_key(key)
    err = CorruptObject(f"storage: corrupt object {shown!r} at {path}: {exc.args[0]}")
    err.key = shown  # type: ignore[attr-defined]
    err.path = path  # type: ignore[attr-defined]
    return err


class SOSLayer:
    """The Layer adapter (API.md) over a :class:`SimpleObjectStore`: each key holds its Object JSON.

    A sorted key index (a :class:`MemoryLayer` used as a key set) is kept by this process's writes,
    so ``keys``/``get_list``/glob deletes never walk the tree; see the module docstring for what
    that means with several processes. It is built by ``load_raw`` (the cold start of a ``Layered``
    with a memory layer, which reads every record anyway) or else by the first call that needs it,
    so no start walks the tree twice. Writes that land while it is being built are journaled and
    applied on top of the walk, so none is lost whichever side of the walk it fell on.
    """

    asynchronous = True  # every method runs its file work in the store's worker threads

    def __init__(self, root: str | os.PathLike[str], **sos_options: Any) -> None:
        self.store = SimpleObjectStore(root, **sos_options)
        self._index: MemoryLayer | None = None
        self._building: asyncio.Future[None] | None = None
        self._journal: list[tuple[str, bool]] | None = None

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()
        self._index = self._building = self._journal = None

    # -- key index -----------------------------------------------------------------------------
    async def _keys(self) -> MemoryLayer:
        if self._index is None:
            if self._building is None:
                self._building = asyncio.ensure_future(self._build(self.store.keys()))
            await asyncio.shield(self._building)
        assert self._index is not None
        return self._index

    async def _build(self, walk: Awaitable[Iterable[str]]) -> None:
        self._journal = []
        try:
            keys = await walk
        except BaseException:
            self._journal = self._building = None
            raise
        index = MemoryLayer()
        index.bulk_load(dict.fromkeys(keys, EMPTY))
        for key, present in self._journal:
            _mark(index, key, present)
        self._index, self._journal = index, None

    def _note(self, key: str, present: bool) -> None:
        if self._index is not None:
            _mark(self._index, key, present)
        elif self._journal is not None:
            self._journal.append((key, present))
        # else no index yet and no walk in flight: the future walk sees this write on disk

    # -- Layer ---------------------------------------------------------------------------------
    async def get(self, key: str) -> Object | None:
        raw = await self.store.get(key)
        return None if raw is None else load_object(key, raw)

    async def get_list(self, pattern: str) -> list[Object]:
        keys = list((await self._keys()).matching_keys(pattern))
        raws = await self.store.mget(keys)
        out = []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:  # deleted by another process
                self._note(key, False)
            else:
                out.append(load_object(key, raw))
        return out

    async def set(self, key: str, obj: Object) -> None:
        await self.store.store(key, obj.to_json())
        self._note(key, True)

    async def delete(self, key_or_glob: str) -> int:
        if has_glob(key_or_glob):
            doomed = list((await self._keys()).matching_keys(key_or_glob))
            removed = await self.store.mdelete(doomed)
            for key in doomed:
                self._note(key, False)
            return removed
        removed = await self.store.delete(key_or_glob)
        self._note(key_or_glob, False)
        return int(removed)

    async def keys(self) -> list[str]:
        return (await self._keys()).keys()

    async def clear(self) -> None:
        if self._building is not None and not self._building.done():
            await asyncio.shield(self._building)  # else the walk would restore cleared keys
        await self.store.clear()
        self._index = MemoryLayer()

    async def load_raw(self) -> Mapping[str, bytes]:
        loaded: dict[str, bytes] = {}

        async def walk() -> Iterable[str]:
            loaded.update(await self.store.load_all())
            return loaded

        self._index = None
        self._building = asyncio.ensure_future(self._build(walk()))
        await asyncio.shield(self._building)
        return loaded

    async def load(self) -> dict[str, Object]:
        return {key: load_object(key, value) for key, value in (await self.load_raw()).items()}


def _mark(index: MemoryLayer, key: str, present: bool) -> None:
    if present:
        index.set(key, EMPTY)
    else:
        index.delete(key)
