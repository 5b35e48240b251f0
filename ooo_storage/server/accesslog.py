"""The access log (one line per request) and the log format of ``serve`` (``--log-format``).

Each request answered, by either HTTP engine, is one INFO line of the ``ooo_storage.access``
logger, written once its answer is ready (a websocket: once it closed): method, path as sent
(query included), status, bytes of the response body, microseconds from its head to its
answer, remote address::

    GET /users/1 200 93 41us 127.0.0.1

Off by default (``ServerConfig.access_log``): a line costs a log record per request, several
microseconds on a path that takes tens. It is made as cheap as logging allows: the record is built
without ``Logger.info``'s look-up of the calling frame, ``serve`` formats the time once per second
(:class:`TextFormatter`) and writes the lines of one event-loop iteration to stderr in one write
(:class:`BatchedHandler`) instead of one write per line. Requests refused before any handler (a
malformed head, the connection limit) are not in it; their INFO lines are ``errors.py``'s.

With ``--log-format json`` every log line, access or not, is one JSON object (:class:`JsonFormatter`):
``{"time", "level", "logger", "message"}``, plus for an access line its fields ``method``, ``path``,
``status``, ``bytes``, ``us``, ``remote``, and ``traceback`` for a record that has one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Literal, TextIO

import orjson

from ..protocol.access import shown

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""What ``serve`` logs by default: ``<date> <time>,<ms> <LEVEL> <logger>: <message>``."""
_FIELDS = "access"
"""The attribute of an access line's record that holds its fields (``extra=``)."""

log = logging.getLogger("ooo_storage.access")


class AccessLog:
    """Writes access lines to ``logger`` (the ``ooo_storage.access`` logger by default)."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def line(self, method: str, path: str, status: int, size: int, seconds: float,
             remote: str | None) -> None:
        """Log one request. ``path`` is the client's: escaped, it can neither split the line nor
        forge another."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path, remote = shown(path), remote or "-"
        micros = round(seconds * 1_000_000)
        fields = {"method": method, "path": path, "status": status, "bytes": size, "us": micros,
                  "remote": remote}
        logger = self.logger
        # makeRecord + handle is what Logger.info does, without its search of the caller's frame
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, _LINE,
                                        (method, path, status, size, micros, remote), None,
                                        extra={_FIELDS: fields}))


_LINE = "%s %s %d %d %dus %s"


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object on one line (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # the date and time once per second
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        doc: dict[str, object] = {
            "time": f"{self._text}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__.get(_FIELDS)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, the date and time formatted once per second (``logging.Formatter``
    formats them for every record)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int(record.msecs):03d}"


class BatchedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the records of one event-loop iteration in one write at its
    end (a busy server's access log made one ``write`` per request). Outside a running loop (in
    another thread, before or after the loop), and for a WARNING or worse, what waits is written
    at once; ``flush`` (logging's shutdown calls it) writes what is left."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._waiting.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self._end_of_iteration)

    def _end_of_iteration(self) -> None:
        self.acquire()
        try:
            self._scheduled = False
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        if waiting:
            self.stream.write("".join(waiting))
        super().flush()


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``serve``'s ``--log-level`` and ``--log-format``)."""
    handler = BatchedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
