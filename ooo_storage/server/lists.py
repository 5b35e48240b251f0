"""``GET`` of a glob (docs/protocol.md §4): one page of the list, read from the store and streamed.

What a page holds, its cursor and its headers are the rules of :mod:`~ooo_storage.protocol.pages`;
here the page is read from the store in the store's own order where the view allows it (a page then
costs about its size, not the number of matches) and sent at the reader's pace (``chunked.py``).
"""

from __future__ import annotations

from operator import itemgetter

import orjson
from aiohttp import web

from ..layered import Layered
from ..protocol.filters import ListView, read_guard
from ..protocol.objects import Object
from ..protocol.pages import (
    Page,
    Position,
    check_cursor,
    decode_cursor,
    json_array,
    next_headers,
    page,
    page_size,
)
from . import chunked
from .context import Context

PAGE_VISIT = 20_000
"""Keys a page may visit in the store: a glob that matches few of many keys gets a short page
(possibly empty) with a cursor to go on from, instead of one request walking the whole store."""
_ROUNDS = 8  # reads of one page when a read-object filter hides items


async def _page(store: Layered, view: ListView, limit: int, after: Position | None) -> Page:
    """The page, read from the store page by page in its own order where the view allows it."""
    key, kept = view.key, view.limit
    if view.list_fn is None and kept is not None and kept.limit is not None:
        objs = await store.get_page(key, kept.limit)  # only its newest items can ever show
        return read_guard(key, page, view, objs, limit, after)
    if view.list_fn is not None or kept is not None:
        objs = await store.get_list_descending(key)  # the filter needs every item
        return read_guard(key, page, view, objs, limit, after)
    fn = view.object_fn
    items: list[Object] = []
    position = after
    for _ in range(_ROUNDS):
        want = limit - len(items)
        batch, resume = await store.page_within(key, want + 1, position, visit=PAGE_VISIT)
        taken = batch[:want]
        if fn is None:
            items += taken  # no filter: the batch as read
        else:
            for obj in taken:
                visible = read_guard(key, fn, key, obj)
                if visible is not None:
                    items.append(visible)
        if taken:
            position = (taken[-1].created, taken[-1].path)
        if resume is not None and len(batch) <= want:
            return Page(items, resume, True)  # the visit budget ran out: go on from there
        if len(batch) <= want:
            return Page(items, None, False)
        if len(items) >= limit:
            return Page(items, position, True)
    return Page(items, position, True)  # a read-object filter hid many: the rest next time


async def read(ctx: Context, key: str, limit_text: str | None, cursor: str | None) -> tuple[Page, int]:
    """The page of the glob ``key`` (already checked and permitted) that ``?limit=`` and
    ``?cursor=`` ask for (their texts, None when absent), and its size limit: what both HTTP
    engines answer (aiohttp's handler below, the lean front)."""
    limit = page_size(limit_text, ctx.config.list_limit)
    after = decode_cursor(cursor) if cursor else None  # an empty cursor: the first page
    view = ctx.filters.list_view(key)
    check_cursor(view, after)
    return await _page(ctx.store, view, limit, after), limit


def one_chunk(items: list[Object]) -> bytes | None:
    """The JSON array of ``items`` (:func:`json_array`'s bytes) when it is sent as one plain
    response, at most :data:`chunked.CHUNK_BYTES` (what ``chunked.send`` makes of a body no larger);
    None when it is sent at the reader's pace: the rule both HTTP engines answer by.

    One ``orjson.dumps`` of the whole page costs a quarter less than :meth:`Object.to_json` per
    item: each object as a dict of :meth:`Object.to_json`'s members in its order (``path`` left out
    when empty), ``data`` as stored (a ``Fragment``), strings escaped by orjson as ``to_json``
    escapes them."""
    if sum(map(len, map(_DATA, items))) > chunked.CHUNK_BYTES:
        return None  # over before any encoding (a page of large objects is never built whole)
    fragment = orjson.Fragment
    try:
        body = orjson.dumps([
            {"created": created, "updated": updated, "index": index, "path": path, "data": fragment(data)}
            if path else {"created": created, "updated": updated, "index": index, "data": fragment(data)}
            for created, updated, index, path, data in items
        ])
    except TypeError:  # an int orjson cannot write (over 64 bits; hand-built objects only)
        body = b"[%s]" % b",".join([obj.to_json() for obj in items])
    return None if len(body) > chunked.CHUNK_BYTES else body


_DATA = itemgetter(4)  # Object.data


async def get(ctx: Context, request: web.Request, key: str) -> web.StreamResponse:
    """One page of the glob ``key`` (already checked and permitted)."""
    result, limit = await read(ctx, key, request.query.get("limit"), request.query.get("cursor"))
    headers = next_headers(key, limit, result)
    body = one_chunk(result.items)
    if body is not None:
        return web.Response(body=body, content_type="application/json", headers=headers)
    return await chunked.send(
        request,
        json_array(result.items),
        content_type="application/json",
        headers=headers,
        write_timeout=ctx.config.write_timeout,
    )
