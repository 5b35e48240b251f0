"""MemoryLayer: the complete in-memory mirror that serves every read of a ``Layered`` store, and
KeyIndex, the sorted key set behind every glob read of this package (memory and the byte stores)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import cast

from sortedcontainers import SortedList

from ..protocol.keys import glob_prefix, has_glob, match
from ..protocol.objects import Object, created_of, load_object

__all__ = ["KeyIndex", "MemoryLayer", "Position"]

Position = tuple[int, str]
"""``(created, path)``: the order of every list (newest first is its reverse)."""

_POSITION = attrgetter("created", "path")
_CREATED = attrgetter("created")


class KeyIndex:
    """A sorted set of keys, so a glob read scans only the keys under its literal prefix.

    New keys wait in a plain set and join the sorted list in bulk at the next ordered read: one
    insert into a SortedList costs several times a whole memory write, a bulk merge a fraction of
    it. Callers that already know a key is absent (a dict beside the index) use :meth:`add_new`
    and skip the membership test.
    """

    __slots__ = ("_sorted", "_fresh")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._sorted: SortedList[str] = SortedList(keys)
        self._fresh: set[str] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._fresh)

    def __contains__(self, key: str) -> bool:
        return key in self._fresh or key in self._sorted

    def __iter__(self) -> Iterator[str]:
        """Every key, in bytewise order."""
        return iter(self._merged())

    def add(self, key: str) -> None:
        if key not in self:
            self._fresh.add(key)

    def add_new(self, key: str) -> None:
        """Add ``key``, which the caller knows is not in the index."""
        self._fresh.add(key)

    def discard(self, key: str) -> None:
        if key in self._fresh:
            self._fresh.discard(key)
        else:
            self._sorted.discard(key)

    def clear(self) -> None:
        self._sorted.clear()
        self._fresh.clear()

    def keys(self) -> list[str]:
        """Every key, in bytewise order."""
        return list(self._merged())

    def with_prefix(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix``, in bytewise order."""
        for key in self._merged().irange(minimum=prefix):
            if not key.startswith(prefix):
                break
            yield key

    def scan(self, pattern: str, after: str | None, visit: int) -> tuple[list[str], str | None]:
        """Up to ``visit`` keys under ``pattern``'s literal prefix strictly after ``after``, in
        bytewise order: those matching ``pattern``, and the last key visited (None once the prefix
        range is done). Each call starts afresh from ``after``, so keys added or removed between
        calls are simply met or not: a scan can be resumed across writes."""
        prefix = glob_prefix(pattern)
        keys = self._merged()
        start = prefix if after is None or after < prefix else after
        found: list[str] = []
        last: str | None = None
        for key in keys.irange(minimum=start, inclusive=(after is None or after < prefix, True)):
            if not key.startswith(prefix):
                return found, None
            last = key
            if match(pattern, key):
                found.append(key)
            visit -= 1
            if visit <= 0:
                return found, last
        return found, None

    def matching_keys(self, pattern: str) -> Iterator[str]:
        """Keys matching the glob ``pattern`` in bytewise order, scanning only its literal prefix."""
        return iter(self.matching_list(pattern))

    def matching_list(self, pattern: str) -> list[str]:
        """:meth:`matching_keys` as a list: the prefix range is cut out by two bisections and
        filtered in one comprehension (a generator step per key cost more than the match itself
        on a page of ``users/*``)."""
        prefix = glob_prefix(pattern)
        keys = self._merged()
        lo = keys.bisect_left(prefix)
        hi = keys.bisect_left(_successor(prefix)) if prefix else len(keys)
        under = keys[lo:hi]
        if pattern == prefix + "*" and (not prefix or prefix.endswith("/")):  # ``users/*``: one level
            if "".join(under).count("/") == len(under) * prefix.count("/"):
                return under  # no key deeper than the pattern (the usual page): nothing to filter
            depth = len(prefix)
            return [key for key in under if key.find("/", depth) < 0]
        return [key for key in under if match(pattern, key)]

    def prefix_range(self, prefix: str, start: int = 0, stop: int | None = None) -> tuple[list[str], int]:
        """The keys ``[start:stop]`` of those starting with ``prefix`` (bytewise order), and how many
        start with it: two bisections and a slice, so a page of a prefix costs its own size, not
        the store's."""
        keys = self._merged()
        lo = keys.bisect_left(prefix) if prefix else 0
        hi = keys.bisect_left(_successor(prefix)) if prefix else len(keys)
        first = lo + max(start, 0)
        last = hi if stop is None else min(hi, lo + max(stop, 0))
        return (keys[first:last] if first < last else []), hi - lo

    def folders(
        self, prefix: str, after: str | None = None, limit: int = 500
    ) -> tuple[list[str], str | None]:
        """The folders right under ``prefix`` (``prefix + S`` for every key ``prefix + S/...``, S
        without ``/``), in key order: up to ``limit`` of them after the folder ``after``, and the
        last one as a cursor when more may follow. S3's delimiter listing, for the explorer's tree:
        each folder costs one bisection past its keys (10 000 keys in 10 folders: 10 steps, not
        10 000), and keys at this level itself are passed 256 at a time by a join and a count."""
        keys = self._merged()
        depth, slashes = len(prefix), prefix.count("/")
        at = keys.bisect_left(max(prefix, _successor(after + "/")) if after else prefix)
        end = keys.bisect_left(_successor(prefix)) if prefix else len(keys)
        found: list[str] = []
        while at < end and len(found) < limit:
            key = keys[at]
            cut = key.find("/", depth)
            if cut >= 0:  # a folder: jump past every key under it
                found.append(key[:cut])
                at = keys.bisect_left(_successor(key[: cut + 1]))
                continue
            run = keys[at + 1 : min(at + 257, end)]  # a key at this level: pass its run of peers
            if "".join(run).count("/") == len(run) * slashes:
                at += 1 + len(run)
            else:
                at += 1 + next(i for i, k in enumerate(run) if k.find("/", depth) >= 0)
        return found, (found[-1] if found and at < end else None)

    def count_prefix(self, prefix: str) -> int:
        """How many keys start with ``prefix`` (two bisections, no scan)."""
        keys = self._merged()
        if not prefix:
            return len(keys)
        # Keys of PROTOCOL §1 are ASCII below DEL, so prefix + DEL bounds the range.
        return keys.bisect_left(prefix + "\x7f") - keys.bisect_left(prefix)

    def _merged(self) -> SortedList[str]:
        if self._fresh:
            self._sorted.update(self._fresh)
            self._fresh.clear()
        return self._sorted


