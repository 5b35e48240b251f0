"""The erasure-coded blob store (docs/layers.md): objects cut into k data + m parity shards spread
over several directories ("drives"). ``format`` (on-disk records), ``codec`` (pyeclib), ``drives``
(blocking shard I/O, markers, the repair log), ``config`` (ErasureConfig), ``repair`` (the repair
queue, the background repairer, scrub and repair passes), ``store`` (ErasureStore, the byte store);
its Layer is the blob adapter, :class:`ErasureLayer`."""

from __future__ import annotations

import os
from typing import Any

from ..shared import SharedBlobLayer, SharedOptions
from .config import ErasureConfig
from .store import ErasureStore

__all__ = ["ErasureConfig", "ErasureLayer", "ErasureStore"]


class ErasureLayer(SharedBlobLayer[ErasureStore]):
    """The Layer over an :class:`ErasureStore` on ``drives`` (``ec_options``: its options, such as
    ``k``, ``m``, ``write_quorum``).

    ``shared=True`` (or a :class:`~ooo_storage.layers.shared.SharedOptions`): several processes on
    these drives see each other's writes within ``indexer_rate`` seconds (sooner with inotify),
    through per-process journals in ``journals`` (default ``<first drive>/.shared``: every
    process must use the same directory, and its parent must exist: with the first drive missing,
    a shared start fails rather than make a folder where that drive should be)."""

    def __init__(
        self,
        drives: list[str] | tuple[str, ...],
        *,
        shared: bool | SharedOptions = False,
        indexer_rate: float = 0.1,
        journals: str | os.PathLike[str] | None = None,
        **ec_options: Any,
    ) -> None:
        store = ErasureStore(drives, **ec_options)
        where = None
        if shared:
            where = os.path.abspath(os.fspath(journals or os.path.join(store.drives[0], ".shared")))
        options = shared if isinstance(shared, SharedOptions) else SharedOptions(indexer_rate=indexer_rate)
        super().__init__(store, where, options)

    def _note_remote(self, key: str, present: bool) -> None:
        super()._note_remote(key, present)
        self.store.note(key, present)
