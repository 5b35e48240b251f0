"""JWT principals (issue 9): HS256 with a shared secret, RS256 and ES256 with public keys made here
by ``cryptography``; expiry, audience, issuer and leeway; ``{claim}`` substitution, whose hostile
values (``*``, ``a/b``, ``..``, empty, not a string) never widen what a rule grants."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ooo_storage.errors import PolicyError, Unauthorized
from ooo_storage.protocol.access import Policy, Principal

SECRET = "k" * 32
RULES = [
    {"paths": ["users/{sub}/*", "teams/{team}/*"], "rights": ["read", "write"]},
    {"paths": ["public/*"], "rights": ["read"]},
]


def hs_policy(**extra: Any) -> Policy:
    return Policy.from_dict({"jwt": {"secret": SECRET, "rules": RULES, **extra}})


def hs(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def now() -> int:
    return int(time.time())


def unauthorized(policy: Policy, bearer: str, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        policy.authenticate(bearer)
    assert caught.value.status == 401
    assert caught.value.message.startswith(f"ooo: unauthorized: {reason}"), caught.value.message
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer ")


# -- HS256 ----------------------------------------------------------------------------------------


def test_a_valid_token_is_a_jwt_principal_with_its_claims_filled_in() -> None:
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": "ann", "team": "red", "exp": now() + 60}))
    assert (who.name, who.kind) == ("jwt:ann", "jwt")
    assert policy.allows(who, "write", "users/ann/notes")
    assert policy.allows(who, "read", "users/ann/*")
    assert policy.allows(who, "write", "teams/red/board")
    assert policy.allows(who, "read", "public/x")
    assert not policy.allows(who, "write", "users/bob/notes")
    assert not policy.allows(who, "read", "users/*/notes")
    assert not policy.allows(who, "read", "users/an*/notes")
    assert not policy.allows(who, "delete", "users/ann/notes")
    assert not policy.allows(who, "admin", "")


def test_an_expired_token_is_401() -> None:
    unauthorized(hs_policy(), hs({"sub": "ann", "exp": now() - 30}), "token expired")


def test_leeway_accepts_a_token_that_expired_within_it() -> None:
    token = hs({"sub": "ann", "exp": now() - 5})
    unauthorized(hs_policy(), token, "token expired")
    assert hs_policy(leeway=60).authenticate(token).name == "jwt:ann"
    unauthorized(hs_policy(leeway=1), token, "token expired")


def raw_jwt(payload: bytes, key: str = SECRET) -> str:
    """An HS256 JWT of exactly ``payload`` (PyJWT's encoder would refuse some of these claims)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload)
    signature = hmac.new(key.encode(), signed, hashlib.sha256).digest()
    return (signed + b"." + b64(signature)).decode()


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", '"{soon}"'), ("nbf", '"{past}"'), ("iat", '"{past}"'), ("nbf", "true"), ("iat", "false")],
)
def test_a_numeric_date_that_is_not_a_json_number_is_401(claim: str, value: str) -> None:
    """RFC 7519: ``exp``, ``nbf`` and ``iat`` are JSON numbers. PyJWT accepts all of these (it
    converts with ``int()``); the policy remembered a string ``exp`` as never expiring, so such a
    token, once used, was a token for ever. Refused, whatever the string says."""
    text = value.format(soon=now() + 60, past=now() - 600)
    token = raw_jwt(f'{{"sub":"ann","{claim}":{text}}}'.encode())
    jwt.decode(token, SECRET, algorithms=["HS256"])  # PyJWT alone lets it through
    policy = hs_policy()
    reason = f"invalid token ({claim} must be a number of seconds, a NumericDate)"
    unauthorized(policy, token, reason)
    unauthorized(policy, token, reason)  # and it is not remembered as valid either


def test_a_string_exp_does_not_outlive_its_expiry() -> None:
    """The outsider's case: used once while valid, then past its expiry."""
    policy = hs_policy(leeway=0)
    token = raw_jwt(f'{{"sub":"ann","exp":"{now() + 3}"}}'.encode())
    unauthorized(policy, token, "invalid token (exp must be a number of seconds, a NumericDate)")
    unauthorized(policy, token, "invalid token")


