"""``GET /`` (PROTOCOL.md §4): the key listing as JSON, the ``?api=`` endpoints, the HTML explorer."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .. import __version__, keys
from .errors import HTTPFailure
from .rest import json_response

if TYPE_CHECKING:
    from .app import Server

MAX_PAGE = 500
DEFAULT_PAGE = 50


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise HTTPFailure(400, f"ooo: invalid {name}") from None


async def _keys_page(server: Server, request: web.Request) -> bytes:
    page = max(_int(request, "page", 1), 1)
    limit = _int(request, "limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise HTTPFailure(400, f"ooo: limit must be between 1 and {MAX_PAGE}")
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


async def root(server: Server, request: web.Request) -> web.Response:
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
    if "application/json" in request.headers.get("Accept", ""):
        return json_response(orjson.dumps({"keys": all_keys}))
    return web.Response(text=_page(all_keys), content_type="text/html")


def _page(all_keys: list[str]) -> str:
    items = "\n".join(
        f'<li><a href="/{html.escape(k, quote=True)}">{html.escape(k)}</a></li>' for k in all_keys
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>ooo-storage</title></head>'
        f"<body><h1>ooo-storage {__version__}</h1><p>{len(all_keys)} keys</p>"
        f"<ul>\n{items}\n</ul></body></html>"
    )
