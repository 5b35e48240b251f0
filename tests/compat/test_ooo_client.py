"""Wire compatibility with the npm `ooo-client` package (the JS client of the Go `ooo` servers).

The package is installed once with npm into tests/compat/node_modules (git-ignored, pinned by
package-lock.json), then ooo_client_check.mjs runs the scenarios of the package's own spec in Node
against our server and prints what the client saw; the assertions below are the spec's. A second
server has an access policy: the client connects with ``ooo(url, false, ["bearer", token])``.

Node is required, not optional: without it these tests fail and say so (a skip would let CI pass
without ever running the JS client).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.server import create_app

HERE = Path(__file__).resolve().parent
TOKEN = "browser-token-0123456789abcdefghijklmnopqrstuvwxyz"
# The token may read secure/*; anonymous requests (the client's REST calls carry no token) may only
# write there: a page must show its token to subscribe.
POLICY = Policy.from_dict({
    "tokens": [{"name": "browser", "sha256": token_digest(TOKEN),
                "rules": [{"paths": ["secure/*"], "rights": ["read"]}]}],
    "anonymous": {"rules": [{"paths": ["secure/*"], "rights": ["write"]}]},
})

EMPTY = {"created": 0, "updated": 0, "index": "", "data": {}}


def required(program: str) -> str:
    """The path of ``program``, or a test failure naming what is missing and why it is needed."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not on PATH: tests/compat runs the npm ooo-client package in Node "
                    "against the server; install Node.js 20 or later with npm (.ci/run does)",
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def node_command() -> list[str]:
    """``node`` with the flags this version needs, after installing ooo-client if not cached."""
    node = required("node")
    if not (HERE / "node_modules" / "ooo-client" / "package.json").exists():
        subprocess.run([required("npm"), "install", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=HERE, check=True, timeout=300)
    # Node 20 hides its (browser-compatible) WebSocket behind a flag; later versions expose it.
    probe = subprocess.run([node, "-p", "typeof WebSocket"], capture_output=True, text=True,
                           check=True, timeout=30)
    flags = ["--experimental-websocket"] if probe.stdout.strip() == "undefined" else []
    return [node, *flags, "--no-warnings", "--import", "./bundler_resolve.mjs",
            str(HERE / "ooo_client_check.mjs")]


@pytest.fixture
async def host() -> AsyncIterator[str]:
    async with Layered(memory=MemoryLayer()) as store:
        server = TestServer(create_app(store, tick=0.05), host="127.0.0.1")
        await server.start_server()
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            await server.close()


@pytest.fixture
async def auth_host() -> AsyncIterator[str]:
    async with Layered(memory=MemoryLayer()) as store:
        await store.set("secure/thing", {"name": "seeded"})
        server = TestServer(create_app(store, auth=POLICY), host="127.0.0.1")
        await server.start_server()
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            await server.close()


@pytest.fixture
async def history_host(tmp_path: Path) -> AsyncIterator[str]:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")),
                    history=HistoryOptions(tmp_path / "history"))
    async with store:
        for n in range(100):
            await store.set(f"res/{n:02}", {"n": 0, "pad": "x" * 50})
        server = TestServer(create_app(store), host="127.0.0.1")
        await server.start_server()
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            await server.close()


@pytest.fixture
async def seen(node_command: list[str], host: str) -> dict[str, Any]:
    return await run_node(node_command, host)


@pytest.fixture
async def seen_with_auth(node_command: list[str], auth_host: str) -> dict[str, Any]:
    return await run_node(node_command, "--auth", auth_host, TOKEN)


