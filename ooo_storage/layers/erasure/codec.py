"""Striped Reed-Solomon coding over pyeclib (ISA-L). Pure computation: no I/O, no asyncio.

An object is cut into fixed stripes (1 MiB by default) and each stripe is encoded on its own into
k + m fragments; shard ``i`` is fragment ``i`` of every stripe, concatenated. Stripes keep every
allocation below glibc's mmap threshold (see :func:`tune_malloc`) and bound memory for large
objects. Fragments keep pyeclib's own 80-byte header, whose size field lets a shard payload be
split back into fragments without knowing the stripe size that wrote it.

pyeclib returns wrong bytes for a corrupt fragment and aborts the process on a malformed fragment
header, so callers must verify a shard's CRC before handing it to :meth:`Codec.decode`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import struct

from pyeclib.ec_iface import ECDriver

DEFAULT_BACKEND = "isa_l_rs_cauchy"
DEFAULT_STRIPE = 1 << 20
_FRAGMENT_HEADER = 80
_SIZE = struct.Struct("<I")  # fragment_metadata.size, after the u32 index
_META = struct.Struct("<IIIQ")  # index, size, backend metadata size, original stripe length

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Raise glibc's mmap/trim thresholds once per process; return True if they were set.

    With the defaults every encode of a large stripe gets fresh mmapped buffers and page-faults
    them in (~1.5 GB/s); reused heap buffers run at ~16 GB/s (docs/layers.md, measured figures).
    The setting is process-wide and harmless for the rest of the server. No-op off glibc.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _malloc_tuned = bool(
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    return _malloc_tuned


def _join_data(columns: list[list[bytes]]) -> bytes | None:
    """The object from all k data shards of a systematic code: their payloads, concatenated.

    This is what the decoder itself does when no data fragment is missing, minus its buffer
    management (3-4x faster for 1 MiB). None if the fragments do not look like data shards 0..k-1
    in order; the caller verifies the object CRC either way.
    """
    parts: list[memoryview] = []
    for row in zip(*columns, strict=True):
        remaining = _META.unpack_from(row[0])[3]
        for expected, fragment in enumerate(row):
            index, size, _, _ = _META.unpack_from(fragment)
            if index != expected or len(fragment) < _FRAGMENT_HEADER + size:
                return None
            take = min(size, remaining)
            parts.append(memoryview(fragment)[_FRAGMENT_HEADER : _FRAGMENT_HEADER + take])
            remaining -= take
        if remaining:
            return None
    return b"".join(parts)


def backend_version() -> str:
    return importlib.metadata.version("pyeclib")


class Codec:
    """k data + m parity shards of striped objects."""

    def __init__(
        self, k: int, m: int, backend: str = DEFAULT_BACKEND, stripe_size: int = DEFAULT_STRIPE
    ) -> None:
        if k < 1 or m < 1:
            raise ValueError("k and m must be >= 1")
        if stripe_size < k:
            raise ValueError("stripe_size must be >= k")
        self.k = k
        self.m = m
        self.n = k + m
        self.backend = backend
        self.stripe_size = stripe_size
        self._driver = ECDriver(k=k, m=m, ec_type=backend)

    def encode(self, value: bytes) -> list[list[bytes]]:
        """The n shard payloads of ``value``, each as its list of per-stripe fragments."""
        size = self.stripe_size
        encode = self._driver.encode
        if len(value) <= size:
            return [[fragment] for fragment in encode(value)]
        shards: list[list[bytes]] = [[] for _ in range(self.n)]
        view = memoryview(value)
        for start in range(0, len(value), size):
            stripe = encode(bytes(view[start : start + size]))
            for shard, fragment in zip(shards, stripe, strict=True):
                shard.append(fragment)
        return shards

    def decode(self, payloads: dict[int, bytes], object_len: int) -> bytes:
        """Rebuild the object from at least k CRC-verified shard payloads (keyed by index)."""
        if len(payloads) < self.k:
            raise ValueError(f"need {self.k} shards, got {len(payloads)}")
        columns = self._columns(payloads)
        if sorted(payloads)[: self.k] == list(range(self.k)):
            joined = _join_data(columns)
            if joined is not None and len(joined) == object_len:
                return joined
        decode = self._driver.decode
        out = b"".join(decode(list(row)) for row in zip(*columns, strict=True))
        if len(out) != object_len:
            raise ValueError("decoded length mismatch")
        return out

    def reconstruct(
        self, payloads: dict[int, bytes], missing: list[int]
    ) -> dict[int, list[bytes]]:
        """Regenerate the shards ``missing`` (data or parity) from at least k valid payloads."""
        columns = self._columns(payloads)
        rebuilt: dict[int, list[bytes]] = {i: [] for i in missing}
        reconstruct = self._driver.reconstruct
        for row in zip(*columns, strict=True):
            for i, fragment in zip(missing, reconstruct(list(row), list(missing)), strict=True):
                rebuilt[i].append(fragment)
        return rebuilt

    def _columns(self, payloads: dict[int, bytes]) -> list[list[bytes]]:
        # Data shards sort first: with all k of them, pyeclib's decode is a plain copy.
        columns = [self.fragments(payloads[i]) for i in sorted(payloads)[: self.k]]
        if len({len(col) for col in columns}) != 1:
            raise ValueError("shards disagree on the stripe count")
        return columns

    @staticmethod
    def fragments(payload: bytes) -> list[bytes]:
        """Split a shard payload into its per-stripe pyeclib fragments (headers included)."""
        end = len(payload)
        if end >= _FRAGMENT_HEADER and _SIZE.unpack_from(payload, 4)[0] + _FRAGMENT_HEADER == end:
            return [payload]  # one stripe: no copy
        view = memoryview(payload)
        out: list[bytes] = []
        pos = 0
        while pos < end:
            if end - pos < _FRAGMENT_HEADER:
                raise ValueError("truncated fragment header")
            (size,) = _SIZE.unpack_from(view, pos + 4)
            stop = pos + _FRAGMENT_HEADER + size
            if stop > end:
                raise ValueError("truncated fragment")
            out.append(bytes(view[pos:stop]))
            pos = stop
        return out