@pytest.mark.parametrize("exp", ["1e999", "1" + "0" * 400])
def test_an_exp_out_of_any_range_is_a_401_or_a_token_that_never_expires_never_a_crash(exp: str) -> None:
    """``1e999`` is infinity to Python's JSON parser (PyJWT refuses it); an integer of 400 digits
    passes PyJWT's check and used to raise OverflowError (a 500) when remembered as a float."""
    token = raw_jwt(f'{{"sub":"ann","exp":{exp}}}'.encode())
    policy = hs_policy()
    try:
        who = policy.authenticate(token)
    except Unauthorized as exc:
        assert exc.message.startswith("ooo: unauthorized: invalid token")
        return
    assert who.name == "jwt:ann"
    assert policy.authenticate(token) is who


def test_expiry_is_exp_plus_the_leeway() -> None:
    exp = now() + 60
    token = hs({"sub": "ann", "exp": exp})
    assert hs_policy().expiry(token) == exp
    assert hs_policy(leeway=5).expiry(token) == exp + 5
    assert hs_policy().expiry(hs({"sub": "ann"})) is None
    assert hs_policy().expiry(raw_jwt(b'{"sub":"ann","exp":1' + b"0" * 400 + b"}")) is None  # as good as never
    assert hs_policy().expiry(None) is None
    unauthorized(hs_policy(), hs({"sub": "ann", "exp": now() - 60}), "token expired")
    with pytest.raises(Unauthorized):
        hs_policy().expiry(hs({"sub": "ann", "exp": now() - 60}))


def test_a_token_not_yet_valid_is_401() -> None:
    unauthorized(hs_policy(), hs({"sub": "ann", "nbf": now() + 600}), "invalid token")


def test_a_token_signed_with_another_secret_is_401() -> None:
    unauthorized(hs_policy(), hs({"sub": "ann"}, key="x" * 32), "invalid token")


def test_a_tampered_payload_is_401() -> None:
    head, _, signature = hs({"sub": "ann"}).split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "admin"}).encode()).rstrip(b"=").decode()
    unauthorized(hs_policy(), f"{head}.{forged}.{signature}", "invalid token")


def test_an_unsigned_token_is_401() -> None:
    """``alg: none`` is never accepted, whatever the payload says."""
    unsigned = jwt.encode({"sub": "ann"}, None, algorithm="none")  # type: ignore[arg-type]
    unauthorized(hs_policy(), unsigned, "invalid token")


def test_an_algorithm_not_listed_is_401() -> None:
    secret = "k" * 64  # RFC 7518 §3.2: an HS512 key has at least 64 bytes
    token = hs({"sub": "ann"}, key=secret, algorithm="HS512")
    unauthorized(Policy.from_dict({"jwt": {"secret": secret}}), token, "invalid token")
    assert Policy.from_dict({"jwt": {"secret": secret, "algorithms": ["HS256", "HS512"]}}).authenticate(token)


@pytest.mark.parametrize("bearer", ["a.b.c", "..", "e30.e30.", "not-base64!.x.y"])
def test_garbage_shaped_like_a_jwt_is_401(bearer: str) -> None:
    unauthorized(hs_policy(), bearer, "invalid token")


def test_without_a_jwt_section_a_jwt_is_an_unknown_token() -> None:
    unauthorized(Policy.from_dict({}), hs({"sub": "ann"}), "unknown token")


def test_audience() -> None:
    policy = hs_policy(audience="ooo")
    assert policy.authenticate(hs({"sub": "ann", "aud": "ooo"})).name == "jwt:ann"
    assert policy.authenticate(hs({"sub": "ann", "aud": ["other", "ooo"]})).name == "jwt:ann"
    unauthorized(policy, hs({"sub": "ann", "aud": "other"}), "invalid token")
    unauthorized(policy, hs({"sub": "ann"}), "invalid token")  # required once configured
    # Without an audience configured, one in the token is not checked.
    assert hs_policy().authenticate(hs({"sub": "ann", "aud": "anything"})).name == "jwt:ann"


def test_issuer() -> None:
    policy = hs_policy(issuer="https://login.example")
    assert policy.authenticate(hs({"sub": "ann", "iss": "https://login.example"})).name == "jwt:ann"
    unauthorized(policy, hs({"sub": "ann", "iss": "https://evil.example"}), "invalid token")
    unauthorized(policy, hs({"sub": "ann"}), "invalid token")


