"""The SOS1 object record: its encoding, and reading and verifying it from an open file.

Each object file is a self-describing record, little-endian::

    magic "SOS1" | u8 version | u8 flags | u16 key_len | u64 value_len | u32 crc32c | key | value

with the CRC-32C over the 16 header bytes before it, the key and the value. One ``rename`` publishes
key, value and checksum together; the embedded key makes keys listable and catches a file moved into
another key's slot. Any mismatch raises :class:`~ooo_storage.errors.CorruptObject`: a damaged object
is never returned as data, nor as "not found", until it is rewritten or deleted.
``record="raw"`` is the Go SOS compatible mode (bare values, no checksum, no listing).

Blocking, no asyncio: it runs in the store's worker threads.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from ..fs.atomic import write_all
from ..fs.checksum import crc32c
from ..fs.layout import hash_hex
from ..fs.reads import read_exact

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "MAX_KEY",
    "CHUNK",
    "Key",
    "BadRecord",
    "encode_key",
    "decode_key",
    "encode_record",
    "read_record",
    "read_key",
    "stream_record",
]

Key = str | bytes

MAGIC = b"SOS1"
VERSION = 1
_FIELDS = struct.Struct("<4sBBHQ")  # the CRC covers these 16 bytes, then key and value
_CRC = struct.Struct("<I")
HEADER_SIZE = _FIELDS.size + _CRC.size  # 20
MAX_KEY = 0xFFFF
CHUNK = 1024 * 1024
"""Bytes per read of a streamed value."""
_SMALL = 64 * 1024  # records up to this size are read with one read() call
_KEY_PEEK = 4096  # listing reads this much, enough for the header and any usual key


class BadRecord(Exception):
    """A record failed validation (reason in ``args[0]``); the store turns it into CorruptObject."""


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
        raise BadRecord("truncated header")
    magic, version, flags, klen, vlen = _FIELDS.unpack_from(head)
    if magic != MAGIC:
        raise BadRecord("bad magic")
    if version != VERSION or flags:
        raise BadRecord(f"unknown record version {version} flags {flags}")
    if HEADER_SIZE + klen + vlen != size:
        raise BadRecord(f"size {size} does not match header ({klen}+{vlen})")
    return klen, vlen, _CRC.unpack_from(head, _FIELDS.size)[0]


def read_record(fd: int, size: int, want: bytes | None, name: str | None) -> tuple[bytes, bytes]:
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
                raise BadRecord("key mismatch")
            key = read_exact(fd, klen)
        value = read_exact(fd, vlen)
        if len(value) != vlen:
            raise BadRecord("truncated value")
        data = head
    if crc32c(value, crc32c(key, crc32c(data[: _FIELDS.size]))) != crc:
        raise BadRecord("checksum mismatch")
    _check_key(key, want, name)
    return key, value


def _check_key(key: bytes, want: bytes | None, name: str | None) -> None:
    if want is not None and key != want:
        raise BadRecord("key mismatch (file in another key's slot)")
    if name is not None and hash_hex(key) != name:
        raise BadRecord("key does not hash to its file name")


def read_key(fd: int, st: os.stat_result, name: str) -> bytes:
    """The embedded key of the record at ``fd`` (header checks only, the value is not read)."""
    head = read_exact(fd, min(st.st_size, _KEY_PEEK))
    klen, _, _ = _parse_header(head, st.st_size)
    key = head[HEADER_SIZE : HEADER_SIZE + klen]
    if len(key) < klen:
        key += read_exact(fd, klen - len(key))
    _check_key(key, None, name)
    return key


def stream_record(fd: int, key: bytes, read: Callable[[int], bytes], raw: bool) -> None:
    """Write to ``fd`` the record of ``key`` whose value is read from ``read`` until EOF (the bare
    value when ``raw``), without holding the value in memory.

    The header holds the value length, known only at EOF: it is reserved, the value streamed, then
    the real header written in place (``fd`` is a private temp file, not yet published).
    """
    if not raw:
        _check_key_len(key)
    prefix = b"" if raw else bytes(HEADER_SIZE) + key
    write_all(fd, [prefix])
    head_len = _FIELDS.size + len(key)
    tail_crc, size = _zeros_crc(head_len, 0), 0
    while chunk := read(CHUNK):
        chunk = bytes(chunk)
        write_all(fd, [chunk])
        tail_crc = crc32c(chunk, tail_crc)
        size += len(chunk)
    if not raw:
        fields = _FIELDS.pack(MAGIC, VERSION, 0, len(key), size)
        crc = _crc_concat(crc32c(key, crc32c(fields)), tail_crc, head_len, size)
        os.pwrite(fd, fields + _CRC.pack(crc), 0)


def _zeros_crc(n: int, crc: int) -> int:
    """Continue ``crc`` over ``n`` zero bytes."""
    zeros = bytes(min(n, CHUNK))
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
