"""The access decision equals a slow reference written from the definition (issue 9).

The reference does not reuse access.py's algorithm. It resolves who a request is from the policy
*document* (a token by the SHA-256 of its text, a JWT's rules with ``{claim}`` filled in by a
hand-written scanner, anonymous otherwise), and decides from the semantics:

* a request on a **key** is allowed when some rule path with the right matches it
  (:func:`keys.match`, PROTOCOL §1.3);
* a request on a **glob** is allowed when some rule path with the right matches *every concrete key
  the glob can match*, checked by brute force: every way of filling each ``*`` of the requested glob
  with every string of at most two characters over ``a``, ``b`` and ``c`` that gives a valid key
  (for a hand-written rule that contains ``c``, the first letter it lacks instead).

Why that enumeration is a faithful reference (not merely a sample): generated paths use only ``a``
and ``b`` (and, through claims, ``.``, ``-`` and digits), never ``c``. If some concrete key matched
by the requested glob escapes a rule path, then so does the key made by filling every ``*`` with the
single letter ``c``: a rule path's literal parts contain no ``c``, so wherever they sit in that key
they sit inside the requested glob's own literal text, and the same placement then works for every
key the glob matches (each rule ``*`` absorbs whatever the glob's ``*`` put around them); segment
counts and the key grammar are unaffected (``c`` is a letter). That key is among the enumerated
ones, so a non-covering rule is always caught; fills of length 0 and 2 are extra witnesses (the
empty fill exercises "``*`` matches the empty run"). ``test_reference_is_exhaustive`` checks the
bound empirically against a four-letter, three-character enumeration.

Each check fails with the kind of disagreement first: **soundness** (access.py allows what the
semantics forbids: critical), then **completeness** (it refuses something harmless). Rule segments
have up to two ``*``. The first version of access.py (c8c30d1) had one completeness gap, found here:
a rule segment with two ``*`` covered only an equal or literal segment (``*a*`` refused ``a*``,
``b*a*`` refused ``bb*a``); never a soundness bug.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ooo_storage.errors import Forbidden, Unauthorized
from ooo_storage.protocol import keys
from ooo_storage.protocol.access import RIGHTS, Policy, covers

SECRET = "s" * 32


def fills(letters: str, longest: int) -> tuple[str, ...]:
    """Every string of at most ``longest`` characters over ``letters``."""
    return tuple("".join(p) for n in range(longest + 1) for p in itertools.product(letters, repeat=n))


def fresh(rule: str, count: int = 1) -> str:
    """``count`` letters that ``rule`` does not contain (``c`` first, then ``d``...)."""
    return "".join([ch for ch in "cdefghijklmnopqrstuvwxyz" if ch not in rule][:count])


# -- the reference --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def concrete_keys(glob: str, letters: str = "abc", longest: int = 2) -> tuple[str, ...]:
    """The valid concrete keys ``glob`` matches when each ``*`` takes a string of at most
    ``longest`` characters over ``letters``."""
    parts = glob.split("*")
    found = []
    for choice in itertools.product(fills(letters, longest), repeat=len(parts) - 1):
        key = parts[0] + "".join(f + p for f, p in zip(choice, parts[1:], strict=True))
        if keys.is_valid(key):
            assert keys.match(glob, key), (glob, key)  # the enumeration only yields real matches
            found.append(key)
    assert found, f"{glob!r} matches no concrete key: the vacuous case must not arise"
    return tuple(dict.fromkeys(found))


def semantic_covers(rule: str, asked: str, wide: bool = False) -> bool:
    """Every concrete key ``asked`` matches, ``rule`` matches too: ``*`` filled over ``a``, ``b``
    and a letter ``rule`` lacks (``c`` for generated rules), up to two characters; ``wide``: two
    such letters, up to three characters."""
    if "*" not in asked:
        return keys.match(rule, asked)
    letters, longest = ("ab" + fresh(rule, 2), 3) if wide else ("ab" + fresh(rule), 2)
    return all(keys.match(rule, key) for key in concrete_keys(asked, letters, longest))


def fill_claims(path: str, claims: dict[str, Any]) -> str | None:
    """``path`` with each ``{name}`` replaced by that claim, scanned by hand (one pass: a value is
    never scanned again); None when a claim is missing, not a string or integer, empty, holds a
    ``/`` or a ``*``, is ``.`` or ``..``, a segment with a placeholder becomes ``.`` or ``..``, or
    the result is not a valid path."""
    out, rest = [], path
    while "{" in rest:
        before, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        value = claims.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        text = str(value)
        if not text or "/" in text or "*" in text or text in (".", ".."):
            return None
        out += [before, text]
    filled = "".join(out) + rest
    for rule_segment, segment in zip(path.split("/"), filled.split("/"), strict=True):
        if "{" in rule_segment and segment in (".", ".."):
            return None
    return filled if keys.is_valid(filled) else None


@dataclass(frozen=True)
class Request:
    credential: tuple[Any, ...]  # ("anonymous",) | ("token", text) | ("jwt", claims)
    right: str
    path: str

    @property
    def bearer(self) -> str | None:
        kind = self.credential[0]
        if kind == "anonymous":
            return None
        if kind == "token":
            return str(self.credential[1])
        return jwt.encode(self.credential[1], SECRET, algorithm="HS256")


def reference_rules(doc: dict[str, Any], request: Request) -> list[dict[str, Any]] | None:
    """The rules of whoever makes ``request`` (None: not authenticated)."""
    kind = request.credential[0]
    if kind == "anonymous":
        return list(doc.get("anonymous", {}).get("rules", []))
    if kind == "token":
        digest = hashlib.sha256(str(request.credential[1]).encode()).hexdigest()
        for entry in doc.get("tokens", []):
            if entry["sha256"] == digest:
                return list(entry.get("rules", []))
        return None
    if "jwt" not in doc:
        return None
    claims = request.credential[1]
    rules = []
    for rule in doc["jwt"].get("rules", []):
        paths = [p for p in (fill_claims(path, claims) for path in rule["paths"]) if p is not None]
        if paths:  # a rule none of whose paths can be filled grants nothing, not even admin
            rules.append({"paths": paths, "rights": rule["rights"]})
    return rules


def reference(doc: dict[str, Any], request: Request) -> bool | None:
    """The decision: True/False, or None for 401."""
    rules = reference_rules(doc, request)
    if rules is None:
        return None
    if request.right == "admin":
        return any("admin" in rule["rights"] for rule in rules)
    return any(
        request.right in rule["rights"] and any(semantic_covers(p, request.path) for p in rule["paths"])
        for rule in rules
    )


def decide(policy: Policy, request: Request) -> bool | None:
    """access.py's decision, with its three entry points checked against each other."""
    try:
        principal = policy.authenticate(request.bearer)
    except Unauthorized as exc:
        assert exc.status == 401 and "Bearer" in exc.headers["WWW-Authenticate"]
        return None
    right = request.right
    allowed = Policy.allows(principal, right, request.path)  # type: ignore[arg-type]
    try:
        policy.check(principal, right, request.path)  # type: ignore[arg-type]
    except Forbidden as exc:
        assert not allowed and exc.status == 403 and right in exc.message
    else:
        assert allowed
    if right == "read" and "*" not in request.path:
        assert Policy.reader(principal)(request.path) is allowed
    return allowed


