"""The ooo-storage HTTP and websocket server (aiohttp), PROTOCOL.md §4–6.

Module map: ``app`` (Server, routing, middlewares) → ``origins`` (Origin/Host checks) →
``rest`` / ``lists`` (glob pages) / ``streams`` / ``explorer`` (handlers) → ``filters`` (§6) →
``pools`` (routing events to stream pools) → ``state`` (what a pool shows and the patch each event
makes) → ``connection`` (bounded outbox, keepalive) → ``frames``. ``chunked`` streams large
responses at the reader's pace; ``offload`` / ``jsonworker`` parse and merge large JSON in a worker
process. ``errors`` is the one place exceptions become HTTP statuses; ``runner`` starts and stops a
server, with the connection ``limits``.
"""

from __future__ import annotations

from ..errors import FilterRejected, HTTPFailure
from .app import SERVER_KEY, Server, create_app, server_of
from .config import ServerConfig
from .runner import ServerRunner, serve
from .streams import bearer_token

__all__ = [
    "SERVER_KEY",
    "Server",
    "ServerConfig",
    "ServerRunner",
    "create_app",
    "server_of",
    "serve",
    "bearer_token",
    "FilterRejected",
    "HTTPFailure",
]
