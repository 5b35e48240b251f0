"""The access log (one line per request) and the log format of ``serve`` (``--log-format``).

Each request answered, by either HTTP engine, is one INFO line of the ``ooo_storage.access``
logger, written once its answer is ready (a websocket: once it closed): method, path as sent
(query included), status, bytes of the response body, microseconds from its head to its
answer, remote address::

    GET /users/1 200 93 41us 127.0.0.1

Off by default (``ServerConfig.access_log``): a line costs a log record and a write to stderr per
request, several microseconds on a path that takes tens. Requests refused before any handler
(a malformed head, the connection limit) are not in it; their INFO lines are ``errors.py``'s.

With ``--log-format json`` every log line, access or not, is one JSON object (:class:`JsonFormatter`):
``{"time", "level", "logger", "message"}``, plus for an access line its fields ``method``, ``path``,
``status``, ``bytes``, ``us``, ``remote``, and ``traceback`` for a record that has one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

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
        self.logger.info("%s %s %d %d %dus %s", method, path, status, size, micros, remote,
                         extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object on one line (module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": _iso(record.created),
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


def _iso(created: float) -> str:
    """``created`` (epoch seconds) as UTC ISO 8601 with milliseconds."""
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((created - whole) * 1000):03d}Z"


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``serve``'s ``--log-level`` and ``--log-format``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
