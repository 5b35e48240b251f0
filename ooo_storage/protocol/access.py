"""Who may do what: principals, rules and the decision (issue 9). Pure: no I/O, no asyncio.

A **policy** names principals and gives each a list of rules ``{paths = [globs], rights = [...]}``:

* **tokens**: opaque bearer tokens, kept only as the SHA-256 hex of the token (compared in constant
  time); each token has a name and its own rules;
* **JWTs**: tokens signed by the application's own login (HS256 with a shared secret, RS256/ES256
  with a public key); every valid JWT gets the JWT rules, in whose paths ``{claim}`` is replaced by
  that claim of the token (``users/{sub}/*``); a claim that is not a plain key segment (empty, with a
  ``/`` or a ``*``, ``.`` or ``..``, or not a string or number) makes the path match nothing;
* **anonymous**: what a request without a token may do (nothing unless the policy says so).

Rights: ``read`` (GET of a key or glob, websocket subscribe), ``write`` (POST, PATCH, push),
``delete`` (DELETE of a key or glob), ``admin`` (``GET /``: key listings, every ``?api=`` route).

The decision: a request on a **key** is allowed when a rule with that right has a path that matches
the key (PROTOCOL §1.3). A request on a **glob** (GET, subscribe, DELETE, push) is allowed only when a
rule's path *covers* the requested glob: every key the glob can match, the rule matches too. That
is exactly when the rule, as a pattern, matches the requested glob read as text (its ``*`` ordinary
characters: a literal of the rule never equals ``*``, so only the rule's own ``*`` can absorb them).
So ``DELETE /*`` by someone with delete on ``public/*`` is refused, ``GET /users/a*`` is allowed by a
rule on ``users/*``, and ``bb*a`` by ``b*a*``. The admin routes need a rule that grants ``admin``
(its paths do not matter); key listings show only the keys the principal may read.

Principals are compiled once (their paths indexed per right in a :class:`PatternIndex`), so a
decision costs about the length of the key, not the number of rules; opaque tokens are found by
their digest, then remembered as sent (no SHA-256 per request), and verified JWTs are remembered
(bounded) until they expire.

Namespaces (0-stor) are declared path prefixes (``acme/``): the server keeps usage per namespace.
"""

from __future__ import annotations

import hashlib
import re
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ..errors import Forbidden, PolicyError, Unauthorized
from .keys import PatternIndex, is_valid, match

__all__ = [
    "RIGHTS",
    "Right",
    "Rule",
    "Principal",
    "Namespace",
    "JWTConfig",
    "Policy",
    "covers",
    "shown",
    "token_digest",
]

Right = Literal["read", "write", "delete", "admin"]
RIGHTS: tuple[Right, ...] = ("read", "write", "delete", "admin")

ANONYMOUS = "anonymous"
_CLAIM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DOTS = (".", "..")  # valid key segments, but read as "here" and "up" by whatever maps keys to paths
_VERIFIED = 4096  # verified JWTs remembered per policy
_NUMERIC_DATES = ("exp", "nbf", "iat")
_NEVER = 2.0**53  # an exp this far away (285 million years) is as good as none (and fits a float)
JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


