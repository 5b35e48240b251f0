"""Objects and events (docs/protocol.md §2), and the one path from stored bytes to an Object. Pure: no I/O."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import orjson

from ..errors import CorruptObject
from . import jsontext

_PREFIX = b'{"created":'
_EMPTY_JSON = b'{"created":0,"updated":0,"index":"","data":{}}'


class Object(NamedTuple):
    """A stored value with its metadata. Immutable; ``data`` is compact JSON text."""

    created: int
    updated: int
    index: str  # type: ignore[assignment]  # PROTOCOL §2.1's name; it shadows tuple.index
    path: str
    data: bytes

    @property
    def value(self) -> Any:
        """The decoded JSON value of ``data``."""
        return jsontext.loads(self.data)

    def to_json(self) -> bytes:
        """The exact object bytes of docs/protocol.md §2.1 (``path`` omitted when empty)."""
        created, updated, index, path, data = self
        both = index + path  # the store's keys never need escaping; hand-built objects might
        if '"' in both or "\\" in both or not both.isprintable():
            return self._to_json_escaped()
        if path:
            return b'{"created":%d,"updated":%d,"index":"%b","path":"%b","data":%b}' % (
                created, updated, index.encode(), path.encode(), data,
            )
        return b'{"created":%d,"updated":%d,"index":"%b","data":%b}' % (
            created, updated, index.encode(), data,
        )

    def _to_json_escaped(self) -> bytes:
        # Only objects built by hand can get here: keys in the store are [A-Za-z0-9*/._-].
        path = b',"path":%b' % orjson.dumps(self.path) if self.path else b""
        return b'{"created":%d,"updated":%d,"index":%b%b,"data":%b}' % (
            self.created, self.updated, orjson.dumps(self.index), path, self.data,
        )

    @classmethod
    def empty(cls) -> Object:
        """The object returned for a missing single key."""
        return EMPTY

    @classmethod
    def from_json(cls, raw: bytes) -> Object:
        """Parse bytes produced by :meth:`to_json` (fast path) or any equivalent JSON object."""
        try:
            return _parse_own(raw)
        except (ValueError, IndexError):
            pass
        doc = jsontext.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("object JSON must be an object")
        return cls(
            int(doc.get("created", 0)),
            int(doc.get("updated", 0)),
            str(doc.get("index", "")),
            str(doc.get("path", "")),
            jsontext.dumps(doc.get("data", {})),
        )

    def __repr__(self) -> str:
        return (
            f"Object(created={self.created}, updated={self.updated}, index={self.index!r}, "
            f"path={self.path!r}, data={self.data!r})"
        )


EMPTY = Object(0, 0, "", "", b"{}")


def load_object(key: str, raw: bytes) -> Object:
    """Parse stored object bytes; damage becomes :class:`CorruptObject` (never wrong data)."""
    try:
        return Object.from_json(raw)
    except (ValueError, TypeError) as exc:  # TypeError: {"created": null} and the like
        raise CorruptObject(f"storage: corrupt object at {key}: {exc}") from None

def created_of(key: str, raw: bytes) -> int:
    """The ``created`` stamp of stored object bytes, read from their fixed prefix when they are in
    our own layout (no parse of the whole object: indexes built from raw values use it)."""
    if raw.startswith(_PREFIX):
        end = raw.find(b",", 11)
        digits = raw[11:end]
        if end > 11 and digits.isdigit():
            return int(digits)
    return load_object(key, raw).created


_tuple_new = tuple.__new__


def make_object(created: int, updated: int, index: str, path: str, data: bytes) -> Object:
    """``Object(...)`` without the NamedTuple keyword machinery (a third of the cost; hot paths)."""
    return _tuple_new(Object, (created, updated, index, path, data))


def _parse_own(raw: bytes) -> Object:
    """Parse the exact layout written by :meth:`Object.to_json` without a JSON decoder.

    Raises ValueError (or IndexError) on anything else, so the caller falls back to orjson.
    """
    if not raw.startswith(_PREFIX) or raw[-1:] != b"}":
        raise ValueError("not an own-format object")
    i = raw.index(b',"updated":', 11)
    created = int(raw[11:i])
    j = raw.index(b',"index":"', i + 11)
    updated = int(raw[i + 11 : j])
    k = raw.index(b'"', j + 10)
    index = raw[j + 10 : k]
    pos = k + 1
    path = b""
    if raw.startswith(b',"path":"', pos):
        p = raw.index(b'"', pos + 9)
        path = raw[pos + 9 : p]
        pos = p + 1
    if not raw.startswith(b',"data":', pos):
        raise ValueError("not an own-format object")
    index_text, path_text = index.decode(), path.decode()
    # looked for in the text: ``in`` on bytes first tries the bytes as an int (an exception
    # raised and cleared): 2.2 k instructions each, 0.2 k on a str
    if "\\" in index_text or "\\" in path_text:
        raise ValueError("not an own-format object")
    data = raw[pos + 8 : -1]
    if not data:
        raise ValueError("empty data")
    return make_object(created, updated, index_text, path_text, data)


Operation = Literal["set", "del"]


class Event(NamedTuple):
    """A committed write. ``object`` is the new object for ``set``, the deleted one for a single-key
    ``del`` and None for a glob delete (whose ``key`` is the glob).

    The ops of one transaction (``Layered.commit``) are one event each, all with the same
    ``revision``, told in op order with no await in between: ``txn`` is the number of events of
    that transaction (0 for a plain write) and ``more`` is True on each but the last, so that a
    consumer can hold them back and show the transaction whole."""

    key: str
    operation: Operation
    object: Object | None
    revision: int
    txn: int = 0
    more: bool = False


def make_event(
    key: str, operation: Operation, obj: Object | None, revision: int, txn: int = 0, more: bool = False
) -> Event:
    """``Event(...)`` for the hot path (see :func:`make_object`)."""
    return _tuple_new(Event, (key, operation, obj, revision, txn, more))
