"""Blocking drive I/O of the erasure-coded store: runs only inside the store's executor threads.

:class:`DriveSet` knows where every shard of a key lives, reads and verifies shards, chooses the
version a reader must see, writes shards crash-safely, collects garbage and repairs. Each public
method is one whole logical operation (one executor submission), except :meth:`DriveSet.write_shard`
which the store runs once per drive in parallel.

Version choice (ADAPTERS §5.3): the newest generation that has enough valid shards wins (k for a
coded object, 1 for a replica or tombstone). A newer generation with too few shard files is a
failed or in-flight write and is skipped (read-committed); a generation with enough files but too
few valid ones is corrupt and raises, so a reader never silently gets an older value.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ...errors import CorruptObject, StorageUnavailable
from ..fs.atomic import Durability, write_all, write_file_atomic
from ..fs.checksum import crc32c
from ..fs.layout import FormatMismatch, ensure_marker, fanout_path, iter_fanout, read_marker, write_marker
from ..fs.reads import read_exact
from ..fs.temp import TMP_DIR, TempNamer, clean_temp
from .codec import Codec
from .format import (
    DRIVE_MAGIC,
    DRIVE_MARKER,
    FLAG_REPLICA,
    FLAG_TOMBSTONE,
    FORMAT_VERSION,
    HEADER_SIZE,
    OBJECTS_DIR,
    BadShard,
    ShardHeader,
    generation_time,
    key_dir,
    pack_shard,
    parse_header,
    parse_shard_name,
    shard_drive,
    shard_name,
    verify_shard,
)

REPAIR_LOG = ".ecrepair.log"
_KEY_LEN = slice(9, 11)  # u16 key_len inside the shard header
_READ_RETRIES = 8


class Located(NamedTuple):
    """Where a key lives: its bytes, fan-out path and first drive of its shard rotation."""

    key: str
    raw: bytes
    fanout: str
    first: int


class ReadResult(NamedTuple):
    value: bytes | None  # None: missing or deleted
    generation: int | None
    degraded: bool  # some shard is missing or bad, or a failed write left garbage: queue a repair


@dataclass
class Evaluation:
    """What the shard files of one generation of one key turned out to hold."""

    generation: int
    files: dict[int, str]  # shard index -> path (from the directory listing)
    valid: dict[int, bytes] = field(default_factory=dict)
    bad: list[int] = field(default_factory=list)
    vanished: bool = False  # a listed file disappeared (concurrent GC): list again
    header: ShardHeader | None = None  # of the first valid shard
    hint: ShardHeader | None = None  # of any parsable shard, valid or not

    def needed(self, k: int) -> int:
        h = self.header or self.hint
        return 1 if h is not None and h.flags & (FLAG_REPLICA | FLAG_TOMBSTONE) else k

    def complete(self, k: int) -> bool:
        return self.header is not None and len(self.valid) >= self.needed(k)


@dataclass
class KeyReport:
    """Result of checking (and optionally repairing) one key, summed up by scrub and repair."""

    key: str
    state: str = "missing"  # ok | degraded | lost | missing (no live version) | deleted
    missing: int = 0  # expected shard files absent
    corrupt: int = 0  # shard files failing their CRC or header checks
    corrupt_files: list[str] = field(default_factory=list)  # ... and their paths
    rebuilt: int = 0  # shards written by the repair
    rebuilt_bytes: int = 0
    removed: int = 0  # garbage files removed (old generations, failed writes, tombstones)
    unreachable: list[int] = field(default_factory=list)  # drives that could not be repaired


class DriveSet:
    """The k + m drive roots of one store and every blocking operation on them."""

    def __init__(
        self,
        paths: list[str],
        codec: Codec,
        namer: TempNamer,
        durability: Durability,
        grace: float,
    ) -> None:
        self.paths = paths
        self.codec = codec
        self.k, self.m, self.n = codec.k, codec.m, codec.n
        self.namer = namer
        self.durability = durability
        self.grace = grace

    # -- layout ------------------------------------------------------------------------------
    def locate(self, key: str) -> Located:
        raw = key.encode()
        fanout = fanout_path(raw)
        return Located(key, raw, fanout, int(fanout[:2], 16) % self.n)

    def drive_of(self, loc: Located, index: int) -> int:
        return shard_drive(index, loc.first, self.n)

    def expected(self, header: ShardHeader) -> range:
        """Shard indexes a complete version of this kind has."""
        return range(self.m + 1) if header.replica else range(self.n)

    def reachable(self, pos: int) -> bool:
        """A drive is usable when its root still holds our temp dir (absent: unmounted, replaced)."""
        return os.path.isdir(os.path.join(self.paths[pos], TMP_DIR))

    def list_versions(self, loc: Located) -> dict[int, dict[int, str]]:
        """generation -> {shard index: path} over every drive (n small directory listings)."""
        versions: dict[int, dict[int, str]] = {}
        for path in self.paths:
            kdir = key_dir(path, loc.fanout)
            try:
                names = os.listdir(kdir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EIO, errno.ESTALE, errno.ENOTCONN):
                    continue  # an unusable drive: it simply holds no readable shard
                raise
            for name in names:
                parsed = parse_shard_name(name)
                if parsed is not None and parsed[1] < self.n:
                    versions.setdefault(parsed[0], {}).setdefault(parsed[1], f"{kdir}/{name}")
        return versions

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(
        self, loc: Located, generation: int, files: dict[int, str], verify_all: bool
    ) -> Evaluation:
        """Read and verify shards of one generation, lowest index (data shards) first.

        Stops once enough shards are valid unless ``verify_all`` (scrub and repair).
        """
        ev = Evaluation(generation, files)
        for index in sorted(files):
            try:
                parts = _read_shard(files[index])
            except OSError:  # EIO, EACCES: as useless as a corrupt shard
                ev.bad.append(index)
                continue
            if parts is None:
                ev.vanished = True
                return ev
            head, key, payload = parts
            try:
                header = verify_shard(
                    head, key, payload, loc.raw, generation, index, self.k, self.m
                )
            except BadShard:
                ev.bad.append(index)
                if ev.hint is None:
                    with contextlib.suppress(BadShard):
                        ev.hint = parse_header(head)
                continue
            if ev.header is None:
                ev.header = ev.hint = header
            elif (header.flags, header.object_crc, header.object_len) != (
                ev.header.flags,
                ev.header.object_crc,
                ev.header.object_len,
            ):
                ev.bad.append(index)  # a valid shard of another object under the same generation
                continue
            ev.valid[index] = payload
            if not verify_all and len(ev.valid) >= ev.needed(self.k):
                break
        return ev

    def assemble(self, loc: Located, ev: Evaluation) -> bytes | None:
        """The object bytes of a complete version (None for a tombstone), object CRC verified."""
        header = ev.header
        assert header is not None
        if header.tombstone:
            return None
        if header.replica:
            value = bytes(next(iter(ev.valid.values())))
        else:
            try:
                value = self.codec.decode(ev.valid, header.object_len)
            except Exception as exc:  # pyeclib raises its own hierarchy; any failure = corrupt
                raise _corrupt(loc, ev) from exc
        if len(value) != header.object_len or crc32c(value) != header.object_crc:
            raise _corrupt(loc, ev)
        return value

    def unreachable(self, loc: Located, ev: Evaluation | None) -> int:
        """Drives that hold no listed shard of ``ev`` and are not reachable right now."""
        present = {self.drive_of(loc, i) for i in ev.files} if ev is not None else set()
        return sum(1 for pos in range(self.n) if pos not in present and not self.reachable(pos))

    # -- read --------------------------------------------------------------------------------
    def read(self, loc: Located) -> ReadResult:
        """The value a reader must see now (one executor submission)."""
        for _ in range(_READ_RETRIES):
            result = self._read_once(loc)
            if result is not None:
                return result
        raise StorageUnavailable(f"storage: key {loc.key!r} kept changing while being read")

    def _read_once(self, loc: Located) -> ReadResult | None:
        versions = self.list_versions(loc)
        degraded = False
        for generation in sorted(versions, reverse=True):
            ev = self.evaluate(loc, generation, versions[generation], verify_all=False)
            if ev.vanished:
                return None
            needed = ev.needed(self.k)
            if ev.complete(self.k):
                value = self.assemble(loc, ev)
                assert ev.header is not None
                degraded |= bool(ev.bad) or len(ev.files) < len(self.expected(ev.header))
                return ReadResult(value, generation, degraded)
            if len(ev.files) >= needed:
                raise _corrupt(loc, ev)
            # Too few shard files: a failed or in-flight write, unless its missing shards sit on
            # drives we cannot see (then it may well be committed and falling back would be wrong).
            if len(ev.files) + self.unreachable(loc, ev) >= needed:
                raise StorageUnavailable(
                    f"storage: too few drives reachable to read {loc.key!r} safely"
                )
            degraded |= generation_time(generation) < time.time() - self.grace
        if self.unreachable(loc, None) > self.m:
            raise StorageUnavailable(
                f"storage: more than {self.m} drives unreachable, can't tell whether "
                f"{loc.key!r} exists"
            )
        return ReadResult(None, None, degraded)

    def read_many(self, locs: list[Located]) -> list[tuple[Located, ReadResult]]:
        """Several reads in one submission (listing, cold start)."""
        return [(loc, self.read(loc)) for loc in locs]

    # -- write -------------------------------------------------------------------------------
    def write_shard(
        self,
        loc: Located,
        index: int,
        flags: int,
        object_len: int,
        generation: int,
        object_crc: int,
        payload: list[bytes],
    ) -> int:
        """Write one shard crash-safely to its drive; return the drive position.

        The temp file goes to the drive's own ``.tmp``: if the drive root vanished or was
        replaced by an empty folder, creating it fails and the shard counts as not written.
        """
        pos = self.drive_of(loc, index)
        chunks = pack_shard(
            loc.raw, self.k, self.m, index, flags, object_len, generation, object_crc, payload
        )
        root = self.paths[pos]
        final = os.path.join(key_dir(root, loc.fanout), shard_name(generation, index))
        write_file_atomic(final, chunks, root, self.namer, self.durability)
        return pos

    def remove_generation(self, loc: Located, generation: int, indexes: list[int]) -> None:
        """Roll back the shards of a write that missed its quorum (best effort)."""
        for index in indexes:
            root = self.paths[self.drive_of(loc, index)]
            _unlink(os.path.join(key_dir(root, loc.fanout), shard_name(generation, index)))

    def collect(self, loc: Located, generation: int, drop_tombstone: bool) -> int:
        """GC after a committed write: remove every older generation of the key on every drive.

        With ``drop_tombstone`` (a delete acknowledged by all n drives) the tombstone itself and
        the key directories go too, but only after every older shard is gone from every drive:
        a crash in between must never leave an old replica without a tombstone hiding it.
        """
        removed = 0
        clean = True
        for path in self.paths:
            kdir = key_dir(path, loc.fanout)
            for name in _listdir(kdir):
                parsed = parse_shard_name(name)
                if parsed is not None and parsed[0] < generation:
                    gone = _unlink(os.path.join(kdir, name))
                    removed += gone
                    clean = clean and bool(gone)
        if not drop_tombstone or not clean:
            return removed
        for path in self.paths:
            kdir = key_dir(path, loc.fanout)
            for index in range(self.n):
                removed += _unlink(os.path.join(kdir, shard_name(generation, index)))
            _rmdir_quiet(kdir)
        return removed

    # -- check / repair ----------------------------------------------------------------------
    def inspect(self, loc: Located, fix: bool) -> KeyReport:
        """Verify every shard of the key's live version; with ``fix`` rebuild and collect garbage."""
        for _ in range(_READ_RETRIES):
            report = self._inspect_once(loc, fix)
            if report is not None:
                return report
        raise StorageUnavailable(f"storage: key {loc.key!r} kept changing while being checked")

    def _inspect_once(self, loc: Located, fix: bool) -> KeyReport | None:
        report = KeyReport(loc.key)
        versions = self.list_versions(loc)
        live: Evaluation | None = None
        garbage: list[int] = []  # generations to delete
        now = time.time()
        for generation in sorted(versions, reverse=True):
            if live is not None:
                garbage.append(generation)
                continue
            ev = self.evaluate(loc, generation, versions[generation], verify_all=True)
            if ev.vanished:
                return None
            if ev.complete(self.k):
                live = ev
            elif len(ev.files) >= ev.needed(self.k):
                report.state = "lost"
                report.corrupt = len(ev.bad)
                report.corrupt_files = [ev.files[i] for i in ev.bad]
                return report  # never repair around a corrupt version: it would resurrect older data
            elif generation_time(generation) < now - self.grace:
                garbage.append(generation)  # a failed write: its shards can never be read
        if live is not None:
            assert live.header is not None
            expected = self.expected(live.header)
            report.corrupt = len(live.bad)
            report.corrupt_files = [live.files[i] for i in live.bad]
            report.missing = sum(1 for i in expected if i not in live.files)
            todo = [i for i in expected if i not in live.valid]
            report.state = "deleted" if live.header.tombstone else "ok"
            if todo and fix:
                self._rebuild(loc, live, todo, report)
            elif todo:
                report.unreachable = sorted({self.drive_of(loc, i) for i in todo})
            if report.unreachable:
                report.state = "degraded"
        if fix:
            for generation in garbage:
                for index, path in versions[generation].items():
                    if self.reachable(self.drive_of(loc, index)):
                        report.removed += _unlink(path)
            # A tombstone held by all n drives has nothing left to hide: drop it with the key dirs.
            if (
                live is not None
                and live.header is not None
                and live.header.tombstone
                and not report.unreachable
                and not self.probe()
            ):
                report.removed += self.collect(loc, live.generation, drop_tombstone=True)
                report.state = "missing"
        return report

    def _rebuild(self, loc: Located, live: Evaluation, todo: list[int], report: KeyReport) -> None:
        header = live.header
        assert header is not None
        targets = [i for i in todo if self.reachable(self.drive_of(loc, i))]
        report.unreachable = sorted({self.drive_of(loc, i) for i in todo if i not in targets})
        if not targets:
            return
        if header.flags & (FLAG_REPLICA | FLAG_TOMBSTONE):
            payload = [bytes(next(iter(live.valid.values())))] if header.replica else []
            shards = {i: payload for i in targets}
        else:
            shards = self.codec.reconstruct(live.valid, targets)
        for index, payload in shards.items():
            pos = self.drive_of(loc, index)
            if self._newer_exists(loc, pos, live.generation):
                continue  # a newer write superseded this version meanwhile: nothing to restore
            self.write_shard(
                loc,
                index,
                header.flags,
                header.object_len,
                live.generation,
                header.object_crc,
                payload,
            )
            report.rebuilt += 1
            report.rebuilt_bytes += sum(map(len, payload))

    def _newer_exists(self, loc: Located, pos: int, generation: int) -> bool:
        for name in _listdir(key_dir(self.paths[pos], loc.fanout)):
            parsed = parse_shard_name(name)
            if parsed is not None and parsed[0] > generation:
                return True
        return False

    # -- scanning ----------------------------------------------------------------------------
    def scan(self) -> dict[str, bool]:
        """Every key with a directory on some drive -> True if it currently exists.

        Reads only the newest shard header per key (no CRC): this builds the in-memory index at
        start and feeds full scrub/repair passes, which verify everything themselves.
        """
        found: dict[str, dict[int, list[str]]] = {}  # fanout -> generation -> paths
        for pos in range(self.n):
            for kdir, fanout in _iter_key_dirs(self.paths[pos]):
                gens = found.setdefault(fanout, {})
                for name in _listdir(kdir):
                    parsed = parse_shard_name(name)
                    if parsed is not None:
                        gens.setdefault(parsed[0], []).append(os.path.join(kdir, name))
        keys: dict[str, bool] = {}
        for gens in found.values():
            key, exists = self._scan_key(gens)
            if key is not None:
                keys[key] = keys.get(key, False) or exists
        return keys

    def _scan_key(self, gens: dict[int, list[str]]) -> tuple[str | None, bool]:
        key: str | None = None
        for generation in sorted(gens, reverse=True):
            paths = gens[generation]
            head = None
            for path in paths:
                head = _read_head(path)
                if head is not None:
                    break
            if head is None:
                continue
            header, raw_key = head
            try:
                key = key or raw_key.decode()
            except UnicodeDecodeError:
                continue
            needed = 1 if header.flags & (FLAG_REPLICA | FLAG_TOMBSTONE) else self.k
            if len(paths) >= needed:
                return key, not header.tombstone
        return key, False

    # -- repair log ----------------------------------------------------------------------------
    def log_repairs(self, records: list[tuple[str, int, int]], drives: list[int]) -> None:
        """Append ``(key, generation, shard)`` records to the repair log of healthy drives.

        A hint, not a journal: no fsync (a lost record is found again by the next scrub). Each
        batch starts with a newline: an earlier append cut short (a full disk, a crash) leaves a
        torn line that would otherwise swallow the first record appended after it.
        """
        lines = b"\n" + b"".join(
            json.dumps({"key": k, "gen": g, "shard": i}).encode() + b"\n" for k, g, i in records
        )
        for pos in drives:
            try:
                fd = os.open(
                    os.path.join(self.paths[pos], REPAIR_LOG),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
            except OSError:
                continue
            try:
                write_all(fd, [lines])
            except OSError:
                pass
            finally:
                os.close(fd)

    def load_repairs(self) -> set[str]:
        """Keys named in any drive's repair log."""
        keys: set[str] = set()
        for path in self.paths:
            try:
                with open(os.path.join(path, REPAIR_LOG), "rb") as f:
                    for line in f:  # blank lines separate appended batches
                        try:
                            keys.add(json.loads(line)["key"])
                        except (ValueError, KeyError, TypeError):
                            continue  # a line torn by a crash or a full disk
            except OSError:
                continue
        return keys

    def clear_repairs(self) -> None:
        for path in self.paths:
            _unlink(os.path.join(path, REPAIR_LOG))

    # -- drive identity --------------------------------------------------------------------------
    def open_drives(self, backend: str, backend_version: str, tmp_grace: float) -> DriveStates:
        """Validate (or initialise) every drive's ``.ecdrive.json``; refuse swapped or foreign drives.

        A missing root is offline; an existing root that is empty (a ``.tmp`` of a crashed
        initialisation aside) is new: all of them on a fresh store, a replaced drive otherwise.
        """
        states: list[str] = []
        markers: list[dict[str, Any] | None] = []
        for path in self.paths:
            state, marker = _probe(path)
            states.append(state)
            markers.append(marker)
        stores: set[Any] = {m.get("store") for m in markers if m is not None}  # JSON values
        if len(stores) > 1:
            raise FormatMismatch(
                f"storage: drives belong to different stores ({', '.join(map(str, stores))})"
            )
        fresh = not stores
        store_id = stores.pop() if stores else os.urandom(16).hex()
        required = {
            "magic": DRIVE_MAGIC,
            "format": FORMAT_VERSION,
            "store": store_id,
            "k": self.k,
            "m": self.m,
            "drives": self.n,
            "backend": backend,
            "checksum": "crc32c",
            "layout": "objects/xx/yy/<60 hex of sha256(key)>/<gen>.<shard>",
        }
        result = DriveStates()
        for pos, (path, state) in enumerate(zip(self.paths, states, strict=True)):
            if state == "missing" and fresh:
                os.makedirs(path, 0o700, exist_ok=True)
                state = "empty"
            if state in ("missing", "unreadable"):
                result.offline.append(pos)
                continue
            tmp = os.path.join(path, TMP_DIR)
            os.makedirs(tmp, 0o700, exist_ok=True)
            replaced = state == "empty" and not fresh
            marker = ensure_marker(
                path,
                {**required, "index": pos},
                self.namer,
                extra={
                    "created": time.time(),
                    "backend_version": backend_version,
                    # Persisted so that a restart before the rebuild finished still rebuilds.
                    "rebuild_pending": replaced,
                },
                name=DRIVE_MARKER,
            )
            clean_temp(tmp, tmp_grace)
            if marker.get("rebuild_pending"):
                result.replaced.append(pos)
        result.store = store_id
        return result

    def rebuilt(self, positions: list[int]) -> None:
        """Clear the ``rebuild_pending`` flag of fully rebuilt drives."""
        for pos in positions:
            path = self.paths[pos]
            marker = read_marker(path, DRIVE_MARKER)
            if marker is not None and marker.pop("rebuild_pending", False):
                write_marker(path, marker, self.namer, DRIVE_MARKER)

    def probe(self) -> list[int]:
        """Positions of drives that are unusable right now."""
        return [pos for pos in range(self.n) if not self.reachable(pos)]

    def rejoin(self, backend: str, backend_version: str) -> list[int]:
        """Initialise drives replaced while running (empty root, no marker); return them."""
        replaced = []
        for pos, path in enumerate(self.paths):
            state, _ = _probe(path)
            if state == "empty":
                replaced.append(pos)
        if not replaced:
            return []
        return self.open_drives(backend, backend_version, tmp_grace=3600.0).replaced

    def shard_counts(self) -> list[int]:
        """Shard files per drive (rustfs#5869: compare a rebuilt drive against its siblings)."""
        counts = []
        for path in self.paths:
            total = 0
            for kdir, _ in _iter_key_dirs(path):
                total += sum(1 for name in _listdir(kdir) if parse_shard_name(name) is not None)
            counts.append(total)
        return counts


@dataclass
class DriveStates:
    store: str = ""
    offline: list[int] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)