def _is_number(value: object) -> bool:
    """A JSON number: an int or a float, not a bool (``True`` is not ``1`` in a JWT)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def token_digest(token: str) -> str:
    """The SHA-256 hex of a token: what a policy file keeps instead of the token.

    A header that was not UTF-8 reaches us with lone surrogates (aiohttp's surrogateescape):
    ``surrogatepass`` hashes it to some digest no policy holds, an unknown token, not a crash."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def shown(name: str) -> str:
    """``name`` as logs and refusals show it: its non-printable characters (newlines, other
    control characters) escaped as ``repr`` would, so a JWT ``sub`` of ``"ana\\n"`` cannot split a
    log line or forge one."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


# -- coverage --------------------------------------------------------------------------------------


def covers(rule: str, asked: str) -> bool:
    """True when every key ``asked`` (a key or a glob) can match, ``rule`` matches too."""
    return match(rule, asked)


# -- principals and rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Rights on paths (globs; ``{claim}`` placeholders for JWT rules)."""

    paths: tuple[str, ...]
    rights: frozenset[Right]


@dataclass(frozen=True)
class Principal:
    """Who a request is: a token's name, ``jwt:<sub>`` or ``anonymous``, with its rules resolved
    (JWT claims substituted) and compiled for :meth:`Policy.allows`."""

    name: str
    kind: Literal["token", "jwt", "anonymous"]
    rules: tuple[Rule, ...]
    _paths: Mapping[Right, PatternIndex[bool]] = field(init=False, repr=False, compare=False)
    _plain: Mapping[Right, frozenset[str]] = field(init=False, repr=False, compare=False)
    admin: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        indexes: dict[Right, PatternIndex[bool]] = {}
        plain: dict[Right, set[str]] = {}
        for rule in self.rules:
            for right in rule.rights:
                index = indexes.setdefault(right, PatternIndex())
                for path in rule.paths:
                    index[path] = True
                    if "*" not in path:
                        plain.setdefault(right, set()).add(path)
                    elif path.endswith("/*") and "*" not in path[:-2]:
                        plain.setdefault(right, set()).add(path[:-1])
        object.__setattr__(self, "_paths", indexes)
        object.__setattr__(self, "_plain", {right: frozenset(paths) for right, paths in plain.items()})
        object.__setattr__(self, "admin", any("admin" in rule.rights for rule in self.rules))

    def paths(self, right: Right) -> Iterable[str]:
        for rule in self.rules:
            if right in rule.rights:
                yield from rule.paths

    def may(self, right: Right, key: str) -> bool:
        """Whether one of the paths with ``right`` covers ``key`` (a key or a glob).

        The paths of the commonest shapes are tried first with one set look-up each, as they
        decide most requests: a literal key, which covers only itself, and ``<literal>/*``
        (``users/ana/*``: the rule filed as ``users/ana/``), which covers whatever has no ``/``
        after that prefix. The other paths, and refusals, go through the index."""
        plain = self._plain.get(right)
        if plain is not None and (key in plain or key[: key.rfind("/") + 1] in plain):
            return True
        index = self._paths.get(right)
        return index is not None and next(index.matching(key, as_text=True), False)


@dataclass(frozen=True)
class Namespace:
    name: str
    prefix: str


@dataclass(frozen=True)
class JWTConfig:
    """How JWTs are checked: the algorithms accepted and the key (a shared secret or a public key
    in PEM), plus optional ``audience``/``issuer`` and the clock ``leeway`` in seconds."""

    algorithms: tuple[str, ...]
    key: str | bytes
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0
    rules: tuple[Rule, ...] = ()


def _substitute(path: str, claims: Mapping[str, Any]) -> str | None:
    """``path`` with each ``{claim}`` replaced, or None when a claim is missing or not a plain key
    segment (a ``sub`` of ``*`` or ``a/b`` must not widen what the rule grants, and ``..`` must not
    name a neighbour's subtree to anything downstream that reads keys as file paths)."""

    def value(found: re.Match[str]) -> str:
        raw = claims.get(found.group(1))
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise KeyError(found.group(1))
        text = str(raw)
        if not _SEGMENT.fullmatch(text) or text in _DOTS:
            raise KeyError(found.group(1))
        return text

    segments = path.split("/")
    try:
        for i, segment in enumerate(segments):
            if "{" in segment:
                segments[i] = filled = _CLAIM.sub(value, segment)
                if filled in _DOTS:  # ".{sub}" with a "." claim
                    return None
    except KeyError:
        return None
    resolved = "/".join(segments)
    return resolved if is_valid(resolved) else None


def resolve_rules(rules: Sequence[Rule], claims: Mapping[str, Any]) -> tuple[Rule, ...]:
    """``rules`` with their ``{claim}`` placeholders filled from ``claims`` (paths that cannot be
    filled are dropped, never widened)."""
    resolved = []
    for rule in rules:
        paths = tuple(p for p in (_substitute(path, claims) for path in rule.paths) if p is not None)
        if paths:
            resolved.append(Rule(paths, rule.rights))
    return tuple(resolved)


# -- the policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """An immutable access policy; build it with :meth:`load`, :meth:`from_toml` or
    :meth:`from_dict` (validated: a bad policy raises :class:`PolicyError`, never half-applies)."""

    tokens: Mapping[str, tuple[str, tuple[Rule, ...]]] = field(default_factory=dict)
    """SHA-256 hex of a token → (its name, its rules)."""
    jwt: JWTConfig | None = None
    anonymous: tuple[Rule, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    _principals: dict[str, Principal] = field(init=False, repr=False, compare=False)
    _known: dict[str, Principal] = field(init=False, repr=False, compare=False)
    _anonymous: Principal = field(init=False, repr=False, compare=False)
    _verified: OrderedDict[str, tuple[Principal, float | None]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        principals = {d: Principal(name, "token", rules) for d, (name, rules) in self.tokens.items()}
        object.__setattr__(self, "_principals", principals)
        object.__setattr__(self, "_known", {})
        object.__setattr__(self, "_anonymous", Principal(ANONYMOUS, "anonymous", self.anonymous))
        object.__setattr__(self, "_verified", OrderedDict())

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, env: Mapping[str, str] | None = None) -> Policy:
        """The policy of the TOML file ``path`` (``secret_file``/``public_key_file`` relative to it;
        ``secret_env`` read from ``env``, default ``os.environ``)."""
        import os
        from pathlib import Path

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"auth: can't read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PolicyError(f"auth: {path}: not UTF-8 text") from None
        return cls.from_toml(text, base=str(Path(path).parent), env=os.environ if env is None else env,
                             source=path)

    @classmethod
    def from_toml(
        cls, text: str, base: str = ".", env: Mapping[str, str] | None = None, source: str = "policy"
    ) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"auth: {source}: not valid TOML: {exc}") from None
        policy = cls.from_dict(doc, base=base, env=env or {}, source=source)  # what is wrong, first
        if not any(section in doc for section in ("tokens", "jwt", "anonymous")):
            # An empty file is far likelier an editor's half-written save than a wish to lock
            # everyone out (every request 401, every stream closed): refused, the old policy stays.
            raise PolicyError(
                f"auth: {source}: no principal: add [[tokens]] (`ooo-storage token new` prints them), "
                "a [jwt] section or an [anonymous] section; to let nobody do anything, say so with "
                "[anonymous] rules = []"
            )
        return policy

    @classmethod
    def from_dict(
        cls,
        doc: Mapping[str, Any],
        base: str = ".",
        env: Mapping[str, str] | None = None,
        source: str = "policy",
    ) -> Policy:
        """Validate ``doc`` (the TOML document as dicts and lists) and build the policy.

        Shape: ``[[tokens]] name, sha256, rules``; ``[jwt] algorithms, secret | secret_file |
        secret_env | public_key_file, audience, issuer, leeway, rules``; ``[anonymous] rules``;
        ``[[namespaces]] name, prefix``; a rule is ``{paths = [...], rights = [...]}``.
        """
        return _Builder(base, env or {}, source).policy(doc)

    # -- deciding ----------------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal:
        """The principal of a request's bearer token (anonymous without one).

        Raises :class:`Unauthorized` (401) for a token the policy does not know, a JWT whose
        signature, audience or issuer is wrong, or one that has expired.
        """
        if token is None:
            return self._anonymous
        known = self._known.get(token)  # a client sends the same token with every request
        if known is not None:
            return known
        if self.jwt is not None and token in self._verified:  # not an opaque token: it was verified
            return self._jwt(token, self.jwt)
        principal = self.principal_for_token(token)
        if principal is not None:
            # Only tokens of the policy are remembered: at most one string per digest, so this
            # holds no more entries than the policy has tokens, whatever clients send.
            self._known[token] = principal
            return principal
        if self.jwt is not None and token.count(".") == 2 and token.isascii():  # JWTs are base64url
            return self._jwt(token, self.jwt)
        raise Unauthorized("ooo: unauthorized: unknown token")

    def expiry(self, token: str | None) -> float | None:
        """When ``token`` stops being accepted (``time.time()`` seconds: a JWT's ``exp`` plus the
        leeway), or None when it does not expire (opaque tokens, anonymous, a JWT without ``exp``):
        what an open stream is closed at. Raises :class:`Unauthorized` like :meth:`authenticate`
        for a token not accepted now."""
        self.authenticate(token)  # a JWT is then in _verified (just checked or remembered)
        if token is None or self.jwt is None:
            return None
        known = self._verified.get(token)
        if known is None or known[1] is None:
            return None
        return known[1] + self.jwt.leeway

    def _jwt(self, token: str, config: JWTConfig) -> Principal:
        """A JWT's principal: verified once, then remembered until it expires (a signature check
        costs tens of microseconds; a client sends the same token with every request)."""
        known = self._verified.get(token)
        if known is not None:
            principal, expires = known
            if expires is None or time.time() <= expires + config.leeway:
                return principal
            del self._verified[token]
            raise Unauthorized("ooo: unauthorized: token expired")
        claims = self._verify(token, config)
        principal = self.jwt_principal(claims)
        exp = claims.get("exp")  # a number (checked by _verify), or absent: never expires
        expires = float(exp) if exp is not None and exp < _NEVER else None
        self._verified[token] = (principal, expires)
        if len(self._verified) > _VERIFIED:
            self._verified.popitem(last=False)
        return principal

    @staticmethod
    def _verify(token: str, config: JWTConfig) -> Mapping[str, Any]:
        import jwt  # PyJWT, loaded only by policies that accept JWTs

        try:
            claims = jwt.decode(
                token,
                config.key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"verify_aud": config.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("ooo: unauthorized: token expired") from None
        except jwt.PyJWTError as exc:  # bad signature, audience, issuer, format, key type...
            raise Unauthorized(f"ooo: unauthorized: invalid token ({exc})") from None
        for name in _NUMERIC_DATES:
            # PyJWT checks int(claim): a string "1700000000" passes its check, but would be
            # remembered as never expiring. RFC 7519 makes these a JSON number: anything else is
            # refused outright rather than read one way here and another way there.
            if name in claims and not _is_number(claims[name]):
                raise Unauthorized(
                    f"ooo: unauthorized: invalid token ({name} must be a number of seconds, a NumericDate)"
                )
        return cast(Mapping[str, Any], claims)

    def principal_for_token(self, token: str) -> Principal | None:
        """The principal of an opaque token, or None if no token of the policy has that digest.

        Found by its SHA-256 in a dict: how long the lookup takes can tell an attacker about the
        digest of what *they* sent, which says nothing about any stored token (SHA-256 is not
        reversible), so no constant-time loop is needed."""
        return self._principals.get(token_digest(token))

    def anonymous_principal(self) -> Principal:
        return self._anonymous

    def jwt_principal(self, claims: Mapping[str, Any]) -> Principal:
        """The principal of a verified JWT's claims (its rules filled from them)."""
        assert self.jwt is not None
        sub = claims.get("sub")
        name = f"jwt:{sub}" if isinstance(sub, str | int) and not isinstance(sub, bool) else "jwt"
        return Principal(name, "jwt", resolve_rules(self.jwt.rules, claims))

    @staticmethod
    def allows(principal: Principal, right: Right, key: str) -> bool:
        """Whether ``principal`` has ``right`` on ``key`` (a key, or a glob by coverage)."""
        if right == "admin":
            return principal.admin
        return principal.may(right, key)

    def check(self, principal: Principal, right: Right, key: str) -> None:
        """Raise :class:`Forbidden` (403, naming the right and the path) unless allowed."""
        if not self.allows(principal, right, key):
            raise Forbidden(f"ooo: forbidden: {shown(principal.name)} may not {right} {key or '/'}")

    @staticmethod
    def reader(principal: Principal) -> Callable[[str], bool]:
        """A fast test of which keys ``principal`` may read (key listings)."""
        return lambda key: principal.may("read", key)

    def namespace_of(self, key: str) -> Namespace | None:
        """The namespace whose prefix ``key`` starts with (the longest, if they nest)."""
        best: Namespace | None = None
        for ns in self.namespaces:
            if key.startswith(ns.prefix) and (best is None or len(ns.prefix) > len(best.prefix)):
                best = ns
        return best


