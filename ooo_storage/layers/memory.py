"""MemoryLayer: the complete in-memory mirror that serves every read of a ``Layered`` store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from sortedcontainers import SortedList

from ..keys import glob_prefix, has_glob, match
from ..meta import Object, load_object


class MemoryLayer:
    """A dict of objects plus a sorted key index, so a glob read scans only its literal prefix.

    New keys wait in a set and join the sorted index in bulk at the next glob read or key listing:
    one insert into a SortedList costs several times a whole write, a bulk merge a fraction of it.
    Values loaded at cold start may be held as raw object JSON and are parsed on first access:
    a restart then costs little more than iterating the persistent layer.
    """

    def __init__(self) -> None:
        self._data: dict[str, Object | bytes] = {}
        self._index: SortedList = SortedList()
        self._fresh: set[str] = set()

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
        if key not in self._data:
            self._fresh.add(key)
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
        del self._data[key]
        if key in self._fresh:
            self._fresh.discard(key)
        else:
            self._index.remove(key)

    def keys(self) -> list[str]:
        return list(self._sorted())

    def clear(self) -> None:
        self._data.clear()
        self._index.clear()
        self._fresh.clear()

    def bulk_load(self, items: Mapping[str, Object | bytes]) -> None:
        """Replace the contents with ``items`` (objects or their JSON bytes), in one step."""
        self._data = dict(items)
        self._index = SortedList(self._data)
        self._fresh = set()