# -- generators -----------------------------------------------------------------------------------


# Every path segment of one to four characters over a, b and * (never **): up to two stars.
SHAPES = [s for n in range(1, 5) for s in map("".join, itertools.product("ab*", repeat=n)) if "**" not in s]


def path(extra: Sequence[str] = (), weight: int = 1) -> st.SearchStrategy[str]:
    """Paths of one to three segments; a segment of ``extra`` is ``weight`` times as likely as
    one of all the others together."""
    seg = st.sampled_from(SHAPES)
    if extra:
        seg = st.one_of(seg, *[st.sampled_from(list(extra))] * weight)
    return st.lists(seg, min_size=1, max_size=3).map("/".join).filter(valid_rule_path)


def valid_rule_path(path: str) -> bool:
    """A valid path once its placeholders are filled with a plain value (what the policy accepts)."""
    return keys.is_valid(path.replace("{sub}", "x").replace("{team}", "x"))


# Claim placeholders, alone or glued to literal text, in JWT rule paths.
CLAIM_SEGMENTS = ["{sub}", "{team}", "a{sub}", "{sub}*", "{team}b", "{sub}-{team}", "{sub}{team}", ".{sub}"]
# Hostile and ordinary claim values: every one must resolve to a plain segment or drop the path.
SUBS = st.one_of(
    st.sampled_from(["a", "b", "ab", "a.b", "..", ".", "a-b", "7", "A"]),
    st.sampled_from(["*", "a*", "*a", "a/b", "b/*", "/", "", " a", "\u00e9", "{team}", "a\nb"]),
)
TEAMS = st.one_of(SUBS, st.sampled_from([7, 0, -1, True, False, None, ["a"], {"a": "b"}, 2**70]))
# Literal request segments that substituted claims can produce.
CLAIM_LITERALS = ["a.b", "..", ".", "a-b", "7", "-1", "0", "A", "aa-7"]
RIGHT_SETS = st.sets(st.sampled_from(RIGHTS), min_size=1).map(sorted)


