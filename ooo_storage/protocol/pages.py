"""Pages of a glob list (docs/protocol.md §4): the rules, without the store or the network.

A ``GET`` of a glob answers a plain JSON array in the list's order (newest first, or what a limit
filter asks), as ooo clients expect, holding at most ``limit`` items (``?limit=`` from 1; the
server's page size is the default and the most any page holds). When items follow, the response
says so (:func:`next_headers`):

* ``X-Next-Cursor: <cursor>`` and ``Link: </key?limit=N&cursor=<cursor>>; rel="next"``;
* ``X-List-Truncated: true`` whenever the body is not the whole (rest of the) list.

A cursor is opaque; it names the position (``created``, ``path``) of the last item examined, and
the page it asks for starts strictly after that position in the list's order, so pages neither
repeat nor skip items however many writes happen between them (an item that is deleted simply
does not appear, an item that is created later than the first page sits before the cursor).

Read filters (§6): the limit filter and the read-object filter act per item, so they page like
the rest (an item the object filter hides is skipped, the cursor still moves past it). A read-list
filter sees the whole list and may hide, reorder or rewrite anything, so no position in its output
is stable: such a list is cut at ``limit`` after the filter ran (``X-List-Truncated``, no cursor)
and a cursor is refused (:func:`check_cursor`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import HTTPFailure
from . import keys
from .filters import ListView
from .objects import Object

Position = tuple[int, str]
"""``(created, path)``: the order every list is sorted by."""

MAX_CURSOR = 2048
"""Longest cursor accepted (the longest key makes a cursor well below this)."""


def whole_number(name: str, text: str | None, default: int, lo: int, hi: int) -> int:
    """The query parameter ``name`` (``text``; absent or empty: ``default``) as an integer in
    ``[lo, hi]`` (400 with the range otherwise)."""
    if text is None or text == "":
        return default
    if text.isascii() and text.isdigit() and len(text) <= 18 and lo <= int(text) <= hi:
        return int(text)
    raise HTTPFailure(400, f"ooo: {name} must be a whole number from {lo} to {hi}")


def page_size(text: str | None, cap: int) -> int:
    """``?limit=``: a whole number from 1; more than ``cap`` (the server's page size) means
    ``cap``, so a client need not know the server's setting. Absent or empty: ``cap``."""
    if text is None or text == "":
        return cap
    if text.isascii() and text.isdigit() and len(text) <= 18 and int(text) >= 1:
        return min(int(text), cap)
    raise HTTPFailure(400, f"ooo: limit must be a whole number from 1 (a page holds at most {cap} items)")


def encode_cursor(position: Position) -> str:
    created, path = position
    return base64.urlsafe_b64encode(f"{created}:{path}".encode()).rstrip(b"=").decode()


def decode_cursor(text: str) -> Position:
    """The position a cursor names (400 if it is not one :func:`encode_cursor` made)."""
    invalid = HTTPFailure(400, "ooo: invalid cursor (use the X-Next-Cursor of a previous page)")
    if len(text) > MAX_CURSOR:
        raise invalid
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        created, _, path = raw.decode("ascii").partition(":")
    except (binascii.Error, ValueError):
        raise invalid from None
    if not (created.isdigit() and len(created) <= 20 and keys.is_valid(path)):
        raise invalid
    return int(created), path


def check_cursor(view: ListView, after: Position | None) -> None:
    """Refuse (400) a cursor into a list a read-list filter shapes: no position in it is stable."""
    if after is not None and view.list_fn is not None:
        raise HTTPFailure(400, "ooo: cursor not supported: a read-list filter shapes this list")


@dataclass(frozen=True)
class Page:
    items: list[Object]
    """What the response shows."""
    after: Position | None
    """Where the next page starts (strictly after), when one can follow."""
    truncated: bool
    """Items of the list are not in this page (nor before it)."""


def _start(objs: list[Object], after: Position, descending: bool) -> int:
    """Index of the first of ``objs`` (sorted in the list order) strictly after ``after``."""
    lo, hi = 0, len(objs)
    while lo < hi:
        mid = (lo + hi) // 2
        here = (objs[mid].created, objs[mid].path)
        if (here >= after) if descending else (here <= after):
            lo = mid + 1
        else:
            hi = mid
    return lo


def page(view: ListView, objs: list[Object], limit: int, after: Position | None) -> Page:
    """The page of ``view`` for ``objs`` (every match, newest first); runs the read filters."""
    if view.list_fn is not None:
        shown = view.apply(objs)
        return Page(shown[:limit], None, len(shown) > limit)
    ordered = objs if view.limit is None else view.limit.trim(objs)
    if not view.descending:
        ordered = ordered[::-1]
    i = 0 if after is None else _start(ordered, after, view.descending)
    fn, key = view.object_fn, view.key
    items: list[Object] = []
    while i < len(ordered) and len(items) < limit:
        obj = ordered[i]
        i += 1
        visible = obj if fn is None else fn(key, obj)
        if visible is not None:
            items.append(visible)
    if i == len(ordered):
        return Page(items, None, False)
    last = ordered[i - 1]
    return Page(items, (last.created, last.path), True)


def next_headers(key: str, limit: int, result: Page) -> dict[str, str]:
    """The response headers that say what follows ``result``, a page of the glob ``key``."""
    if not result.truncated:
        return {}
    headers = {"X-List-Truncated": "true"}
    if result.after is not None:
        cursor = encode_cursor(result.after)
        headers["X-Next-Cursor"] = cursor
        headers["Link"] = f'</{key}?limit={limit}&cursor={cursor}>; rel="next"'
    return headers


def json_array(items: list[Object]) -> Iterator[bytes]:
    """The JSON array of ``items`` in parts (each item encoded when it is about to be sent)."""
    yield b"["
    for i, obj in enumerate(items):
        if i:
            yield b","
        yield obj.to_json()
    yield b"]"
