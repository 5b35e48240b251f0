"""Usage per namespace (issue 9; the 0-stor seed's "tracking of usage and statistics"): for each
namespace the policy declares, the objects stored, the bytes stored and the requests per hour over
a rolling 24 h, served by ``GET /?api=stats``.

Everything is kept incrementally, never by scanning the store: :meth:`Usage.on_event` is a commit
observer (``Layered.on_commit``) and runs inside every write, so it costs O(1) per single-key event.
A ``set`` event carries only the new object, so :class:`Usage` keeps its own ``key -> size`` map of
the keys under a declared namespace to know how many bytes a write replaced (keys outside every
namespace cost nothing). A glob delete's event carries only the glob: the matching keys are found in
that map, scanning only the namespaces whose keys the glob can match.

"Bytes stored" is the size of the stored JSON *data* (``len(obj.data)``: the compact JSON text that
``GET`` returns under ``"data"``), without the object's metadata (created, updated, index, path:
about 60 bytes plus the key). It is the seed's "size of the data", and it costs nothing to measure.

A key belongs to the namespace with the longest prefix it starts with (``Policy.namespace_of``).
Prefixes end with ``/`` (the policy checks it), so that namespace is found with one dict look-up per
``/`` of the key, however many namespaces there are.

Requests are counted in clock-aligned buckets: 24 of an hour (``perHour``, the last one being the
current hour so far; ``last24h`` is their sum) and 60 of a minute (``lastHour``: the current minute
and the 59 before it, so it does not drop to zero on the hour).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..protocol.access import Namespace
from ..protocol.keys import glob_prefix, match
from ..protocol.objects import Event, Object, load_object

__all__ = ["Stored", "Usage"]

Stored = Object | tuple[str, bytes | None]
"""What :meth:`Usage.load` counts: an object, or a key with its stored object JSON as the memory
layer holds it after a start (``MemoryLayer.get_raw``; None, a key gone meanwhile, is skipped),
measured without being parsed."""

_HEAD = re.compile(rb'\{"created":-?\d+,"updated":-?\d+,"index":"[^"\\]*"(?:,"path":"[^"\\]*")?,"data":')
"""The layout ``Object.to_json`` writes, up to the data (keys never need escaping)."""

HOURS = 24
"""Hourly buckets kept: the rolling window of ``perHour`` and ``last24h``."""
MINUTES = 60
"""Minute buckets kept, for ``lastHour``."""


def data_size(key: str, raw: bytes) -> int:
    """``len(load_object(key, raw).data)``, read from the layout of the stored bytes when they are
    in our own (a restart then parses nothing), parsed otherwise."""
    head = _HEAD.match(raw)
    if head is not None and raw.endswith(b"}") and len(raw) > head.end() + 1:
        return len(raw) - head.end() - 1
    return len(load_object(key, raw).data)


class _Window:
    """Counts in ``size`` consecutive buckets of ``width`` seconds, aligned to the clock (bucket
    ``n`` covers ``[n * width, (n + 1) * width)``). The newest bucket is the latest time seen; a
    clock that steps back counts there too rather than rewriting older buckets."""

    __slots__ = ("counts", "newest", "width")

    def __init__(self, size: int, width: float, now: float) -> None:
        self.counts = [0] * size
        self.width = width
        self.newest = int(now // width)

    def add(self, now: float) -> None:
        slot = int(now // self.width)
        if slot > self.newest:
            self._advance(slot)
        self.counts[self.newest % len(self.counts)] += 1

    def series(self, now: float) -> list[int]:
        """The counts, oldest first, ending with the bucket of ``now``."""
        slot = int(now // self.width)
        if slot > self.newest:
            self._advance(slot)
        size = len(self.counts)
        start = self.newest + 1
        return [self.counts[(start + i) % size] for i in range(size)]

    def _advance(self, slot: int) -> None:
        """Make ``slot`` the newest bucket, emptying the buckets that leave the window."""
        size = len(self.counts)
        if slot - self.newest >= size:
            self.counts = [0] * size
        else:
            for passed in range(self.newest + 1, slot + 1):
                self.counts[passed % size] = 0
        self.newest = slot


class _Tally:
    """One namespace's figures: its keys' sizes (their count is ``objects``), the total of those
    sizes and its request windows."""

    __slots__ = ("namespace", "segments", "sizes", "bytes", "hours", "minutes")

    def __init__(self, namespace: Namespace, now: float) -> None:
        self.namespace = namespace
        self.segments = namespace.prefix[:-1].split("/")
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.hours = _Window(HOURS, 3600.0, now)
        self.minutes = _Window(MINUTES, 60.0, now)

    def put(self, key: str, size: int) -> None:
        old = self.sizes.get(key, 0)
        self.sizes[key] = size
        self.bytes += size - old

    def remove(self, key: str) -> None:
        old = self.sizes.pop(key, None)
        if old is not None:
            self.bytes -= old

    def may_hold(self, glob: str) -> bool:
        """Whether keys under this prefix can match ``glob`` (``*`` never crosses a ``/``)."""
        asked = glob.split("/")
        return len(asked) > len(self.segments) and all(
            match(a, s) for a, s in zip(asked, self.segments, strict=False)
        )

    def report(self, now: float) -> dict[str, Any]:
        per_hour = self.hours.series(now)
        return {
            "name": self.namespace.name,
            "prefix": self.namespace.prefix,
            "objects": len(self.sizes),
            "bytes": self.bytes,
            "requests": {
                "lastHour": sum(self.minutes.series(now)),
                "last24h": sum(per_hour),
                "perHour": per_hour,
            },
        }


class Usage:
    """Objects, bytes and requests per namespace.

    Wiring: :meth:`load` once at start with what is stored (objects, or for a start that parses
    nothing the memory layer's raw values: ``((k, memory.get_raw(k)) for k in memory.keys())``;
    keys outside every namespace are skipped), :meth:`on_event` as a ``Layered.on_commit`` observer,
    :meth:`count_request` on every REST request and subscription, :meth:`snapshot` for
    ``?api=stats``, :meth:`reconfigure` when a policy reload changes the namespaces. A write the
    store makes without an event (``delete_silent``, keys of ``no_broadcast_keys``) is not seen;
    after ``Layered.clear()`` (no event either) call ``load(())``.

    ``clock`` gives epoch seconds (tests pass a fake one); buckets follow its hours and minutes.
    """

    def __init__(self, namespaces: Sequence[Namespace], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.since = clock()
        """Epoch seconds when counting started (requests before it were not counted)."""
        self._tallies: tuple[_Tally, ...] = ()
        self._by_prefix: dict[str, _Tally] = {}
        self._depth = 0
        self._declare(namespaces, {})

    def _declare(self, namespaces: Sequence[Namespace], kept: dict[str, _Tally]) -> None:
        now = self._clock()
        tallies: list[_Tally] = []
        for ns in namespaces:
            if not ns.prefix.endswith("/") or "*" in ns.prefix:
                raise ValueError(
                    f"namespace {ns.name!r}: prefix {ns.prefix!r} must end with '/', without '*'"
                )
            if any(t.namespace.name == ns.name or t.namespace.prefix == ns.prefix for t in tallies):
                raise ValueError(f"namespace {ns.name!r} or prefix {ns.prefix!r} is declared twice")
            tally = _Tally(ns, now)
            old = kept.get(ns.name)
            if old is not None:  # same name: its request counts go on
                tally.hours, tally.minutes = old.hours, old.minutes
            tallies.append(tally)
        self._tallies = tuple(tallies)
        self._by_prefix = {t.namespace.prefix: t for t in tallies}
        self._depth = max((ns.prefix.count("/") for ns in namespaces), default=0)

    # -- which namespace -----------------------------------------------------------------------
    def _tally(self, key: str) -> _Tally | None:
        """The tally of the longest declared prefix ``key`` starts with: one look-up per ``/``,
        down to the depth of the deepest prefix (on every write: kept lean)."""
        end = key.find("/")
        if end < 0:
            return None
        by_prefix = self._by_prefix
        found = by_prefix.get(key[: end + 1])
        deeper = self._depth - 1
        while deeper > 0:
            end = key.find("/", end + 1)
            if end < 0:
                break
            found = by_prefix.get(key[: end + 1], found)
            deeper -= 1
        return found

    def namespace_of(self, key: str) -> Namespace | None:
        """The namespace ``key`` counts in (None outside every namespace)."""
        tally = self._tally(key)
        return None if tally is None else tally.namespace

    # -- objects and bytes ---------------------------------------------------------------------
    def load(self, stored: Iterable[Stored]) -> None:
        """Replace the objects and bytes of every namespace with those of ``stored`` (the store's
        content: objects, whose ``path`` is the key, or ``(key, stored JSON)`` pairs, see
        :data:`Stored`; those outside every namespace are skipped). Request counts are kept.

        Collect ``stored`` with no ``await`` before this call (``store.memory.keys()`` and
        ``get_raw``): a write in between would be counted twice or not at all."""
        for emptied in self._tallies:
            emptied.sizes = {}
            emptied.bytes = 0
        for item in stored:
            if isinstance(item, Object):
                tally = self._tally(item.path)
                if tally is not None:
                    tally.put(item.path, len(item.data))
            else:
                key, raw = item
                tally = self._tally(key)
                if tally is not None and raw is not None:
                    tally.put(key, data_size(key, raw))

    def on_event(self, event: Event) -> None:
        """Apply one committed write: a ``set`` (new object), a single-key ``del`` or a glob delete
        (its key is the glob). A delete needs no object: the size comes from the map."""
        key = event.key
        if event.operation == "set":
            tally = self._tally(key)
            if tally is not None:
                obj = event.object
                assert obj is not None, "a set event carries its object"
                sizes, size = tally.sizes, len(obj.data)  # tally.put, inlined: every write
                tally.bytes += size - sizes.get(key, 0)
                sizes[key] = size
        elif "*" in key:  # Layered deletes every key a key with a "*" matches
            self._delete_glob(key)
        else:
            tally = self._tally(key)
            if tally is not None:
                tally.remove(key)

    def _delete_glob(self, glob: str) -> None:
        literal = glob_prefix(glob)
        for tally in self._tallies:
            if tally.may_hold(glob):
                for key in [k for k in tally.sizes if k.startswith(literal) and match(glob, k)]:
                    tally.remove(key)

    # -- requests ------------------------------------------------------------------------------
    def count_request(self, key: str) -> None:
        """Count one request (REST or subscription) on ``key`` (a key or a glob) in its namespace."""
        tally = self._tally(key)
        if tally is not None:
            now = self._clock()
            tally.hours.add(now)
            tally.minutes.add(now)

    # -- reading and reloading -----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The figures of every namespace, in declaration order, ready for JSON (``?api=stats``):
        ``{"namespaces": [{"name", "prefix", "objects", "bytes", "requests": {"lastHour",
        "last24h", "perHour"}}], "since", "at"}``; ``perHour`` has 24 counts, oldest first, the
        last for the current hour so far; ``since`` and ``at`` are epoch seconds (counting started,
        this snapshot)."""
        now = self._clock()
        return {
            "namespaces": [tally.report(now) for tally in self._tallies],
            "since": self.since,
            "at": now,
        }

    def reconfigure(self, namespaces: Sequence[Namespace], stored: Iterable[Stored]) -> None:
        """Switch to new namespaces (a policy reload) and recount objects and bytes from
        ``stored`` (as for :meth:`load`); a namespace that keeps its name keeps its request
        counts, a new one starts from zero."""
        self._declare(namespaces, {t.namespace.name: t for t in self._tallies})
        self.load(stored)
