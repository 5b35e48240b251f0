"""The access core's own guarantees: exact glob coverage, principals compiled once, verified JWTs
remembered only until they expire, key files checked when the policy loads."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from ooo_storage.errors import PolicyError, Unauthorized
from ooo_storage.protocol import access
from ooo_storage.protocol.access import Policy, covers, token_digest

SECRET = "k" * 40


@pytest.mark.parametrize(
    ("rule", "asked", "covered"),
    [
        ("b*a*", "bb*a", True),  # every bb…a key starts with b and has an a after it
        ("a*b*", "ab*", True),
        ("*a*", "ba*b", True),
        ("*a*", "*", False),  # * also matches keys without any a
        ("*a*", "a*", True),
        ("a*a", "a*", False),  # a* also matches ab
        ("users/*", "users/a*", True),
        ("users/a*", "users/*", False),
        ("*", "a/*", False),  # never across a /
        ("public/*", "*", False),
        ("x", "x", True),
        ("x", "x*", False),
    ],
)
def test_coverage_is_exact(rule: str, asked: str, covered: bool) -> None:
    assert covers(rule, asked) is covered


def _policy(**jwt_extra: object) -> Policy:
    return Policy.from_dict(
        {
            "tokens": [{"name": "t", "sha256": token_digest("tok"), "rules": [{"paths": ["a/*"], "rights": ["read"]}]}],
            "jwt": {"secret": SECRET, "rules": [{"paths": ["u/{sub}/*"], "rights": ["read", "write"]}], **jwt_extra},
        }
    )


def test_token_principals_are_compiled_once_and_decide_by_index() -> None:
    policy = _policy()
    first, again = policy.authenticate("tok"), policy.authenticate("tok")
    assert first is again
    assert policy.allows(first, "read", "a/1") and policy.allows(first, "read", "a/x*")
    assert not policy.allows(first, "read", "a/1/2") and not policy.allows(first, "write", "a/1")


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_remembered_jwt_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    clock = _Clock(time.time())
    monkeypatch.setattr(access, "time", clock)
    token = jwt.encode({"sub": "ann", "exp": int(clock.now) + 60}, SECRET, algorithm="HS256")
    principal = policy.authenticate(token)
    assert policy.authenticate(token) is principal  # verified once, then remembered
    assert policy.allows(principal, "write", "u/ann/x") and not policy.allows(principal, "write", "u/bob/x")
    clock.now += 120
    with pytest.raises(Unauthorized, match="token expired"):
        policy.authenticate(token)


def test_a_public_key_file_that_is_not_a_key_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("not a key")
    text = '[jwt]\nalgorithms = ["RS256"]\npublic_key_file = "key.pem"\n'
    (tmp_path / "auth.toml").write_text(text)
    with pytest.raises(PolicyError, match=r"jwt.public_key_file: .*key.pem is not a PEM public key"):
        Policy.load(str(tmp_path / "auth.toml"))


def test_a_policy_file_that_is_not_text_is_a_policy_error(tmp_path: Path) -> None:
    (tmp_path / "auth.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        Policy.load(str(tmp_path / "auth.toml"))
