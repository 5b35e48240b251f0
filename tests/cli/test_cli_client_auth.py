"""The client commands against a server with an access policy: ``--token``, ``OOO_TOKEN``, the
exit statuses of 401 and 403 with the server's reason, and ``stats``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from cli_served import Background

from ooo_storage.cli.client import FORBIDDEN, UNAUTHORIZED, add_parsers
from ooo_storage.protocol.access import Policy, token_digest

ADMIN = "admin-token-0123456789abcdefghijklmnopqrstuvwxyz"
READER = "reader-token-0123456789abcdefghijklmnopqrstuvwxyz"
POLICY = Policy.from_dict({
    "tokens": [
        {"name": "admin", "sha256": token_digest(ADMIN),
         "rules": [{"paths": ["*", "*/*"], "rights": ["read", "write", "delete", "admin"]}]},
        {"name": "reader", "sha256": token_digest(READER),
         "rules": [{"paths": ["cli/*"], "rights": ["read"]}]},
    ],
    "namespaces": [{"name": "cli", "prefix": "cli/"}],
})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = Background(auth=POLICY)
    yield server.start()
    server.close()


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOO_TOKEN", raising=False)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ooo-storage")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def server_reason(method: str, url: str, token: str | None) -> tuple[int, str]:
    """What the server itself answers, asked without the client."""
    import asyncio

    async def ask() -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers,
                                                                 data=b"1") as resp:
            return resp.status, (await resp.text()).strip()

    return asyncio.run(ask())


def test_token_flag(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("set", url, "cli/a", '"x"', "--token", ADMIN) == 0
    assert capsys.readouterr().out == "a\n"
    assert run("get", url, "cli/a", "--token", READER) == 0
    assert orjson.loads(capsys.readouterr().out)["data"] == "x"


def test_no_token_is_exit_3_with_the_servers_reason(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, reason = server_reason("GET", f"{url}/cli/a", None)
    assert status == 401
    assert run("get", url, "cli/a") == UNAUTHORIZED == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"ooo-storage: 401: {reason}\n"


def test_a_wrong_token_is_exit_3(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, reason = server_reason("GET", f"{url}/cli/a", "wrong")
    assert status == 401
    assert run("get", url, "cli/a", "--token", "wrong") == UNAUTHORIZED
    assert capsys.readouterr().err == f"ooo-storage: 401: {reason}\n"


def test_not_allowed_is_exit_4_with_the_servers_reason(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, reason = server_reason("POST", f"{url}/cli/b", READER)
    assert status == 403 and "cli/b" in reason
    assert run("set", url, "cli/b", "1", "--token", READER) == FORBIDDEN == 4
    assert capsys.readouterr().err == f"ooo-storage: 403: {reason}\n"
    assert run("del", url, "cli/*", "--token", READER) == FORBIDDEN


def test_ooo_token_from_the_environment(url: str, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("set", url, "cli/env", '"from env"', "--token", ADMIN) == 0
    capsys.readouterr()
    monkeypatch.setenv("OOO_TOKEN", READER)
    assert run("get", url, "cli/env") == 0
    assert orjson.loads(capsys.readouterr().out)["data"] == "from env"
    assert run("watch", "--full", url, "cli/env", "--count", "1") == 0
    assert orjson.loads(capsys.readouterr().out)["data"] == "from env"
    # The flag wins over the environment, both ways; --token '' sends none.
    assert run("get", url, "cli/env", "--token", "wrong") == UNAUTHORIZED
    assert run("get", url, "cli/env", "--token", "") == UNAUTHORIZED
    monkeypatch.setenv("OOO_TOKEN", "wrong")
    assert run("get", url, "cli/env") == UNAUTHORIZED
    assert run("get", url, "cli/env", "--token", READER) == 0


def test_a_refused_watch_says_why(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, unauthorized = server_reason("GET", f"{url}/cli/w", None)
    assert run("watch", url, "cli/w") == UNAUTHORIZED
    assert capsys.readouterr().err == f"ooo-storage: 401: subscription refused: {unauthorized}\n"
    _, forbidden = server_reason("GET", f"{url}/other/*", READER)
    assert run("watch", url, "other/*", "--token", READER) == FORBIDDEN
    assert capsys.readouterr().err == f"ooo-storage: 403: subscription refused: {forbidden}\n"


def test_stats(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("set", url, "cli/s", '"12345"', "--token", ADMIN) == 0
    capsys.readouterr()
    assert run("stats", url, "--token", ADMIN) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON line
    [namespace] = orjson.loads(out)["namespaces"]
    assert namespace["name"] == "cli" and namespace["prefix"] == "cli/" and namespace["objects"] >= 1
    assert run("stats", url, "--token", READER) == FORBIDDEN
    assert run("stats", url) == UNAUTHORIZED


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("get", "set", "push", "del", "watch", "stats"):
        with pytest.raises(SystemExit):
            run(command, "--help")
        text = " ".join(capsys.readouterr().out.split())
        assert "$OOO_TOKEN" in text
        assert "3 unauthorized (401" in text and "4 forbidden (403" in text, command