def rules(paths: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    rule = st.fixed_dictionaries({"paths": st.lists(paths, min_size=1, max_size=3), "rights": RIGHT_SETS})
    return st.lists(rule, max_size=3)


# Built once: hypothesis strategies are costly to construct and validate.
RULES = rules(path())
JWT_RULES = rules(path(CLAIM_SEGMENTS))
CLAIM_RULES = rules(path(CLAIM_SEGMENTS, weight=3)).filter(bool)
# Requested globs have at most two stars in policy-level tests, three in pair tests (the
# enumeration's cost grows as 13 ** stars).
ASKED = path(CLAIM_LITERALS).filter(lambda p: p.count("*") <= 2)
ASKED3 = path(CLAIM_LITERALS).filter(lambda p: p.count("*") <= 3)
RULE_PATHS = path(CLAIM_LITERALS)
SEGMENTS = st.sampled_from(SHAPES + CLAIM_LITERALS)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    count = draw(st.integers(0, 3))
    doc["tokens"] = [
        {"name": f"t{i}", "sha256": hashlib.sha256(f"token-{i}".encode()).hexdigest(),
         "rules": draw(RULES)}
        for i in range(count)
    ]
    if draw(st.booleans()):
        doc["anonymous"] = {"rules": draw(RULES)}
    if draw(st.booleans()):
        doc["jwt"] = {"secret": SECRET, "rules": draw(JWT_RULES)}
    return doc


KINDS = ("anonymous", "token", "jwt", "unknown")


def naive_fill(path: str, claims: dict[str, Any]) -> str:
    """``path`` with its placeholders replaced by the raw text of the claims: the key a hostile
    claim would reach if substitution were naive (``a/b`` or ``*`` in ``users/{sub}/*``)."""
    for name, value in claims.items():
        path = path.replace("{" + name + "}", str(value))
    return path


# What a rule segment's ``*`` may become in a request near it: a glob again, narrower globs,
# or literal text (``""`` included: the run a ``*`` matches may be empty).
STAR_VARIANTS = st.sampled_from(["*", "", "a", "b", "ab", "ba", "a*", "*b", "a*b", "*a*"])


@st.composite
def variant(draw: st.DrawFn, path: str, max_stars: int) -> str:
    """A path near ``path``: itself, or per segment the same, its ``*`` rewritten, its literal text
    less one character, or another segment;
    random paths alone rarely land where a rule and a request almost agree."""
    segs = []
    unchanged = draw(st.booleans())
    for seg in path.split("/"):
        how = "same" if unchanged else draw(st.sampled_from(["same", "rewrite", "trim", "other"]))
        if how == "trim" and len(seg.replace("*", "")) > 1:
            # Shorter than the literal text around the rule's stars: "a" near "a*a".
            text = seg.replace("*", "")
            cut = draw(st.integers(0, len(text) - 1))
            seg = text[:cut] + text[cut + 1 :]
        elif how == "rewrite":
            parts = seg.split("*")
            seg = parts[0] + "".join(draw(STAR_VARIANTS) + part for part in parts[1:])
        elif how == "other":
            seg = draw(SEGMENTS)
        segs.append(seg)
    asked = "/".join(segs)
    ok = keys.is_valid(asked) and asked.count("*") <= max_stars
    return asked if ok else draw(ASKED3 if max_stars > 2 else ASKED)


@st.composite
def near(draw: st.DrawFn, paths: list[str], claims: dict[str, Any]) -> str:
    """A request path near one of the policy's own paths, its claims naively filled."""
    if not paths:
        return draw(ASKED)
    return draw(variant(naive_fill(draw(st.sampled_from(paths)), claims), max_stars=2))


@st.composite
def pairs(draw: st.DrawFn) -> tuple[str, str]:
    """A rule path and a requested path, half of the time near each other."""
    rule = draw(RULE_PATHS)
    return rule, draw(st.one_of(ASKED3, variant(rule, max_stars=3)))


@st.composite
def requests(draw: st.DrawFn, doc: dict[str, Any], kinds: tuple[str, ...] = KINDS) -> Request:
    kind = draw(st.sampled_from(kinds))
    credential: tuple[Any, ...]
    claims: dict[str, Any] = {}
    if kind == "token":
        credential = ("token", f"token-{draw(st.integers(0, 3))}")  # token-3 is never listed
    elif kind == "unknown":
        credential = ("token", draw(st.sampled_from(["nope", "a.b.c", "", "token-"])))
    elif kind == "jwt":
        claims["sub"] = draw(SUBS)
        if draw(st.booleans()):
            claims["team"] = draw(TEAMS)
        credential = ("jwt", claims)
    else:
        credential = ("anonymous",)
    entries = [*doc["tokens"], doc.get("anonymous", {}), doc.get("jwt", {})]
    paths = [p for entry in entries for rule in entry.get("rules", []) for p in rule["paths"]]
    asked = draw(st.one_of(ASKED, near(paths, claims)))
    granted = sorted({r for entry in entries for rule in entry.get("rules", []) for r in rule["rights"]})
    right = draw(st.sampled_from(granted or RIGHTS) | st.sampled_from(RIGHTS))
    return Request(credential, right, asked)


# -- the properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def agree(got: bool | None, expected: bool | None, case: object) -> None:
    """``got`` equals ``expected``; a decision that allows too much fails with its own message
    (a soundness bug, critical) before any that refuses something harmless (a completeness gap)."""
    assert (got is None) == (expected is None), f"authentication differs: {case}"
    assert not (got and not expected), f"SOUNDNESS: allows too much: {case}"
    assert got == expected, f"completeness: refuses what the semantics allows: {case}"


@SETTINGS
@given(st.data())
def test_decision_equals_reference(data: st.DataObject) -> None:
    doc = data.draw(documents())
    policy = Policy.from_dict(doc)
    for request in data.draw(st.lists(requests(doc), min_size=1, max_size=4)):
        agree(decide(policy, request), reference(doc, request), (request, doc))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CLAIM_RULES, st.data())
