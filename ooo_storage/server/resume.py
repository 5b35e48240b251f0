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
no longer reaches back or a replay over :data:`REPLAY_MAX` events: no patch (the caller sends a
snapshot). A single-key pool gets the document again when it changed (a snapshot is exactly that
replacement), nothing when it did not.

Known limit: ``Layered.set_with_meta`` stores any stamps, so a key it moved (new ``created``) would
be placed at a wrong old position; the server never calls it (backups and migrations do).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from ..errors import StorageError
from ..layered import Layered
from ..protocol import keys
from ..protocol.jsonpatch import Op
from ..protocol.objects import Event, Object

REPLAY_MAX = 50_000
"""Most history events one resume replays (synchronously, on the loop: ~1 µs each); further back
a snapshot is cheaper for everyone."""

Touched = dict[str, int | None]
"""Each key changed since the version -> its ``created`` stamp then (None: it did not exist)."""


def history_events(store: Layered, since: int) -> Iterable[Event] | None:
    """The kept events after revision ``since`` up to now; None when the store keeps no history,
    the history no longer reaches back to ``since``, or ``since`` is not a revision of the past."""
    if store.history_options is None or since > store.revision:
        return None
    try:
        return store._replay(since, store.revision)  # synchronous: nothing commits meanwhile
    except StorageError:  # HistoryTrimmed, or the store closed
        return None


def touched(pattern: str, events: Iterable[Event]) -> Touched | None:
    """The keys matching the glob ``pattern`` that ``events`` changed, each with its ``created``
    stamp before the first of them; None when that cannot be known (a glob delete that may reach
    the pattern's keys, or more than :data:`REPLAY_MAX` events)."""
    found: Touched = {}
    depth = pattern.count("/")
    for seen, event in enumerate(events):
        if seen >= REPLAY_MAX:
            return None
        key = event.key
        if "*" in key:  # a glob delete: which items it took is not in the history
            if key.count("/") == depth:
                return None
            continue
        if key in found or not keys.match(pattern, key):
            continue
        obj = event.object
        if obj is None:  # not written by the store (a glob delete has a glob key)
            return None
        if event.operation == "del" or obj.updated != 0:
            found[key] = obj.created
        else:
            found[key] = None
    return found


def key_changed(key: str, events: Iterable[Event]) -> bool | None:
    """Whether ``events`` changed the single key ``key`` (a glob delete matching it included);
    None over :data:`REPLAY_MAX` events."""
    for seen, event in enumerate(events):
        if seen >= REPLAY_MAX:
            return None
        if event.key == key or ("*" in event.key and keys.match(event.key, key)):
            return True
    return False


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