class _Builder:
    """Validates a policy document, naming what is wrong and where."""

    def __init__(self, base: str, env: Mapping[str, str], source: str) -> None:
        self.base = base
        self.env = env
        self.source = source

    def fail(self, where: str, what: str) -> PolicyError:
        return PolicyError(f"auth: {self.source}: {where}: {what}")

    def policy(self, doc: Mapping[str, Any]) -> Policy:
        unknown = set(doc) - {"tokens", "jwt", "anonymous", "namespaces"}
        if unknown:
            raise self.fail("top level", f"unknown section(s) {sorted(unknown)}")
        tokens: dict[str, tuple[str, tuple[Rule, ...]]] = {}
        names: set[str] = set()
        for i, entry in enumerate(self.table_list(doc.get("tokens", []), "tokens")):
            where = f"tokens[{i}]"
            self.only(entry, where, {"name", "sha256", "rules"})
            name = self.text(entry, "name", where)
            digest = self.text(entry, "sha256", where).lower()
            if not _HEX64.fullmatch(digest):
                raise self.fail(where, "sha256 must be 64 hex digits (`ooo-storage token new` prints it)")
            if digest in tokens or name in names:
                raise self.fail(where, f"token {name!r} is listed twice")
            names.add(name)
            tokens[digest] = (name, self.rules(entry.get("rules", []), f"{where}.rules", claims=False))
        anonymous: tuple[Rule, ...] = ()
        if "anonymous" in doc:
            entry = self.table(doc["anonymous"], "anonymous")
            self.only(entry, "anonymous", {"rules"})
            anonymous = self.rules(entry.get("rules", []), "anonymous.rules", claims=False)
        jwt = self.jwt(doc["jwt"]) if "jwt" in doc else None
        namespaces = self.namespaces(doc.get("namespaces", []))
        return Policy(tokens, jwt, anonymous, namespaces)

    def jwt(self, raw: Any) -> JWTConfig:
        entry = self.table(raw, "jwt")
        self.only(
            entry,
            "jwt",
            {"algorithms", "secret", "secret_file", "secret_env", "public_key_file", "audience", "issuer",
             "leeway", "rules"},
        )
        algorithms = tuple(self.texts(entry.get("algorithms", ["HS256"]), "jwt.algorithms"))
        bad = [a for a in algorithms if a not in JWT_ALGORITHMS]
        if bad or not algorithms:
            known = ", ".join(JWT_ALGORITHMS)
            raise self.fail("jwt.algorithms", f"use some of {known} (got {bad or 'none'})")
        symmetric = {a.startswith("HS") for a in algorithms}
        if len(symmetric) != 1:
            raise self.fail("jwt.algorithms", "HS* (shared secret) and RS*/ES* (public key) cannot be mixed")
        sources = [k for k in ("secret", "secret_file", "secret_env", "public_key_file") if k in entry]
        if len(sources) != 1:
            raise self.fail("jwt", "give exactly one of secret, secret_file, secret_env, public_key_file")
        source = sources[0]
        if symmetric == {True} and source == "public_key_file":
            raise self.fail("jwt", "HS* algorithms need a shared secret, not public_key_file")
        if symmetric == {False} and source != "public_key_file":
            raise self.fail("jwt", "RS*/ES* algorithms need public_key_file")
        key = self.jwt_key(entry, source)
        leeway = entry.get("leeway", 0)
        if isinstance(leeway, bool) or not isinstance(leeway, int | float) or leeway < 0:
            raise self.fail("jwt.leeway", "seconds, a number >= 0")
        audience = self.optional_text(entry, "audience", "jwt")
        issuer = self.optional_text(entry, "issuer", "jwt")
        rules = self.rules(entry.get("rules", []), "jwt.rules", claims=True)
        return JWTConfig(algorithms, key, audience, issuer, float(leeway), rules)

    def jwt_key(self, entry: Mapping[str, Any], source: str) -> str | bytes:
        from pathlib import Path

        if source == "secret":
            key = self.text(entry, "secret", "jwt")
        elif source == "secret_env":
            name = self.text(entry, "secret_env", "jwt")
            if not self.env.get(name):
                raise self.fail("jwt.secret_env", f"environment variable {name} is not set")
            key = self.env[name]
        else:
            name = self.text(entry, source, "jwt")
            path = Path(self.base, name)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise self.fail(f"jwt.{source}", f"can't read {path}: {exc.strerror}") from None
            if source == "public_key_file":
                self.public_key(data, path)
                return data
            key = data.decode(errors="replace").strip()
        if len(key.encode()) < 32:
            raise self.fail("jwt", "the shared secret must be at least 32 bytes")
        return key

    def public_key(self, data: bytes, path: object) -> None:
        """Refuse a public key file that is not a PEM public key (else every JWT would fail later)."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise self.fail("jwt.public_key_file", f"{path} is not a PEM public key ({exc})") from None

    def namespaces(self, raw: Any) -> tuple[Namespace, ...]:
        found: list[Namespace] = []
        for i, entry in enumerate(self.table_list(raw, "namespaces")):
            where = f"namespaces[{i}]"
            self.only(entry, where, {"name", "prefix"})
            name, prefix = self.text(entry, "name", where), self.text(entry, "prefix", where)
            if not prefix.endswith("/") or not is_valid(prefix[:-1]) or "*" in prefix:
                raise self.fail(where, f"prefix {prefix!r} must be a key path ending in '/', without '*'")
            if any(ns.name == name or ns.prefix == prefix for ns in found):
                raise self.fail(where, f"namespace {name!r} or prefix {prefix!r} is listed twice")
            found.append(Namespace(name, prefix))
        return tuple(found)

    def rules(self, raw: Any, where: str, claims: bool) -> tuple[Rule, ...]:
        rules = []
        for i, entry in enumerate(self.table_list(raw, where)):
            here = f"{where}[{i}]"
            self.only(entry, here, {"paths", "rights"})
            paths = tuple(self.texts(entry.get("paths"), f"{here}.paths"))
            rights = self.texts(entry.get("rights"), f"{here}.rights")
            wrong = [r for r in rights if r not in RIGHTS]
            if wrong or not rights:
                raise self.fail(f"{here}.rights", f"rights are {', '.join(RIGHTS)} (got {wrong or 'none'})")
            for path in paths:
                plain = _CLAIM.sub("x", path) if claims else path
                if not is_valid(plain) or "{" in plain or "}" in plain:
                    hint = " ({claim} placeholders only in [jwt] rules)" if "{" in path else ""
                    raise self.fail(f"{here}.paths", f"{path!r} is not a valid key or glob{hint}")
            if not paths:
                raise self.fail(f"{here}.paths", "at least one path")
            rules.append(Rule(paths, frozenset(cast(list[Right], rights))))
        return tuple(rules)

    # -- small validators --------------------------------------------------------------------------
    def table(self, raw: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a table")
        return raw

    def table_list(self, raw: Any, where: str) -> list[Mapping[str, Any]]:
        if not isinstance(raw, list) or not all(isinstance(e, Mapping) for e in raw):
            raise self.fail(where, "must be a list of tables")
        return raw

    def only(self, entry: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        unknown = set(entry) - allowed
        if unknown:
            raise self.fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")

    def text(self, entry: Mapping[str, Any], key: str, where: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key}", "a non-empty string is required")
        return value

    def optional_text(self, entry: Mapping[str, Any], key: str, where: str) -> str | None:
        return self.text(entry, key, where) if key in entry else None

    def texts(self, raw: Any, where: str) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise self.fail(where, "a list of non-empty strings is required")
        return list(raw)
