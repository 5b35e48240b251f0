"""``GET /`` (PROTOCOL.md §4): the key listing as JSON, the ``?api=`` endpoints, the HTML explorer."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .. import __version__
from ..errors import HTTPFailure
from ..protocol import keys
from . import chunked
from .lists import query_int
from .rest import json_response

if TYPE_CHECKING:
    from .app import Server

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_PAGE_NUMBER = 10**12
_BATCH = 1000  # keys encoded at a time for the whole listing


async def _keys_page(server: Server, request: web.Request) -> bytes:
    page = query_int(request, "page", 1, 1, MAX_PAGE_NUMBER)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    text = request.query.get("filter", "")
    prefix = keys.glob_prefix(text)
    found = [k for k in await server.store.keys() if k.startswith(prefix)]
    start = (page - 1) * limit
    return orjson.dumps(
        {
            "keys": found[start : start + limit],
            "total": len(found),
            "page": page,
            "limit": limit,
            "filter": text,
        }
    )


async def root(server: Server, request: web.Request) -> web.StreamResponse:
    api = request.query.get("api")
    if api == "keys":
        return json_response(await _keys_page(server, request))
    if api == "info":
        return json_response(orjson.dumps(server.info()))
    if api == "filters":
        return json_response(
            orjson.dumps({"static": server.filters.static, "filters": server.filters.describe()})
        )
    if api == "state":
        return json_response(orjson.dumps(server.pools.state()))
    if api is not None:
        raise HTTPFailure(400, f"ooo: unknown api {api!r}")
    all_keys = await server.store.keys()
    wants_json = "application/json" in request.headers.get("Accept", "")
    return await chunked.send(
        request,
        _json(all_keys) if wants_json else _page(all_keys),
        content_type="application/json" if wants_json else "text/html",
        write_timeout=server.config.write_timeout,
    )


def _json(all_keys: list[str]) -> Iterator[bytes]:
    """``{"keys": [...]}`` in parts (see chunked.py: every key is listed, at the reader's pace)."""
    yield b'{"keys":['
    for start in range(0, len(all_keys), _BATCH):
        batch = orjson.dumps(all_keys[start : start + _BATCH])[1:-1]
        yield batch if not start else b"," + batch
    yield b"]}"


def _page(all_keys: list[str]) -> Iterator[bytes]:
    yield (
        '<!doctype html><html><head><meta charset="utf-8"><title>ooo-storage</title></head>'
        f"<body><h1>ooo-storage {__version__}</h1><p>{len(all_keys)} keys</p><ul>\n"
    ).encode()
    for k in all_keys:
        yield f'<li><a href="/{html.escape(k, quote=True)}">{html.escape(k)}</a></li>\n'.encode()
    yield b"</ul></body></html>"
