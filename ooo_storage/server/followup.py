"""What follows a successful write (docs/protocol.md §6): the after-write filter of the key, or the
trimming its limit filter asks for.

The write itself already succeeded and was answered for: a follow-up that fails is logged, never
turned into an error for the writer.
"""

from __future__ import annotations

import contextlib
import logging

from .._utils import maybe_await
from ..errors import NotFound
from ..layered import Layered
from ..protocol.filters import Filters, Limit

log = logging.getLogger("ooo_storage.server")


async def after_write(store: Layered, filters: Filters, key: str) -> None:
    """Run the after-write filter of ``key``: a limit filter's trimming or a function."""
    entry = filters.after_write_entry(key)
    if entry is None:
        return
    try:
        if entry.limit is not None:
            await trim(store, entry.path, entry.limit)
        elif entry.fn is not None:
            await maybe_await(entry.fn(key))
    except Exception:
        log.exception("after-write filter failed for %s", key)


async def trim(store: Layered, pattern: str, limit: Limit) -> None:
    """Delete, silently, every item of the glob ``pattern`` that ``limit`` does not keep."""
    objs = await store.get_list_descending(pattern)
    kept = {o.path for o in limit.trim(objs)}
    for obj in objs:
        if obj.path not in kept:
            with contextlib.suppress(NotFound):
                await store.delete_silent(obj.path)