async def run_node(node_command: list[str], *argv: str) -> dict[str, Any]:
    """What ooo_client_check.mjs reports: scenario name → what the client saw."""
    process = await asyncio.create_subprocess_exec(
        *node_command, *argv, cwd=HERE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    results: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return results


def ok(seen: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = seen[name]
    assert "error" not in result, result["error"]
    return result


async def test_ooo_client_against_our_server(seen: dict[str, Any]) -> None:
    # One async test drives every scenario: one Node process, one server, in the spec's order.
    msgs = ok(seen, "object")["msgs"]
    assert msgs[0] == EMPTY
    assert msgs[1]["created"] > 0 and msgs[1]["updated"] == 0 and msgs[1]["index"] == "box"
    assert msgs[1]["data"] == {"name": "a box 🧰"}
    assert msgs[2]["created"] == msgs[1]["created"] and msgs[2]["updated"] > 0
    assert msgs[2]["data"] == {"name": "still a box 💾"}
    assert msgs[3] == EMPTY

    msgs = ok(seen, "list")["msgs"]
    assert msgs[0] == []
    assert len(msgs[1]) == 1 and msgs[1][0]["updated"] == 0
    assert msgs[1][0]["data"] == {"name": "something 🧰"}
    assert msgs[2][0]["updated"] > 0 and msgs[2][0]["data"] == {"name": "still something 💾"}
    assert msgs[3] == []

    msgs = ok(seen, "listDelete")["msgs"]
    assert msgs[0] == [] and msgs[-1] == []
    assert [len(m) for m in msgs[1:11]] == list(range(1, 11))
    assert [m["data"]["name"] for m in msgs[10]] == [f"name{i}" for i in reversed(range(10))]
    updated = msgs[20]
    assert all(m["updated"] > 0 and m["data"]["name"] == "name" + m["index"] for m in updated)

    ticks = ok(seen, "time")["msgs"]
    assert len(ticks) == 2 and 0 < ticks[0] < ticks[1]

    reconnect = ok(seen, "reconnect")
    assert len(reconnect["urls"]) == 2
    assert "?v=" not in reconnect["urls"][0] and "?v=" in reconnect["urls"][1]
    assert reconnect["msgs"] == [EMPTY]  # nothing changed: no frame on the resumed stream

    bearer = ok(seen, "bearer")
    assert bearer["protocol"] == "bearer" and bearer["msgs"] == [EMPTY]

    assert ok(seen, "keys")["keys"] == [[], ["box"], []]

    items = ok(seen, "get")["items"]
    assert items[0] == [] and items[2] == []
    assert [i["data"]["name"] for i in items[1]] == ["a box"]
    assert [i["data"]["name"] for i in items[3]] == ["a thing in box 1"]
    assert [i["data"]["name"] for i in items[4]] == ["a thing in box 2", "a thing in box 1"]
    assert items[5]["data"]["name"] == "a thing in box 2"


async def test_ooo_client_with_a_token(seen_with_auth: dict[str, Any]) -> None:
    seen = seen_with_auth
    allowed = ok(seen, "tokenAllowed")
    assert allowed["protocol"] == "bearer"
    assert [m["data"] for m in allowed["msgs"]] == [{"name": "seeded"}, {"name": "updated"}]
    # Refused before the upgrade (401 without a token or with a wrong one, 403 on a path the token
    # may not read): the page's socket fails, it never opens nor gets a frame. A page cannot tell
    # these apart, nor from a network error: the WebSocket API hides the status.
    for name in ("noToken", "wrongToken", "tokenElsewhere"):
        assert ok(seen, name) == {"opened": False, "msgs": [], "event": "error"}, name


async def test_ooo_client_resumes_with_one_patch(node_command: list[str], history_host: str) -> None:
    """Issue 11: a dropped client reconnects with ?v=<its version> after 500 writes to 10 of the 100
    keys it watches; the server sends one patch frame (10 replaces) instead of the 100-item list,
    the npm client applies it, and its state equals GET."""
    resumed = ok(await run_node(node_command, "--resume", history_host), "resume")
    first, delta = resumed["frames"]
    assert "?v=" not in resumed["urls"][0] and "?v=" in resumed["urls"][1]
    assert first["snapshot"] is True and delta["snapshot"] is False and delta["ops"] == 10
    assert delta["bytes"] < first["bytes"] / 5  # 10 objects of 100, each in a replace op
    assert resumed["state"] == resumed["get"]
    assert sorted(o["data"]["n"] for o in resumed["state"] if o["index"].endswith("0")) == list(range(490, 500))
