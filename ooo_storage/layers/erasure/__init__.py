"""The erasure-coded blob store (docs/layers.md): objects cut into k data + m parity shards spread
over several directories ("drives"). ``format`` (on-disk records), ``codec`` (pyeclib), ``drives``
(blocking shard I/O, markers, the repair log), ``config`` (ErasureConfig), ``repair`` (the repair
queue, the background repairer, scrub and repair passes), ``store`` (ErasureStore, the byte store);
its Layer is the blob adapter, :class:`ErasureLayer`."""

from __future__ import annotations

from typing import Any

from ..blob import BlobLayer
from .config import ErasureConfig
from .store import ErasureStore

__all__ = ["ErasureConfig", "ErasureLayer", "ErasureStore"]


class ErasureLayer(BlobLayer[ErasureStore]):
    """The Layer over an :class:`ErasureStore` on ``drives`` (``ec_options``: its options, such as
    ``k``, ``m``, ``write_quorum``)."""

    def __init__(self, drives: list[str] | tuple[str, ...], **ec_options: Any) -> None:
        super().__init__(ErasureStore(drives, **ec_options))
