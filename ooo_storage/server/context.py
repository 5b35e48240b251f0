"""What request handlers may use: one :class:`Context`, built once by the :class:`~.app.Server`.

Handlers (``rest``, ``lists``, ``streams``, ``explorer``) take the context, never the Server:
``app.py`` imports the handlers and no handler imports ``app.py``, and what a handler can reach is
listed here, typed. The store is reached only through the public names of
:class:`~ooo_storage.layered.Layered`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..layered import Layered
from ..protocol.filters import Filters
from .clocks import Clocks
from .config import ServerConfig
from .connection import Flusher
from .hub import Pools

if TYPE_CHECKING:  # auth.py imports the handlers, which import this module
    from .auth import Guard


@dataclass(frozen=True, slots=True)
class Context:
    """The store, the rules and the shared stream machinery one server's handlers work with."""

    store: Layered
    config: ServerConfig
    filters: Filters
    """The filters and hooks of docs/protocol.md §6, registered through the Server."""
    pools: Pools
    """The stream pools (subscriptions to a key or a glob)."""
    clocks: Clocks
    """The clock streams on ``/``."""
    flusher: Flusher
    """Writes the frames queued for every websocket during one event-loop iteration."""
    after_write: Callable[[str], Awaitable[None]]
    """``after_write(key)``: the follow-up of a successful POST or PATCH (``followup.py``)."""
    guard: Guard
    """The access policy in force (None: no access control) and the usage counter (``auth.py``);
    ``request[auth.PRINCIPAL]`` is who a request is."""
