"""The one place where exceptions become HTTP responses (PROTOCOL.md §4: 4xx with a plain-text
message; a 5xx only for a real storage failure, never a traceback).

Logging follows whose fault it is: a refused request (4xx) is one INFO line, a storage failure
(503) one ERROR line, and only a defect of ours (500) an ERROR with its traceback. aiohttp refuses
malformed requests itself, before any handler runs, and logs each as an ERROR with a traceback:
:class:`BadRequestLogFilter` on its ``aiohttp.server`` logger makes those one INFO line too."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from ..errors import (
    HTTPFailure,
    MergeError,
    NotActive,
    NotFound,
    StorageError,
    StorageUnavailable,
)

log = logging.getLogger("ooo_storage.server")


def status_of(exc: BaseException) -> tuple[int, str]:
    """HTTP status and body for an exception raised while serving a request."""
    if isinstance(exc, HTTPFailure):
        return exc.status, exc.message
    if isinstance(exc, StorageUnavailable | NotActive):
        return 503, str(exc)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, StorageError | MergeError):
        return 400, str(exc)
    return 500, "ooo: internal error"


def text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


def response_for(exc: BaseException) -> web.Response:
    """The plain-text response for ``exc``: its status and message, plus an :class:`HTTPFailure`'s
    own headers (``WWW-Authenticate`` of a 401) and its ``close``."""
    status, message = status_of(exc)
    response = text_response(status, message)
    if isinstance(exc, HTTPFailure):
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.close:
            response.force_close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        status, message = status_of(exc)
        if status < 500:
            log.info("%s %.200s refused: %d %.300r", request.method, request.path, status, message)
        else:
            log.error("%s %s failed: %r", request.method, request.path, exc, exc_info=status == 500)
        return response_for(exc)


class BadRequestLogFilter(logging.Filter):
    """Turns aiohttp's "Error handling request" ERROR + traceback for a malformed request (bad
    header line, unsupported ``Content-Encoding``, ...: an ``HttpProcessingError``, answered 4xx by
    aiohttp) into one INFO line. Install with ``logging.getLogger("aiohttp.server").addFilter()``;
    records of real failures pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            what, reason = record.getMessage(), " ".join(str(exc.message).split())
            record.msg, record.args = "%s refused: %d %.300r", (what, exc.code, reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True
