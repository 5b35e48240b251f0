"""REST handlers of docs/protocol.md §4: GET, POST, PATCH, DELETE on ``/{key}``.

Each handler receives a key already known to use only allowed characters; it validates the key,
asks the filters, calls the store and answers. Exceptions become responses in ``errors.py``.
Glob GETs are paged and streamed by ``lists.py``; JSON work on large bodies runs off the event loop
(``offload.py``), and a PATCH may not make a document larger than a POST could.

Large objects are sent at the reader's pace (``chunked.py``) without a copy of their own: 100
clients that asked for a 9 MB object and never read used to hold 1.8 GB. Request bodies are read
within the server's body budget (``limits.py``), in an encoding aiohttp decodes.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.web_protocol import RequestPayloadError

from ..errors import HTTPFailure, NotFound
from ..protocol import jsontext, keys
from ..protocol.filters import Entry, parse_json, read_guard
from ..protocol.merge import merge_json
from ..protocol.objects import Object
from . import chunked, lists, offload
from .context import Context
from .errors import ClientGone
from .limits import BODY_HOLD

JSON = "application/json"
_PATH_CHARS = re.compile(r"/[A-Za-z0-9*/._-]*").fullmatch
_VERSION = re.compile(r"[0-9a-fA-F]{1,32}").fullmatch
DECODED = ("gzip", "deflate", *(["br"] if HAS_BROTLI else []), *(["zstd"] if HAS_ZSTD else []))
"""The ``Content-Encoding`` values aiohttp decodes (besides ``identity``); it passes any other
through undecoded, which would be stored as if it were the JSON."""
_ACCEPTED = {"", "identity", *DECODED}


def request_key(request: web.Request) -> str | None:
    """The key a request names: its raw path without the leading ``/`` (``""`` for ``/``), nothing
    normalised away (``.`` segments, percent-decoding); None when the path has characters no key
    can have (docs/protocol.md §4: 404)."""
    path = request.raw_path.partition("?")[0]
    return path[1:] if _PATH_CHARS(path) is not None else None


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def check_key(key: str) -> None:
    if not keys.is_valid(key):
        raise HTTPFailure(400, "ooo: key is not valid")


def parse_since(text: str) -> int:
    """The version of ``?since=`` (lowercase hex, as frames carry it); 400 for anything else."""
    if _VERSION(text) is None:
        raise HTTPFailure(
            400, 'ooo: since must be a version: the hex "version" of a frame or of a ?since= answer'
        )
    return int(text, 16)


def too_large(cap: int) -> HTTPFailure:
    return HTTPFailure(413, f"ooo: request body too large (limit {cap} bytes)", close=True)


def check_encoding(request: web.Request) -> None:
    """Refuse (415) a ``Content-Encoding`` the server cannot decode, naming those it can."""
    encoding = request.headers.get("Content-Encoding", "")
    if encoding.lower() not in _ACCEPTED:
        raise HTTPFailure(
            415,
            f"ooo: unsupported Content-Encoding {encoding[:100]!r} (accepted: identity, "
            f"{', '.join(DECODED)})",
            close=True,
        )


async def read_body(request: web.Request, cap: int) -> bytes:
    """The request body, refusing (413) anything over ``cap`` bytes (decoded) without buffering it
    all, (415) an encoding it cannot decode, (400) a body its ``Content-Encoding`` does not decode,
    and (503) a large body the server's body budget cannot hold now (``limits.BodyHold``)."""
    check_encoding(request)
    length = request.content_length
    if length is not None and length > cap:
        raise too_large(cap)
    hold = request.get(BODY_HOLD)  # None: the body arrived whole, small, before the handler ran
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise too_large(cap)
            if hold is not None:
                hold.grow_to(size)
            chunks.append(chunk)
    except ConnectionError:  # aiohttp's "Connection lost": nobody is left to answer
        raise ClientGone() from None
    except RequestPayloadError:
        # Nothing more is read from this body: without the end marked, aiohttp would read on
        # after the answer, meet the same error and log it as an unhandled exception.
        request.content.feed_eof()
        encoding = request.headers.get("Content-Encoding", "")
        message = f"ooo: request body does not decode as Content-Encoding {encoding!r}"
        raise HTTPFailure(400, message, close=True) from None
    return b"".join(chunks)


def index_json(index: str) -> bytes:
    """The body of a successful POST or PATCH (docs/protocol.md §4)."""
    return orjson.dumps({"index": index})