def test_secret_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "jwt.secret").write_text(SECRET + "\n")
    token = hs({"sub": "ann"})
    from_file = Policy.from_dict({"jwt": {"secret_file": "jwt.secret"}}, base=str(tmp_path))
    from_env = Policy.from_dict({"jwt": {"secret_env": "S"}}, env={"S": SECRET})
    assert from_file.authenticate(token).name == from_env.authenticate(token).name == "jwt:ann"


# -- RS256 and ES256 ------------------------------------------------------------------------------


def pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_policy(tmp_path: Path, public: bytes, algorithms: list[str]) -> Policy:
    (tmp_path / "login.pem").write_bytes(public)
    doc = {"jwt": {"algorithms": algorithms, "public_key_file": "login.pem", "rules": RULES}}
    return Policy.from_dict(doc, base=str(tmp_path))


def test_rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    policy = key_policy(tmp_path, pem(rsa_key), ["RS256"])
    who = policy.authenticate(jwt.encode({"sub": "ann", "exp": now() + 60}, rsa_key, algorithm="RS256"))
    assert who.name == "jwt:ann" and policy.allows(who, "write", "users/ann/x")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    unauthorized(policy, jwt.encode({"sub": "ann"}, other, algorithm="RS256"), "invalid token")
    unauthorized(policy, jwt.encode({"sub": "ann", "exp": now() - 60}, rsa_key, algorithm="RS256"),
                 "token expired")


