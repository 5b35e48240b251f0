"""The fixed-size index entry of a journal segment, with no I/O.

Each ``*.idx`` file is an array of 48-byte entries, one per item, little-endian::

    u64 index | u64 tag | u64 stamp_ns | u64 offset | u32 length | u32 data_crc | u32 entry_crc | u32 flags

``entry_crc`` (CRC-32C) covers the 40 bytes before it and ``data_crc`` the item's bytes in the
``*.dat`` file at ``offset``, so a torn or stale tail is recognised, never returned. ``flags`` is
outside the entry CRC because a delete rewrites it in place (one byte, which a disk writes whole).
Fixed-size entries make entry *i* of a segment a single ``pread`` at ``i * ENTRY_SIZE``: the index
files are never loaded whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c

ENTRY = struct.Struct("<QQQQIIII")
ENTRY_SIZE = ENTRY.size  # 48
_HEAD = struct.Struct("<QQQQII")  # the fields entry_crc covers
_TAIL = struct.Struct("<II")
_CRC_COVERS = _HEAD.size
FLAGS_OFFSET = ENTRY_SIZE - 4
DELETED = 1
DELETED_BYTE = bytes([DELETED])


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (hardware-accelerated C code)."""
    value: int = google_crc32c.value(data)  # untyped C extension
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded index entry: where item ``index`` lives and what it must hash to."""

    index: int
    tag: int
    stamp: int
    offset: int
    length: int
    data_crc: int
    deleted: bool

    @property
    def end(self) -> int:
        """Offset just past the item's bytes in the data file."""
        return self.offset + self.length


def pack(index: int, tag: int, stamp: int, offset: int, item: bytes) -> bytes:
    """The 48 bytes of a live entry for ``item`` stored at ``offset``."""
    head = _HEAD.pack(index, tag, stamp, offset, len(item), crc32c(item))
    return head + _TAIL.pack(crc32c(head), 0)


def unpack(buffer: bytes | memoryview, position: int = 0) -> Entry | None:
    """The entry at ``position`` of ``buffer``, or None if its CRC does not match (torn, zeroed or
    never written)."""
    index, tag, stamp, offset, length, data_crc, entry_crc, flags = ENTRY.unpack_from(buffer, position)
    if crc32c(bytes(buffer[position : position + _CRC_COVERS])) != entry_crc:
        return None
    return Entry(index, tag, stamp, offset, length, data_crc, bool(flags & DELETED))


def count_deleted(buffer: bytes) -> int:
    """How many whole entries of ``buffer`` (entries back to back) carry the deleted flag."""
    return buffer[FLAGS_OFFSET::ENTRY_SIZE].count(DELETED)
