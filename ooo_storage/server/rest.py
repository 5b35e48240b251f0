"""REST handlers of PROTOCOL.md §4: GET, POST, PATCH, DELETE on ``/{key}``.

Each handler receives a key already known to use only allowed characters; it validates the key,
asks the filters, calls the store and answers. Exceptions become responses in ``errors.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .. import jsontext, keys
from ..errors import NotFound
from ..merge import merge_json
from .errors import HTTPFailure
from .filters import parse_json, read_guard

if TYPE_CHECKING:
    from .app import Server

JSON = "application/json"


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def check_key(key: str) -> None:
    if not keys.is_valid(key):
        raise HTTPFailure(400, "ooo: key is not valid")


async def read_body(request: web.Request, cap: int) -> bytes:
    """The request body, refusing (413) anything over ``cap`` bytes without buffering it all."""
    too_large = HTTPFailure(413, f"ooo: request body too large (limit {cap} bytes)")
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _index(index: str) -> web.Response:
    return json_response(orjson.dumps({"index": index}))


async def get(server: Server, request: web.Request, key: str) -> web.Response:
    check_key(key)
    filters, store = server.filters, server.store
    filters.permit_read(key)
    if "*" in key:
        objs = await store.get_list_descending(key)
        objs = read_guard(key, filters.list_view(key).apply, objs)
        return json_response(b"[" + b",".join(o.to_json() for o in objs) + b"]")
    if filters.object_fn(key) is None:
        try:
            return json_response(await store.get_json(key))
        except NotFound:
            raise HTTPFailure(404, "ooo: empty key") from None
    try:
        obj = read_guard(key, filters.read_object, key, await store.get(key))
    except NotFound:
        obj = None
    if obj is None:
        raise HTTPFailure(404, "ooo: empty key")
    return json_response(obj.to_json())


async def post(server: Server, request: web.Request, key: str) -> web.Response:
    check_key(key)
    keys.validate_glob(key)
    entry = server.filters.write_entry(key)
    body = await read_body(request, server.config.max_body_bytes)
    data: bytes = body
    if entry is not None and entry.fn is not None:
        data = await server.filters.run_write(entry, key, parse_json(body))
    store = server.store
    index = await (store.push(key, data) if keys.is_glob(key) else store.set(key, data))
    await server.after_write(key)
    return _index(index)


async def patch(server: Server, request: web.Request, key: str) -> web.Response:
    check_key(key)
    if keys.has_glob(key):
        raise HTTPFailure(400, "ooo: glob pattern not allowed for this operation")
    entry = server.filters.write_entry(key)
    body = parse_json(await read_body(request, server.config.max_body_bytes))
    store = server.store
    try:
        obj = await store.get_and_lock(key)
    except NotFound:
        raise HTTPFailure(404, "ooo: not found") from None
    try:
        merged = merge_json(obj.data, body)
        if entry is not None and entry.fn is not None:
            merged = await server.filters.run_write(entry, key, jsontext.loads(merged))
    except BaseException:
        await store.unlock(key)
        raise
    index = await store.set_and_unlock(key, merged)  # releases the lock even when it fails
    await server.after_write(key)
    return _index(index)


async def delete(server: Server, request: web.Request, key: str) -> web.Response:
    check_key(key)
    await server.filters.check_delete(key)
    await server.store.delete(key)  # a glob delete never raises NotFound
    return web.Response(status=204)
