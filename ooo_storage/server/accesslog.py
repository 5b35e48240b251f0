"""The access log (one line per request) and the log format of ``serve`` (``--log-format``).

Each request answered, by either HTTP engine, is one line of the ``ooo_storage.access`` logger,
written once its answer is ready (a websocket: once it closed): method, path as sent (query
included), status, bytes of the response body, microseconds from its head to its answer, remote
address::

    2026-12-03 09:53:51,558 INFO ooo_storage.access: GET /users/1 200 93 41us 127.0.0.1

With ``--log-format json`` every log line, access or not, is one JSON object:
``{"time", "level", "logger", "message"}``, plus for an access line its fields ``method``, ``path``,
``status``, ``bytes``, ``us``, ``remote``, and ``traceback`` for a record that has one.

Off by default (``ServerConfig.access_log``). A line through Python's ``logging`` costs about as
much CPU as the POST it logs (a record, its formatting, a write: ~80 000 instructions), so there
are two kinds: :class:`AccessLog` makes a log record (the library's: whatever handlers the
application installed decide where it goes) and :class:`DirectAccessLog`, what ``serve`` uses,
formats the same line itself into the :class:`Batch` its log handler writes to stderr, where every
line of one event-loop iteration goes out in one write (:class:`BatchedHandler`). Requests refused
before any handler (a malformed head, the connection limit) are not in it; their INFO lines are
``errors.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Literal, TextIO

import orjson

from ..protocol.access import shown

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""What ``serve`` logs by default: ``<date> <time>,<ms> <LEVEL> <logger>: <message>``."""
_FIELDS = "access"
"""The attribute of an access line's record that holds its fields (``extra=``)."""
_LINE = "%s %s %d %d %dus %s"

log = logging.getLogger("ooo_storage.access")


class AccessLog:
    """Access lines as records of ``logger`` (the ``ooo_storage.access`` logger by default)."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def line(self, method: str, path: str, status: int, size: int, seconds: float,
             remote: str | None) -> None:
        """Log one request. ``path`` is the client's: escaped, it can neither split the line nor
        forge another."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = _fields(method, path, status, size, seconds, remote)
        # makeRecord + handle is what Logger.info does, without its search of the caller's frame
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, _LINE,
                                        tuple(fields.values()), None, extra={_FIELDS: fields}))


def _fields(method: str, path: str, status: int, size: int, seconds: float,
            remote: str | None) -> dict[str, str | int]:
    return {"method": method, "path": shown(path), "status": status, "bytes": size,
            "us": round(seconds * 1_000_000), "remote": remote or "-"}


class _Clock:
    """The date and time of a record, formatted once per second (``logging`` does it per record)."""

    __slots__ = ("pattern", "convert", "_second", "_text")

    def __init__(self, pattern: str, utc: bool) -> None:
        self.pattern = pattern
        self.convert = time.gmtime if utc else time.localtime
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        """``created`` (epoch seconds) as ``pattern`` then ``.mmm`` (``,mmm`` in local time)."""
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self.pattern, self.convert(second))
        return self._text % int((created - second) * 1000)


def _text_clock() -> _Clock:
    return _Clock("%Y-%m-%d %H:%M:%S,%%03d", utc=False)


def _iso_clock() -> _Clock:
    return _Clock("%Y-%m-%dT%H:%M:%S.%%03dZ", utc=True)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, its date and time formatted once per second."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._clock = _text_clock()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._clock(record.created)


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object on one line (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _iso_clock()

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self._clock(record.created),
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


class Batch:
    """Text for ``stream``, written at the end of the event-loop iteration that produced it, all
    in one write (outside a running loop, at once). Writers of any thread may add to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._waiting: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            self._waiting.append(text)
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            else:
                self._scheduled = True
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            waiting, self._waiting, self._scheduled = self._waiting, [], False
        if waiting:
            self.stream.write("".join(waiting))
        self.stream.flush()


class BatchedHandler(logging.Handler):
    """A handler writing to a :class:`Batch`: the records of one loop iteration in one write (a
    busy server made one write per request). A WARNING or worse is written at once, after what
    waits; ``flush`` (logging's shutdown calls it) writes what is left."""

    def __init__(self, batch: Batch) -> None:
        super().__init__()
        self.batch = batch

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.batch.add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.batch.flush()

    def flush(self) -> None:
        self.batch.flush()


class DirectAccessLog(AccessLog):
    """Access lines formatted here, exactly as :class:`TextFormatter` or :class:`JsonFormatter`
    would format their records, and added to ``batch`` (the one of ``serve``'s handler, so that
    they keep their order with the other lines): no log record, whatever ``--log-level`` says."""

    __slots__ = ("batch", "json", "clock")

    def __init__(self, batch: Batch, fmt: LogFormat) -> None:
        super().__init__()
        self.batch = batch
        self.json = fmt == "json"
        self.clock = _iso_clock() if self.json else _text_clock()

    def line(self, method: str, path: str, status: int, size: int, seconds: float,
             remote: str | None) -> None:
        fields = _fields(method, path, status, size, seconds, remote)
        message = _LINE % tuple(fields.values())
        now = self.clock(time.time())
        if self.json:
            doc = {"time": now, "level": "INFO", "logger": log.name, "message": message, **fields}
            self.batch.add(orjson.dumps(doc).decode() + "\n")
        else:
            self.batch.add(f"{now} INFO {log.name}: {message}\n")


def configure_logging(level: str, fmt: LogFormat = "text") -> Batch:
    """Log to stderr at ``level`` in ``fmt`` (``serve``'s ``--log-level`` and ``--log-format``);
    returns the batch its lines go through (for a :class:`DirectAccessLog`)."""
    batch = Batch(sys.stderr)
    handler = BatchedHandler(batch)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    return batch
