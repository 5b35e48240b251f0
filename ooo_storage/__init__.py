"""ooo-storage: a layered key/value store with live watch streams, as an asyncio library and server."""

from __future__ import annotations

from .errors import (
    AllLayersNil,
    CantLockGlob,
    CorruptObject,
    GlobNotAllowed,
    GlobRequired,
    InvalidData,
    InvalidGlob,
    InvalidLimit,
    InvalidPath,
    InvalidPattern,
    InvalidRange,
    LockNotFound,
    NotActive,
    NotFound,
    NoSpace,
    QuorumNotReached,
    StorageError,
    StorageUnavailable,
)
from .layered import Layered, Options, WatchHandle
from .layers import LevelDBLayer, MemoryLayer
from .meta import Event, Object

__version__ = "0.1.0"

__all__ = [
    "Layered",
    "Options",
    "WatchHandle",
    "MemoryLayer",
    "LevelDBLayer",
    "Object",
    "Event",
    "StorageError",
    "NotFound",
    "InvalidPath",
    "InvalidData",
    "GlobNotAllowed",
    "GlobRequired",
    "InvalidPattern",
    "InvalidLimit",
    "InvalidRange",
    "CantLockGlob",
    "LockNotFound",
    "NotActive",
    "AllLayersNil",
    "InvalidGlob",
    "StorageUnavailable",
    "CorruptObject",
    "NoSpace",
    "QuorumNotReached",
]
