"""SOS: a simple object store in a directory tree shared by many processes (docs/layers.md).

Why it exists: LevelDB is single-process, while a directory of files can be shared by several
processes, or machines over NFS, with nothing but ``rename`` and hard links for atomicity (the
design of Go SOS, whose layout it keeps: ``root/xx/yy/<60 hex>`` of ``sha256(key)``, ``root/.tmp``,
directories 0700, files 0600).

Each object file is a self-describing SOS1 record (:mod:`.record`: header, key, value and a CRC-32C,
so damage is never returned as data nor as "not found"); ``record="raw"`` is the Go SOS
compatible mode (bare values, no checksum, no listing). :mod:`.store` holds the byte store,
:class:`SimpleObjectStore`; its Layer is the blob adapter, :class:`SOSLayer`.

Writes go temp file (``O_EXCL``) → write → fsync → rename → fsync directory (durability ``"full"``,
the default: acknowledged means durable); ``"data"`` skips the directory fsync (never a torn object,
but the rename may be lost on power failure); ``"none"`` is Go SOS (no fsync). Reads hard-link the
object to a private temp name first (``read_mode="link"``), so a concurrent overwrite or delete by
any process, even over NFS, cannot cut the read short; ``"direct"`` opens the file itself (local
filesystems, where an open descriptor pins the inode). Every blocking step of one logical operation
runs in one submission to the store's own bounded worker pool (``fs.workers.WorkerPool``); writes of
one key are serialised per process so they complete in the order they are acknowledged.

Known limits:

* no ordering across processes: concurrent writers of one key get last-writer-wins by ``rename``;
* ``rename``/``clone`` rewrite the record under the new key (the key is inside the record): a crash
  between publishing the new key and removing the old one leaves both;
* ``get_and_delete`` is a destructive read: a caller killed after claiming the object loses it;
* :class:`SOSLayer` watch events (through ``Layered``) and its key index cover only this process's
  writes unless it is built with ``shared=True`` (:mod:`ooo_storage.layers.shared`: per-process
  journals under ``root/.shared``); otherwise keys written or deleted by other processes appear
  in it after a restart (``get`` sees them at once), while :meth:`SimpleObjectStore.keys` /
  :meth:`SimpleObjectStore.list` walk the tree and see every process;
* walking the tree is O(number of objects) (one header read per object); listing checks each
  header and slot, values are verified by ``get``/``check``/``scrub``;
* ``get_into`` verifies the whole value before writing it, so it holds one value in memory
  (``store_from`` with a synchronous reader streams);
* NFS negative lookup caching can hide keys created by other clients for up to ``acdirmax`` seconds
  unless the share is mounted with ``lookupcache=positive``;
* a failed directory fsync after the rename reports an error although the new value is already
  visible (it may not survive a power failure): the caller sees old-or-new, never a torn value;
* on a full filesystem writes fail with :class:`~ooo_storage.errors.NoSpace` (nothing is left
  behind); deletes and reads keep working (a read that cannot make its hard link for lack of
  space or inodes opens the object directly, as ``"direct"`` mode does), and so does ``start``.
"""

from __future__ import annotations

import os
from typing import Any

from ...errors import CorruptObject
from ..shared import SharedBlobLayer, SharedOptions
from .record import MAGIC, VERSION, encode_record
from .store import SimpleObjectStore

__all__ = ["SimpleObjectStore", "SOSLayer", "CorruptObject", "encode_record", "MAGIC", "VERSION"]


class SOSLayer(SharedBlobLayer[SimpleObjectStore]):
    """The Layer over a :class:`SimpleObjectStore` at ``root`` (``sos_options``: its options).

    ``shared=True`` (or a :class:`~ooo_storage.layers.shared.SharedOptions`): several processes on
    ``root`` see each other's writes within ``indexer_rate`` seconds (sooner with inotify), through
    per-process journals in ``root/.shared`` (:mod:`ooo_storage.layers.shared`)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shared: bool | SharedOptions = False,
        indexer_rate: float = 0.1,
        **sos_options: Any,
    ) -> None:
        store = SimpleObjectStore(root, **sos_options)
        journals = os.path.join(store.root, ".shared") if shared else None
        options = shared if isinstance(shared, SharedOptions) else SharedOptions(indexer_rate=indexer_rate)
        super().__init__(store, journals, options)
