"""``ooo-storage serve --auth FILE``: the policy is checked before serving, applied, reloaded on
SIGHUP (whole, or not at all), and a server reachable from other hosts refuses to start without one.

Every server here is a real ``serve`` process; what a policy allows is measured with real requests.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from cli_served import ROOT, SERVING, Served, refused

from ooo_storage.cli.serve import describe, is_loopback
from ooo_storage.protocol.access import Policy, token_digest

ALICE = "alice-token-0123456789abcdefghijklmnopqrstuvwxyz"
BOB = "bob-token-0123456789abcdefghijklmnopqrstuvwxyz"
SECRET = "a-jwt-secret-that-is-long-enough-0123456789"


def policy(alice_paths: str, bob_rights: str = '["read"]') -> str:
    return f"""
[[tokens]]
name = "alice"
sha256 = "{token_digest(ALICE)}"
rules = [{{ paths = {alice_paths}, rights = ["read", "write"] }}]

[[tokens]]
name = "bob"
sha256 = "{token_digest(BOB)}"
rules = [{{ paths = ["*/*"], rights = {bob_rights} }}]

[jwt]
secret = "{SECRET}"
rules = [{{ paths = ["users/{{sub}}/*"], rights = ["read"] }}]

[anonymous]
rules = [{{ paths = ["public/*"], rights = ["read"] }}]

