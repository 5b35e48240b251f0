"""Resuming from the event history (docs/protocol.md §5.4): what changed in a pool since a version.

A client resuming with ``?v=<version>`` (or asking ``GET /{key}?since=<version>``) holds the pool's
state at that version, which the server no longer has. The event history (``Layered(history=...)``)
says which keys changed after it, and the objects' stamps say enough about their old state to
reach the current one without the old VALUES:

- the first event of a key after the version is a ``set`` with ``updated == 0`` (docs/protocol.md
  §2.2: a new key), so the client does not have the key; a ``set`` with ``updated != 0`` overwrote
  a key the client has, whose ``created`` it kept; a single-key ``del`` carries the deleted object,
  which is the one the client has;
- the client's list is in the protocol's one order (``created``, then path, newest first), so from
  the untouched items (the current ones) and the old stamps of the touched ones, every position in
  the client's list is known.

So a glob pool's change is ``remove`` (keys gone or moved), ``add`` (keys new or moved), then
``replace`` (keys overwritten in place), each by position, values from the current state only. A
glob delete in the range, a view with filters (what they showed then is unknown), a history that
no longer reaches back or over :data:`REPLAY_MAX` events to read: no patch (the caller sends a
snapshot). A single-key pool gets the document again when it changed (a snapshot is exactly that
replacement), nothing when it did not. The history is read ahead in steps that let the loop
serve others (:class:`Replay`), by at most :data:`AT_ONCE` replays at a time (:class:`Gate`): each
holds a chunk of the journal, and anyone with ``read`` can ask for one (a hundred resumes from an
old version held a gigabyte). One that waits longer than :data:`WAIT` for its turn is not read:
``?v=`` gets a snapshot (always a correct answer), ``?since=`` a 410.

Writes that emit no event are not in the history either: a path that keys of ``no_broadcast_keys``
or the trimming of a limit filter (``delete_silent``) may reach is never resumed (the hub checks).
``Layered.set_with_meta`` stores any stamps and may move a key (a new ``created``): the history
marks its events (``txn`` -1) and a list resume across one takes a snapshot. Known limit:
``delete_silent`` called by an application on a subscribed glob is not seen; the server itself
does not call it (hooks may).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import orjson

from ..errors import StorageError
from ..layered import Layered
from ..protocol import keys
from ..protocol.jsonpatch import Op
from ..protocol.objects import Event, Object
from ..protocol.views import SNAPSHOT, Change, ListState, ObjectState

log = logging.getLogger("ooo_storage.server")

REPLAY_MAX = 100_000
"""Most history events one resume reads; further back a snapshot is cheaper for everyone."""
STEP = 512
"""History events read between two turns of the event loop while a resume reads ahead."""
AT_ONCE = 4
"""Replays reading the history at once, per server: memory for their chunks of the journal."""
WAIT = 2.0
"""Seconds a replay waits for its turn to read; then a snapshot (``?v=``) or a 410 (``?since=``)
is cheaper than a client waiting on a queue of replays."""

Touched = dict[str, int | None]
"""Each key changed since the version -> its ``created`` stamp then (None: it did not exist)."""


class Replay:
    """What the event history says about one key or glob since a version, read in two parts:
    :meth:`ahead` up to the revision of its start, in steps that let the loop serve others, and
    :meth:`finish` the few events since, synchronously, in the same step as the pool's state is
    taken (so the two describe one moment)."""

    __slots__ = ("key", "upto", "changed", "known", "busy", "seen", "_depth")

    def __init__(self, key: str, since: int) -> None:
        self.key = key
        self.upto = since  # the events up to this revision are read
        self.changed: Touched = {}
        self.known = True  # False once the history cannot say
        self.busy = False  # not read: too many replays before it (:class:`Gate`)
        self.seen = 0
        self._depth = key.count("/")

    async def ahead(self, store: Layered, pause: Callable[[], Awaitable[None]]) -> None:
        """Read the events up to the store's revision now, pausing every :data:`STEP` events."""
        target = store.revision
        events = self._events(store, target)
        if events is None:
            return
        try:
            for event in events:
                if not self._take(event):
                    return
                if self.seen % STEP == 0:
                    await pause()
        except Exception as exc:  # the journal under it was evicted, damaged, closed
            self._unreadable(exc)
            return
        self.upto = target

    def finish(self, store: Layered) -> bool:
        """Read the events since :meth:`ahead` (no await: nothing commits meanwhile); whether the
        changes up to the store's revision are known."""
        events = self._events(store, store.revision)
        if events is None:
            return False
        try:
            for event in events:
                if not self._take(event):
                    break
        except Exception as exc:  # as in :meth:`ahead`: the history cannot say, never a 500
            self._unreadable(exc)
        self.upto = store.revision
        return self.known

    def _unreadable(self, exc: Exception) -> None:
        """The history failed under this replay: not known (a snapshot, a 410). A trimmed or
        closed history is routine; anything else is damage the operator should hear of."""
        if isinstance(exc, StorageError):
            log.debug("resume of %s: history unreadable: %s", self.key, exc)
        else:
            log.warning("resume of %s: history unreadable: %r", self.key, exc)
        self.known = False

    def _events(self, store: Layered, upto: int) -> Iterator[Event] | None:
        """The kept events after :attr:`upto` up to ``upto``; None (and not known) when the store
        keeps no history, it no longer reaches back, or the version is not one of the past."""
        if not self.known or store.history_options is None or self.upto > upto:
            self.known = False
            return None
        try:
            return store.replay(self.upto, upto)
        except StorageError:  # HistoryTrimmed, or the store closed
            self.known = False
            return None

    def _take(self, event: Event) -> bool:
        """Note what ``event`` changed; False once nothing more needs reading."""
        self.seen += 1
        if self.seen > REPLAY_MAX:
            self.known = False
            return False
        key, pattern = event.key, self.key
        if "*" not in pattern:  # a single key: whether it changed at all
            if key == pattern or ("*" in key and keys.match(key, pattern)):
                self.changed[pattern] = None
                return False  # its document is the change: nothing more to learn
            return True
        if "*" in key:  # a glob delete: which items it took is not in the history
            if key.count("/") == self._depth:
                self.known = False
                return False
            return True
        if key in self.changed or not keys.match(pattern, key):
            return True
        obj = event.object
        if obj is None or event.txn < 0:  # txn -1: set_with_meta, which may move the key
            self.known = False
            return False
        if event.operation == "del" or obj.updated != 0:
            self.changed[key] = obj.created
        else:
            self.changed[key] = None
        return True

    def change(self, state: ObjectState | ListState) -> Change:
        """What changed in ``state`` (exact as of the revision read up to): the ops ([] for
        nothing), SNAPSHOT when a single key changed (its document is the change), None when
        the history cannot tell (also through read filters: what they showed then is unknown)."""
        if not self.known:
            return None
        if isinstance(state, ObjectState):
            return SNAPSHOT if self.changed else []
        view = state.view
        if not view.plain or view.limit is not None:
            return None
        return list_patch(state.objects(), self.changed)


