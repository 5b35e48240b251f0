"""What one stream pool shows, and the change each event makes to it (docs/protocol.md §5.3).

No asyncio and no sockets: a state takes events and answers either ``None`` (nothing to send),
:data:`SNAPSHOT` (send the whole state) or a list of RFC 6902 ops. The pool turns that into one
frame for all its connections.

Every item remembers the revision of the event that put it there, so a glob delete (one event for
many keys) removes exactly the items written before it.

A patch costs parsing both documents and walking them in Python; beyond :data:`PATCH_MAX_BYTES`
(old and new together) a change is sent as a snapshot instead, which costs a copy: one large
value must not hold the event loop for the time of a diff (a 300 000-member document took 0.8 s).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from sortedcontainers import SortedList

from . import jsontext, keys
from .filters import ListView, ReadObjectFn
from .jsonpatch import Op, diff
from .objects import Event, Object


class _Snapshot:
    def __repr__(self) -> str:
        return "SNAPSHOT"


SNAPSHOT: Final = _Snapshot()
Change = list[Op] | _Snapshot | None

_EMPTY = Object.empty()
PATCH_MAX_BYTES = 256 * 1024


class ObjectState:
    """A single-key pool: the object (the empty object when missing), through the object filter."""

    __slots__ = ("key", "_fn", "obj", "rev", "_shown")

    def __init__(self, key: str, object_fn: ReadObjectFn | None = None) -> None:
        self.key = key
        self._fn = object_fn
        self.obj = _EMPTY
        self.rev = 0
        self._shown = _EMPTY

    def _show(self, obj: Object) -> Object:
        if obj.created == 0 or self._fn is None:
            return obj
        return self._fn(self.key, obj) or _EMPTY

    def load(self, obj: Object | None, revision: int) -> None:
        self.obj = obj or _EMPTY
        self.rev = revision
        self._shown = self._show(self.obj)

    def data(self) -> bytes:
        return self._shown.to_json()

    def apply(self, event: Event) -> Change:
        if event.operation == "set":
            assert event.object is not None
            if event.object.to_json() == self.obj.to_json():
                return None  # already part of the snapshot this pool was built from
            new = event.object
        elif event.key == self.key:
            if self.obj.created == 0:
                return None
            new = _EMPTY
        else:  # glob delete: one event for every matching key written before it
            if not keys.match(event.key, self.key):
                return None
            if self.rev >= event.revision:
                return None
            new = _EMPTY
        old_shown = self._shown
        self.obj, self.rev = new, event.revision
        self._shown = self._show(new)
        if old_shown.created == 0:
            # From the empty object a client gets the whole object, never a patch.
            return None if self._shown.created == 0 and event.operation == "set" else SNAPSHOT
        before, after = old_shown.to_json(), self._shown.to_json()
        if len(before) + len(after) > PATCH_MAX_BYTES:
            return SNAPSHOT
        return diff(jsontext.loads(before), jsontext.loads(after)) or None


class ListState:
    """A glob pool: every matching item in ONE canonical order (newest first unless a limit filter
    asks for ascending), the order of its snapshot, of GET and of every positional patch.

    With a limit filter the items are limited here too, so positions are those clients see; items
    older than ``max_age`` leave at the next event of the pool, whatever it changes (with a
    ``remove``), never silently.
    """

    __slots__ = ("key", "view", "_order", "_items", "_shown")

    def __init__(self, key: str, view: ListView | None = None) -> None:
        self.key = key
        self.view = view or ListView(key)
        self._order: SortedList[tuple[int, str]] = SortedList()  # (created, path), ascending
        self._items: dict[str, tuple[Object, int]] = {}
        self._shown: Any = None  # the shown document, kept only for filtered views

    def __len__(self) -> int:
        return len(self._items)

    # -- reading ------------------------------------------------------------------------------
    def _newest_first(self) -> list[Object]:
        items = self._items
        return [items[path][0] for _, path in reversed(self._order)]

    def objects(self) -> list[Object]:
        """The shown list (the items are already limited: see :meth:`load` and :meth:`_insert`)."""
        return self.view.present(self._newest_first())

    def data(self) -> bytes:
        return b"[" + b",".join(o.to_json() for o in self.objects()) + b"]"

    def load(self, objs: list[Object], revision: int) -> None:
        """Start from ``objs`` (newest first) as of ``revision``."""
        self.load_read([(obj, revision) for obj in objs])

    def load_read(self, entries: list[tuple[Object, int]]) -> None:
        """Start from objects each read at its own store revision (a state built in steps while
        writes went on): an event is then applied to an item only if it is newer than the item's
        read, so the events of the build, replayed afterwards, change exactly what the reads
        missed."""
        entries.sort(key=lambda e: (e[0].created, e[0].path), reverse=True)
        if self.view.limit is not None:
            kept = {o.path for o in self.view.limit.trim([o for o, _ in entries])}
            entries = [e for e in entries if e[0].path in kept]
        self._items = {obj.path: (obj, rev) for obj, rev in entries}
        self._order = SortedList((obj.created, obj.path) for obj, _ in entries)
        if not self.view.plain:
            data = self.data()
            self._shown = jsontext.loads(data) if len(data) <= PATCH_MAX_BYTES else None

    # -- changing -----------------------------------------------------------------------------
    def _pos(self, i: int) -> str:
        # ``i`` indexes the ascending order; clients see newest first unless asked otherwise.
        return f"/{len(self._order) - 1 - i if self.view.descending else i}"

    def _remove(self, path: str, ops: list[Op]) -> None:
        obj, _ = self._items.pop(path)
        i = self._order.index((obj.created, obj.path))
        ops.append({"op": "remove", "path": self._pos(i)})
        del self._order[i]

    def _insert(self, obj: Object, revision: int, ops: list[Op]) -> None:
        limit = self.view.limit
        if limit is not None:
            cutoff = limit.cutoff()
            if cutoff is not None and obj.created < cutoff:
                return  # already expired: never shown
            if limit.limit is not None and len(self._order) >= limit.limit:
                if (obj.created, obj.path) < self._order[0]:
                    return  # older than everything kept: never shown
                # Evicted silently by the limit filter: subscribers see remove + add.
                while len(self._order) >= limit.limit:
                    self._remove(self._order[0][1], ops)
        self._items[obj.path] = (obj, revision)
        key = (obj.created, obj.path)
        self._order.add(key)
        ops.append(
            {"op": "add", "path": self._pos(self._order.index(key)), "value": orjson.Fragment(obj.to_json())}
        )

    def _set(self, obj: Object, revision: int, ops: list[Op]) -> None:
        current = self._items.get(obj.path)
        if current is None:
            self._insert(obj, revision, ops)
            return
        if current[1] >= revision:
            return  # this item was read after the event: already part of it
        old = current[0]
        if old.to_json() == obj.to_json():
            return  # already part of the snapshot this pool was built from
        if old.created == obj.created:
            self._items[obj.path] = (obj, revision)
            i = self._order.index((obj.created, obj.path))
            ops.append({"op": "replace", "path": self._pos(i), "value": orjson.Fragment(obj.to_json())})
        else:  # set_with_meta moved it
            self._remove(obj.path, ops)
            self._insert(obj, revision, ops)

    def _expire(self, ops: list[Op]) -> None:
        """Remove the items older than the limit filter's ``max_age``, as GET leaves them out."""
        limit = self.view.limit
        cutoff = None if limit is None else limit.cutoff()
        if cutoff is None:
            return
        while self._order and self._order[0][0] < cutoff:
            self._remove(self._order[0][1], ops)

    def apply(self, event: Event) -> Change:
        ops: list[Op] = []
        snapshot = False
        self._expire(ops)  # at every event of the pool, whatever it changes
        if event.operation == "set":
            assert event.object is not None
            self._set(event.object, event.revision, ops)
        elif event.object is not None:  # single-key delete
            current = self._items.get(event.key)
            if current is not None and current[1] < event.revision:  # not read after it
                self._remove(event.key, ops)
        else:  # glob delete: remove what was written before it, then one snapshot
            doomed = [
                path
                for path, (_, rev) in self._items.items()
                if rev < event.revision and keys.match(event.key, path)
            ]
            for path in doomed:
                self._remove(path, ops)
            snapshot = bool(doomed) or keys.peer(self.key, event.key)
        if self.view.plain:
            return SNAPSHOT if snapshot else (ops or None)
        data = self.data()
        if len(data) > PATCH_MAX_BYTES:  # a filtered view is diffed whole: too costly here
            self._shown = None
            return SNAPSHOT
        shown = jsontext.loads(data)
        old, self._shown = self._shown, shown
        if snapshot or old is None:
            return SNAPSHOT
        return diff(old, shown) or None
