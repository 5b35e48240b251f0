"""The one place where exceptions become HTTP responses (docs/protocol.md §4: 4xx with a plain-text
message; a 5xx only for a real storage failure, never a traceback).

Logging follows whose fault it is: a refused request (4xx, a 501 for what this store does not do, or
a 503 :class:`Busy`) and a client that went away are one INFO line, a storage failure (503) one
ERROR line, and only a defect of ours (500) an ERROR with its traceback. aiohttp refuses
malformed requests itself, before any handler runs, and logs each as an ERROR with a traceback:
:class:`BadRequestLogFilter` on its ``aiohttp.server`` logger makes those one INFO line too.

What repeats is said once per interval (:class:`Notices`): a full disk fails every write with the
same 503 (8 writers made 18 805 ERROR lines, 5 MB, in 10 s), and the connection limits
(``limits.py``) are hit by every connection of an attack."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from ..errors import (
    HTTPFailure,
    MergeError,
    NotActive,
    NotFound,
    StorageError,
    StorageUnavailable,
)

log = logging.getLogger("ooo_storage.server")

NOTICE_INTERVAL = 60.0
"""Seconds between two log lines about the same kind of limit being hit."""
FAILURE_INTERVAL = 10.0
"""Seconds between two log lines about the same storage failure (503)."""


@dataclass
class _Window:
    level: int
    message: str
    count: int
    loop: asyncio.AbstractEventLoop
    """The loop that ends the interval: once it no longer runs, the window's end never comes."""


class Notices:
    """Log lines about something that repeats (a limit hit, a storage failure), at most one per
    kind per ``interval`` seconds: the first is logged at once, the others of the interval are
    counted and said in one line when it ends (an attack or a full disk must not flood the log,
    and the count says how bad it was). Memory: one entry per kind seen in the last interval.

    Outside a running loop there is nothing to end an interval with, so every line is logged; a
    window left open by a loop that stopped (a server started again in a new loop) is closed at
    the next notice of its kind instead of silencing that kind for good."""

    def __init__(self, interval: float = NOTICE_INTERVAL) -> None:
        self.interval = interval
        self._windows: dict[str, _Window] = {}
        self.totals: dict[str, int] = {}
        """How many times each kind was noticed (logged or not), for ``GET /metrics``: a request
        refused below aiohttp by ``limits.py`` leaves no other trace. Bounded: the kinds are the
        server's own words (plus :func:`log_error`'s storage tallies)."""

    def tally(self, kind: str) -> None:
        """Count one ``kind`` without a log line."""
        self.totals[kind] = self.totals.get(kind, 0) + 1

    def __call__(self, level: int, kind: str, message: str) -> None:
        self.tally(kind)
        window = self._windows.get(kind)
        if window is not None and not window.loop.is_running():
            self._close(kind, window)  # its loop stopped before the interval ended
            window = self._windows.get(kind)
        if window is not None:
            window.level, window.message, window.count = level, message, window.count + 1
            return
        log.log(level, "%s", message)
        self._open(kind, level, message)

    def _open(self, kind: str, level: int, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to end an interval: nothing is counted, each line is said
        window = self._windows[kind] = _Window(level, message, 0, loop)
        loop.call_later(self.interval, self._close, kind, window)

    def _close(self, kind: str, window: _Window) -> None:
        if self._windows.get(kind) is not window:
            return  # already closed
        del self._windows[kind]
        if window.count:  # still happening: say how often, and count the next interval
            log.log(window.level, "%s (%d more time%s in the last %g s)", window.message,
                    window.count, "" if window.count == 1 else "s", self.interval)
            self._open(kind, window.level, window.message)


class Busy(HTTPFailure):
    """A request refused because the server is busy with others (503, ``Retry-After``, connection
    closed) by a limit that says so in its own notice (``limits.py``): like a 4xx, the request is
    one INFO line, not a storage failure."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(503, message, close=True, headers={"Retry-After": str(retry_after)})


class ClientGone(HTTPFailure):
    """The client closed its connection before its request was read whole: nobody hears an answer,
    and it is nobody's failure but the client's (one INFO line, no traceback)."""

    def __init__(self) -> None:
        super().__init__(400, "ooo: the client went away before its request body ended", close=True)


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


def error_middleware(failures: Notices) -> Middleware:
    """The middleware making exceptions responses. A storage failure (503) is logged through
    ``failures``: one ERROR line per distinct message per interval, then how many followed."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            log_error(failures, request.method, request.path, request.remote, exc)
            return response_for(exc)

    return errors


def refused(status: int, exc: BaseException) -> bool:
    """Whether answering ``status`` for ``exc`` refuses a request rather than fails to serve it: a
    4xx, a 503 :class:`Busy`, or a 501 (this store cannot do that: ``?api=backup`` on a store
    without LevelDB, a transaction on SOS). Nothing broke, so there is nothing to alert on."""
    return status < 500 or status == 501 or isinstance(exc, Busy)


def log_error(
    failures: Notices, method: str, path: str, remote: str | None, exc: BaseException
) -> None:
    """Log ``exc``, raised while serving ``method path`` from ``remote``, by whose fault it is (module
    doc); shared by :func:`error_middleware` and the lean front (``front.py``)."""
    status, message = status_of(exc)
    if isinstance(exc, ClientGone):
        log.info("%s %.200s from %s: %s", method, path, remote, message)
    elif refused(status, exc):
        log.info("%s %.200s refused: %d %.300r", method, path, status, message)
    elif status == 500:
        log.error("%s %s failed: %r", method, path, exc, exc_info=exc)
    else:
        # Grouped by kind of failure, not by message: the messages of one episode differ ("next
        # attempt in 0.37 s"), which made one ERROR line per request again.
        kind = f"{status} {type(exc).__name__}"
        failures(logging.ERROR, kind, f"{method} {path:.200} failed: {exc!r:.300}")
        failures.tally(f"{STORAGE} {_operation(method)} {type(exc).__name__}")


STORAGE = "storage"
"""The first word of the tallies of storage failures (``<STORAGE> <operation> <error>``)."""


def _operation(method: str) -> str:
    """The operation a failed request was: ``write``, ``delete`` or ``read``."""
    if method in ("POST", "PATCH", "PUT"):
        return "write"
    return "delete" if method == "DELETE" else "read"


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
