"""ooo-storage: a layered key/value store with live watch streams, as an asyncio library and server.

The public names below load on first use (PEP 562), so ``import ooo_storage.protocol`` or ``from
ooo_storage.client import Client`` costs neither the store nor LevelDB, and ``from ooo_storage
import keys`` is the pure key grammar alone. The tiers, from the bottom: ``errors``; ``protocol``
(pure rules); ``locks``, ``journal`` (the durable log), ``sharded``, ``layers``, ``layered`` (the
store); ``server`` (aiohttp); ``client``; ``cli``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AllLayersNil,
    CantLockGlob,
    Conflict,
    CorruptObject,
    GlobNotAllowed,
    GlobRequired,
    HistoryTrimmed,
    InvalidData,
    InvalidGlob,
    InvalidLimit,
    InvalidPath,
    InvalidPattern,
    InvalidRange,
    InvalidTransaction,
    JournalError,
    JournalFull,
    LockNotFound,
    NoSpace,
    NotActive,
    NotFound,
    NotSupported,
    QuorumNotReached,
    StorageError,
    StorageUnavailable,
    TransactionTimeout,
)

if TYPE_CHECKING:
    from .journal import Journal, JournalQueue
    from .layered import HistoryOptions, Layered, Options, WatchHandle
    from .layers import LevelDBLayer, MemoryLayer
    from .protocol import keys
    from .protocol.objects import Event, Object
    from .protocol.txn import Committed, TxnOp
    from .transaction import Transaction

__version__ = "0.1.0"

_LAZY = {
    "Layered": ".layered",
    "Options": ".layered",
    "WatchHandle": ".layered",
    "HistoryOptions": ".layered",
    "MemoryLayer": ".layers",
    "LevelDBLayer": ".layers",
    "Journal": ".journal",
    "JournalQueue": ".journal",
    "Object": ".protocol.objects",
    "Event": ".protocol.objects",
    "TxnOp": ".protocol.txn",
    "Committed": ".protocol.txn",
    "Transaction": ".transaction",
}
_MODULES = {"keys": ".protocol.keys"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return import_module(_MODULES[name], __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_MODULES])


__all__ = [
    "Layered",
    "Options",
    "WatchHandle",
    "HistoryOptions",
    "MemoryLayer",
    "LevelDBLayer",
    "Journal",
    "JournalQueue",
    "Object",
    "Event",
    "TxnOp",
    "Committed",
    "Transaction",
    "keys",
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
    "JournalError",
    "JournalFull",
    "HistoryTrimmed",
    "Conflict",
    "TransactionTimeout",
    "InvalidTransaction",
    "NotSupported",
]
