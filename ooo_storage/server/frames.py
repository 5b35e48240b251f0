"""The websocket data frame (PROTOCOL.md §5.2): ``{"snapshot":..,"version":"<hex>","data":..}``."""

from __future__ import annotations


def encode_frame(snapshot: bool, version: int, data: bytes) -> bytes:
    """The exact payload bytes of one frame; ``data`` is already compact JSON."""
    return b'{"snapshot":%b,"version":"%x","data":%b}' % (
        b"true" if snapshot else b"false",
        version,
        data,
    )


def parse_version(text: str | None) -> int | None:
    """The ``?v=`` query value as an int (None when absent or not lowercase/uppercase hex)."""
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None
