"""``ooo-storage token new|hash``: fresh tokens and the policy lines that admit them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib

import pytest

from ooo_storage.cli import main
from ooo_storage.protocol.access import Policy, token_digest


def token_new(*argv: str) -> tuple[str, str]:
    """Run ``ooo-storage token new`` as a user does; its token line and the TOML after it."""
    done = subprocess.run([sys.executable, "-m", "ooo_storage", "token", "new", *argv],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stderr == ""
    token, _, toml = done.stdout.partition("\n")
    return token, toml


def test_token_new_prints_the_token_then_toml_that_admits_it() -> None:
    token, toml = token_new("--name", "ci")
    doc = tomllib.loads(toml)
    [entry] = doc["tokens"]
    assert entry["name"] == "ci" and entry["sha256"] == token_digest(token)
    assert token not in toml  # the file keeps only the digest
    # Pasted as is, it is a valid policy that knows the token by its name.
    principal = Policy.from_toml(toml).authenticate(token)
    assert principal.name == "ci" and principal.kind == "token"


def test_tokens_are_fresh_url_safe_and_256_bits() -> None:
    first, _ = token_new()
    second, _ = token_new()
    assert first != second
    for token in (first, second):
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert len(base64.urlsafe_b64decode(token + "=")) * 8 >= 256


def test_default_name_is_derived_from_the_digest() -> None:
    token, toml = token_new()
    [entry] = tomllib.loads(toml)["tokens"]
    assert entry["name"] == f"token-{token_digest(token)[:8]}"


def test_any_name_is_quoted_as_toml(capsys: pytest.CaptureFixture[str]) -> None:
    name = 'say "hi"\\ \n\t ünï'
    assert main(["token", "new", "--name", name]) == 0
    token, _, toml = capsys.readouterr().out.partition("\n")
    assert Policy.from_toml(toml).authenticate(token).name == name


def test_an_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["token", "new", "--name", " "])
    assert exit_.value.code == 2
    assert "a token's name cannot be empty" in capsys.readouterr().err


def test_token_hash_reads_stdin() -> None:
    done = subprocess.run([sys.executable, "-m", "ooo_storage", "token", "hash"], input="s3cret\n",
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, token_digest("s3cret") + "\n")
    done = subprocess.run([sys.executable, "-m", "ooo_storage", "token", "hash"], input="",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give the token on stdin" in done.stderr


def test_token_new_ends_quietly_when_its_reader_is_gone() -> None:
    """``ooo-storage token new | head -1`` ended with a BrokenPipeError traceback: the reader's end
    of a real pipe is closed before the token is written; the command says nothing, status 0."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "ooo_storage", "token", "new"], stdout=write,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, b"")


def test_token_new_piped_into_head_gives_the_token_alone() -> None:
    command = f"set -o pipefail; {sys.executable} -m ooo_storage token new | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.strip()) == 43 and "\n" not in done.stdout.strip()
