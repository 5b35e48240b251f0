"""``GET /healthz`` (live) and ``GET /readyz`` (ready), and which paths are the server's own.

``/healthz`` answers 200 ``ok`` whenever the process answers at all: nothing is checked, so a
probe that fails means a process to restart. ``/readyz`` answers 200 ``ready`` when the store is
open and its persistent layer accepts writes, else 503 with the reason in plain text (the store
not opened yet, a full disk at start, LevelDB refusing writes after a failed write until it
reopened, or refusing writes that add data while its free-space reserve is spent): a reason to
send traffic elsewhere for a while, not to restart. LevelDB retries its reopen (and rebuilds its
reserve) on the next write; an unready ``/readyz`` tries it too (``LevelDBLayer.try_recover``, at
most once per two seconds), so an instance that no write reaches becomes ready again by itself.

These paths are also keys (``healthz``, ``readyz``, ``metrics`` are valid key names): the server
answers them itself only for a plain ``GET`` or ``HEAD`` of exactly ``/healthz``, ``/readyz``,
``/metrics`` (a query string is ignored), and only those enabled (``ServerConfig.health``,
``ServerConfig.metrics``). Writes, deletes and websocket subscriptions on these keys, and every
other key (``metrics/*``, ``healthz/x``), are untouched; turn the endpoints off to read such a key
with ``GET``. Access control never asks for a token on the health endpoints; ``/metrics`` needs
``admin`` only with ``ServerConfig.metrics_auth``.
"""

from __future__ import annotations

from aiohttp import web

from ..layered import Layered
from ..layers import LevelDBLayer
from .config import ServerConfig
from .errors import text_response

METRICS, HEALTHZ, READYZ = "metrics", "healthz", "readyz"


def endpoints(config: ServerConfig) -> frozenset[str]:
    """The keys whose plain GET the server answers itself, as ``config`` enables them."""
    names = {HEALTHZ, READYZ} if config.health else set()
    if config.metrics:
        names.add(METRICS)
    return frozenset(names)


def unready(store: Layered) -> str | None:
    """Why ``store`` cannot take writes now, or None when it can."""
    if not store.active:
        why = store.failure or "not started yet"
        return f"ooo: not ready: the store is not open ({why})"
    layer = store.embedded
    if isinstance(layer, LevelDBLayer) and layer.write_refusal() is not None:
        layer.try_recover()  # no write may come to retry it: the probe does (throttled)
        if (refusal := layer.write_refusal()) is not None:
            return f"ooo: not ready: {refusal}"
    return None


def healthz() -> web.Response:
    """The answer of ``GET /healthz``: the process answers."""
    return text_response(200, "ok")


def readyz(store: Layered) -> web.Response:
    """The answer of ``GET /readyz`` for ``store``."""
    why = unready(store)
    return text_response(200, "ready") if why is None else text_response(503, why)
