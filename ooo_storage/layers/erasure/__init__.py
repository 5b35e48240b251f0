"""The erasure-coded blob store (ADAPTERS.md): objects cut into k data + m parity shards spread
over several directories ("drives"); ``format`` (on-disk records), ``codec`` (pyeclib),
``drives`` (shard I/O, markers, the repair log), ``store`` (ErasureStore and its Layer)."""

from __future__ import annotations

from .store import ErasureLayer, ErasureStore

__all__ = ["ErasureLayer", "ErasureStore"]
