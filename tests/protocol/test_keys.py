"""Key grammar and matching: every vector of PROTOCOL.md §1, plus properties."""

from __future__ import annotations

import fnmatch
import itertools
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ooo_storage import InvalidGlob
from ooo_storage.protocol import keys

VALID = [
    "test", "test/1", "a/b/c", "*", "a/b/*", "users/john-doe", "logs/2026-05-08", "data/report.json",
    "users/jane_doe", "550e8400-e29b-41d4-a716-446655440000", "a/*b", "a*b", "*/*", "test/*/*", "a/./b",
]
INVALID = [
    "", "/a/b", "a/b/", "test//1", "test/*/**", "-x", "x-", ".x", "x.", "_x", "x_", "a b", "a:b",
    "a@b", "a%b", "a+b", "é", "caf\u00e9", "a\nb", "a/b\u2028",
]


@pytest.mark.parametrize("key", VALID)
def test_valid(key: str) -> None:
    assert keys.is_valid(key)


@pytest.mark.parametrize("key", INVALID)
def test_invalid(key: str) -> None:
    assert not keys.is_valid(key)


@pytest.mark.parametrize(
    ("key", "has", "is_"),
    [("*", True, True), ("a/*", True, True), ("a/*/b", True, False), ("a*", True, False), ("a/b", False, False)],
)
def test_glob_predicates(key: str, has: bool, is_: bool) -> None:
    assert keys.has_glob(key) is has
    assert keys.is_glob(key) is is_


@pytest.mark.parametrize(("key", "idx"), [("a/b/c", "c"), ("abc", "abc"), ("a/*", "*"), ("a/", "")])
def test_last_index(key: str, idx: str) -> None:
    assert keys.last_index(key) == idx


def test_validate_glob() -> None:
    keys.validate_glob("a/b")
    keys.validate_glob("a/*")
    keys.validate_glob("a*")
    with pytest.raises(InvalidGlob, match=r"^key: contains more than one glob pattern$"):
        keys.validate_glob("a/*/*")
    with pytest.raises(InvalidGlob, match=r"^key: glob pattern must be at the end of the path$"):
        keys.validate_glob("test/*/more")


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("*", "thing", True),
        ("thing/*", "thing/123", True),
        ("thing/glob/*/*", "thing/glob/test/234", True),
        ("thing/123/*", "thing/123/123/123", False),
        ("thing/123", "thing/12", False),
        ("users/a*", "users/abc", True),
        ("*", "a/b", False),
        ("users/a*", "users/bac", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),
        ("*x", "x", True),
        ("a/*/b/*", "a/1/b/2", True),
        ("a/*/b/*", "a/1/c/2", False),
        ("a/*", "a/", True),
    ],
)
def test_match_vectors(pattern: str, key: str, expected: bool) -> None:
    assert keys.match(pattern, key) is expected


def test_peer_is_symmetric_match() -> None:
    assert keys.peer("users/*", "users/1") and keys.peer("users/1", "users/*")
    assert not keys.peer("users/*", "users")


def test_build_replaces_first_glob_with_hex_clock() -> None:
    assert keys.build("logs/*", 0x18895B6DC6B09A1B) == "logs/18895b6dc6b09a1b"
    a, b = keys.build("logs/*"), keys.build("logs/*")
    assert a != b and a < b and len(keys.last_index(a)) == 16


segment = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=6)
concrete = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(concrete)
def test_concrete_key_matches_itself_and_its_segment_globs(key: str) -> None:
    assert keys.is_valid(key)
    assert keys.match(key, key)
    segs = key.split("/")
    for i in range(len(segs)):
        pattern = "/".join(segs[:i] + ["*"] + segs[i + 1 :])
        assert keys.match(pattern, key)
        prefix_glob = "/".join(segs[:i] + [segs[i][:1] + "*"] + segs[i + 1 :])
        assert keys.match(prefix_glob, key)


@given(st.lists(segment, min_size=1, max_size=3), st.lists(segment, min_size=1, max_size=3))
def test_star_never_crosses_slash(pattern_segs: list[str], key_segs: list[str]) -> None:
    pattern = "/".join("*" for _ in pattern_segs)
    key = "/".join(key_segs)
    assert keys.match(pattern, key) is (len(pattern_segs) == len(key_segs))


