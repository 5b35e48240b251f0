"""Storage layers. ``SOSLayer``, ``ErasureLayer`` (and their byte stores) and ``RedisLayer`` load on
first use."""

from __future__ import annotations

from typing import Any

from ..errors import CorruptObject, QuorumNotReached
from .base import AsyncLayer, Layer, PersistentLayer, SyncLayer
from .leveldb import LevelDBLayer
from .memory import MemoryLayer

__all__ = [
    "Layer",
    "SyncLayer",
    "AsyncLayer",
    "PersistentLayer",
    "MemoryLayer",
    "LevelDBLayer",
    "SimpleObjectStore",
    "SOSLayer",
    "ErasureStore",
    "ErasureLayer",
    "RedisLayer",
    "CorruptObject",
    "QuorumNotReached",
]

_LAZY = {
    "SimpleObjectStore": ".sos",
    "SOSLayer": ".sos",
    "ErasureStore": ".erasure",
    "ErasureLayer": ".erasure",
    "RedisLayer": ".redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
