"""Frames on the wire (docs/protocol.md §5.2).

:func:`encode_frame` gives the payload ``{"snapshot":..,"version":"<hex>","data":..}``;
:func:`ws_binary` wraps a payload into a complete RFC 6455 binary frame. Server frames are never
masked, so one frame's bytes can be written as they are to every subscriber of a pool:
:func:`snapshot_frame` and :func:`patch_frame` are what a pool sends, :func:`clock_frame` what the
clock stream on ``/`` sends.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import jsontext
from .jsonpatch import Op

PING_FRAME = b"\x89\x00"  # FIN + ping, empty payload


def encode_frame(snapshot: bool, version: int, data: bytes) -> bytes:
    """The exact payload bytes of one data frame; ``data`` is already compact JSON."""
    return b'{"snapshot":%b,"version":"%x","data":%b}' % (
        b"true" if snapshot else b"false",
        version,
        data,
    )


def ws_binary(payload: bytes) -> bytes:
    """``payload`` as one unmasked, unfragmented websocket binary frame."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x82, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x82, 126, size)
    else:
        header = struct.pack("!BBQ", 0x82, 127, size)
    return header + payload


def snapshot_frame(version: int, data: bytes) -> bytes:
    """The complete frame of a snapshot: the whole state ``data`` (compact JSON) at ``version``."""
    return ws_binary(encode_frame(True, version, data))


def patch_frame(version: int, ops: Sequence[Op]) -> bytes:
    """The complete frame of a change: the RFC 6902 ``ops`` that lead to ``version``."""
    return ws_binary(encode_frame(False, version, jsontext.dumps(ops)))


def clock_frame(stamp: int) -> bytes:
    """The complete frame of the clock stream: the clock value ``stamp`` as decimal text."""
    return ws_binary(str(stamp).encode())


def pong_frame(payload: bytes) -> bytes:
    """An unmasked pong frame echoing a ping's payload (at most 125 bytes, RFC 6455 §5.5)."""
    payload = payload[:125]
    return struct.pack("!BB", 0x8A, len(payload)) + payload


def parse_version(text: str | None) -> int | None:
    """The ``?v=`` query value as an int (None when absent or not hex)."""
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None
