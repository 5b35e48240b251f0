"""The on-drive format of the erasure-coded store (ADAPTERS §5.3). Pure: no I/O, no asyncio.

A shard file is a fixed little-endian header, the key and the payload::

    magic "ECS1" | u8 version | u8 k | u8 m | u8 shard_index | u8 flags | u16 key_len |
    u64 object_len | u64 generation | u32 object_crc32c | u32 shard_crc32c | key | payload

``shard_crc32c`` covers the header fields before it, the key and the payload, so a bit flip
anywhere in the file (header included) is caught before the payload reaches the decoder:
pyeclib neither detects corrupt fragments nor survives malformed fragment headers.

Every shard is self-describing (key, generation, geometry, object checksum), so the whole key
index can be rebuilt from the drives alone, without a separate registry.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from typing import NamedTuple

from ..fs import crc32c

MAGIC = b"ECS1"
VERSION = 1
HEADER = struct.Struct("<4sBBBBBHQQII")
HEADER_SIZE = HEADER.size
_CRC_OFFSET = HEADER_SIZE - 4  # shard_crc32c is the last header field and covers what precedes it

FLAG_TOMBSTONE = 1  # a delete: no payload; hides every older generation of the key
FLAG_REPLICA = 2  # a small object stored whole as m + 1 copies instead of k + m coded shards

DRIVE_MARKER = ".ecdrive.json"
DRIVE_MAGIC = "ooo-storage-ec-drive"
FORMAT_VERSION = 1
OBJECTS_DIR = "objects"

_INSTANCE_BITS = 12
_INSTANCE_MASK = (1 << _INSTANCE_BITS) - 1
_GEN_NAME_LEN = 16


class ShardHeader(NamedTuple):
    """The decoded fixed header of a shard file."""

    version: int
    k: int
    m: int
    index: int  # type: ignore[assignment]  # the format's name; shadows tuple.index (never called)
    flags: int
    key_len: int
    object_len: int
    generation: int
    object_crc: int
    shard_crc: int

    @property
    def tombstone(self) -> bool:
        return bool(self.flags & FLAG_TOMBSTONE)

    @property
    def replica(self) -> bool:
        return bool(self.flags & FLAG_REPLICA)


class BadShard(ValueError):
    """A shard file failed its checksum or does not describe the expected object."""


def pack_shard(
    key: bytes,
    k: int,
    m: int,
    index: int,
    flags: int,
    object_len: int,
    generation: int,
    object_crc: int,
    payload: list[bytes],
) -> list[bytes]:
    """Header and key of one shard followed by its payload parts (ready for ``writev``)."""
    fields = (MAGIC, VERSION, k, m, index, flags, len(key), object_len, generation, object_crc, 0)
    head = HEADER.pack(*fields)[:_CRC_OFFSET]
    crc = crc32c(key, crc32c(head))
    for part in payload:
        crc = crc32c(part, crc)
    return [head + struct.pack("<I", crc) + key, *payload]


def parse_header(raw: bytes) -> ShardHeader:
    """Decode the fixed header (no checksum verification: :func:`verify_shard` does that)."""
    if len(raw) < HEADER_SIZE:
        raise BadShard("truncated shard header")
    magic, *fields = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise BadShard("bad shard magic")
    header = ShardHeader(*fields)
    if header.version != VERSION:
        raise BadShard(f"unknown shard version {header.version}")
    return header


def verify_shard(
    head: bytes,
    key: bytes,
    payload: bytes,
    expected_key: bytes,
    generation: int,
    index: int,
    k: int,
    m: int,
) -> ShardHeader:
    """Check a shard file (read as header, key, payload) against its name and the store.

    A shard whose CRC is valid but whose header names another key, generation or index (a file
    copied or moved into the wrong slot) is as bad as a flipped bit.
    """
    header = parse_header(head)
    if len(key) != header.key_len:
        raise BadShard("truncated shard key")
    if crc32c(payload, crc32c(key, crc32c(head[:_CRC_OFFSET]))) != header.shard_crc:
        raise BadShard("shard checksum mismatch")
    if (header.k, header.m) != (k, m):
        raise BadShard(f"shard of a {header.k}+{header.m} store")
    if header.generation != generation or header.index != index:
        raise BadShard("shard header does not match its file name")
    if key != expected_key:
        raise BadShard("shard belongs to another key")
    if header.tombstone and payload:
        raise BadShard("tombstone with a payload")
    if header.replica and len(payload) != header.object_len:
        raise BadShard("replica length mismatch")
    return header


# -- generations -------------------------------------------------------------------------------


class Generations:
    """Sortable unique generation numbers: microseconds since the epoch << 12 | instance id.

    Strictly increasing within one instance (so two writes of a key from one process order by
    issue), roughly time-ordered across processes (last writer wins), and the random instance id
    makes two processes writing the same key in the same microsecond pick different numbers.
    52 bits of microseconds last until the year 2112.
    """

    __slots__ = ("instance", "_last", "_lock")

    def __init__(self, instance: int | None = None) -> None:
        self.instance = (
            secrets.randbits(_INSTANCE_BITS) if instance is None else instance & _INSTANCE_MASK
        )
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            us = max(time.time_ns() // 1000, self._last + 1)
            self._last = us
        return us << _INSTANCE_BITS | self.instance


def generation_time(generation: int) -> float:
    """The wall-clock time (seconds since the epoch) at which ``generation`` was issued."""
    return (generation >> _INSTANCE_BITS) / 1e6


def shard_name(generation: int, index: int) -> str:
    """File name of shard ``index`` of ``generation``: fixed-width hex sorts by generation."""
    return f"{generation:016x}.{index}"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(generation, index)`` of a shard file name, None for anything else (temp names...)."""
    if len(name) < _GEN_NAME_LEN + 2 or name[_GEN_NAME_LEN] != ".":
        return None
    index = name[_GEN_NAME_LEN + 1 :]
    if not index.isdigit():
        return None
    try:
        return int(name[:_GEN_NAME_LEN], 16), int(index)
    except ValueError:
        return None


def key_dir(drive: str, fanout: str) -> str:
    """Directory holding every shard file of one key on one drive."""
    return os.path.join(drive, OBJECTS_DIR, fanout)


def shard_drive(index: int, first: int, n: int) -> int:
    """Drive position of shard ``index``: rotated per key so intact reads spread over all drives."""
    return (index + first) % n
