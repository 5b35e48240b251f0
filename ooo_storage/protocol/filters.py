"""Filters and hooks of docs/protocol.md §6

Entries are registered per path pattern and kind, in order; for an operation on ``key`` the **first**
entry of that kind whose path equals or matches ``key`` runs, and only it. An entry without a
function only *permits* (what ``open_filter`` registers): it matters in static mode, where an
operation with no entry of its kind is refused with ``filters: route not defined, key:<key>``.

Read filters run in the broadcast path of the stream pools, which is synchronous, so they must be
plain functions; write, delete and after-write filters and the subscribe hooks may be ``async``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from .._utils import maybe_await
from ..errors import FilterRejected, InvalidData
from . import jsontext, keys
from .clock import now
from .objects import Object

T = TypeVar("T")
Kind = Literal["write", "read_object", "read_list", "delete", "after_write"]

WriteFn = Callable[[str, Any], Any]
"""``(key, data) -> data``: ``data`` is the decoded JSON value; return JSON text (bytes/str) or any
orjson-serialisable value (``None`` counts as an empty result; return ``b"null"`` to store null)."""
ReadObjectFn = Callable[[str, Object], Object | None]
"""``(key, obj) -> obj``; ``None`` hides the object."""
ReadListFn = Callable[[str, list[Object]], list[Object]]
"""``(key, objs) -> objs`` (objects newest first); may hide, transform or reorder."""
DeleteFn = Callable[[str], Any]
"""``(key)``; raising refuses the delete."""
AfterWriteFn = Callable[[str], Any]
"""``(key)``, called after a successful POST/PATCH."""


def route_not_defined(key: str) -> FilterRejected:
    return FilterRejected(f"filters: route not defined, key:{key}")


@contextmanager
def refusing(default: str) -> Iterator[None]:
    """A filter or hook that raises refuses the operation: 400 with its message (or ``default``)."""
    try:
        yield
    except FilterRejected:
        raise
    except Exception as exc:
        raise FilterRejected(str(exc) or default) from None


@dataclass(frozen=True)
class Limit:
    """What a limit filter keeps: the ``limit`` newest items younger than ``max_age`` seconds."""

    limit: int | None = None
    max_age: float | None = None
    order: Literal["desc", "asc"] = "desc"

    def cutoff(self) -> int | None:
        """Items created before this clock value (ns) have expired: read from the clock that
        stamps ``created``, so a wall-clock step never expires or revives an item."""
        if self.max_age is None:
            return None
        return now() - int(self.max_age * 1e9)

    def trim(self, objs: list[Object]) -> list[Object]:
        """``objs`` (newest first) reduced to the items kept, newest first."""
        cutoff = self.cutoff()
        if cutoff is not None:
            objs = [o for o in objs if o.created >= cutoff]
        if self.limit is not None:
            objs = objs[: self.limit]
        return objs


@dataclass(frozen=True)
class Entry:
    kind: Kind
    path: str
    fn: Callable[..., Any] | None = None
    limit: Limit | None = None

    def covers(self, key: str) -> bool:
        return self.path == key or keys.match(self.path, key)


@dataclass(frozen=True)
class ListView:
    """How a list (GET of a glob, list pool) is shown: the limit keeps the newest items, then the
    object filter (with the list's key), the order, then the list filter.

    ``plain`` views change nothing but limit and order, so pools build positional patches
    directly; other views are diffed as whole documents.
    """

    key: str
    object_fn: ReadObjectFn | None = None
    list_fn: ReadListFn | None = None
    limit: Limit | None = None

    @property
    def plain(self) -> bool:
        return self.object_fn is None and self.list_fn is None

    @property
    def descending(self) -> bool:
        return self.limit is None or self.limit.order == "desc"

    def apply(self, objs: list[Object]) -> list[Object]:
        """The shown list for ``objs`` (all matching objects, newest first)."""
        return self.present(objs if self.limit is None else self.limit.trim(objs))

    def present(self, objs: list[Object]) -> list[Object]:
        """The shown list for ``objs`` already limited (newest first)."""
        if self.object_fn is not None:
            fn, key = self.object_fn, self.key
            objs = [shown for o in objs if (shown := fn(key, o)) is not None]
        if not self.descending:
            objs = objs[::-1]
        if self.list_fn is not None:
            objs = list(self.list_fn(self.key, objs))
        return objs


class Filters:
    """The ordered filter registry of one server."""

    def __init__(self, static: bool = False) -> None:
        self.static = static
        self._entries: dict[Kind, list[Entry]] = {
            "write": [],
            "read_object": [],
            "read_list": [],
            "delete": [],
            "after_write": [],
        }
        self.on_subscribe: Callable[[str], Any] | None = None
        self.on_unsubscribe: Callable[[str], Any] | None = None

    # -- registration ---------------------------------------------------------------------------
    def add(
        self, kind: Kind, path: str, fn: Callable[..., Any] | None = None, limit: Limit | None = None
    ) -> None:
        if not keys.is_valid(path):
            raise ValueError(f"filter path is not a valid key: {path!r}")
        self._entries[kind].append(Entry(kind, path, fn, limit))

    def describe(self) -> list[dict[str, Any]]:
        """Registered entries, for ``GET /?api=filters``."""
        return [
            {"kind": e.kind, "path": e.path, "limit": e.limit is not None, "permitOnly": e.fn is None}
            for entries in self._entries.values()
            for e in entries
        ]

    def find(self, kind: Kind, key: str) -> Entry | None:
        for entry in self._entries[kind]:
            if entry.covers(key):
                return entry
        return None

    def _required(self, kind: Kind, key: str) -> Entry | None:
        entry = self.find(kind, key)
        if entry is None and self.static:
            raise route_not_defined(key)
        return entry

    # -- reads ----------------------------------------------------------------------------------
    def permit_read(self, key: str) -> None:
        """Static mode: a read of ``key`` needs a read filter (a list filter also covers items)."""
        if not self.static:
            return
        if self.find("read_object", key) is None and self.find("read_list", key) is None:
            raise route_not_defined(key)

    def plain_read(self, key: str) -> bool:
        """:meth:`permit_read`, then whether ``key``'s object is shown as stored (no object filter):
        one call, and no look-up while no read filter is registered (the lean front's GET)."""
        if not self.static and not self._entries["read_object"]:
            return True
        self.permit_read(key)
        return self.object_fn(key) is None

    def plain_write(self, key: str) -> bool:
        """Whether no write or after-write filter sees ``key`` (a write of it is the store's alone):
        no look-up while none is registered (the lean front's POST)."""
        if not self._entries["write"] and not self._entries["after_write"]:
            return True
        return self.find("write", key) is None and self.find("after_write", key) is None

    def read_object(self, key: str, obj: Object) -> Object | None:
        fn = self.object_fn(key)
        return obj if fn is None else fn(key, obj)

    def object_fn(self, key: str) -> ReadObjectFn | None:
        entry = self.find("read_object", key)
        return None if entry is None else entry.fn

    def list_view(self, key: str) -> ListView:
        entry = self.find("read_list", key)
        return ListView(
            key,
            self.object_fn(key),
            None if entry is None or entry.limit is not None else entry.fn,
            None if entry is None else entry.limit,
        )

    # -- writes ---------------------------------------------------------------------------------
    def write_entry(self, key: str) -> Entry | None:
        """The write filter for ``key`` (refused in static mode when none)."""
        return self._required("write", key)

    async def run_write(self, entry: Entry, key: str, value: Any) -> bytes:
        """Run a write filter on a decoded value; returns the JSON text to store."""
        assert entry.fn is not None
        with refusing(f"filters: write refused, key:{key}"):
            result = await maybe_await(entry.fn(key, value))
        invalid = FilterRejected(f"filters: invalid filter result error, key:{key}")
        if result is None:
            raise invalid
        try:
            if isinstance(result, bytes | bytearray | str):
                return jsontext.dumps(jsontext.loads(result))
            return jsontext.dumps(result)
        except (orjson.JSONDecodeError, TypeError):
            raise invalid from None

    async def check_delete(self, key: str) -> None:
        entry = self._required("delete", key)
        if entry is None or entry.fn is None:
            return
        with refusing(f"filters: delete refused, key:{key}"):
            await maybe_await(entry.fn(key))

    def after_write_entry(self, key: str) -> Entry | None:
        return self.find("after_write", key)

    async def check_subscribe(self, key: str) -> None:
        """Static-mode read permission plus ``on_subscribe`` (refusal → 400 before the upgrade)."""
        self.permit_read(key)
        if self.on_subscribe is None:
            return
        refused = f"filters: subscription refused, key:{key}"
        with refusing(refused):
            allowed = await maybe_await(self.on_subscribe(key))
        if allowed is False:
            raise FilterRejected(refused)


def read_guard(key: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a read filter for a request: a filter that raises refuses the read (400), never a 500."""
    with refusing(f"filters: read refused, key:{key}"):
        result = fn(*args)
    return result


def parse_json(body: bytes) -> Any:
    """Decode a request body that must be exactly one JSON value (InvalidData otherwise)."""
    if not body:
        raise InvalidData()
    try:
        return jsontext.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidData(f"storage: invalid data (not JSON: {exc})") from None
