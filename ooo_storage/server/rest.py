"""REST handlers of PROTOCOL.md §4: GET, POST, PATCH, DELETE on ``/{key}``.

Each handler receives a key already known to use only allowed characters; it validates the key,
asks the filters, calls the store and answers. Exceptions become responses in ``errors.py``.
Glob GETs are paged and streamed by ``lists.py``; JSON work on large bodies runs off the event loop
(``offload.py``), and a PATCH may not make a document larger than a POST could.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import HTTPFailure, NotFound
from ..protocol import jsontext, keys
from ..protocol.filters import parse_json, read_guard
from ..protocol.merge import merge_json
from . import lists, offload
from .context import Context

JSON = "application/json"
_PATH_CHARS = re.compile(r"/[A-Za-z0-9*/._-]*").fullmatch


def request_key(request: web.Request) -> str | None:
    """The key a request names: its raw path without the leading ``/`` (``""`` for ``/``), nothing
    normalised away (``.`` segments, percent-decoding); None when the path has characters no key
    can have (PROTOCOL.md §4: 404)."""
    path = request.raw_path.partition("?")[0]
    return path[1:] if _PATH_CHARS(path) is not None else None


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def check_key(key: str) -> None:
    if not keys.is_valid(key):
        raise HTTPFailure(400, "ooo: key is not valid")


async def read_body(request: web.Request, cap: int) -> bytes:
    """The request body, refusing (413) anything over ``cap`` bytes (decoded) without buffering it
    all, and (400) a body its ``Content-Encoding`` does not decode."""
    too_large = HTTPFailure(413, f"ooo: request body too large (limit {cap} bytes)", close=True)
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
    except RequestPayloadError:
        # Nothing more is read from this body: without the end marked, aiohttp would read on
        # after the answer, meet the same error and log it as an unhandled exception.
        request.content.feed_eof()
        encoding = request.headers.get("Content-Encoding", "")
        message = f"ooo: request body does not decode as Content-Encoding {encoding!r}"
        raise HTTPFailure(400, message, close=True) from None
    return b"".join(chunks)


def _index(index: str) -> web.Response:
    return json_response(orjson.dumps({"index": index}))


async def get(ctx: Context, request: web.Request, key: str) -> web.StreamResponse:
    check_key(key)
    filters, store = ctx.filters, ctx.store
    filters.permit_read(key)
    if "*" in key:
        return await lists.get(ctx, request, key)
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


def _encoded(text: bytes) -> orjson.Fragment:
    """JSON text this module encoded itself, for the store to keep as it is: the store re-reads
    and re-encodes bytes it is given, which would put large JSON work back on the loop."""
    return orjson.Fragment(text)


def _large(size: int) -> bool:
    return size > offload.INLINE_BYTES


async def post(ctx: Context, request: web.Request, key: str) -> web.Response:
    check_key(key)
    keys.validate_glob(key)
    entry = ctx.filters.write_entry(key)
    body = await read_body(request, ctx.config.max_body_bytes)
    data: bytes | orjson.Fragment = body
    if entry is not None and entry.fn is not None:
        data = _encoded(await ctx.filters.run_write(entry, key, parse_json(body)))
    elif _large(len(body)):
        data = _encoded(await offload.run(offload.COMPACT, body))
    store = ctx.store
    index = await (store.push(key, data) if keys.is_glob(key) else store.set(key, data))
    await ctx.after_write(key)
    return _index(index)


async def patch(ctx: Context, request: web.Request, key: str) -> web.Response:
    check_key(key)
    if keys.has_glob(key):
        raise HTTPFailure(400, "ooo: glob pattern not allowed for this operation")
    entry = ctx.filters.write_entry(key)
    cap = ctx.config.max_body_bytes
    raw = await read_body(request, cap)
    body = None if _large(len(raw)) else parse_json(raw)
    store = ctx.store
    try:
        obj = await store.get_and_lock(key)
    except NotFound:
        if body is None:  # an invalid body is refused (400) before a missing key (404)
            await offload.run(offload.COMPACT, raw)
        raise HTTPFailure(404, "ooo: not found") from None
    try:
        if body is None or _large(len(obj.data)):
            merged = await offload.run(offload.MERGE, obj.data, raw)
        else:
            merged = merge_json(obj.data, body)
        if len(merged) > cap:
            raise HTTPFailure(
                413, f"ooo: merged document too large ({len(merged)} bytes, limit {cap} bytes)"
            )
        if entry is not None and entry.fn is not None:
            merged = await ctx.filters.run_write(entry, key, jsontext.loads(merged))
    except BaseException:
        await store.unlock(key)
        raise
    index = await store.set_and_unlock(key, _encoded(merged))  # releases the lock even on failure
    await ctx.after_write(key)
    return _index(index)


async def delete(ctx: Context, request: web.Request, key: str) -> web.Response:
    check_key(key)
    await ctx.filters.check_delete(key)
    await ctx.store.delete(key)  # a glob delete never raises NotFound
    return web.Response(status=204)
