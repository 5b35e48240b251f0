"""The Layer protocol: what a storage layer must provide to sit inside :class:`~ooo_storage.Layered`.

Each method may be plain or ``async`` (the implementer's choice per layer); ``Layered`` inspects the
layer once and awaits only where needed, so a synchronous layer (memory, LevelDB) costs no event-loop
hop on the hot path while a file or erasure-coded layer runs its blocking work in its own executor.

Conventions shared by every layer:

* keys are valid keys of PROTOCOL.md §1 (``Layered`` validates before calling a layer);
* values are :class:`~ooo_storage.protocol.objects.Object`; persistent layers store ``obj.to_json()`` and read
  it back with ``meta.load_object`` (damage becomes ``CorruptObject``, a 503 naming the key);
* ``get`` returns ``None`` for a missing key (errors are for failures, not for absence);
* ``get_list`` returns the objects whose key matches a glob, in no particular order (``Layered``
  sorts);
* ``delete`` takes a key or a glob and returns how many keys it removed; a glob delete is atomic
  where the layer can make it so (LevelDB: one write batch);
* failures raise (any exception); ``Layered`` turns them into ``StorageUnavailable`` and leaves
  memory and watchers untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

from ..protocol.objects import Object

T = TypeVar("T")
MaybeAwaitable = T | Awaitable[T]


@runtime_checkable
class Layer(Protocol):
    """A storage layer (memory, LevelDB, SOS, erasure-coded...)."""

    def start(self) -> MaybeAwaitable[None]: ...

    def close(self) -> MaybeAwaitable[None]: ...

    def get(self, key: str) -> MaybeAwaitable[Object | None]: ...

    def get_list(self, pattern: str) -> MaybeAwaitable[list[Object]]: ...

    def set(self, key: str, obj: Object) -> MaybeAwaitable[None]: ...

    def delete(self, key_or_glob: str) -> MaybeAwaitable[int]: ...

    def keys(self) -> MaybeAwaitable[list[str]]: ...

    def clear(self) -> MaybeAwaitable[None]: ...


@runtime_checkable
class PersistentLayer(Layer, Protocol):
    """A layer that survives restarts. ``load`` returns every stored object (cold start).

    A persistent layer may also offer ``load_raw() -> Mapping[str, bytes]`` (values are object JSON
    bytes): ``Layered`` prefers it and parses each object lazily on first access, so a cold start
    costs little more than iterating the store.
    """

    def load(self) -> MaybeAwaitable[Mapping[str, Object]]: ...
