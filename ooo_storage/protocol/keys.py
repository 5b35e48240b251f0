"""Key grammar, glob predicates and matching (docs/protocol.md §1). Pure functions, no I/O.

A ``*`` matches any run (possibly empty) of characters inside one ``/``-segment and never crosses a
``/``; this is why :mod:`fnmatch` is not used anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Generic, TypeVar, cast

from ..errors import InvalidGlob

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

KEY_SHAPE = r"[A-Za-z0-9*](?:[A-Za-z0-9*/._-]*[A-Za-z0-9*])?"
"""The characters of a key and what it starts and ends with; with neither ``//`` nor ``**`` in it,
a valid key (:func:`is_valid`)."""
_VALID = re.compile(KEY_SHAPE).fullmatch
VALID_KEY = r"(?!.*//)(?!.*\*\*)" + KEY_SHAPE
"""What :func:`is_valid` accepts as one regular expression, to match as part of a longer text (the
lean front reads a key's validity with its URL: one match instead of two, and a call less)."""


def is_valid(key: str) -> bool:
    """True iff ``key`` is a valid (concrete or glob) key of docs/protocol.md §1.1"""
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


@lru_cache(maxsize=4096)
def _last_star(pattern: str) -> str | None:
    """``prefix`` when ``pattern`` is ``prefix*`` with ``prefix`` empty or ending in ``/`` and no
    other ``*``: the commonest glob (``users/*``), matched without splitting the key."""
    prefix = pattern[:-1]
    if pattern.endswith("*") and "*" not in prefix and (not prefix or prefix.endswith("/")):
        return prefix
    return None


def match(pattern: str, key: str) -> bool:
    """True if ``key`` matches ``pattern`` (equal, or segment-wise glob match)."""
    if pattern == key:
        return True
    if "*" not in pattern:
        return False
    prefix = _last_star(pattern)
    if prefix is not None:  # ~10x faster than the segment walk: a page of `a/*` visits many keys
        return key.startswith(prefix) and "/" not in key[len(prefix) :]
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
        from .clock import now

        stamp = now()
    return pattern.replace("*", format(stamp, "x"), 1)


_GRAM = 3  # an inner literal is indexed by its first characters, up to this many


class _Wild(Generic[V]):
    """The wildcard children of one trie node, bucketed by each pattern's longest literal part, so
    a key segment meets only the patterns that can match it: ``ab*`` under prefix ``ab``, ``*ab``
    under suffix ``ab``, ``*abc*`` and ``u*abc*`` under the inner ``abc`` (looked up through the
    short substrings of the segment), ``*`` always. A bucket holds only patterns that share their
    longest literal, so many distinct globs cost a few look-ups, not one match each."""

    __slots__ = ("nodes", "star", "by_prefix", "by_suffix", "by_inner", "_inner_sizes")

    def __init__(self) -> None:
        self.nodes: dict[str, _Node[V]] = {}
        self.star: _Node[V] | None = None
        self.by_prefix: dict[str, dict[str, _Node[V]]] = {}
        self.by_suffix: dict[str, dict[str, _Node[V]]] = {}
        self.by_inner: dict[str, dict[str, _Node[V]]] = {}
        self._inner_sizes: dict[int, int] = {}  # gram length -> patterns indexed with it

    @staticmethod
    def _anchor(pat: str) -> tuple[str, str] | None:
        """(table, name) a pattern is filed under: its longest literal part (None for ``*``)."""
        parts = pat.split("*")
        first, last, inner = parts[0], parts[-1], max(parts[1:-1], key=len, default="")
        best = max(len(first), len(last), len(inner))
        if best == 0:
            return None
        if len(first) == best:
            return "prefix", first
        if len(last) == best:
            return "suffix", last
        return "inner", inner[:_GRAM]

    def _table(self, kind: str) -> dict[str, dict[str, _Node[V]]]:
        return {"prefix": self.by_prefix, "suffix": self.by_suffix}.get(kind, self.by_inner)

    def add(self, pat: str) -> _Node[V]:
        node = self.nodes[pat] = _Node()
        anchor = self._anchor(pat)
        if anchor is None:
            self.star = node
            return node
        kind, name = anchor
        self._table(kind).setdefault(name, {})[pat] = node
        if kind == "inner":
            self._inner_sizes[len(name)] = self._inner_sizes.get(len(name), 0) + 1
        return node

    def remove(self, pat: str) -> None:
        del self.nodes[pat]
        anchor = self._anchor(pat)
        if anchor is None:
            self.star = None
            return
        kind, name = anchor
        table = self._table(kind)
        bucket = table[name]
        del bucket[pat]
        if not bucket:
            del table[name]
        if kind == "inner":
            left = self._inner_sizes[len(name)] - 1
            if left:
                self._inner_sizes[len(name)] = left
            else:
                del self._inner_sizes[len(name)]

    def matching(self, seg: str) -> Iterator[_Node[V]]:
        if self.star is not None:
            yield self.star
        candidates: list[dict[str, _Node[V]]] = []
        if self.by_prefix:
            candidates.extend(b for end in range(1, len(seg) + 1) if (b := self.by_prefix.get(seg[:end])))
        if self.by_suffix:
            candidates.extend(b for start in range(len(seg)) if (b := self.by_suffix.get(seg[start:])))
        if self.by_inner:
            seen: set[str] = set()
            for size in self._inner_sizes:
                for start in range(len(seg) - size + 1):
                    gram = seg[start : start + size]
                    if gram not in seen and (b := self.by_inner.get(gram)):
                        seen.add(gram)
                        candidates.append(b)
        for bucket in candidates:
            for pat, node in bucket.items():
                if match(pat, seg):
                    yield node


class _Node(Generic[V]):
    __slots__ = ("literal", "wild", "value", "has_value")

    def __init__(self) -> None:
        self.literal: dict[str, _Node[V]] = {}  # segment without "*" -> child
        self.wild: _Wild[V] | None = None  # segment patterns with "*"
        self.value: V | None = None
        self.has_value = False


class PatternIndex(Generic[V]):
    """Keys and globs (patterns), each with a value, found by the keys they may concern.

    A trie over ``/``-segments: literal segments are dict lookups and wildcard segments are
    bucketed by their longest literal part, so finding the patterns that match one key costs
    about the key's length, not the number of patterns (5 000 subscriptions on ``g/<n>/*``,
    ``users/*<n>``, ``*<n>*/x`` or ``u*<n>*/*`` cost a few look-ups per write). Only patterns
    sharing their longest literal are tried one by one.
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
            if "*" in seg:
                wild = node.wild
                if wild is None:
                    wild = node.wild = _Wild()
                child = wild.nodes.get(seg)
                if child is None:
                    child = wild.add(seg)
            else:
                child = node.literal.get(seg)
                if child is None:
                    child = node.literal[seg] = _Node()
            node = child
        if not node.has_value:
            self._size += 1
        node.value, node.has_value = value, True

    def pop(self, pattern: str) -> V | None:
        """Remove ``pattern`` (and the nodes it alone used); its value, or None if absent."""
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for seg in pattern.split("/"):
            if "*" in seg:
                child = None if node.wild is None else node.wild.nodes.get(seg)
            else:
                child = node.literal.get(seg)
            if child is None:
                return None
            path.append((node, seg))
            node = child
        if not node.has_value:
            return None
        value = node.value
        node.value, node.has_value = None, False
        self._size -= 1
        for parent, seg in reversed(path):
            if node.has_value or node.literal or node.wild is not None:
                break
            if "*" in seg:
                assert parent.wild is not None
                parent.wild.remove(seg)
                if not parent.wild.nodes:
                    parent.wild = None
            else:
                del parent.literal[seg]
            node = parent
        return value

    def matching(self, key: str, as_text: bool = False) -> Iterator[V]:
        """Values of the patterns that ``key`` matches (``match(pattern, key)``).

        ``key`` may itself be a glob (a glob delete): then every pattern that could share a key
        with it is included — those that ``peer`` it and possibly a few more (two wildcard
        segments are assumed to overlap); callers check their own items. With ``as_text`` a glob
        ``key`` is read as plain text instead (its ``*`` an ordinary character that only a
        pattern's ``*`` can absorb): exactly the patterns that cover every key the glob can match.
        """
        nodes = [self._root]
        for seg in key.split("/"):
            found: list[_Node[V]] = []
            glob = not as_text and "*" in seg
            for node in nodes:
                if glob:
                    found.extend(c for lit, c in node.literal.items() if match(seg, lit))
                    if node.wild is not None:
                        found.extend(node.wild.nodes.values())
                    continue
                child = node.literal.get(seg)
                if child is not None:
                    found.append(child)
                if node.wild is not None:
                    found.extend(node.wild.matching(seg))
            if not found:
                return
            nodes = found
        for node in nodes:
            if node.has_value:
                yield cast(V, node.value)  # set together with has_value