[[namespaces]]
name = "acme"
prefix = "acme/"
"""


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(policy('["a/*"]'))
    return path


async def status(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, data=b'"x"' if method == "POST" else None) as resp:
        return resp.status


# -- a policy that cannot be used stops the start ---------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[tokens]\nname = 1", "ooo-storage: auth: {path}: not valid TOML: "),
        ('[[tokens]]\nname = "x"\nsha256 = "abc"\n', "ooo-storage: auth: {path}: tokens[0]: sha256 must be 64 hex digits"),
        ("[anonymous]\nrules = [{ paths = ['a'], rights = ['fly'] }]\n",
         "ooo-storage: auth: {path}: anonymous.rules[0].rights: rights are read, write, delete, admin"),
        ("[jwt]\nsecret = 'short'\n", "ooo-storage: auth: {path}: jwt: the shared secret must be at least 32 bytes"),
        ("[acl]\n", "ooo-storage: auth: {path}: top level: unknown section(s) ['acl']"),
        (b"\xff\xfe not text", "ooo-storage: auth: {path}: not UTF-8 text"),
        ("", "ooo-storage: auth: {path}: no principal: add [[tokens]] (`ooo-storage token new` prints them), "
             "a [jwt] section or an [anonymous] section; to let nobody do anything, say so with [anonymous] rules = []"),
    ],
)
def test_a_bad_policy_file_is_one_line_and_exit_1(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "auth.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    done = refused("--auth", str(path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(message.format(path=path.absolute())), done.stderr


def test_a_missing_policy_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = refused("--auth", str(tmp_path / "nowhere.toml"))
    assert done.returncode == 1
    assert done.stderr == f"ooo-storage: auth: can't read {tmp_path / 'nowhere.toml'}: No such file or directory\n"


def test_auth_and_insecure_no_auth_exclude_each_other(auth_file: Path) -> None:
    done = refused("--auth", str(auth_file), "--insecure-no-auth")
    assert done.returncode == 2
    assert "argument --insecure-no-auth: not allowed with argument --auth" in done.stderr


# -- the policy in force ----------------------------------------------------------------------------


async def test_the_policy_applies_and_is_logged_without_secrets(auth_file: Path) -> None:
    async with Served("--auth", str(auth_file)) as served, aiohttp.ClientSession() as http:
        line = next(line for line in served.log if "auth: " in line)
        assert ("2 tokens; JWT HS256 (read on users/{sub}/*); anonymous: read on public/*; "
                "namespaces: acme=acme/") in line
        base = served.url
        assert await status(http, "POST", f"{base}/a/1", ALICE) == 200
        assert await status(http, "GET", f"{base}/a/1", ALICE) == 200
        assert await status(http, "POST", f"{base}/b/1", ALICE) == 403
        assert await status(http, "POST", f"{base}/a/2", BOB) == 403
        assert await status(http, "GET", f"{base}/a/1") == 401
        assert await status(http, "GET", f"{base}/a/1", "not-a-known-token") == 401
        assert await status(http, "GET", f"{base}/public/1") == 404  # allowed, and missing
    text = "".join(served.log)
    for secret in (ALICE, BOB, SECRET, token_digest(ALICE), token_digest(BOB)):
        assert secret not in text


async def test_a_policy_that_grants_nothing_is_served_with_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[[tokens]]\nname = "idle"\nsha256 = "{token_digest(ALICE)}"\n')
    async with Served("--auth", str(empty)) as served, aiohttp.ClientSession() as http:
        assert any("grants no right to anyone: every request will be refused" in line for line in served.log)
        assert await status(http, "GET", f"{served.url}/k", ALICE) == 403


def test_describe_counts_and_never_shows_secrets() -> None:
    assert describe(Policy()) == "0 tokens; no JWT; anonymous: nothing; namespaces: none"
    many = Policy.from_dict({
        "anonymous": {"rules": [{"paths": [f"p{i}/*"], "rights": ["read"]} for i in range(10)]},
        "namespaces": [{"name": f"n{i}", "prefix": f"n{i}/"} for i in range(9)],
    })
    text = describe(many)
    assert "read on p7/*" in text and "p8/*" not in text and "(+2 more rules)" in text
    assert "n7=n7/" in text and "n8=" not in text and "(+1 more)" in text


# -- SIGHUP -----------------------------------------------------------------------------------------


async def test_sighup_applies_a_good_file_to_new_requests(auth_file: Path) -> None:
    async with Served("--auth", str(auth_file)) as served, aiohttp.ClientSession() as http:
        base = served.url
        assert await status(http, "POST", f"{base}/a/1", ALICE) == 200
        assert await status(http, "POST", f"{base}/b/1", ALICE) == 403
        assert await status(http, "DELETE", f"{base}/a/1", BOB) == 403
        # A websocket opened under the old policy...
        ws = await http.ws_connect(f"{base.replace('http', 'ws')}/a/1", protocols=("bearer", ALICE))
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY

        auth_file.write_text(policy('["b/*"]', bob_rights='["read", "delete"]'))
        served.signal(signal.SIGHUP)
        reloaded = await served.wait_for(r"auth: reloaded (\S+): (.*)")
        assert reloaded.group(1) == str(auth_file.absolute())
        assert reloaded.group(2).endswith("; 1 open stream it refuses closed")
        closing = await ws.receive(timeout=5)  # ... is closed: alice may no longer read a/*
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1008

        assert await status(http, "POST", f"{base}/b/1", ALICE) == 200
        assert await status(http, "POST", f"{base}/a/2", ALICE) == 403
        assert await status(http, "GET", f"{base}/a/1", ALICE) == 403
        assert await status(http, "DELETE", f"{base}/a/1", BOB) == 204
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await http.ws_connect(f"{base.replace('http', 'ws')}/a/1", protocols=("bearer", ALICE))
        assert refusal.value.status == 403
    assert await served.stop() == 0


async def test_sighup_with_a_bad_file_keeps_the_old_policy(auth_file: Path) -> None:
    async with Served("--auth", str(auth_file)) as served, aiohttp.ClientSession() as http:
        base = served.url
        auth_file.write_text(policy('["b/*"]') + "\n[[tokens]]\nname = 'carol'\nsha256 = 'nothex'\n")
        served.signal(signal.SIGHUP)
        failed = await served.wait_for("auth: reload failed")
        assert failed.string.rstrip().endswith(
            "auth: reload failed, the previous policy stays in force: "
            f"auth: {auth_file.absolute()}: tokens[2]: sha256 must be 64 hex digits "
            "(`ooo-storage token new` prints it)")
        # Nothing of the new file applies, not even its good parts.
        assert await status(http, "POST", f"{base}/a/1", ALICE) == 200
        assert await status(http, "POST", f"{base}/b/1", ALICE) == 403

        auth_file.unlink()
        served.signal(signal.SIGHUP)
        failed = await served.wait_for("auth: reload failed")
        assert "No such file or directory" in failed.string
        assert await status(http, "POST", f"{base}/a/2", ALICE) == 200
    assert await served.stop() == 0


async def test_sighup_with_a_truncated_file_keeps_the_old_policy_and_the_streams(auth_file: Path) -> None:
    """An editor truncating the file as a SIGHUP arrives used to lock everyone out (a file with no
    principal is a valid policy that refuses everything: every request 401, every stream closed).
    Refused like any bad file; saying "nobody may do anything" takes an explicit [anonymous]."""
    async with Served("--auth", str(auth_file)) as served, aiohttp.ClientSession() as http:
        base = served.url
        ws = await http.ws_connect(f"{base.replace('http', 'ws')}/a/1", protocols=("bearer", ALICE))
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY

        auth_file.write_text("")
        served.signal(signal.SIGHUP)
        failed = await served.wait_for("auth: reload failed")
        assert failed.string.rstrip().endswith(
            f"auth: reload failed, the previous policy stays in force: auth: {auth_file.absolute()}: no principal: "
            "add [[tokens]] (`ooo-storage token new` prints them), a [jwt] section or an [anonymous] section; "
            "to let nobody do anything, say so with [anonymous] rules = []")
        assert await status(http, "POST", f"{base}/a/1", ALICE) == 200
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY  # still open: the change arrives

        auth_file.write_text("[anonymous]\nrules = []\n")  # nobody may do anything: said explicitly
        served.signal(signal.SIGHUP)
        reloaded = await served.wait_for(r"auth: reloaded (\S+): (.*)")
        assert reloaded.group(2).endswith("; 1 open stream it refuses closed")
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1008
        assert await status(http, "GET", f"{base}/a/1", ALICE) == 401
    assert await served.stop() == 0


async def test_sighup_while_starting_does_not_kill_the_server(auth_file: Path) -> None:
    served = Served("--auth", str(auth_file), port=0)
    served.argv[served.argv.index("--memory-only")] = "--data"  # LevelDB: a start that takes a while
    served.argv.insert(served.argv.index("--data") + 1, str(auth_file.parent / "db"))
    try:
        served.process = await asyncio.create_subprocess_exec(
            *served.argv, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        await served.wait_for("auth: ")  # the policy is loaded: the process is starting
        served.signal(signal.SIGHUP)
        found = await served.wait_for(SERVING.pattern)
        served.port = int(found.group(3))
        async with aiohttp.ClientSession() as http:
            assert await status(http, "POST", f"{served.url}/a/1", ALICE) == 200
    finally:
        assert await served.stop() == 0


# -- safe by default --------------------------------------------------------------------------------


def _this_machines_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this machine (``ip -4 addr``), if it has any."""
    ip = shutil.which("ip")
    if ip is None:
        return []
    out = subprocess.run([ip, "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    found = [fields[3].partition("/")[0] for fields in (line.split() for line in out.splitlines())
             if len(fields) > 3 and fields[2] == "inet"]
    return [address for address in found if not is_loopback(address)]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "db.example.lan", *_this_machines_addresses()])