def test_claims_never_widen(jwt_rules: list[dict[str, Any]], data: st.DataObject) -> None:
    """JWT rules only, hostile claims, requests aimed where naive substitution would reach."""
    doc = {"tokens": [], "jwt": {"secret": SECRET, "rules": jwt_rules}}
    policy = Policy.from_dict(doc)
    for request in data.draw(st.lists(requests(doc, ("jwt",)), min_size=1, max_size=4)):
        agree(decide(policy, request), reference(doc, request), (request, doc))


@settings(max_examples=600, deadline=None)
@given(pairs())
def test_covers_equals_reference(pair: tuple[str, str]) -> None:
    agree(covers(*pair), semantic_covers(*pair), pair)


@st.composite
def segment_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """A rule segment and a requested segment near it."""
    rule = draw(SEGMENTS)
    asked = draw(st.one_of(SEGMENTS, variant(rule, max_stars=2)))
    return rule, asked if "/" not in asked else rule


@settings(max_examples=1000, deadline=None)
@given(segment_pairs())
def test_segment_coverage_equals_reference(pair: tuple[str, str]) -> None:
    """One segment at a time, in a glob request (``x/<segment>/*``): many more segment shapes
    than whole paths reach in the same time."""
    rule, asked = f"x/{pair[0]}/*", f"x/{pair[1]}/*"
    agree(covers(rule, asked), semantic_covers(rule, asked), pair)


@settings(max_examples=150, deadline=None)
@given(path(), path().filter(lambda p: p.count("*") <= 2))
def test_reference_is_exhaustive(rule: str, asked: str) -> None:
    """Two-character fills over a, b, c decide like three-character fills over a, b, c, d."""
    assert semantic_covers(rule, asked) == semantic_covers(rule, asked, wide=True)


# -- examples the properties rest on ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "asked", "expected"),
    [
        ("public/*", "*", False),  # DELETE /* with delete on public/* (the example)
        ("*", "*", True),
        ("a/*/c", "a/*/c", True),
        ("a/*/c", "a/b/c", True),
        ("a/*/c", "a/*/*", False),
        ("a/*/*", "a/*/c", True),
        ("users/*", "users/a*", True),
        ("users/a*", "users/*", False),
        ("users/a*", "users/ab*", True),
        ("users/ab*", "users/a*", False),
        ("x/a*b", "x/a*b", True),
        ("x/a*b", "x/ab*ab", True),
        ("x/a*b", "x/a*", False),
        ("x/ab*ba", "x/ab*a", False),  # "aba" matches the request, not the rule (prefix and suffix overlap)
        ("a/*", "a/*/*", False),  # segment counts differ
        ("a/*/*", "a/*", False),
        ("*", "a/*", False),
        # Rule segments with two stars: the first version refused all of these (a completeness gap).
        ("x/*a*", "x/a*", True),
        ("x/*a*", "x/*a", True),
        ("x/*a*", "x/b*a*b", True),
        ("x/a*b*", "x/ab*", True),
        ("x/b*a*", "x/bb*a", True),
        ("x/*a*", "x/*", False),
        ("x/*a*b*", "x/*ba*", False),
    ],
)
def test_coverage_examples(rule: str, asked: str, expected: bool) -> None:
    assert semantic_covers(rule, asked) is expected
    assert covers(rule, asked) is expected
