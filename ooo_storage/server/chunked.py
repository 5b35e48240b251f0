"""Responses written in bounded chunks, at the pace the peer reads them.

A response built whole costs its full size for as long as the peer takes to read it: 40 clients
that ask for a 28 MB list and never read held 2.4 GB. Here the body is produced part by part
(each part encoded only when it is about to be sent), grouped into chunks of about
:data:`CHUNK_BYTES`, and each chunk is written only once the previous ones have drained to the
socket: memory per slow reader is one chunk plus the transport's buffer, and the event loop runs
other requests between chunks. A peer that reads nothing for ``write_timeout`` seconds is cut off.

A body that fits in one chunk is sent as an ordinary response with a ``Content-Length``.
:func:`send_bytes` sends bytes already in memory and shared (a large stored object, whose ``data``
every reader gets) the same way, slice by slice, with their ``Content-Length``: a reader costs one
slice, not a copy of its own. A ``HEAD`` gets the head of the response only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

from aiohttp import web

log = logging.getLogger("ooo_storage.server")

CHUNK_BYTES = 64 * 1024
"""Bytes gathered before a write; aiohttp waits for the socket to drain past its 64 KiB mark."""


def _chunks(parts: Iterable[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    sent = False
    for part in parts:
        pending.append(part)
        size += len(part)
        if size >= CHUNK_BYTES:
            yield b"".join(pending)
            pending.clear()
            size = 0
            sent = True
    if pending or not sent:
        yield b"".join(pending)


async def send(
    request: web.Request,
    parts: Iterable[bytes],
    *,
    content_type: str,
    headers: Mapping[str, str] | None = None,
    write_timeout: float,
) -> web.StreamResponse:
    """Answer ``request`` with the concatenation of ``parts`` (produced lazily, see module doc).

    Producing a part must not raise: once the first chunk is out, the status is sent."""
    chunks = _chunks(parts)
    first = next(chunks)
    following = next(chunks, None)
    if following is None:
        return web.Response(body=first, content_type=content_type, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
    return await _paced(request, response, itertools.chain((first, following), chunks), write_timeout)


async def send_bytes(
    request: web.Request, parts: Sequence[bytes], *, content_type: str, write_timeout: float
) -> web.StreamResponse:
    """Answer ``request`` with the concatenation of ``parts`` and its ``Content-Length``, each part
    sent in slices of :data:`CHUNK_BYTES` that are views of it, never copies."""
    response = web.StreamResponse()
    response.content_type = content_type
    response.content_length = sum(len(part) for part in parts)
    return await _paced(request, response, _slices(parts), write_timeout)


def _slices(parts: Sequence[bytes]) -> Iterator[memoryview]:
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]


async def _paced(
    request: web.Request,
    response: web.StreamResponse,
    chunks: Iterable[bytes | memoryview],
    write_timeout: float,
) -> web.StreamResponse:
    """Prepare ``response`` and write ``chunks`` one by one, each once the previous ones drained;
    cut the connection when the peer takes nothing for ``write_timeout``."""
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return response  # aiohttp would send what is written, HEAD or not
        for chunk in chunks:
            async with asyncio.timeout(write_timeout):
                await response.write(chunk)
    except TimeoutError:
        log.info("%s %s: peer read nothing for %.0f s, connection closed",
                 request.method, request.path, write_timeout)
        _abort(request)
    except ConnectionError:
        pass  # the peer left; aiohttp notices when it finishes the response
    return response


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