def _probe(path: str) -> tuple[str, dict[str, Any] | None]:
    """``(state, marker)``: state is marked | empty | missing | unreadable."""
    try:
        entries = [e for e in os.listdir(path) if e != TMP_DIR]
    except FileNotFoundError:
        return "missing", None
    except OSError:
        return "unreadable", None
    try:
        marker = read_marker(path, DRIVE_MARKER)
    except PermissionError:
        return "unreadable", None
    if marker is not None:
        return "marked", marker
    if entries:
        raise FormatMismatch(
            f"storage: drive {path} is not empty but has no {DRIVE_MARKER}: refusing to use it"
        )
    return "empty", None


def _corrupt(loc: Located, ev: Evaluation) -> CorruptObject:
    return CorruptObject(
        f"storage: corrupt object {loc.key!r} (generation {ev.generation:016x}: "
        f"{len(ev.valid)} valid, {len(ev.bad)} bad of {len(ev.files)} shards)"
    )


def _read_shard(path: str) -> tuple[bytes, bytes, bytes] | None:
    """``(header, key, payload)`` of a shard file as separate ``bytes`` (no slicing copies:
    crc32c and pyeclib take only ``bytes``); None if the file is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        head = read_exact(fd, HEADER_SIZE)
        key_len = int.from_bytes(head[_KEY_LEN], "little") if len(head) == HEADER_SIZE else 0
        key = read_exact(fd, key_len)
        payload = read_exact(fd, max(0, size - HEADER_SIZE - key_len))
    finally:
        os.close(fd)
    return head, key, payload


def _read_head(path: str) -> tuple[ShardHeader, bytes] | None:
    """Header and key of a shard file, without reading its payload; None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, HEADER_SIZE + 256)
        header = parse_header(raw)
        if len(raw) < HEADER_SIZE + header.key_len:
            raw += read_exact(fd, HEADER_SIZE + header.key_len - len(raw))
    except (OSError, BadShard):
        return None
    finally:
        os.close(fd)
    return header, raw[HEADER_SIZE : HEADER_SIZE + header.key_len]


def _iter_key_dirs(root: str) -> Iterator[tuple[str, str]]:
    """``(key dir path, "xx/yy/<60 hex>")`` for every key directory on one drive."""
    for path, flat in iter_fanout(os.path.join(root, OBJECTS_DIR)):
        yield path, f"{flat[:2]}/{flat[2:4]}/{flat[4:]}"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0


def _rmdir_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)

