"""The Layer contracts: what a storage layer must provide to sit inside :class:`~ooo_storage.Layered`.

There are two, and every layer says which one it follows through its ``asynchronous`` attribute,
which ``Layered`` reads once, when it is built:

* :class:`SyncLayer` (``asynchronous`` false): every method returns its result. ``Layered`` calls
  it inline with no await, so a write has no await point at all (memory, LevelDB);
* :class:`AsyncLayer` (``asynchronous`` true): any method may return an awaitable (``async def``, or
  a plain method returning a future), and ``Layered`` awaits every result that is one. A file or
  erasure-coded layer runs its blocking work in its own threads this way; LevelDB with
  ``sync=True`` is one too: its writes return futures that resolve once their group commit is
  durable, while its reads still answer directly.

A synchronous layer is also a valid asynchronous one (a value is a trivial ``MaybeAwaitable``), so
``AsyncLayer`` is the general shape and ``SyncLayer`` the promise of never returning an awaitable.

Conventions shared by every layer:

* keys are valid keys of docs/protocol.md §1 (``Layered`` validates before calling a layer);
* values are :class:`~ooo_storage.protocol.objects.Object`; persistent layers store ``obj.to_json()``
  and read it back with ``protocol.objects.load_object`` (damage becomes ``CorruptObject``, a 503
  naming the key);
* ``get`` returns ``None`` for a missing key (errors are for failures, not for absence);
* ``get_list`` returns the objects whose key matches a glob, in no particular order (``Layered``
  sorts);
* ``delete`` takes a key or a glob and returns how many keys it removed; a glob delete is atomic
  where the layer can make it so (LevelDB: one write batch);
* failures raise (any exception); ``Layered`` turns them into ``StorageUnavailable`` and leaves
  memory and watchers untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

from .._utils import MaybeAwaitable
from ..protocol.objects import Object

__all__ = [
    "SyncLayer", "AsyncLayer", "Layer", "PersistentLayer", "RawLoader", "RevisionKeeper", "BatchWriter",
    "Follower", "RemoteApply", "RemoteTxnApply", "TxnWriter", "SharedOrder", "EventKeeper",
]


class SyncLayer(Protocol):
    """A layer whose methods return their results directly (never an awaitable)."""

    @property
    def asynchronous(self) -> bool:
        """False: ``Layered`` calls this layer inline."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def get(self, key: str) -> Object | None: ...

    def get_list(self, pattern: str) -> list[Object]: ...

    def set(self, key: str, obj: Object) -> None: ...

    def delete(self, key_or_glob: str) -> int: ...

    def keys(self) -> list[str]: ...

    def clear(self) -> None: ...


class AsyncLayer(Protocol):
    """A layer whose methods may return awaitables; ``Layered`` awaits each one that does."""

    @property
    def asynchronous(self) -> bool:
        """True: ``Layered`` awaits this layer's results (under the key's lock and the gate)."""
        ...

    def start(self) -> MaybeAwaitable[None]: ...

    def close(self) -> MaybeAwaitable[None]: ...

    def get(self, key: str) -> MaybeAwaitable[Object | None]: ...

    def get_list(self, pattern: str) -> MaybeAwaitable[list[Object]]: ...

    def set(self, key: str, obj: Object) -> MaybeAwaitable[None]: ...

    def delete(self, key_or_glob: str) -> MaybeAwaitable[int]: ...

    def keys(self) -> MaybeAwaitable[list[str]]: ...

    def clear(self) -> MaybeAwaitable[object]: ...


Layer: TypeAlias = SyncLayer | AsyncLayer
"""Either contract; ``layer.asynchronous`` tells which."""


class PersistentLayer(AsyncLayer, Protocol):
    """A layer that survives restarts. ``load`` returns every stored object (cold start).

    A persistent layer may also offer ``load_raw() -> Mapping[str, bytes]`` (values are object JSON
    bytes): ``Layered`` prefers it and parses each object lazily on first access, so a cold start
    costs little more than iterating the store.
    """

    def load(self) -> MaybeAwaitable[Mapping[str, Object]]: ...


@runtime_checkable
class RawLoader(Protocol):
    """Optional: ``load_raw()`` returns every stored object as its JSON bytes (values are parsed
    on first access), so a cold start costs little more than iterating the store."""

    def load_raw(self) -> MaybeAwaitable[Mapping[str, bytes]]: ...


@runtime_checkable
class RevisionKeeper(Protocol):
    """Optional: the layer keeps the store's revision reservation durably (see ``Layered``), so
    revisions never repeat for the life of its data, restarts included."""

    def load_revision(self) -> MaybeAwaitable[int]: ...

    def save_revision(self, revision: int) -> None: ...



@runtime_checkable
class BatchWriter(Protocol):
    """Optional, for a :class:`SyncLayer`: ``set_many`` writes several objects in one step (one
    LevelDB ``WriteBatch``), all or none: on failure it raises and none of them is acknowledged.
    ``Layered`` then commits the writes arriving in one event-loop iteration together."""

    def set_many(self, items: Sequence[tuple[str, Object]]) -> None: ...


@runtime_checkable
class TxnWriter(Protocol):
    """Optional: ``apply_many`` writes ``sets`` and deletes the keys ``deletes`` (plain keys, some
    perhaps missing; ``Layered`` expands globs) as one all-or-nothing step: one LevelDB
    ``WriteBatch``, durable before its awaitable resolves when the layer's writes are (joining the
    group commit). On failure it raises and none of it is applied, also after a crash. Transactions
    (``Layered.commit``) need it: a persistent layer without it refuses them (NotSupported)."""

    def apply_many(
        self, sets: Sequence[tuple[str, Object]], deletes: Sequence[str]
    ) -> MaybeAwaitable[None]: ...