@given(segment, segment, st.text(alphabet="ab*", min_size=1, max_size=6), st.text(alphabet="ab", max_size=8))
def test_segment_match_agrees_with_fnmatch_inside_one_segment(a: str, b: str, pat: str, seg: str) -> None:
    # Inside one segment (no "/"), our "*" means exactly what fnmatch's "*" means.
    pattern, key = f"{a}/{pat}/{b}", f"{a}/{seg}/{b}"
    assert keys.match(pattern, key) is fnmatch.fnmatchcase(seg, pat)


# -- PatternIndex: the trie the server routes events with --------------------------------------

small_seg = st.sampled_from(["a", "b", "ab", "ba", "*", "a*", "*b", "a*b", "*a*", "ab*", "*ab"])
small_pattern = st.lists(small_seg, min_size=1, max_size=3).map("/".join).filter(lambda p: "**" not in p)


@given(st.lists(small_pattern, max_size=12), st.lists(small_pattern, max_size=4), small_pattern)
def test_pattern_index_finds_exactly_what_match_finds(patterns: list[str], gone: list[str], key: str) -> None:
    index: keys.PatternIndex[str] = keys.PatternIndex()
    for p in patterns:
        index[p] = p
    live = set(patterns)
    for p in gone:
        assert index.pop(p) == (p if p in live else None)
        live.discard(p)
    assert len(index) == len(live)
    found = list(index.matching(key))
    assert len(found) == len(set(found))
    if "*" not in key:
        assert set(found) == {p for p in live if keys.match(p, key)}
    else:  # a glob delete: every pattern that peers it, maybe a few more of the same depth
        assert {p for p in live if keys.peer(p, key)} <= set(found)
        assert all(p.count("/") == key.count("/") for p in found)


def test_pattern_index_prunes_empty_nodes() -> None:
    index: keys.PatternIndex[int] = keys.PatternIndex()
    for i in range(100):
        index[f"g/{i}/*"] = i
    assert list(index.matching("g/42/x")) == [42] and list(index.matching("users/1")) == []
    for i in range(100):
        assert index.pop(f"g/{i}/*") == i
    assert len(index) == 0 and not index._root.literal and index._root.wild is None


def test_pattern_index_wildcards_with_literal_prefix_or_suffix() -> None:
    index: keys.PatternIndex[str] = keys.PatternIndex()
    pats = [f"users/*{i}" for i in range(300)] + [f"users/{i}*" for i in range(300)] + ["users/*", "users/*x*"]
    for p in pats:
        index[p] = p
    key = "users/12x3"
    assert sorted(index.matching(key)) == sorted(p for p in pats if keys.match(p, key))
    wild = index._root.literal["users"].wild
    assert wild is not None and list(wild.by_inner) == ["x"]  # "*x*" under its inner literal


@pytest.mark.parametrize("shape", ["*{}*/x", "u*{}*/*", "users/*{}", "g/{}/*", "{}*/k", "*{}k*/a*"])
def test_many_distinct_globs_cost_few_matches_per_key(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 000 subscriptions of one shape: a write's key is tried against a handful of them, not
    all (an attacker's idle globs used to cut writes from 5 400/s to 45/s)."""
    index: keys.PatternIndex[str] = keys.PatternIndex()
    pats = [shape.format(i) for i in range(5000)]
    for p in pats:
        index[p] = p
    calls = 0
    real = keys.match

    def counted(pattern: str, key: str) -> bool:
        nonlocal calls
        calls += 1
        return real(pattern, key)

    monkeypatch.setattr(keys, "match", counted)
    for key in ("users/1234", "u12/x", "ux/y", "g/42/z", "4242k/k", "a/b"):
        calls = 0
        found = sorted(index.matching(key))
        assert found == sorted(p for p in pats if real(p, key))
        assert calls <= 60, (key, calls)


def test_the_trailing_star_shortcut_agrees_with_the_segment_walk() -> None:
    """``prefix/*`` is matched without splitting the key; every pattern and key over a small
    alphabet (up to 5 and 4 characters) gets the answer of the general segment walk."""

    def walk(pattern: str, key: str) -> bool:
        if pattern == key:
            return True
        if "*" not in pattern:
            return False
        if pattern == "*":
            return "/" not in key
        count, segs = keys._segments(pattern)
        parts = key.split("/")
        return len(parts) == count and all(
            seg is None or keys._seg_match(seg, part) for seg, part in zip(segs, parts, strict=True)
        )

    checked = 0
    for length in range(6):
        for pattern in map("".join, itertools.product("ab/*", repeat=length)):
            for size in range(5):
                for key in map("".join, itertools.product("ab/", repeat=size)):
                    assert keys.match(pattern, key) == walk(pattern, key), (pattern, key)
                    checked += 1
    assert checked > 100_000
