"""The checksum of every record the file stores write."""

from __future__ import annotations

import google_crc32c

__all__ = ["crc32c"]


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc`` (hardware-accelerated C code).

    ``google_crc32c`` accepts only ``bytes`` (not bytearray or memoryview): pass the pieces of a
    record separately instead of slicing a large buffer.
    """
    extended: int = google_crc32c.extend(crc, data)  # untyped C extension
    return extended
