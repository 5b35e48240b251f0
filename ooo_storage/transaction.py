"""Transaction: the optimistic transaction of ``async with store.transaction() as tx``.

Reads go to the store at once and record the version of what they saw; writes are only collected.
On a clean exit of the ``async with`` block the writes are committed in one ``Layered.commit``
whose ``expect`` is what was read: if any key read has changed since (or a key read as missing
now exists), it raises :class:`~ooo_storage.errors.Conflict` and nothing is applied. An exception
in the block commits nothing. No lock is held while the block runs (optimistic): locks are taken
only inside the commit, for a bounded time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from .errors import Conflict, InvalidTransaction, TransactionTimeout
from .protocol.objects import Object
from .protocol.txn import Committed, TxnOp, version

__all__ = ["Transaction"]

Read = Callable[[str], Awaitable[Object | None]]
Commit = Callable[[Sequence[TxnOp], Mapping[str, int | None], float], Awaitable[Committed]]


class Transaction:
    """What ``Layered.transaction()`` gives: ``get`` records, ``set``/``patch``/``delete`` collect.

    ``timeout`` is the deadline of the whole transaction, counted from ``async with``: a commit
    that would start after it, or wait for locks beyond it, raises TransactionTimeout (a
    Conflict) and applies nothing. ``committed`` is the commit's result once the block has exited
    cleanly (None before, and for a transaction that wrote nothing: it has nothing to commit and
    its reads are not checked).
    """

    def __init__(self, read: Read, commit: Commit, timeout: float = 5.0) -> None:
        self._read = read
        self._commit = commit
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._reads: dict[str, int | None] = {}
        self._ops: dict[str, TxnOp] = {}
        self.committed: Committed | None = None

    async def get(self, key: str) -> Object | None:
        """The object at ``key`` now, or None if it is missing (the commit then requires it to be
        still missing). The store, not this transaction's own writes, answers. Reading a key
        again after it changed raises Conflict at once: the transaction cannot commit anyway."""
        obj = await self._read(key)
        seen = None if obj is None else version(obj)
        if self._reads.setdefault(key, seen) != seen:
            raise Conflict([key])
        return obj

    def set(self, key: str, data: Any) -> None:
        """Write ``data`` (a JSON value, or bytes/str of JSON text) to ``key`` at commit."""
        self._add(TxnOp("set", key, data))

    def patch(self, key: str, data: Any) -> None:
        """Merge ``data`` (a PATCH document) into ``key``'s data at commit (``key`` must exist)."""
        self._add(TxnOp("patch", key, data))

    def delete(self, key_or_glob: str) -> None:
        """Delete ``key_or_glob`` at commit (a missing key: nothing to do)."""
        self._add(TxnOp("del", key_or_glob))

    def _add(self, op: TxnOp) -> None:
        if op.key in self._ops:
            raise InvalidTransaction(
                f"storage: invalid transaction: {op.key} written twice (one write per key)"
            )
        self._ops[op.key] = op

    async def commit(self) -> Committed | None:
        """Commit now (what a clean exit does); None when nothing was written."""
        if not self._ops:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TransactionTimeout([], self.timeout, (
                f"storage: transaction timeout: its {self.timeout:g} s deadline passed before "
                "the commit; nothing applied, retry"
            ))
        self.committed = await self._commit(list(self._ops.values()), self._reads, left)
        self._ops.clear()
        return self.committed

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if et is None:
            await self.commit()