def test_a_reachable_address_without_auth_refuses_to_start(host: str) -> None:
    done = refused("--host", host)
    assert done.returncode == 1
    assert done.stderr == (
        f"ooo-storage: serve: refusing to serve {host} without --auth: anyone who can reach it could "
        "read, overwrite and delete every key. Give --auth FILE (tokens from `ooo-storage token new`), "
        "bind to 127.0.0.1, or pass --insecure-no-auth to serve it unprotected anyway\n")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("LocalHost", True),
     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.1", False),
     ("192.0.2.2", False), ("localhost.example", False), ("fe80::1", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_insecure_no_auth_serves_everyone_with_a_warning() -> None:
    async with Served("--host", "0.0.0.0", "--insecure-no-auth") as served, \
            aiohttp.ClientSession() as http:
        assert any("serving 0.0.0.0 without access control (--insecure-no-auth)" in line
                   for line in served.log)
        assert await status(http, "POST", f"{served.url}/anything", None) == 200
    assert await served.stop() == 0


async def test_a_reachable_address_with_auth_serves(auth_file: Path) -> None:
    async with Served("--host", "0.0.0.0", "--auth", str(auth_file)) as served, \
            aiohttp.ClientSession() as http:
        assert await status(http, "POST", f"{served.url}/a/1") == 401
        assert await status(http, "POST", f"{served.url}/a/1", ALICE) == 200
    assert await served.stop() == 0
