"""The access policy's parser and decisions (issue 9), without a server.

Every way a policy document can be wrong is a :class:`PolicyError` whose message names the file and
the place (``tokens[1].rules[0].paths``) and what to do; a good file loads whole. Then the
decisions: tokens by their SHA-256, anonymous, admin. JWTs are in test_access_jwt.py, the decision
against a slow reference in test_access_property.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from ooo_storage.errors import Forbidden, PolicyError, Unauthorized
from ooo_storage.protocol.access import RIGHTS, Policy, Principal, Rule, token_digest

SECRET = "k" * 32
DIGEST = token_digest("tok")
READ_A = [{"paths": ["a/*"], "rights": ["read"]}]


def token(name: str = "t", digest: str = DIGEST, rules: Any = READ_A, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": digest, "rules": rules, **extra}


def refused(doc: dict[str, Any], where: str, what: str, **kwargs: Any) -> None:
    """``doc`` is refused with a message that names ``where`` and says ``what``."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(doc, source="auth.toml", **kwargs)
    message = str(caught.value)
    assert message.startswith(f"auth: auth.toml: {where}: "), message
    assert what in message, message


# -- validation: one case per error ---------------------------------------------------------------

BAD_DOCUMENTS = [
    # (id, document, where, what)
    ("unknown section", {"users": []}, "top level", "unknown section(s) ['users']"),
    ("tokens not a list", {"tokens": {"name": "t"}}, "tokens", "must be a list of tables"),
    ("token not a table", {"tokens": ["t"]}, "tokens", "must be a list of tables"),
    ("token unknown key", {"tokens": [token(token="secret")]}, "tokens[0]", "unknown key(s) ['token']"),
    ("token without name", {"tokens": [{"sha256": DIGEST}]}, "tokens[0].name", "non-empty string"),
    ("token empty name", {"tokens": [token(name="")]}, "tokens[0].name", "non-empty string"),
    ("token without sha256", {"tokens": [{"name": "t"}]}, "tokens[0].sha256", "non-empty string"),
    ("sha256 too short", {"tokens": [token(digest=DIGEST[:-1])]}, "tokens[0]", "64 hex digits"),
    ("sha256 not hex", {"tokens": [token(digest="g" * 64)]}, "tokens[0]", "64 hex digits"),
    ("sha256 is the token", {"tokens": [token(digest="tok")]}, "tokens[0]", "`ooo-storage token new`"),
    ("sha256 not a string", {"tokens": [token(digest=1)]}, "tokens[0].sha256", "non-empty string"),
    ("same digest twice", {"tokens": [token("a"), token("b")]}, "tokens[1]", "token 'b' is listed twice"),
    ("same digest, other case", {"tokens": [token("a"), token("b", DIGEST.upper())]}, "tokens[1]",
     "listed twice"),
    ("same name twice", {"tokens": [token("a"), token("a", token_digest("other"))]}, "tokens[1]",
     "token 'a' is listed twice"),
    ("rules not a list", {"tokens": [token(rules={"paths": ["a"]})]}, "tokens[0].rules",
     "must be a list of tables"),
    ("rule unknown key", {"tokens": [token(rules=[{"paths": ["a"], "rights": ["read"], "allow": 1}])]},
     "tokens[0].rules[0]", "unknown key(s) ['allow']"),
    ("rule without rights", {"tokens": [token(rules=[{"paths": ["a"]}])]}, "tokens[0].rules[0].rights",
     "a list of non-empty strings"),
    ("rights not a list", {"tokens": [token(rules=[{"paths": ["a"], "rights": "read"}])]},
     "tokens[0].rules[0].rights", "a list of non-empty strings"),
    ("no rights", {"tokens": [token(rules=[{"paths": ["a"], "rights": []}])]}, "tokens[0].rules[0].rights",
     "rights are read, write, delete, admin (got none)"),
    ("unknown right", {"tokens": [token(rules=[{"paths": ["a"], "rights": ["read", "root"]}])]},
     "tokens[0].rules[0].rights", "(got ['root'])"),
    ("right in capitals", {"tokens": [token(rules=[{"paths": ["a"], "rights": ["READ"]}])]},
     "tokens[0].rules[0].rights", "(got ['READ'])"),
    ("rule without paths", {"tokens": [token(rules=[{"rights": ["read"]}])]}, "tokens[0].rules[0].paths",
     "a list of non-empty strings"),
    ("no paths", {"tokens": [token(rules=[{"paths": [], "rights": ["read"]}])]}, "tokens[0].rules[0].paths",
     "at least one path"),
    ("empty path", {"tokens": [token(rules=[{"paths": [""], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "a list of non-empty strings"),
    ("leading slash", {"tokens": [token(rules=[{"paths": ["/a/*"], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "'/a/*' is not a valid key or glob"),
    ("double slash", {"tokens": [token(rules=[{"paths": ["a//b"], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "'a//b' is not a valid key or glob"),
    ("double star", {"tokens": [token(rules=[{"paths": ["a/**"], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "'a/**' is not a valid key or glob"),
    ("space", {"tokens": [token(rules=[{"paths": ["a b"], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "not a valid key or glob"),
    ("second rule of second token", {"tokens": [token("a"), token("b", token_digest("b"), rules=[
        *READ_A, {"paths": ["x/"], "rights": ["read"]}])]}, "tokens[1].rules[1].paths", "'x/'"),
    ("claim in a token rule", {"tokens": [token(rules=[{"paths": ["u/{sub}/*"], "rights": ["read"]}])]},
     "tokens[0].rules[0].paths", "({claim} placeholders only in [jwt] rules)"),
    ("claim in anonymous", {"anonymous": {"rules": [{"paths": ["{sub}"], "rights": ["read"]}]}},
     "anonymous.rules[0].paths", "({claim} placeholders only in [jwt] rules)"),
    ("anonymous not a table", {"anonymous": [{"rules": []}]}, "anonymous", "must be a table"),
    ("anonymous unknown key", {"anonymous": {"rules": READ_A, "tokens": []}}, "anonymous",
     "unknown key(s) ['tokens']"),
    ("jwt not a table", {"jwt": "HS256"}, "jwt", "must be a table"),
    ("jwt unknown key", {"jwt": {"secret": SECRET, "key": "x"}}, "jwt", "unknown key(s) ['key']"),
    ("claim name not an identifier", {"jwt": {"secret": SECRET, "rules": [{"paths": ["u/{1x}"],
     "rights": ["read"]}]}}, "jwt.rules[0].paths", "'u/{1x}' is not a valid key or glob"),
    ("unclosed claim", {"jwt": {"secret": SECRET, "rules": [{"paths": ["u/{sub"], "rights": ["read"]}]}},
     "jwt.rules[0].paths", "not a valid key or glob"),
    ("claim making a bad path", {"jwt": {"secret": SECRET, "rules": [{"paths": ["u//{sub}"],
     "rights": ["read"]}]}}, "jwt.rules[0].paths", "not a valid key or glob"),
    ("unknown algorithm", {"jwt": {"algorithms": ["none"], "secret": SECRET}}, "jwt.algorithms",
     "use some of HS256, "),
    ("no algorithm", {"jwt": {"algorithms": [], "secret": SECRET}}, "jwt.algorithms", "(got none)"),
    ("algorithms not a list", {"jwt": {"algorithms": "HS256", "secret": SECRET}}, "jwt.algorithms",
     "a list of non-empty strings"),
    ("algorithms mixed", {"jwt": {"algorithms": ["HS256", "RS256"], "secret": SECRET}}, "jwt.algorithms",
     "HS* (shared secret) and RS*/ES* (public key) cannot be mixed"),
    ("no key", {"jwt": {"algorithms": ["HS256"]}}, "jwt", "give exactly one of secret, secret_file"),
    ("two keys", {"jwt": {"secret": SECRET, "secret_env": "S"}}, "jwt", "give exactly one of"),
    ("HS with a public key", {"jwt": {"algorithms": ["HS256"], "public_key_file": "k.pem"}}, "jwt",
     "HS* algorithms need a shared secret, not public_key_file"),
    ("RS with a secret", {"jwt": {"algorithms": ["RS256"], "secret": SECRET}}, "jwt",
     "RS*/ES* algorithms need public_key_file"),
    ("ES with a secret", {"jwt": {"algorithms": ["ES256"], "secret_env": "S"}}, "jwt",
     "RS*/ES* algorithms need public_key_file"),
    ("short secret", {"jwt": {"secret": "k" * 31}}, "jwt", "the shared secret must be at least 32 bytes"),
    ("empty secret", {"jwt": {"secret": ""}}, "jwt.secret", "non-empty string"),
    ("secret not a string", {"jwt": {"secret": 12345}}, "jwt.secret", "non-empty string"),
    ("secret_env unset", {"jwt": {"secret_env": "OOO_TEST_UNSET"}}, "jwt.secret_env",
     "environment variable OOO_TEST_UNSET is not set"),
    ("negative leeway", {"jwt": {"secret": SECRET, "leeway": -1}}, "jwt.leeway", "a number >= 0"),
    ("leeway as text", {"jwt": {"secret": SECRET, "leeway": "10"}}, "jwt.leeway", "a number >= 0"),
    ("leeway as a boolean", {"jwt": {"secret": SECRET, "leeway": True}}, "jwt.leeway", "a number >= 0"),
    ("empty audience", {"jwt": {"secret": SECRET, "audience": ""}}, "jwt.audience", "non-empty string"),
    ("issuer not a string", {"jwt": {"secret": SECRET, "issuer": ["a"]}}, "jwt.issuer", "non-empty string"),
    ("jwt rule claim ok, right bad", {"jwt": {"secret": SECRET, "rules": [{"paths": ["u/{sub}"],
     "rights": ["own"]}]}}, "jwt.rules[0].rights", "(got ['own'])"),
    ("namespaces not a list", {"namespaces": {"name": "a"}}, "namespaces", "must be a list of tables"),
    ("namespace unknown key", {"namespaces": [{"name": "a", "prefix": "a/", "quota": 1}]}, "namespaces[0]",
     "unknown key(s) ['quota']"),
    ("namespace without name", {"namespaces": [{"prefix": "a/"}]}, "namespaces[0].name", "non-empty string"),
    ("namespace without prefix", {"namespaces": [{"name": "a"}]}, "namespaces[0].prefix", "non-empty string"),
    ("prefix without slash", {"namespaces": [{"name": "a", "prefix": "acme"}]}, "namespaces[0]",
     "prefix 'acme' must be a key path ending in '/', without '*'"),
    ("prefix with a star", {"namespaces": [{"name": "a", "prefix": "ac*/"}]}, "namespaces[0]", "without '*'"),
    ("prefix only a slash", {"namespaces": [{"name": "a", "prefix": "/"}]}, "namespaces[0]", "prefix '/'"),
    ("prefix leading slash", {"namespaces": [{"name": "a", "prefix": "/a/"}]}, "namespaces[0]", "'/a/'"),
    ("prefix double slash", {"namespaces": [{"name": "a", "prefix": "a//"}]}, "namespaces[0]", "'a//'"),
    ("namespace name twice", {"namespaces": [{"name": "a", "prefix": "a/"}, {"name": "a", "prefix": "b/"}]},
     "namespaces[1]", "namespace 'a' or prefix 'b/' is listed twice"),
    ("namespace prefix twice", {"namespaces": [{"name": "a", "prefix": "a/"}, {"name": "b", "prefix": "a/"}]},
     "namespaces[1]", "listed twice"),
]


@pytest.mark.parametrize(("doc", "where", "what"), [c[1:] for c in BAD_DOCUMENTS], ids=[c[0] for c in BAD_DOCUMENTS])
def test_a_bad_document_is_refused_naming_where(doc: dict[str, Any], where: str, what: str) -> None:
    refused(doc, where, what)


def test_secret_env_set_but_empty_is_refused() -> None:
    refused({"jwt": {"secret_env": "S"}}, "jwt.secret_env", "environment variable S is not set", env={"S": ""})


def test_secret_env_too_short_is_refused() -> None:
    refused({"jwt": {"secret_env": "S"}}, "jwt", "at least 32 bytes", env={"S": "short"})


def test_the_secret_limit_counts_bytes() -> None:
    """32 bytes, not 32 characters: 11 three-byte characters are 33 bytes."""
    Policy.from_dict({"jwt": {"secret": "\u20ac" * 11}})
    refused({"jwt": {"secret": "\u20ac" * 10}}, "jwt", "at least 32 bytes")


def test_a_refusal_names_the_first_error_and_applies_nothing() -> None:
    """A document with a good token and a bad one is refused whole: no half-built policy."""
    doc = {"tokens": [token("good"), token("bad", token_digest("x"), rules=[{"paths": ["a"], "rights": ["x"]}])]}
    with pytest.raises(PolicyError, match=r"tokens\[1\]\.rules\[0\]\.rights"):
        Policy.from_dict(doc)


# -- TOML and files -------------------------------------------------------------------------------

GOOD_TOML = f"""
# who may do what
[[tokens]]
name = "backend"
sha256 = "{token_digest('backend-token').upper()}"
rules = [
  {{ paths = ["*", "*/*", "*/*/*"], rights = ["read", "write", "delete", "admin"] }},
]

[[tokens]]
name = "reader"
sha256 = "{token_digest('reader-token')}"
rules = [{{ paths = ["public/*"], rights = ["read"] }}]

[jwt]
algorithms = ["HS256", "HS512"]
secret_file = "keys/jwt.secret"
audience = "ooo"
issuer = "https://login.example"
leeway = 5
rules = [
  {{ paths = ["users/{{sub}}/*", "teams/{{team}}/*"], rights = ["read", "write"] }},
  {{ paths = ["public/*"], rights = ["read"] }},
]

[anonymous]
rules = [{{ paths = ["public/*"], rights = ["read"] }}]

[[namespaces]]
name = "acme"
prefix = "acme/"

[[namespaces]]
name = "acme-eu"
prefix = "acme/eu/"
"""


def write_policy(tmp_path: Path, text: str = GOOD_TOML) -> Path:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "jwt.secret").write_text(f"  {SECRET}\n")  # surrounding blanks are not the secret
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_whole(tmp_path: Path) -> None:
    policy = Policy.load(str(write_policy(tmp_path)))
    read, write = frozenset({"read"}), frozenset({"read", "write"})
    assert policy.tokens == {
        token_digest("backend-token"): ("backend", (Rule(("*", "*/*", "*/*/*"), frozenset(RIGHTS)),)),
        token_digest("reader-token"): ("reader", (Rule(("public/*",), read),)),
    }
    assert policy.anonymous == (Rule(("public/*",), read),)
    assert policy.jwt is not None
    assert policy.jwt.algorithms == ("HS256", "HS512")
    assert policy.jwt.key == SECRET  # read from the file next to the policy, blanks stripped
    assert (policy.jwt.audience, policy.jwt.issuer, policy.jwt.leeway) == ("ooo", "https://login.example", 5.0)
    assert policy.jwt.rules == (Rule(("users/{sub}/*", "teams/{team}/*"), write), Rule(("public/*",), read))
    assert [(ns.name, ns.prefix) for ns in policy.namespaces] == [("acme", "acme/"), ("acme-eu", "acme/eu/")]
    # ... and it decides as written: the digest was given in capitals.
    backend, reader = policy.authenticate("backend-token"), policy.authenticate("reader-token")
    assert (backend.name, backend.kind, reader.name) == ("backend", "token", "reader")
    assert policy.allows(backend, "delete", "*") and policy.allows(backend, "admin", "")
    assert policy.allows(reader, "read", "public/*") and not policy.allows(reader, "read", "*")
    assert policy.namespace_of("acme/eu/x").name == "acme-eu"  # type: ignore[union-attr]
    assert policy.namespace_of("acme/us/x").name == "acme"  # type: ignore[union-attr]
    assert policy.namespace_of("acmex/y") is None


def test_from_toml_and_load_build_equal_policies(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    assert Policy.from_toml(GOOD_TOML, base=str(tmp_path)) == Policy.load(str(path))


@pytest.mark.parametrize("text", ["", "\n# all gone\n", '[[namespaces]]\nname = "a"\nprefix = "a/"\n'])
def test_a_file_that_names_no_principal_is_refused_saying_what_to_add(tmp_path: Path, text: str) -> None:
    """An editor truncating the file as a SIGHUP arrives must not lock everyone out (every request
    401, every stream closed): a file without [[tokens]], [jwt] or [anonymous] is refused."""
    path = write_policy(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        Policy.load(str(path))
    assert str(caught.value) == (
        f"auth: {path}: no principal: add [[tokens]] (`ooo-storage token new` prints them), a [jwt] "
        "section or an [anonymous] section; to let nobody do anything, say so with [anonymous] rules = []"
    )


@pytest.mark.parametrize("text", ["[anonymous]\nrules = []\n", "[anonymous]\n"])
def test_an_explicit_anonymous_section_without_rules_is_a_policy_that_allows_nothing(
    tmp_path: Path, text: str
) -> None:
    policy = Policy.load(str(write_policy(tmp_path, text)))
    anonymous = policy.authenticate(None)
    assert not any(policy.allows(anonymous, right, "a") for right in RIGHTS)
    with pytest.raises(Unauthorized):
        policy.authenticate("anything")


def test_load_reads_secret_env_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_policy(tmp_path, '[jwt]\nsecret_env = "OOO_TEST_JWT_SECRET"\n')
    monkeypatch.setenv("OOO_TEST_JWT_SECRET", SECRET)
    assert Policy.load(str(path)).jwt.key == SECRET  # type: ignore[union-attr]
    assert Policy.load(str(path), env={"OOO_TEST_JWT_SECRET": "e" * 32}).jwt.key == "e" * 32  # type: ignore[union-attr]
    monkeypatch.delenv("OOO_TEST_JWT_SECRET")
    with pytest.raises(PolicyError, match=r"jwt\.secret_env: environment variable OOO_TEST_JWT_SECRET is not set"):
        Policy.load(str(path))


def test_a_file_that_is_not_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "[[tokens]\nname = 1\n")
    with pytest.raises(PolicyError, match=rf"^auth: {path}: not valid TOML: .*line 1"):
        Policy.load(str(path))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=rf"^auth: can't read {tmp_path}/nope.toml: No such file"):
        Policy.load(str(tmp_path / "nope.toml"))


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="auth: can't read .*: Is a directory"):
        Policy.load(str(tmp_path))


def test_a_wrong_document_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path, '[[tokens]]\nname = "t"\nsha256 = "abc"\n')
    with pytest.raises(PolicyError, match=rf"^auth: {path}: tokens\[0\]: sha256 must be 64 hex digits"):
        Policy.load(str(path))


@pytest.mark.parametrize("source", ["secret_file", "public_key_file"])
def test_a_missing_key_file_is_refused(tmp_path: Path, source: str) -> None:
    algorithm = "HS256" if source == "secret_file" else "RS256"
    path = write_policy(tmp_path, f'[jwt]\nalgorithms = ["{algorithm}"]\n{source} = "missing.key"\n')
    with pytest.raises(PolicyError, match=rf"jwt\.{source}: can't read {tmp_path}/missing.key: No such file"):
        Policy.load(str(path))


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    path = write_policy(tmp_path, '[jwt]\nsecret_file = "short.secret"\n')
    (tmp_path / "short.secret").write_text("k" * 31 + "\n")
    with pytest.raises(PolicyError, match="at least 32 bytes"):
        Policy.load(str(path))


# -- tokens ---------------------------------------------------------------------------------------


def test_token_digest_is_the_sha256_hex_of_the_utf8_text() -> None:
    assert token_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert token_digest("\u20ac") == hashlib.sha256("\u20ac".encode()).hexdigest()
    assert token_digest("") == hashlib.sha256(b"").hexdigest()


def test_each_token_is_its_own_principal() -> None:
    names = [f"t{i}" for i in range(20)]
    policy = Policy.from_dict({"tokens": [token(n, token_digest(f"secret-{n}")) for n in names]})
    for name in names:
        principal = policy.authenticate(f"secret-{name}")
        assert (principal.name, principal.kind) == (name, "token")


@pytest.mark.parametrize("bearer", ["nope", "", "tok ", " tok", "TOK", DIGEST, "a.b.c", "tok\x00"])
def test_an_unknown_token_is_401_with_a_challenge(bearer: str) -> None:
    policy = Policy.from_dict({"tokens": [token()]})
    assert policy.principal_for_token(bearer) is None
    with pytest.raises(Unauthorized) as caught:
        policy.authenticate(bearer)
    assert caught.value.status == 401
    assert caught.value.message == "ooo: unauthorized: unknown token"
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="ooo-storage", error="invalid_token"'


@pytest.mark.parametrize("bearer", ["\udcff", "t\udc80k", "a.b.\udcff", "\ud800"])
def test_a_token_that_is_not_text_is_401_not_a_crash(bearer: str) -> None:
    """aiohttp decodes header bytes that are not UTF-8 as lone surrogates (surrogateescape), so
    ``Authorization: Bearer \\xff`` reaches the policy as ``"\\udcff"``: that is an unknown token
    (401), not a UnicodeEncodeError out of the SHA-256 (a 500)."""
    policy = Policy.from_dict({"tokens": [token()], "jwt": {"secret": SECRET}})
    with pytest.raises(Unauthorized):
        policy.authenticate(bearer)


def test_token_rules_ignore_claims() -> None:
    """A token's rules are taken as written: no ``{claim}`` can reach them (refused at load)."""
    policy = Policy.from_dict({"tokens": [token(rules=[{"paths": ["u/x/*"], "rights": ["read"]}])]})
    principal = policy.authenticate("tok")
    assert policy.allows(principal, "read", "u/x/1") and not policy.allows(principal, "read", "u/y/1")


# -- anonymous ------------------------------------------------------------------------------------


def test_without_an_anonymous_section_anonymous_may_do_nothing() -> None:
    policy = Policy.from_dict({"tokens": [token(rules=[{"paths": ["*"], "rights": list(RIGHTS)}])]})
    anonymous = policy.authenticate(None)
    assert (anonymous.name, anonymous.kind, anonymous.rules) == ("anonymous", "anonymous", ())
    for right in RIGHTS:
        assert not policy.allows(anonymous, right, "a")
        with pytest.raises(Forbidden, match=f"^ooo: forbidden: anonymous may not {right} a$"):
            policy.check(anonymous, right, "a")


def test_anonymous_gets_exactly_its_rules() -> None:
    policy = Policy.from_dict({"anonymous": {"rules": [{"paths": ["public/*"], "rights": ["read"]}]}})
    anonymous = policy.authenticate(None)
    assert policy.allows(anonymous, "read", "public/news")
    assert policy.allows(anonymous, "read", "public/*")
    assert not policy.allows(anonymous, "write", "public/news")
    assert not policy.allows(anonymous, "read", "private/x")
    assert not policy.allows(anonymous, "read", "*")


def test_a_token_does_not_add_anonymous_rights() -> None:
    """A known token gets its own rules only, not those of anonymous on top."""
    policy = Policy.from_dict({"tokens": [token(rules=[{"paths": ["a/*"], "rights": ["write"]}])],
                               "anonymous": {"rules": [{"paths": ["public/*"], "rights": ["read"]}]}})
    principal = policy.authenticate("tok")
    assert policy.allows(principal, "write", "a/1")
    assert not policy.allows(principal, "read", "public/1")


# -- rights ---------------------------------------------------------------------------------------


def principal(*rules: tuple[list[str], list[str]]) -> Principal:
    policy = Policy.from_dict({"anonymous": {"rules": [{"paths": p, "rights": r} for p, r in rules]}})
    return policy.authenticate(None)


def test_admin_ignores_its_paths() -> None:
    """``admin`` is for ``GET /`` and the ``?api=`` routes: any rule granting it is enough."""
    admin = principal((["nothing/here"], ["admin"]))
    for key in ("", "/", "a", "*", "nothing/here"):
        assert Policy.allows(admin, "admin", key)


def test_admin_grants_no_other_right() -> None:
    admin = principal((["*", "*/*"], ["admin"]))
    for right in ("read", "write", "delete"):
        assert not Policy.allows(admin, right, "a")  # type: ignore[arg-type]
        assert not Policy.allows(admin, right, "a/*")  # type: ignore[arg-type]
    assert not Policy.reader(admin)("a")


def test_no_other_right_grants_admin() -> None:
    everything = principal((["*", "*/*", "*/*/*"], ["read", "write", "delete"]))
    assert not Policy.allows(everything, "admin", "")
    with pytest.raises(Forbidden, match=r"^ooo: forbidden: anonymous may not admin /$"):
        Policy.from_dict({}).check(everything, "admin", "")


def test_rights_are_separate() -> None:
    reader = principal((["a/*"], ["read"]), (["b/*"], ["write", "delete"]))
    assert Policy.allows(reader, "read", "a/1") and not Policy.allows(reader, "read", "b/1")
    assert Policy.allows(reader, "write", "b/1") and not Policy.allows(reader, "write", "a/1")
    assert Policy.allows(reader, "delete", "b/*") and not Policy.allows(reader, "delete", "a/*")


def test_a_glob_needs_one_rule_that_covers_it() -> None:
    """``DELETE /*`` with delete on ``public/*`` is refused; on a key the rule's glob is a match."""
    deleter = principal((["public/*"], ["delete"]))
    assert not Policy.allows(deleter, "delete", "*")
    assert not Policy.allows(deleter, "delete", "*/*")
    assert Policy.allows(deleter, "delete", "public/*")
    assert Policy.allows(deleter, "delete", "public/a*")
    assert Policy.allows(deleter, "delete", "public/x")
    assert not Policy.allows(deleter, "delete", "public/x/y")
    with pytest.raises(Forbidden, match=r"^ooo: forbidden: anonymous may not delete \*$"):
        Policy.from_dict({}).check(deleter, "delete", "*")


# The commonest rule shapes, a literal key and <literal>/*, are decided by a set look-up before the
# index (Principal.may): each case below on both sides of that shortcut.
SHORTCUT_CASES = [
    ("a/b/c", True), ("a/b/*", True), ("a/b/c*", True), ("a/b/*c", True), ("a/b", True),
    ("a/b/c/d", False), ("a/b/*/d", False), ("a/bc/d", False), ("a/b*", False), ("a/*", False),
    ("a", False), ("x/a/b/c", False), ("a/b/c/a/b", False), ("a/bb", False), ("b", False),
]


@pytest.mark.parametrize(("asked", "covered"), SHORTCUT_CASES)
def test_literal_and_prefix_star_rules_cover_exactly(asked: str, covered: bool) -> None:
    who = principal((["a/b/*", "a/b", "q/*x"], ["write"]), (["zz/*", "zz"], ["read"]))
    assert Policy.allows(who, "write", asked) is covered
    assert not Policy.allows(who, "read", asked)  # another right's paths never answer


def test_a_literal_rule_covers_only_itself() -> None:
    who = principal((["a/b", "c"], ["read"]))
    assert [k for k in ["a/b", "c", "a/b/c", "a/*", "a", "c/d", "*", "a/b*"] if Policy.allows(who, "read", k)] \
        == ["a/b", "c"]


def test_a_known_token_is_the_same_principal_on_every_request() -> None:
    """Tokens are remembered after their first request (no SHA-256 each time): the same principal
    every time, a token shaped like a JWT stays the opaque token it is, and unknown tokens, even
    after known ones and one character away from them, stay 401."""
    policy = Policy.from_dict({"tokens": [token("t"), token("dotted", token_digest("x.y.z"))],
                               "jwt": {"secret": SECRET, "rules": READ_A}})
    first, dotted = policy.authenticate("tok"), policy.authenticate("x.y.z")
    for _ in range(3):
        assert policy.authenticate("tok") is first and first.name == "t"
        assert policy.authenticate("x.y.z") is dotted and (dotted.name, dotted.kind) == ("dotted", "token")
        for bearer in ("to", "tokk", "Tok", "x.y.Z"):
            with pytest.raises(Unauthorized):
                policy.authenticate(bearer)


def test_refused_tokens_are_not_remembered() -> None:
    """Memory stays bounded whatever clients send: 20 000 distinct unknown tokens leave nothing
    behind (only a policy's own tokens are remembered)."""
    import tracemalloc

    policy = Policy.from_dict({"tokens": [token()]})
    policy.authenticate("tok")
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(20_000):
            with pytest.raises(Unauthorized):
                policy.authenticate(f"unknown-{i:06d}-" + "x" * 30)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 100_000, grown  # a remembered refusal would be ~100 B each: 2 MB


def test_reader_lists_only_readable_keys() -> None:
    who = principal((["a/*", "b/c"], ["read"]), (["z/*"], ["write"]))
    keys = ["a/1", "a/2/3", "b/c", "b/d", "z/1", "x"]
    assert [k for k in keys if Policy.reader(who)(k)] == ["a/1", "b/c"]


def test_forbidden_is_403_naming_who_what_and_where() -> None:
    policy = Policy.from_dict({"tokens": [token()]})
    who = policy.authenticate("tok")
    with pytest.raises(Forbidden) as caught:
        policy.check(who, "write", "a/1")
    assert caught.value.status == 403
    assert caught.value.message == "ooo: forbidden: t may not write a/1"
    policy.check(who, "read", "a/1")  # allowed: no exception


@pytest.mark.parametrize(
    ("name", "seen"),
    [("ana\n", "ana\\n"), ("a\r\nWARNING forged", "a\\r\\nWARNING forged"), ("x\x1b[2J\x00", "x\\x1b[2J\\x00"),
     ("\u2028é", "\\u2028é")],
)
def test_forbidden_shows_the_name_with_control_characters_escaped(name: str, seen: str) -> None:
    """A name (a JWT's ``sub``, a token's name) cannot split the refusal or the log line quoting it."""
    policy = Policy.from_dict({"tokens": [token(name=name)]})
    who = policy.authenticate("tok")
    with pytest.raises(Forbidden) as caught:
        policy.check(who, "write", "a/1")
    assert caught.value.message == f"ooo: forbidden: {seen} may not write a/1"
    assert caught.value.message.isprintable()