@runtime_checkable
class EventKeeper(Protocol):
    """Optional, for a layer whose durable writes share a group commit (LevelDB ``sync=True``):
    with ``keeps_events`` true, a durable event history writes each write's event into the write's
    own durable step instead of fsyncing a journal after it (issue 11).

    ``write_with_event(sets, deletes, event, on_durable)`` is ``TxnWriter.apply_many`` plus the
    event (revision, bytes) under a reserved key that no listing shows, all or none; once durable
    it calls ``on_durable()`` synchronously, in the order the writes joined (their revision
    order), then resolves. ``kept_events()`` lists the kept events, one (last revision, their
    bytes joined in revision order) per durable step that held any, and ``drop_events(upto)``
    deletes those up to ``upto`` once the history has them on disk.
    ``Layered`` checks this once, when it is built."""

    keeps_events: bool

    def write_with_event(
        self,
        sets: Sequence[tuple[str, Object]],
        deletes: Sequence[str],
        event: tuple[int, bytes] | None,
        on_durable: Callable[[], None],
    ) -> Awaitable[None]: ...

    def kept_events(self) -> list[tuple[int, bytes]]: ...

    def drop_events(self, upto: int) -> Awaitable[None]: ...


class RemoteApply(Protocol):
    """``Layered.apply_remote(key, obj_or_None, revision_or_None, broadcast=True)``: see
    :class:`Follower`. ``broadcast`` False: a delete its writer made without an event
    (``delete_silent``: a limit filter's trimming), which the other writers apply as silently."""

    def __call__(
        self, key: str, obj: Object | None, revision: int | None = None, broadcast: bool = True
    ) -> object: ...


class RemoteTxnApply(Protocol):
    """``Layered.apply_remote_txn(ops, revision)``: a transaction another writer committed, applied
    as one unit (see :class:`SharedOrder`). ``ops`` are the ops that changed something, in op
    order: ``(key, obj)`` for a set, ``(key_or_glob, None)`` for a delete."""

    def __call__(self, ops: Sequence[tuple[str, Object | None]], revision: int) -> object: ...


class RemoteRawApply(Protocol):
    """``Layered.apply_remote_raw(writes)``: a run of other writers' sets and deletes in one call,
    each ``(key, object bytes or None for a delete, revision, loud)``, each object parsed only if
    it is applied (not this writer's own writes read back); returns how many it handled (it stops
    at a damaged object, see :class:`SharedOrder`)."""

    def __call__(self, writes: Sequence[tuple[str, bytes | None, int, bool]]) -> int: ...


@runtime_checkable
class Follower(Protocol):
    """Optional: a layer shared with other writers (other processes on one directory, other nodes on
    one Redis) that sees their writes. ``Layered`` calls ``follow(apply)`` once started; from then on
    the layer calls ``apply(key, obj, revision)`` on the event loop for each write committed by
    another writer, in that writer's commit order: ``obj`` None for a delete (``key`` may be a glob),
    ``revision`` the write's place in an order shared by every writer, or None where there is none
    (the store then gives it its next local revision). The layer stops calling it when it closes."""

    def follow(self, apply: RemoteApply) -> None: ...


@runtime_checkable
class SharedOrder(Follower, Protocol):
    """Optional, for a :class:`Follower` whose writers share one order of writes (nodes on one
    Redis). With ``publishes_writes`` true, a write returns only when its turn in that order has
    come, its place in :attr:`last_revision`: ``Layered`` publishes it with that revision in the
    same step, so every node's events follow one order. ``push_stamp()`` gives push keys unique
    across the writers; ``lock``/``unlock`` hold ``get_and_lock``'s lock across them (``lock``
    returns once this writer has applied every write committed before it took the lock).
    ``Layered`` checks this once, when it is built (a Protocol ``isinstance`` is slow)."""

    publishes_writes: bool
    last_revision: int

    def push_stamp(self) -> int: ...

    def delete(self, key_or_glob: str, broadcast: bool = True) -> Awaitable[int]:
        """As a layer's ``delete``; ``broadcast`` False marks it silent for the other writers."""
        ...

    def lock(self, key: str) -> Awaitable[None]: ...

    def unlock(self, key: str) -> Awaitable[None]: ...

    def catch_up(self) -> Awaitable[None]:
        """Returns once this writer has applied every write committed before the call."""
        ...

    def follow_txns(self, apply: RemoteTxnApply) -> None:
        """Transactions of other writers reach ``apply`` (one call each, in the shared order)."""
        ...

    def follow_reloads(self, apply: RemoteTxnApply) -> None:
        """A reload of the whole state (this writer missed part of the shared order) reaches
        ``apply`` as one unit: every stored key set, keys gone deleted, at one shared revision."""
        ...

    def follow_raw(self, apply: RemoteRawApply) -> None:
        """Runs of other writers' sets and deletes reach ``apply`` in one call each, their objects
        unparsed (``follow``'s ``apply`` then gets only what ``apply`` does not take)."""
        ...

    def apply_txn(
        self,
        seen: Mapping[str, int | None],
        ops: Sequence[tuple[str, Object | None]],
        deadline: float,
        timeout: float,
    ) -> Awaitable[Sequence[tuple[str, Object | None]] | None]:
        """Commit a transaction as one step for every writer, if each key of ``seen`` still has
        the version the caller's view gave it (None: missing) and no other writer holds its
        lock (it waits for those up to ``deadline``, ``time.monotonic()``, then raises
        TransactionTimeout naming them, ``timeout`` in its message). Returns the ops that changed
        something once the transaction's turn has come (its revision in :attr:`last_revision`:
        the caller applies and publishes them in that step; none changed: empty, no revision),
        or None when the caller's view was behind: the layer has caught up by then, and the
        caller checks again on its fresh view and calls again."""
        ...