def test_es256(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    policy = key_policy(tmp_path, pem(ec_key), ["ES256"])
    who = policy.authenticate(jwt.encode({"sub": "ann"}, ec_key, algorithm="ES256"))
    assert who.name == "jwt:ann" and policy.allows(who, "read", "users/ann/x")
    other = ec.generate_private_key(ec.SECP256R1())
    unauthorized(policy, jwt.encode({"sub": "ann"}, other, algorithm="ES256"), "invalid token")


def test_the_public_key_is_not_a_shared_secret(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: an HS256 token whose HMAC key is the (public) PEM is refused."""
    policy = key_policy(tmp_path, pem(rsa_key), ["RS256"])
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(b'{"sub":"ann"}').rstrip(b"=")
    mac = hmac.new(pem(rsa_key), header + b"." + body, hashlib.sha256).digest()
    forged = b".".join((header, body, base64.urlsafe_b64encode(mac).rstrip(b"="))).decode()
    unauthorized(policy, forged, "invalid token")


def test_a_token_for_the_other_key_type_is_401_not_a_crash(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """RS256 and ES256 both listed with an RSA key: an ES256 token (the header is the sender's
    choice) is a bad token, not an InvalidKeyError escaping as a 500."""
    policy = key_policy(tmp_path, pem(rsa_key), ["RS256", "ES256"])
    unauthorized(policy, jwt.encode({"sub": "ann"}, ec_key, algorithm="ES256"), "invalid token")
    assert policy.authenticate(jwt.encode({"sub": "ann"}, rsa_key, algorithm="RS256")).name == "jwt:ann"


def test_a_private_key_file_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(PolicyError, match=r"jwt\.public_key_file: .*login.pem is not a PEM public key"):
        key_policy(tmp_path, private, ["RS256"])


# -- {claim} substitution -------------------------------------------------------------------------

PROBES = ["users/ann/x", "users/x/y", "users/a/b/x", "users/*", "users/x", "x", "a/b", "teams/red/x",
          "users/a/x", "users/ab/x", "users/../x", "users/./x"]


def granted(policy: Policy, who: Principal) -> set[str]:
    return {key for key in PROBES if policy.allows(who, "read", key) or policy.allows(who, "write", key)}


@pytest.mark.parametrize("sub", ["*", "a*", "*/x", "a/b", "/", "", " ", "a b", "ann\n", "\u00e9", "{sub}",
                                 "users/ann", "ann/..", "x*y"])
def test_a_hostile_sub_grants_nothing_through_its_placeholder(sub: str) -> None:
    """``users/{sub}/*`` with a ``sub`` that is not a plain key segment matches nothing: a ``*``
    would reach every user, a ``/`` another user's subtree. Only the rule's other paths remain."""
    policy = Policy.from_dict({"jwt": {"secret": SECRET, "rules": [
        {"paths": ["users/{sub}/*", "public/*"], "rights": ["read", "write"]}]}})
    who = policy.authenticate(hs({"sub": sub}))
    assert granted(policy, who) == set()
    assert policy.allows(who, "read", "public/x")


@pytest.mark.parametrize("sub", ["..", "."])
def test_dot_claims_are_not_plain_segments_and_grant_nothing(sub: str) -> None:
    """``.`` and ``..`` are valid key segments, but whatever maps keys to file paths or URLs
    downstream reads them as "here" and "up": as a claim they match nothing (``users/{sub}/*``
    with ``sub = ".."`` must not grant ``users/../x``). Only the rule's other paths remain."""
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": sub, "team": "red"}))
    assert granted(policy, who) == {"teams/red/x"}
    assert not policy.allows(who, "write", f"users/{sub}/notes")
    assert not policy.allows(who, "read", f"users/{sub}/*")
    assert policy.allows(who, "read", "public/x")


@pytest.mark.parametrize("sub", ["...", ".a", "a.", "a..b", "7"])
def test_other_segments_with_dots_are_plain_and_matched_literally(sub: str) -> None:
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": sub}))
    assert policy.allows(who, "write", f"users/{sub}/notes")
    assert not policy.allows(who, "write", "users/x/notes")


@pytest.mark.parametrize("team", [7, -1, 0])
def test_an_integer_claim_is_its_decimal_text(team: int) -> None:
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": "ann", "team": team}))
    assert policy.allows(who, "write", f"teams/{team}/board")


@pytest.mark.parametrize("team", [True, False, None, 1.5, ["red"], {"red": 1}, "", "*", "r/d"])
def test_a_claim_that_is_not_a_plain_segment_drops_the_path(team: Any) -> None:
    """Not a string or an integer (booleans excluded: ``True`` is not ``"1"``), or not a plain
    segment: ``teams/{team}/*`` matches nothing, ``users/{sub}/*`` of the same rule still works."""
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": "ann", "team": team}))
    assert not any(policy.allows(who, "read", k) for k in ("teams/red/x", "teams/1/x", "teams/*", "teams/x/y"))
    assert policy.allows(who, "write", "users/ann/x")


def test_a_missing_claim_drops_the_path() -> None:
    policy = hs_policy()
    who = policy.authenticate(hs({"sub": "ann"}))
    assert not policy.allows(who, "read", "teams/x/y")
    assert policy.allows(who, "write", "users/ann/x")


def test_a_sub_that_is_not_a_string_is_refused() -> None:
    """RFC 7519 makes ``sub`` a string; PyJWT refuses the token (401) rather than guessing."""
    unauthorized(hs_policy(), hs({"sub": 7}), "invalid token")
    unauthorized(hs_policy(), hs({"sub": ["ann"]}), "invalid token")


def test_a_token_without_sub_gets_the_paths_without_sub() -> None:
    policy = hs_policy()
    who = policy.authenticate(hs({"team": "red"}))
    assert who.name == "jwt"
    assert policy.allows(who, "write", "teams/red/x") and not policy.allows(who, "read", "users/x/y")


def test_a_rule_whose_paths_all_drop_grants_nothing_not_even_admin() -> None:
    """Admin ignores paths, but a rule none of whose paths can be filled for this token is dropped
    whole: a hostile claim cannot keep the rule's admin right alive (the safe reading, pinned)."""
    policy = Policy.from_dict({"jwt": {"secret": SECRET, "rules": [{"paths": ["users/{sub}"], "rights": ["admin"]}]}})
    assert policy.allows(policy.authenticate(hs({"sub": "ann"})), "admin", "")
    assert not policy.allows(policy.authenticate(hs({"sub": "*"})), "admin", "")


def test_claims_fill_one_pass_only() -> None:
    """A claim whose value looks like a placeholder is not filled again."""
    policy = Policy.from_dict({"jwt": {"secret": SECRET, "rules": [
        {"paths": ["u/{sub}/{team}"], "rights": ["read"]}]}})
    who = policy.authenticate(hs({"sub": "{team}", "team": "red"}))
    assert not policy.allows(who, "read", "u/red/red")
