"""The client against a scripted fake server: request shapes, errors, patches, reconnects, auth.

The fake server lets each test decide exactly what the wire carries (including malformed patches and
dropped connections), which the real server never produces on purpose; the real server is covered by
tests/test_client_server.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ooo_storage.client import (
    Client,
    ClientError,
    ClientOptions,
    Connected,
    ConnectionFailed,
    Disconnected,
    Status,
    backoff_delays,
)

FAST = ClientOptions(reconnect_initial=0.01, reconnect_max=0.05, heartbeat=None)


def frame(data: Any, version: str, *, snapshot: bool) -> bytes:
    return orjson.dumps({"snapshot": snapshot, "version": version, "data": data})


Script = Callable[[web.WebSocketResponse], Awaitable[None]]


@dataclass
class Fake:
    """Records every request; websocket connection number i runs ``scripts[i]``."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    reply: tuple[int, bytes, str] = (200, b'{"index":"1"}', "application/json")
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.reply[0] >= 400:
                raise web.HTTPBadRequest()
            ws = web.WebSocketResponse(protocols=("bearer",))
            await ws.prepare(request)
            script = self.scripts.pop(0)
            await script(ws)
            return ws
        status, payload, content_type = self.reply
        return web.Response(status=status, body=payload, content_type=content_type)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    state = Fake()
    app = web.Application()
    app.router.add_route("*", "/{key:.*}", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/"))
    yield state
    await server.close()


async def hold(ws: web.WebSocketResponse) -> None:
    """Keep the connection open until the client goes away."""
    async for _ in ws:
        pass


def send(*frames: bytes, then: Script | None = None) -> Script:
    async def script(ws: web.WebSocketResponse) -> None:
        for raw in frames:
            await ws.send_bytes(raw)
        if then is not None:
            await then(ws)
        else:
            await ws.close()

    return script


async def test_rest_calls(fake: Fake) -> None:
    async with Client(fake.url, token="t0k") as client:
        assert await client.set("users/1", {"name": "ada"}) == "1"
        assert await client.push("logs/*", [1, 2]) == "1"
        assert await client.patch("users/1", {"age": 3}) == "1"
        assert await client.set("raw", b' {"pre":"encoded"} ') == "1"
        assert await client.set("text", "hello") == "1"
        fake.reply = (204, b"", "text/plain")
        await client.delete("users/*")
        fake.reply = (200, b'{"keys":["a","b"]}', "application/json")
        assert await client.keys() == ["a", "b"]
        fake.reply = (200, b'[{"created":1,"updated":0,"index":"1","path":"u/1","data":{}}]',
                      "application/json")
        assert await client.get("u/*") == [
            {"created": 1, "updated": 0, "index": "1", "path": "u/1", "data": {}}
        ]
    shapes = [(m, p, h.get("Authorization"), b) for m, p, h, b in fake.requests]
    assert shapes == [
        ("POST", "/users/1", "Bearer t0k", b'{"name":"ada"}'),
        ("POST", "/logs/*", "Bearer t0k", b"[1,2]"),
        ("PATCH", "/users/1", "Bearer t0k", b'{"age":3}'),
        ("POST", "/raw", "Bearer t0k", b' {"pre":"encoded"} '),
        ("POST", "/text", "Bearer t0k", b'"hello"'),
        ("DELETE", "/users/*", "Bearer t0k", b""),
        ("GET", "/", "Bearer t0k", b""),
        ("GET", "/u/*", "Bearer t0k", b""),
    ]
    assert fake.requests[0][2]["Content-Type"] == "application/json"
    assert fake.requests[6][2]["Accept"] == "application/json"


async def test_base_url_with_prefix(fake: Fake) -> None:
    async with Client(fake.url + "api") as client:
        await client.set("a/b", 1)
    assert fake.requests[0][1] == "/api/a/b"


async def test_error_response_raises_client_error(fake: Fake) -> None:
    fake.reply = (404, b"ooo: empty key\n", "text/plain")
    async with Client(fake.url) as client:
        with pytest.raises(ClientError) as caught:
            await client.get("missing")
    assert (caught.value.status, caught.value.message) == (404, "ooo: empty key")
    assert str(caught.value) == "404: ooo: empty key"


async def test_unreachable_server_raises_connection_failed(unused_tcp_port: int) -> None:
    async with Client(f"http://127.0.0.1:{unused_tcp_port}") as client:
        with pytest.raises(ConnectionFailed) as caught:
            await client.get("a")
        assert caught.value.status == 0
        with pytest.raises(ConnectionFailed):
            await anext(client.subscribe("a", reconnect=False))


async def test_local_argument_checks() -> None:
    async with Client("http://127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="use push"):
            await client.set("logs/*", 1)
        with pytest.raises(ValueError, match="ending in"):
            await client.push("logs/1", 1)
        with pytest.raises(ValueError, match="invalid key"):
            await client.get("../etc?x")
        with pytest.raises(ValueError, match="invalid key"):
            client.subscribe("a//b")
    with pytest.raises(ValueError, match="http"):
        Client("ws://127.0.0.1:1")


async def test_subscribe_applies_patches_and_resumes_with_version(fake: Fake) -> None:
    obj = {"created": 1, "updated": 0, "index": "1", "path": "u/1", "data": {"n": 1}}
    fake.scripts = [
        send(
            frame([], "a", snapshot=True),
            frame([{"op": "add", "path": "/0", "value": obj}], "b", snapshot=False),
        ),  # ... then the server drops the connection
        send(frame([{"op": "replace", "path": "/0/data/n", "value": 2}], "c", snapshot=False),
             then=hold),
    ]
    async with Client(fake.url, options=FAST) as client, client.subscribe("u/*") as sub:
        assert await anext(sub) == []
        first = await anext(sub)
        assert first == [obj]
        # Resumed with ?v=b: no snapshot, the patch applies to the state kept across the drop.
        assert await anext(sub) == [{**obj, "data": {"n": 2}}]
        assert first == [obj]  # earlier states are not modified by later patches
        assert (sub.version, sub.connections) == ("c", 2)
    assert [p for m, p, _, _ in fake.requests] == ["/u/*", "/u/*?v=b"]


async def test_unappliable_patch_resyncs_from_a_snapshot(fake: Fake) -> None:
    fake.scripts = [
        send(frame({"created": 0, "updated": 0, "index": "", "data": {}}, "1", snapshot=True),
             frame([{"op": "remove", "path": "/nope"}], "2", snapshot=False), then=hold),
        send(frame({"created": 5, "updated": 0, "index": "k", "data": 7}, "3", snapshot=True),
             then=hold),
    ]
    statuses: list[Status] = []
    async with Client(fake.url, options=FAST) as client, client.subscribe(
        "k", on_status=statuses.append
    ) as sub:
        assert (await anext(sub))["created"] == 0
        assert await anext(sub) == {"created": 5, "updated": 0, "index": "k", "data": 7}
    # The second connection asks for everything: a version is no use once the state is lost.
    assert [p for _, p, _, _ in fake.requests] == ["/k", "/k"]
    assert statuses[0] == Connected("k", 0, resumed=False, reconnect=False)
    lost = statuses[1]
    assert isinstance(lost, Disconnected) and lost.resync and lost.attempt == 1
    assert lost.reason == "PatchError: member 'nope' not found" and lost.code is None
    assert statuses[2:] == [Connected("k", 1, resumed=False, reconnect=True)]


async def test_a_snapshot_on_a_resumed_stream_replaces_the_state(fake: Fake) -> None:
    fake.scripts = [
        send(frame([{"index": "a"}], "1", snapshot=True)),  # ... then the server drops it
        send(frame([{"index": "b"}], "5", snapshot=True),  # the version moved on: a snapshot
             frame([{"op": "add", "path": "/0", "value": {"index": "c"}}], "6", snapshot=False),
             then=hold),
    ]
    async with Client(fake.url, options=FAST) as client, client.subscribe("u/*") as sub:
        assert await anext(sub) == [{"index": "a"}]
        assert await anext(sub) == [{"index": "b"}]
        assert await anext(sub) == [{"index": "c"}, {"index": "b"}]
    assert [p for _, p, _, _ in fake.requests] == ["/u/*", "/u/*?v=1"]


@pytest.mark.parametrize(
    "bad",
    [
        frame([], "9", snapshot=False),  # a patch first, even one that applies to anything
        frame([{"op": "add", "path": "/0", "value": 1}], "9", snapshot=False),
        b"{not json",
        orjson.dumps({"version": "9", "data": {}}),  # no "snapshot" member
    ],
)
async def test_a_first_frame_that_is_no_snapshot_resyncs(fake: Fake, bad: bytes) -> None:
    fake.scripts = [send(bad, then=hold), send(frame({"n": 1}, "3", snapshot=True), then=hold)]
    statuses: list[Status] = []
    async with Client(fake.url, options=FAST) as client, client.subscribe(
        "k", on_status=statuses.append
    ) as sub:
        assert await anext(sub) == {"n": 1}
    assert [type(s) for s in statuses] == [Connected, Disconnected, Connected]
    assert statuses[1].resync  # type: ignore[union-attr]


async def test_a_shared_session_keeps_its_own_middlewares(fake: Fake) -> None:
    async def stamp(request: aiohttp.ClientRequest,
                    handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        request.headers["X-Stamp"] = "yes"
        return await handler(request)

    async with aiohttp.ClientSession(middlewares=(stamp,)) as session:
        async with Client(fake.url, session=session) as client:
            await client.set("k", 1)
        assert not session.closed  # not the client's to close
    assert fake.requests[0][2]["X-Stamp"] == "yes"


async def test_bearer_subprotocol(fake: Fake) -> None:
    fake.scripts = [send(frame({}, "1", snapshot=True), then=hold)]
    client = Client(fake.url, token="s3cret", options=FAST)
    async with client, client.subscribe("k") as sub:
        await anext(sub)
    offered = fake.requests[0][2]["Sec-WebSocket-Protocol"]  # aiohttp sends "bearer,s3cret"
    assert [p.strip() for p in offered.split(",")] == ["bearer", "s3cret"]


async def test_refused_subscription_raises(fake: Fake) -> None:
    fake.reply = (400, b"", "text/plain")
    async with Client(fake.url, options=FAST) as client:
        with pytest.raises(ClientError) as caught:
            await anext(client.subscribe("k"))
    assert caught.value.status == 400


async def test_without_reconnect_iteration_ends_when_server_closes(fake: Fake) -> None:
    fake.scripts = [send(frame({"a": 1}, "1", snapshot=True), frame([], "1", snapshot=False))]
    async with Client(fake.url, options=FAST) as client:
        states = [state async for state in client.subscribe("k", reconnect=False)]
    assert states == [{"a": 1}, {"a": 1}]


async def test_close_ends_iteration_and_client_close_closes_subscriptions(fake: Fake) -> None:
    closed = asyncio.Event()

    async def hold_then_mark(ws: web.WebSocketResponse) -> None:
        await hold(ws)
        closed.set()

    fake.scripts = [send(frame({}, "1", snapshot=True), then=hold_then_mark)]
    client = Client(fake.url, options=FAST)
    sub = client.subscribe("k")
    await anext(sub)
    await client.close()
    await asyncio.wait_for(closed.wait(), 5)
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


def test_backoff_delays_grow_to_the_cap_with_bounded_jitter() -> None:
    options = ClientOptions(reconnect_initial=0.1, reconnect_factor=2, reconnect_max=1,
                            reconnect_jitter=0.5)
    delays = backoff_delays(options, random.Random(7))
    got = [next(delays) for _ in range(8)]
    caps = [0.1, 0.2, 0.4, 0.8, 1, 1, 1, 1]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(got, caps, strict=True))
    exact = backoff_delays(ClientOptions(reconnect_initial=1, reconnect_max=3, reconnect_jitter=0))
    assert [next(exact) for _ in range(4)] == [1, 2, 3, 3]


async def test_close_from_another_task_ends_a_pending_iteration(fake: Fake) -> None:
    fake.scripts = [send(frame({}, "1", snapshot=True), then=hold)]
    async with Client(fake.url, options=FAST) as client:
        sub = client.subscribe("k")
        await anext(sub)
        pending = asyncio.ensure_future(anext(sub))
        await asyncio.sleep(0)  # usually reaches the socket read; either way close must end it
        await sub.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 5)