class MemoryLayer:
    """A dict of objects plus a :class:`KeyIndex`, so a glob read scans only its literal prefix.

    Values loaded at cold start may be held as raw object JSON and are parsed on first access:
    a restart then costs little more than iterating the persistent layer.

    A second index orders every key by ``(created, path)`` for list pages (:meth:`page`). It is
    built on the first page request (parsing what was loaded raw) and kept up to date from then on,
    new keys again joining it in bulk.
    """

    asynchronous = False  # a SyncLayer (layers.base): Layered calls it inline

    def __init__(self) -> None:
        self._data: dict[str, Object | bytes] = {}
        self._index = KeyIndex()
        self._by_time: SortedList[Position] | None = None  # None until a page is asked for
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
        return self._parse(key, value) if isinstance(value, bytes) else value

    def _present(self, key: str) -> Object:
        """The object of ``key``, which the caller took from the index (so it is in ``_data``)."""
        value = self._data[key]
        return self._parse(key, value) if isinstance(value, bytes) else value

    def _parse(self, key: str, raw: bytes) -> Object:
        """Parse a value loaded raw at cold start, once: the object replaces it."""
        obj = self._data[key] = load_object(key, raw)
        return obj

    def get_raw(self, key: str) -> bytes | None:
        """The object JSON of ``key`` without materialising it (fast single-key reads)."""
        value = self._data.get(key)
        if value is None or isinstance(value, bytes):
            return value
        return value.to_json()

    def matching_keys(self, pattern: str) -> Iterator[str]:
        """Keys matching ``pattern`` in bytewise order, scanning only its literal prefix."""
        return self._index.matching_keys(pattern)

    def get_list(self, pattern: str) -> list[Object]:
        present = self._present
        return [present(key) for key in self.matching_keys(pattern)]

    def scan(self, pattern: str, after: str | None, visit: int) -> tuple[list[Object], str | None]:
        """:meth:`KeyIndex.scan` with the objects: a bounded, resumable glob read."""
        keys, last = self._index.scan(pattern, after, visit)
        present = self._present
        return [present(key) for key in keys], last

    def set(self, key: str, obj: Object) -> None:
        old = self._data.get(key)
        if old is None:
            self._index._fresh.add(key)  # KeyIndex.add_new, inline: a new key joins in bulk later
        if self._by_time is not None:
            if old is not None:
                created = _created(key, old)
                if created == obj.created:
                    self._data[key] = obj
                    return
                self._untime(self._by_time, key, created)
            self._time_fresh[key] = obj.created
        self._data[key] = obj

    def apply_many(self, sets: Sequence[tuple[str, Object]], deletes: Sequence[str]) -> None:
        """Apply a transaction's writes in one step, with nothing in between (see
        :class:`~ooo_storage.layers.base.TxnWriter`)."""
        for key, obj in sets:
            self.set(key, obj)
        for key in deletes:
            self.delete(key)

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
        self._index.discard(key)
        if self._by_time is not None:
            self._untime(self._by_time, key, _created(key, old))

    def _untime(self, timeline: SortedList[Position], key: str, created: int) -> None:
        if self._time_fresh.pop(key, None) is None:
            timeline.remove((created, key))

    def keys(self) -> list[str]:
        return self._index.keys()

    def prefix_range(self, prefix: str, start: int = 0, stop: int | None = None) -> tuple[list[str], int]:
        """:meth:`KeyIndex.prefix_range`: a page of the keys starting with ``prefix`` and their
        count, without listing the rest of the store (the explorer's ``?api=keys``)."""
        return self._index.prefix_range(prefix, start, stop)

    def folders(
        self, prefix: str, after: str | None = None, limit: int = 500
    ) -> tuple[list[str], str | None]:
        """:meth:`KeyIndex.folders`: the next path segments under ``prefix`` (``?api=folders``)."""
        return self._index.folders(prefix, after, limit)

    @staticmethod
    def folders_of(
        keys: Iterable[str], prefix: str, after: str | None = None, limit: int = 500
    ) -> tuple[list[str], str | None]:
        """:meth:`folders` of some other keys (the readable ones under a policy, a store without a
        mirror): the same listing, for a server that reaches the index through this class only."""
        return KeyIndex(keys).folders(prefix, after, limit)

    def clear(self) -> None:
        self._data.clear()
        self._index.clear()
        self._by_time = None
        self._time_fresh.clear()

    def bulk_load(self, items: Mapping[str, Object | bytes]) -> None:
        """Replace the contents with ``items`` (objects or their JSON bytes), in one step."""
        self._data = dict(items)
        self._index = KeyIndex(self._data)
        self._by_time = None
        self._time_fresh = {}

    # -- pages ---------------------------------------------------------------------------------
    def _timeline(self) -> SortedList[Position]:
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
        ``descending`` is False), strictly after position ``after`` (see :meth:`page_within`)."""
        return self.page_within(pattern, limit, after, descending)[0]

    def page_within(
        self,
        pattern: str,
        limit: int,
        after: Position | None = None,
        descending: bool = True,
        visit: int | None = None,
    ) -> tuple[list[Object], Position | None]:
        """:meth:`page`, visiting at most ``visit`` keys: the objects found, and the position to
        go on from when the budget ran out first (None when the page is complete or the list
        ends). A client pages on from there, so a glob that matches few of many keys costs each
        request at most ``visit`` keys instead of a walk of the whole store.

        Two ways, whichever visits fewer keys: the keys under the pattern's literal prefix, of
        which the ``limit`` first are kept (a heap); or the time index walked from ``after``,
        skipping keys that do not match. With ``n`` keys under the prefix out of ``total``, the
        walk visits about ``limit * total / n`` keys: it wins when ``n * n > limit * total``
        (the prefix scan then visits at most ``sqrt(limit * total)`` keys, budget or not).
        """
        prefix = glob_prefix(pattern)
        under = self._index.count_prefix(prefix)
        if under * under <= limit * max(len(self._index), 1):
            return self._page_by_prefix(pattern, limit, after, descending), None
        timeline = self._timeline()
        if descending:
            walk = timeline.irange(maximum=after, inclusive=(True, False), reverse=True)
        else:
            walk = timeline.irange(minimum=after, inclusive=(False, True))
        found: list[Object] = []
        present = self._present
        budget = -1 if visit is None else visit
        for position in walk:
            key = position[1]
            if key.startswith(prefix) and match(pattern, key):
                found.append(present(key))
                if len(found) >= limit:
                    return found, None
            budget -= 1
            if budget == 0:
                return found, position
        return found, None

    def _page_by_prefix(
        self, pattern: str, limit: int, after: Position | None, descending: bool
    ) -> list[Object]:
        keys = self._index.matching_list(pattern)
        data = self._data
        values = [data[key] for key in keys]
        objs: list[Object]
        if bytes in map(type, values):  # some still raw from a cold start: parse them, once
            present = self._present
            objs = [present(key) for key in keys]
        else:
            objs = cast(list[Object], values)
        if after is not None and descending:
            objs = [o for o in objs if (o.created, o.path) < after]
        elif after is not None:
            objs = [o for o in objs if (o.created, o.path) > after]
        if len(objs) > limit:
            pick = heapq.nlargest if descending else heapq.nsmallest
            return pick(limit, objs, key=_POSITION)
        # no more than the page: a sort (what nlargest/nsmallest equal, ties included) costs less,
        # by ``created`` alone (ints compare faster than tuples) unless two objects share one
        objs.sort(key=_CREATED, reverse=descending)
        if len(set(map(_CREATED, objs))) < len(objs):
            objs.sort(key=_POSITION, reverse=descending)
        return objs


def _successor(prefix: str) -> str:
    """The least string above every string starting with ``prefix`` (not empty)."""
    last = ord(prefix[-1])
    if last == 0x10FFFF:
        return prefix + "\U0010ffff"  # never met by a key (PROTOCOL §1 keys are ASCII)
    return prefix[:-1] + chr(last + 1)


def _created(key: str, value: Object | bytes) -> int:
    return created_of(key, value) if isinstance(value, bytes) else value.created
