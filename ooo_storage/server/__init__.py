"""The ooo-storage HTTP and websocket server (aiohttp), docs/protocol.md §4–6: the network edge around
the pure rules of ``ooo_storage.protocol``.

Module map: ``app`` (Server: filter registration, the application, routing, middlewares, the
Origin and Host checks of ``protocol.origins``) builds a ``context`` (what handlers may use) once
and passes it to the handlers ``rest``, ``lists`` (glob pages), ``streams`` (subscriptions) and
``explorer`` (``GET /``); handlers never import ``app``. ``auth`` enforces the access policy of
``protocol.access`` on every route before any handler runs, and feeds ``usage`` (per namespace).
``followup`` runs after a write (after-write filters, limit trimming). ``hub`` routes store events
to stream pools, ``clocks`` runs the clock streams, ``connection`` is one websocket (bounded outbox,
keepalive). ``chunked`` streams large responses at the reader's pace; ``offload`` / ``jsonworker``
parse and merge large JSON in a worker process. ``errors`` is the one place exceptions become HTTP
statuses; ``runner`` starts and stops a server, with the connection ``limits``; ``config`` holds
every option.
"""

from __future__ import annotations

from ..errors import FilterRejected, HTTPFailure
from .app import SERVER_KEY, Server, create_app, server_of
from .auth import PRINCIPAL, principal_of
from .config import ServerConfig
from .runner import ServerRunner, serve
from .streams import bearer_token

__all__ = [
    "PRINCIPAL",
    "SERVER_KEY",
    "Server",
    "ServerConfig",
    "ServerRunner",
    "create_app",
    "server_of",
    "principal_of",
    "serve",
    "bearer_token",
    "FilterRejected",
    "HTTPFailure",
]
