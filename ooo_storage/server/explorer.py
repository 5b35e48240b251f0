"""``GET /`` (docs/protocol.md §4.6): the key listing as JSON, the ``?api=`` endpoints, the explorer.

Under an access policy these need ``admin`` (``auth.py`` checked it), and the key listings show only
the keys the principal may read. The explorer is one static page (``static/explorer.html``: HTML,
CSS and JS, no build step) that reads the server like any client does, through glob pages,
websocket streams and ``?api=``; it holds no data itself, so it is sent as it is, read once."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .. import MemoryLayer, __version__
from ..errors import HTTPFailure
from ..protocol import keys
from ..protocol.access import Policy
from ..protocol.pages import whole_number
from . import chunked, openapi
from .auth import principal_of
from .context import Context
from .rest import json_response

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_PAGE_NUMBER = 10**12
_BATCH = 1000  # keys encoded at a time for the whole listing


def _mirror(ctx: Context) -> MemoryLayer | None:
    """The store's memory mirror once it serves (before, ``store.keys()`` says it does not: 503)."""
    return ctx.store.memory if ctx.store.active else None


async def _readable_keys(ctx: Context, request: web.Request, prefix: str = "") -> list[str]:
    """The keys starting with ``prefix`` that the request's principal may read (every one of them
    without a policy). With a memory mirror only the prefix's range of its sorted index is read."""
    memory = _mirror(ctx)
    if memory is not None:
        found = memory.prefix_range(prefix)[0]
    else:
        found = await ctx.store.keys()  # raises NotActive (503) before the store serves
        if prefix:
            found = [k for k in found if k.startswith(prefix)]  # the cheap test first
    principal = principal_of(request)
    if principal is None:
        return found
    readable = Policy.reader(principal)
    return [k for k in found if readable(k)]


async def _keys_page(ctx: Context, request: web.Request) -> bytes:
    query = request.query
    page = whole_number("page", query.get("page"), 1, 1, MAX_PAGE_NUMBER)
    limit = whole_number("limit", query.get("limit"), DEFAULT_PAGE, 1, MAX_PAGE)
    text = query.get("filter", "")
    start = (page - 1) * limit
    shown, total = await _page_of_keys(ctx, request, keys.glob_prefix(text), start, start + limit)
    return orjson.dumps({"keys": shown, "total": total, "page": page, "limit": limit, "filter": text})


async def _page_of_keys(
    ctx: Context, request: web.Request, prefix: str, start: int, stop: int
) -> tuple[list[str], int]:
    """The readable keys ``[start:stop]`` under ``prefix`` and how many there are. Without a policy
    a memory mirror answers from its index (two bisections and the page): the explorer asks this
    for every folder it opens, and with 200 000 keys reading them all cost 100-240 ms a request
    (a loaded machine), the index ~0.2 ms."""
    memory = _mirror(ctx)
    if memory is not None and principal_of(request) is None:
        return memory.prefix_range(prefix, start, stop)
    found = await _readable_keys(ctx, request, prefix)
    return found[start:stop], len(found)


async def _folders_page(ctx: Context, request: web.Request) -> bytes:
    """``?api=folders&prefix=P``: the folders right under ``P`` (``P + S`` for each key ``P + S/...``),
    a page of up to ``limit`` and the cursor of the next (null at the end). Without a policy a memory
    mirror answers by skipping (a bisection per folder); under a policy a folder is listed only if it
    holds a key the principal may read, so every key under ``P`` is read and tested, as ``?api=keys``
    does; without a mirror, the store's keys."""
    query = request.query
    prefix, after = query.get("prefix", ""), query.get("cursor") or None
    limit = whole_number("limit", query.get("limit"), MAX_PAGE, 1, MAX_PAGE)
    if "*" in prefix:
        raise HTTPFailure(400, f"ooo: prefix {prefix!r} has a *: ?api=folders takes a literal key prefix")
    if after is not None and (not after.startswith(prefix) or "/" in after[len(prefix) :]):
        raise HTTPFailure(400, f"ooo: cursor {after!r} is not a folder under prefix {prefix!r}: "
                          "pass back the cursor of the previous page")
    memory = _mirror(ctx)
    if memory is not None and principal_of(request) is None:
        found, cursor = memory.folders(prefix, after, limit)
    else:
        readable = await _readable_keys(ctx, request, prefix)
        found, cursor = MemoryLayer.folders_of(readable, prefix, after, limit)
    return orjson.dumps({"folders": found, "cursor": cursor, "prefix": prefix})


def _info(ctx: Context) -> dict[str, Any]:
    cfg, pools = ctx.config, ctx.pools
    return {
        "name": "ooo-storage",
        "version": __version__,
        "revision": ctx.store.revision,
        "static": cfg.static,
        "noPatch": cfg.no_patch,
        "maxBodyBytes": cfg.max_body_bytes,
        "pools": len(pools.pools),
        "connections": len(pools.connections()),
        "clockConnections": len(ctx.clocks),
    }


async def root(ctx: Context, request: web.Request) -> web.StreamResponse:
    api = request.query.get("api")
    if api == "keys":
        return json_response(await _keys_page(ctx, request))
    if api == "folders":
        return json_response(await _folders_page(ctx, request))
    if api == "info":
        return json_response(orjson.dumps(_info(ctx)))
    if api == "filters":
        return json_response(orjson.dumps({"static": ctx.filters.static, "filters": ctx.filters.describe()}))
    if api == "state":
        return json_response(orjson.dumps(ctx.pools.state()))
    if api == "stats":
        return json_response(orjson.dumps(await ctx.guard.stats()))
    if api == "openapi":
        return json_response(openapi.document(ctx.guard.policy is not None, frozenset(ctx.guard.endpoints)))
    if api is not None:
        raise HTTPFailure(400, f"ooo: unknown api {api!r}")
    if "application/json" not in request.headers.get("Accept", ""):
        return web.Response(body=page(), content_type="text/html", charset="utf-8", headers=page_headers())
    return await chunked.send(
        request,
        _json(await _readable_keys(ctx, request)),
        content_type="application/json",
        write_timeout=ctx.config.write_timeout,
    )


def _json(all_keys: list[str]) -> Iterator[bytes]:
    """``{"keys": [...]}`` in parts (see chunked.py: every key is listed, at the reader's pace)."""
    yield b'{"keys":['
    for start in range(0, len(all_keys), _BATCH):
        batch = orjson.dumps(all_keys[start : start + _BATCH])[1:-1]
        yield batch if not start else b"," + batch
    yield b"]}"


_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


@functools.cache
def page_headers() -> dict[str, str]:
    """The page's headers. Its own script and style are inline, allowed by their SHA-256 (computed
    here from the page as served, so an edit of the page can never leave a stale hash) rather than
    by ``'unsafe-inline'``, which would let any injected script run; it talks to this server only,
    and is never framed."""
    allowed: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for tag, text in _INLINE.findall(page()):
        allowed[tag].append("'sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode() + "'")
    script, style = (" ".join(allowed[tag]) or "'none'" for tag in (b"script", b"style"))
    return {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": f"default-src 'none'; script-src {script}; style-src {style}; connect-src "
        "'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    }


@functools.cache
def page() -> bytes:
    """The explorer page (package data, read once)."""
    return resources.files(__package__).joinpath("static/explorer.html").read_bytes()
