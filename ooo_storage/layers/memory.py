"""MemoryLayer: the complete in-memory mirror that serves every read of a ``Layered`` store."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from operator import attrgetter

from sortedcontainers import SortedList

from ..protocol.keys import glob_prefix, has_glob, match
from ..protocol.objects import Object, created_of, load_object

Position = tuple[int, str]
"""``(created, path)``: the order of every list (newest first is its reverse)."""

_POSITION = attrgetter("created", "path")


class MemoryLayer:
    """A dict of objects plus a sorted key index, so a glob read scans only its literal prefix.

    New keys wait in a set and join the sorted index in bulk at the next glob read or key listing:
    one insert into a SortedList costs several times a whole write, a bulk merge a fraction of it.
    Values loaded at cold start may be held as raw object JSON and are parsed on first access:
    a restart then costs little more than iterating the persistent layer.

    A second index orders every key by ``(created, path)`` for list pages (:meth:`page`). It is
    built on the first page request (parsing what was loaded raw) and kept up to date from then on,
    new keys again joining it in bulk.
    """

    asynchronous = False  # a SyncLayer (layers.base): Layered calls it inline

    def __init__(self) -> None:
        self._data: dict[str, Object | bytes] = {}
        self._index: SortedList = SortedList()
        self._fresh: set[str] = set()
        self._by_time: SortedList | None = None  # (created, key); None until a page is asked for
        self._time_fresh: dict[str, int] = {}  # key -> created, not yet in _by_time

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Object | None:
        value = self._data.get(key)
        if value.__class__ is bytes:
            value = self._data[key] = load_object(key, value)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    def get_raw(self, key: str) -> bytes | None:
        """The object JSON of ``key`` without materialising it (fast single-key reads)."""
        value = self._data.get(key)
        if value is None or value.__class__ is bytes:
            return value  # type: ignore[return-value]
        return value.to_json()  # type: ignore[union-attr]

    def matching_keys(self, pattern: str) -> Iterator[str]:
        """Keys matching ``pattern`` in bytewise order, scanning only its literal prefix."""
        prefix = glob_prefix(pattern)
        for key in self._sorted().irange(minimum=prefix):
            if not key.startswith(prefix):
                break
            if match(pattern, key):
                yield key

    def get_list(self, pattern: str) -> list[Object]:
        get = self.get
        return [get(key) for key in self.matching_keys(pattern)]  # type: ignore[misc]

    def _sorted(self) -> SortedList:
        if self._fresh:
            self._index.update(self._fresh)
            self._fresh.clear()
        return self._index

    def set(self, key: str, obj: Object) -> None:
        old = self._data.get(key)
        if old is None:
            self._fresh.add(key)
        if self._by_time is not None:
            if old is not None:
                created = _created(key, old)
                if created == obj.created:
                    self._data[key] = obj
                    return
                self._untime(key, created)
            self._time_fresh[key] = obj.created
        self._data[key] = obj

    def delete(self, key_or_glob: str) -> int:
        if has_glob(key_or_glob):
            doomed = list(self.matching_keys(key_or_glob))
        elif key_or_glob in self._data:
            doomed = [key_or_glob]
        else:
            return 0
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def _drop(self, key: str) -> None:
        old = self._data.pop(key)
        if key in self._fresh:
            self._fresh.discard(key)
        else:
            self._index.remove(key)
        if self._by_time is not None:
            self._untime(key, _created(key, old))

    def _untime(self, key: str, created: int) -> None:
        if self._time_fresh.pop(key, None) is None:
            self._by_time.remove((created, key))  # type: ignore[union-attr]

    def keys(self) -> list[str]:
        return list(self._sorted())

    def clear(self) -> None:
        self._data.clear()
        self._index.clear()
        self._fresh.clear()
        self._by_time = None
        self._time_fresh.clear()

    def bulk_load(self, items: Mapping[str, Object | bytes]) -> None:
        """Replace the contents with ``items`` (objects or their JSON bytes), in one step."""
        self._data = dict(items)
        self._index = SortedList(self._data)
        self._fresh = set()
        self._by_time = None
        self._time_fresh = {}

    # -- pages ---------------------------------------------------------------------------------
    def _timeline(self) -> SortedList:
        if self._by_time is None:
            self._by_time = SortedList((_created(key, value), key) for key, value in self._data.items())
            self._time_fresh.clear()
        elif self._time_fresh:
            self._by_time.update((created, key) for key, created in self._time_fresh.items())
            self._time_fresh.clear()
        return self._by_time

    def page(
        self, pattern: str, limit: int, after: Position | None = None, descending: bool = True
    ) -> list[Object]:
        """Up to ``limit`` objects matching ``pattern`` in list order (newest first unless
        ``descending`` is False), strictly after position ``after``.

        Two ways, whichever visits fewer keys: the keys under the pattern's literal prefix, of
        which the ``limit`` first are kept (a heap); or the time index walked from ``after``,
        skipping keys that do not match. With ``n`` keys under the prefix out of ``total``, the
        walk visits about ``limit * total / n`` keys: it wins when ``n * n > limit * total``.
        """
        prefix = glob_prefix(pattern)
        keys = self._sorted()
        under = keys.bisect_left(prefix + "\x7f") - keys.bisect_left(prefix) if prefix else len(keys)
        if under * under <= limit * max(len(keys), 1):
            return self._page_by_prefix(pattern, limit, after, descending)
        timeline = self._timeline()
        if descending:
            walk = timeline.irange(maximum=after, inclusive=(True, False), reverse=True)
        else:
            walk = timeline.irange(minimum=after, inclusive=(False, True))
        found: list[Object] = []
        get = self.get
        for _, key in walk:
            if key.startswith(prefix) and match(pattern, key):
                found.append(get(key))  # type: ignore[arg-type]
                if len(found) >= limit:
                    break
        return found

    def _page_by_prefix(
        self, pattern: str, limit: int, after: Position | None, descending: bool
    ) -> list[Object]:
        objs: Iterator[Object] = (self.get(key) for key in self.matching_keys(pattern))  # type: ignore[misc]
        if after is not None and descending:
            objs = (o for o in objs if (o.created, o.path) < after)
        elif after is not None:
            objs = (o for o in objs if (o.created, o.path) > after)
        pick = heapq.nlargest if descending else heapq.nsmallest
        return pick(limit, objs, key=_POSITION)


def _created(key: str, value: Object | bytes) -> int:
    if value.__class__ is bytes:
        return created_of(key, value)  # type: ignore[arg-type]
    return value.created  # type: ignore[union-attr]