async def get(ctx: Context, request: web.Request, key: str) -> web.StreamResponse:
    check_key(key)
    ctx.filters.permit_read(key)
    since = request.query.get("since")
    if since is not None:
        body = await ctx.pools.changes(key, parse_since(since))
        if len(body) <= chunked.CHUNK_BYTES:
            return json_response(body)
        return await chunked.send_bytes(
            request, (body,), content_type=JSON, write_timeout=ctx.config.write_timeout
        )
    if "*" in key:
        return await lists.get(ctx, request, key)
    obj = await read_object(ctx, key)
    if len(obj.data) <= chunked.CHUNK_BYTES:
        return json_response(obj.to_json())
    return await send_object(ctx, request, obj)


async def read_object(ctx: Context, key: str) -> Object:
    """The object a GET of the single key ``key`` answers with, its read filter applied (404 when
    there is none). The key is checked and the read permitted already (shared with ``front.py``)."""
    filters, store = ctx.filters, ctx.store
    if store.reads_now:
        obj = store.read_now(key)  # the key is checked: once per GET
    else:
        try:
            obj = await store._get_checked(key)
        except NotFound:
            obj = None
    if obj is not None and filters.object_fn(key) is not None:
        obj = read_guard(key, filters.read_object, key, obj)
    if obj is None:
        raise missing()
    return obj


def missing() -> HTTPFailure:
    """The failure of a GET of one key that has no object."""
    return HTTPFailure(404, "ooo: empty key")


async def send_object(ctx: Context, request: web.Request, obj: Object) -> web.StreamResponse:
    """A large object's JSON (PROTOCOL §2.1, exactly the bytes of ``obj.to_json()``) sent as its
    head, its ``data`` (the stored bytes, shared by every reader) and its closing brace, at the
    reader's pace."""
    head = obj._replace(data=b"").to_json()[:-1]  # §2.1: "data" is the last member
    return await chunked.send_bytes(
        request, (head, obj.data, b"}"), content_type=JSON, write_timeout=ctx.config.write_timeout
    )


def _encoded(text: bytes) -> orjson.Fragment:
    """JSON text this module encoded itself, for the store to keep as it is: the store re-reads
    and re-encodes bytes it is given, which would put large JSON work back on the loop."""
    return orjson.Fragment(text)


def _large(size: int) -> bool:
    return size > offload.INLINE_BYTES


async def post(ctx: Context, request: web.Request, key: str) -> web.Response:
    entry = post_entry(ctx, key)
    body = await read_body(request, ctx.config.max_body_bytes)
    return json_response(await post_body(ctx, key, entry, body))


def post_entry(ctx: Context, key: str) -> Entry | None:
    """What a POST on ``key`` must pass before its body is read: the key, and the write filter
    (None: none; refused in static mode)."""
    check_key(key)
    keys.validate_glob(key)
    return ctx.filters.write_entry(key)


async def post_body(ctx: Context, key: str, entry: Entry | None, body: bytes) -> bytes:
    """Store the body of a POST on ``key`` (a push for a glob), run its follow-up; the answer's body."""
    data: bytes | orjson.Fragment = body
    if entry is not None and entry.fn is not None:
        data = _encoded(await ctx.filters.run_write(entry, key, parse_json(body)))
    elif _large(len(body)):
        data = _encoded(await offload.run(offload.COMPACT, body))
    store = ctx.store
    index = await (store.push(key, data) if keys.is_glob(key) else store.set(key, data))
    await ctx.after_write(key)
    return index_json(index)


async def patch(ctx: Context, request: web.Request, key: str) -> web.Response:
    entry = patch_entry(ctx, key)
    raw = await read_body(request, ctx.config.max_body_bytes)
    return json_response(await patch_body(ctx, key, entry, raw))


def patch_entry(ctx: Context, key: str) -> Entry | None:
    """What a PATCH on ``key`` must pass before its body is read (see :func:`post_entry`)."""
    check_key(key)
    if keys.has_glob(key):
        raise HTTPFailure(400, "ooo: glob pattern not allowed for this operation")
    return ctx.filters.write_entry(key)


async def patch_body(ctx: Context, key: str, entry: Entry | None, raw: bytes) -> bytes:
    """Merge the body of a PATCH into ``key``'s document, run its follow-up; the answer's body."""
    cap = ctx.config.max_body_bytes
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
    return index_json(index)


async def delete(ctx: Context, request: web.Request, key: str) -> web.Response:
    await remove(ctx, key)
    return web.Response(status=204)


async def remove(ctx: Context, key: str) -> None:
    """A DELETE of ``key`` (shared with ``front.py``)."""
    check_key(key)
    await ctx.filters.check_delete(key)
    await ctx.store.delete(key)  # a glob delete never raises NotFound
