"""ErasureConfig: the options of an erasure-coded store, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fs.atomic import DURABILITY_LEVELS, Durability
from .codec import DEFAULT_BACKEND, DEFAULT_STRIPE

__all__ = ["ErasureConfig", "RepairMode"]

RepairMode = Literal["read", "background", "off"]


@dataclass
class ErasureConfig:
    """Options of an :class:`ErasureStore` (all but the geometry may change between runs)."""

    k: int = 4  #: data shards; any k valid shards rebuild an object
    m: int = 2  #: parity shards; up to m drives may be lost
    write_quorum: int | None = None  #: shards that must land for a write to commit (None = k)
    ec_backend: str = DEFAULT_BACKEND  #: pyeclib backend (pinned in the drive markers)
    durability: Durability = "full"  #: "full" | "data" | "none", as in SOS
    repair: RepairMode = "background"  #: who rebuilds degraded objects (see :class:`ErasureStore`)
    #: values shorter than this are stored as m + 1 whole copies instead of k + m coded shards:
    #: for a 1 KiB object six files are pure overhead, three copies are cheaper and as safe.
    inline_threshold: int = 8 << 10
    stripe_size: int = DEFAULT_STRIPE  #: bytes encoded per pyeclib call (bounds memory)
    workers: int | None = None  #: executor threads (None = k + m + 2: all drives in parallel)
    grace: float = 60.0  #: a too-small generation younger than this may be an in-flight write
    tmp_grace: float = 3600.0  #: temp files of other hosts older than this are removed at start
    scrub_interval: float | None = 24 * 3600.0  #: background full scrub period (None = never)
    retry_interval: float = 5.0  #: background repairer retry delay while a drive is unavailable
    repair_rate: float = 64e6  #: background repair budget in bytes per second
    repair_iops: float = 500.0  #: background repair budget in shard files written per second

    def __post_init__(self) -> None:
        if self.k < 1 or self.m < 1 or self.k + self.m > 255:
            raise ValueError("need k >= 1, m >= 1 and k + m <= 255")
        if self.write_quorum is None:
            self.write_quorum = self.k
        if not self.k <= self.write_quorum <= self.k + self.m:
            raise ValueError("write_quorum must be between k and k + m")
        if self.durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}")
        if self.repair not in ("read", "background", "off"):
            raise ValueError('repair must be "read", "background" or "off"')
