"""Key grammar, glob predicates and matching (PROTOCOL.md §1). Pure functions, no I/O.

A ``*`` matches any run (possibly empty) of characters inside one ``/``-segment and never crosses a
``/``; this is why :mod:`fnmatch` is not used anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Generic, TypeVar

from .errors import InvalidGlob

V = TypeVar("V")

__all__ = [
    "is_valid",
    "has_glob",
    "is_glob",
    "last_index",
    "validate_glob",
    "match",
    "peer",
    "build",
    "glob_prefix",
    "PatternIndex",
]

_VALID = re.compile(r"[A-Za-z0-9*](?:[A-Za-z0-9*/._-]*[A-Za-z0-9*])?").fullmatch


def is_valid(key: str) -> bool:
    """True iff ``key`` is a valid (concrete or glob) key of PROTOCOL.md §1.1."""
    return (
        bool(key)
        and _VALID(key) is not None
        and "//" not in key
        and "**" not in key
    )


def has_glob(key: str) -> bool:
    """True if ``key`` contains a ``*`` anywhere."""
    return "*" in key


def is_glob(key: str) -> bool:
    """True if the last ``/``-segment of ``key`` is exactly ``*``."""
    return key == "*" or key.endswith("/*")


def last_index(key: str) -> str:
    """The text after the last ``/`` (the whole key if it has none)."""
    return key.rpartition("/")[2]


def validate_glob(key: str) -> None:
    """Check the glob rule of POST: at most one ``*``, and only as the last character.

    Raises :class:`~ooo_storage.errors.InvalidGlob` with the protocol message.
    """
    count = key.count("*")
    if count > 1:
        raise InvalidGlob("key: contains more than one glob pattern")
    if count == 1 and not key.endswith("*"):
        raise InvalidGlob("key: glob pattern must be at the end of the path")


def glob_prefix(pattern: str) -> str:
    """The literal text before the first ``*``: every key matching ``pattern`` starts with it."""
    return pattern.partition("*")[0]


@lru_cache(maxsize=4096)
def _segments(pattern: str) -> tuple[int, tuple[tuple[str, ...] | None, ...]]:
    # Per segment: None for a bare "*" (matches anything), else the literal parts around each "*".
    segs = pattern.split("/")
    return len(segs), tuple(None if s == "*" else tuple(s.split("*")) for s in segs)


def _seg_match(parts: tuple[str, ...], seg: str) -> bool:
    if len(parts) == 1:
        return parts[0] == seg
    first, last = parts[0], parts[-1]
    if len(seg) < len(first) + len(last) or not seg.startswith(first) or not seg.endswith(last):
        return False
    pos, end = len(first), len(seg) - len(last)
    for part in parts[1:-1]:
        found = seg.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def match(pattern: str, key: str) -> bool:
    """True if ``key`` matches ``pattern`` (equal, or segment-wise glob match)."""
    if pattern == key:
        return True
    if "*" not in pattern:
        return False
    count, segs = _segments(pattern)
    if pattern == "*":
        return "/" not in key
    ksegs = key.split("/")
    if len(ksegs) != count:
        return False
    for parts, seg in zip(segs, ksegs, strict=True):
        if parts is not None and not _seg_match(parts, seg):
            return False
    return True


def peer(a: str, b: str) -> bool:
    """``match(a, b) or match(b, a)``."""
    return match(a, b) or match(b, a)


def build(pattern: str, stamp: int | None = None) -> str:
    """Replace the first ``*`` of ``pattern`` with the lowercase hex of a clock value (push keys)."""
    if stamp is None:
        from .meta import now

        stamp = now()
    return pattern.replace("*", format(stamp, "x"), 1)


class _Node(Generic[V]):
    __slots__ = ("literal", "wild", "value", "has_value")

    def __init__(self) -> None:
        self.literal: dict[str, _Node[V]] = {}  # segment without "*" -> child
        self.wild: dict[str, _Node[V]] = {}  # segment pattern with "*" -> child
        self.value: V | None = None
        self.has_value = False


class PatternIndex(Generic[V]):
    """Keys and globs (patterns), each with a value, found by the keys they may concern.

    A trie over ``/``-segments: literal segments are dict lookups, so finding the patterns that
    match one key costs the key's depth plus the wildcard segments met on the way, not the number
    of patterns (5 000 subscriptions on ``g/<n>/*`` cost one lookup per segment for any write).
    """

    __slots__ = ("_root", "_size")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __setitem__(self, pattern: str, value: V) -> None:
        node = self._root
        for seg in pattern.split("/"):
            children = node.wild if "*" in seg else node.literal
            child = children.get(seg)
            if child is None:
                child = children[seg] = _Node()
            node = child
        if not node.has_value:
            self._size += 1
        node.value, node.has_value = value, True

    def pop(self, pattern: str) -> V | None:
        """Remove ``pattern`` (and the nodes it alone used); its value, or None if absent."""
        path: list[tuple[dict[str, _Node[V]], str, _Node[V]]] = []
        node = self._root
        for seg in pattern.split("/"):
            children = node.wild if "*" in seg else node.literal
            child = children.get(seg)
            if child is None:
                return None
            path.append((children, seg, child))
            node = child
        if not node.has_value:
            return None
        value = node.value
        node.value, node.has_value = None, False
        self._size -= 1
        for children, seg, child in reversed(path):
            if child.has_value or child.literal or child.wild:
                break
            del children[seg]
        return value

    def matching(self, key: str) -> Iterator[V]:
        """Values of the patterns that ``key`` matches (``match(pattern, key)``).

        ``key`` may itself be a glob (a glob delete): then every pattern that could share a key
        with it is included — those that ``peer`` it and possibly a few more (two wildcard
        segments are assumed to overlap); callers check their own items.
        """
        nodes = [self._root]
        for seg in key.split("/"):
            found: list[_Node[V]] = []
            glob = "*" in seg
            for node in nodes:
                if glob:
                    found.extend(c for lit, c in node.literal.items() if match(seg, lit))
                    found.extend(node.wild.values())
                    continue
                child = node.literal.get(seg)
                if child is not None:
                    found.append(child)
                for pat, c in node.wild.items():
                    if pat == "*" or match(pat, seg):
                        found.append(c)
            if not found:
                return
            nodes = found
        for node in nodes:
            if node.has_value:
                yield node.value  # type: ignore[misc]
