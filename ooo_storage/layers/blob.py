"""BlobLayer: the one Layer adapter over a byte store (SOS, erasure-coded): each key holds the JSON
of its Object, and values become Objects only through ``protocol.objects.load_object``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from ..protocol.keys import has_glob
from ..protocol.objects import Object, load_object
from .memory import KeyIndex

__all__ = ["ByteStore", "BlobLayer"]


class ByteStore(Protocol):
    """What :class:`BlobLayer` needs of a byte store (both file stores provide it)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, None if missing; damage raises ``CorruptObject``."""
        ...

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` in order (None where missing), in few thread hops."""
        ...

    async def store(self, key: str, data: bytes) -> None: ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; False if it did not exist."""
        ...

    async def mdelete(self, keys: list[str]) -> int:
        """Remove several keys (not atomically); how many existed."""
        ...

    async def clear(self) -> int:
        """Remove every key; how many."""
        ...

    async def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted (what the store itself knows of)."""
        ...

    async def load_all(self) -> dict[str, bytes]:
        """Every key and its verified value; the first damaged value raises ``CorruptObject``."""
        ...


S = TypeVar("S", bound=ByteStore)


class BlobLayer(Generic[S]):
    """An asynchronous Layer (``layers.base``) over the byte store ``store``.

    A sorted key index is kept by this process's writes, so ``keys``/``get_list``/glob deletes never
    ask the store to list (a tree walk for SOS). With several processes on one store, keys written
    or deleted by the others appear in it after a restart, while ``get`` sees them at once. It is
    built by ``load_raw`` (the cold start of a ``Layered`` with a memory layer, which reads every
    value anyway) or else by the first call that needs it, so no start lists the store twice.
    Writes that land while it is being built are journaled and applied on top of the listing, so
    none is lost whichever side of the listing it fell on.
    """

    asynchronous = True  # the store's work runs in its worker threads: every method is awaited

    def __init__(self, store: S) -> None:
        self.store = store
        self._index: KeyIndex | None = None
        self._building: asyncio.Future[None] | None = None
        self._journal: list[tuple[str, bool]] | None = None

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()
        self._index = self._building = self._journal = None

    # -- key index -----------------------------------------------------------------------------
    async def _keys(self) -> KeyIndex:
        if self._index is None:
            if self._building is None:
                self._building = asyncio.ensure_future(self._build(self.store.keys()))
            await asyncio.shield(self._building)
        assert self._index is not None  # set by the build that was just awaited
        return self._index

    async def _build(self, listing: Awaitable[Iterable[str]]) -> None:
        self._journal = []
        try:
            keys = await listing
        except BaseException:
            self._journal = self._building = None
            raise
        index = KeyIndex(keys)
        for key, present in self._journal:
            _mark(index, key, present)
        self._index, self._journal = index, None

    def _note(self, key: str, present: bool) -> None:
        if self._index is not None:
            _mark(self._index, key, present)
        elif self._journal is not None:
            self._journal.append((key, present))
        # else no index yet and no listing in flight: the future listing sees this write

    # -- Layer ---------------------------------------------------------------------------------
    async def get(self, key: str) -> Object | None:
        raw = await self.store.get(key)
        return None if raw is None else load_object(key, raw)

    async def get_list(self, pattern: str) -> list[Object]:
        keys = list((await self._keys()).matching_keys(pattern))
        raws = await self.store.mget(keys)
        out = []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:  # deleted by another process
                self._note(key, False)
            else:
                out.append(load_object(key, raw))
        return out

    async def set(self, key: str, obj: Object) -> None:
        await self.store.store(key, obj.to_json())
        self._note(key, True)

    async def delete(self, key_or_glob: str) -> int:
        """Delete a key, or every key matching a glob (key by key: not atomic across keys)."""
        if has_glob(key_or_glob):
            doomed = list((await self._keys()).matching_keys(key_or_glob))
            removed = await self.store.mdelete(doomed)
            for key in doomed:
                self._note(key, False)
            return removed
        existed = await self.store.delete(key_or_glob)
        self._note(key_or_glob, False)
        return int(existed)

    async def keys(self) -> list[str]:
        return (await self._keys()).keys()

    async def clear(self) -> None:
        if self._building is not None and not self._building.done():
            await asyncio.shield(self._building)  # else the listing would restore cleared keys
        await self.store.clear()
        self._index = KeyIndex()

    async def load_raw(self) -> Mapping[str, bytes]:
        loaded: dict[str, bytes] = {}

        async def listing() -> Iterable[str]:
            loaded.update(await self.store.load_all())
            return loaded

        self._index = None
        self._building = asyncio.ensure_future(self._build(listing()))
        await asyncio.shield(self._building)
        return loaded

    async def load(self) -> dict[str, Object]:
        return {key: load_object(key, value) for key, value in (await self.load_raw()).items()}


def _mark(index: KeyIndex, key: str, present: bool) -> None:
    if present:
        index.add(key)
    else:
        index.discard(key)