class Gate:
    """Lets at most :data:`AT_ONCE` replays read the history at once, in arrival order; one that
    waited :data:`WAIT` seconds gives up (not known, :attr:`Replay.busy`). A waiting replay holds
    nothing but itself."""

    __slots__ = ("_slots", "wait", "refused")

    def __init__(self, at_once: int = AT_ONCE, wait: float = WAIT) -> None:
        self._slots = asyncio.Semaphore(at_once)
        self.wait = wait
        self.refused = 0
        """Replays that gave up waiting (a snapshot or a 410 instead)."""

    async def read(
        self, replay: Replay, store: Layered, pause: Callable[[], Awaitable[None]]
    ) -> None:
        """:meth:`Replay.ahead` once a slot is free, or not at all after :attr:`wait` seconds."""
        try:
            async with asyncio.timeout(self.wait):
                await self._slots.acquire()
        except TimeoutError:
            self.refused += 1
            replay.known = False
            replay.busy = True
            return
        try:
            await replay.ahead(store, pause)
        finally:
            self._slots.release()


def may_overlap(a: str, b: str) -> bool:
    """Whether the keys or globs ``a`` and ``b`` may match a key in common (conservative: two
    segments overlap when they are equal or either has a ``*``)."""
    sa, sb = a.split("/"), b.split("/")
    return len(sa) == len(sb) and all(x == y or "*" in x or "*" in y for x, y in zip(sa, sb, strict=True))


def list_patch(current: list[Object], changed: Touched) -> list[Op]:
    """The patch from the client's list (``current`` newest first, with the ``changed`` keys as
    they were) to ``current``: removals from the highest position down, additions at their final
    positions from the lowest up (each lands where it belongs once those before it are in), then
    replacements in place."""
    if not changed:
        return []
    now = {o.path: o.created for o in current if o.path in changed}
    old = [(o.created, o.path) for o in current if o.path not in changed]
    old += [(created, path) for path, created in changed.items() if created is not None]
    old.sort(reverse=True)
    in_place = {path for path, created in changed.items() if created is not None and now.get(path) == created}
    ops: list[Op] = [
        {"op": "remove", "path": f"/{i}"}
        for i in range(len(old) - 1, -1, -1)
        if old[i][1] in changed and old[i][1] not in in_place
    ]
    replaces: list[Op] = []
    for i, obj in enumerate(current):
        if obj.path in changed:
            op = {"op": "replace" if obj.path in in_place else "add", "path": f"/{i}",
                  "value": orjson.Fragment(obj.to_json())}
            (replaces if obj.path in in_place else ops).append(op)
    return ops + replaces
