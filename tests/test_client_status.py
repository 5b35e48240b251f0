"""Subscriptions tell their caller about every disconnect and reconnect, against the real server.

The server drops streams the ways it really does (close frames with 1001/1008/1011, a dead TCP
connection, a restart, an upgrade refused with a 4xx or 5xx); the subscription must report each one
with its code and reason or error, the attempt number and the backoff delay, keep retrying where a
retry can help, and stop with a ``ClientError`` where it cannot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from test_client_server import EMPTY, Joins

from ooo_storage import Layered, MemoryLayer
from ooo_storage.client import (
    Client,
    ClientError,
    ClientOptions,
    Connected,
    Disconnected,
    FrameTooLarge,
    Status,
)
from ooo_storage.server import ServerRunner

FAST = ClientOptions(reconnect_initial=0.01, reconnect_max=0.05, heartbeat=None)


class Gate:
    """A server middleware on websocket upgrades: records their transports, refuses them on demand."""

    def __init__(self) -> None:
        self.transports: list[asyncio.Transport] = []
        self.refusals: list[int] = []  # statuses for the next upgrades, in order
        self.refused = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.refusals:
                self.refused += 1
                return web.Response(status=self.refusals.pop(0), text="gate says no")
            assert request.transport is not None
            self.transports.append(request.transport)  # type: ignore[arg-type]
        return await handler(request)


class Watch:
    """A subscription iterated in a background task; its states and statuses arrive in queues."""

    def __init__(self, client: Client, key: str, **options: Any) -> None:
        self.statuses: asyncio.Queue[Status] = asyncio.Queue()
        self.states: asyncio.Queue[Any] = asyncio.Queue()
        self.sub = client.subscribe(key, on_status=self.statuses.put_nowait, **options)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for state in self.sub:
            self.states.put_nowait(state)

    async def status(self) -> Status:
        return await asyncio.wait_for(self.statuses.get(), 5)

    async def state(self) -> Any:
        return await asyncio.wait_for(self.states.get(), 5)

    async def connected(self) -> Any:
        """The first connection and its initial state."""
        assert await self.status() == Connected(self.sub.key, 0, resumed=False, reconnect=False)
        return await self.state()


@pytest.fixture
async def store() -> AsyncIterator[Layered]:
    async with Layered(memory=MemoryLayer()) as store:
        yield store


@pytest.fixture
async def gate() -> Gate:
    return Gate()


@pytest.fixture
async def runner(store: Layered, gate: Gate) -> AsyncIterator[ServerRunner]:
    async with ServerRunner(store, port=0, middlewares=[gate.middleware]) as runner:
        yield runner


@pytest.fixture
async def client(runner: ServerRunner) -> AsyncIterator[Client]:
    async with Client(runner.url, options=FAST) as client:
        yield client


async def close_streams(runner: ServerRunner, code: int, reason: str) -> None:
    connections = runner.server.pools.connections()
    assert connections
    for conn in connections:
        await conn.close(code, reason)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1001, "server shutdown"), (1008, "slow consumer: outbox full"), (1011, "write timeout")],
)
async def test_a_close_from_the_server_is_reported_and_the_stream_resumes(
    runner: ServerRunner, client: Client, code: int, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    joins = Joins(runner.server, monkeypatch)
    watch = Watch(client, "box")
    assert await watch.connected() == EMPTY
    await close_streams(runner, code, reason)
    lost = await watch.status()
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.reason, lost.status, lost.attempt, lost.resync) == (code, reason, None, 1,
                                                                                 False)
    assert lost.delay is not None and 0 < lost.delay <= FAST.reconnect_initial
    assert str(lost) == f"box: disconnected (close {code}: {reason}); retry 1 in 0.0 s"
    back = await watch.status()
    assert back == Connected("box", 1, resumed=True, reconnect=True)
    assert str(back) == "box: reconnected (resumed, attempt 1)"
    assert watch.sub.status is back
    await joins.reach("box", 2)  # the resumed stream joined (it gets no frame to wait for)
    await client.set("box", 7)
    assert (await watch.state())["data"] == 7  # the state kept across the resume took the patch
    await watch.sub.close()
    await watch.task


async def test_a_dead_connection_is_reported_as_1006(gate: Gate, client: Client) -> None:
    watch = Watch(client, "box")
    await watch.connected()
    gate.transports[0].abort()  # no close frame: the TCP connection just dies
    lost = await watch.status()
    assert isinstance(lost, Disconnected) and lost.code == 1006 and lost.attempt == 1
    assert "connection lost" in lost.reason
    assert await watch.status() == Connected("box", 1, resumed=True, reconnect=True)
    await watch.sub.close()


async def test_a_restart_reports_the_close_each_failed_attempt_and_the_reconnect(
    store: Layered,
) -> None:
    runner = ServerRunner(store, port=0)
    port = await runner.start()
    try:
        async with Client(runner.url, options=FAST) as client:
            watch = Watch(client, "box")
            await watch.connected()
            await runner.stop()
            lost = await watch.status()
            assert isinstance(lost, Disconnected)
            assert (lost.code, lost.reason, lost.attempt) == (1001, "server shutdown", 1)
            failed = await watch.status()  # nothing listens on the port now
            assert isinstance(failed, Disconnected) and failed.code is None and failed.status is None
            assert failed.error is not None and failed.attempt == 2 and failed.delay is not None
            assert str(failed).startswith("box: cannot connect (Cannot connect to host")
            runner = ServerRunner(store, port=port)
            await runner.start()
            attempts = [lost.attempt, failed.attempt]
            while isinstance(status := await watch.status(), Disconnected):
                attempts.append(status.attempt)
            assert status == Connected("box", attempts[-1], resumed=True, reconnect=True)
            assert attempts == list(range(1, len(attempts) + 1))
            await watch.sub.close()
    finally:
        await runner.stop()


async def test_a_first_connection_that_waits_for_the_server_is_reported(
    store: Layered, unused_tcp_port: int
) -> None:
    async with Client(f"http://127.0.0.1:{unused_tcp_port}", options=FAST) as client:
        watch = Watch(client, "box")
        failed = await watch.status()
        assert isinstance(failed, Disconnected) and failed.attempt == 1 and failed.error is not None
        async with ServerRunner(store, port=unused_tcp_port):
            attempts = [failed.attempt]
            while isinstance(status := await watch.status(), Disconnected):
                attempts.append(status.attempt)
            assert attempts == list(range(1, len(attempts) + 1))
            assert status == Connected("box", attempts[-1], resumed=False, reconnect=False)
            assert str(status) == f"box: connected (attempt {attempts[-1]})"
            assert await watch.state() == EMPTY
            await watch.sub.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_a_refused_reconnect_raises_instead_of_retrying_forever(
    runner: ServerRunner, gate: Gate, client: Client, status: int
) -> None:
    watch = Watch(client, "box")
    await watch.connected()
    gate.refusals = [status] * 5
    await close_streams(runner, 1001, "server shutdown")
    lost = await watch.status()
    assert isinstance(lost, Disconnected) and lost.code == 1001
    with pytest.raises(ClientError) as caught:
        await asyncio.wait_for(watch.task, 5)
    assert caught.value.status == status
    assert caught.value.message.startswith("subscription refused: ")
    assert gate.refused == 1  # one refusal ended it
    assert watch.statuses.empty()  # the exception is the report; nothing said twice


async def test_a_refused_first_connection_raises(gate: Gate, client: Client) -> None:
    gate.refusals = [403]
    with pytest.raises(ClientError) as caught:
        await anext(client.subscribe("box"))
    assert (caught.value.status, caught.value.message) == (403, "subscription refused: Forbidden")


async def test_a_server_error_on_the_upgrade_is_reported_and_retried(
    runner: ServerRunner, gate: Gate, client: Client
) -> None:
    watch = Watch(client, "box")
    await watch.connected()
    gate.refusals = [503, 503]
    await close_streams(runner, 1011, "storage: unavailable")
    statuses = [await watch.status() for _ in range(4)]
    assert [(s.attempt, s.code, s.status) for s in statuses[:3]] == [  # type: ignore[union-attr]
        (1, 1011, None), (2, None, 503), (3, None, 503)
    ]
    assert str(statuses[1]).startswith("box: subscription refused (HTTP 503: Service Unavailable); "
                                       "retry 2 in ")
    assert statuses[3] == Connected("box", 3, resumed=True, reconnect=True)
    await watch.sub.close()


async def test_a_frame_above_the_client_limit_is_reported_once_and_ends_the_subscription(
    runner: ServerRunner, gate: Gate
) -> None:
    """The next connection would get the same frame (a snapshot of the same big value), so the
    subscription says why and stops instead of reconnecting, and rebuilding it, forever."""
    options = dataclasses.replace(FAST, max_frame_bytes=1000)
    async with Client(runner.url, options=options) as client:
        watch = Watch(client, "big")
        await watch.connected()
        await client.set("big", "x" * 2000)
        lost = await watch.status()
        with pytest.raises(FrameTooLarge) as caught:
            await asyncio.wait_for(watch.task, 5)
    error = caught.value
    frame = error.size
    assert frame is not None and frame > 2000  # the snapshot: the value and its metadata
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.delay, lost.attempt) == (1009, None, 0)
    assert lost.reason == f"Message size {frame} exceeds limit 1000"
    assert str(lost) == f"big: disconnected (close 1009: {lost.reason}); not reconnecting"
    assert (error.key, error.limit, error.status) == ("big", 1000, 0)
    assert str(error) == (f"frame too large: big: the server sent a frame of {frame} bytes, over the "
                          "limit of 1000 bytes: raise ClientOptions.max_frame_bytes above it (0 = no limit)")
    assert watch.statuses.empty() and len(gate.transports) == 1  # never reconnected


async def test_a_first_snapshot_above_the_limit_ends_the_subscription_even_without_reconnect(
    runner: ServerRunner, store: Layered
) -> None:
    for i in range(20):
        await store.set(f"many/{i}", {"pad": "y" * 100})
    options = dataclasses.replace(FAST, max_frame_bytes=1000)
    async with Client(runner.url, options=options) as client:
        with pytest.raises(FrameTooLarge) as caught:
            await asyncio.wait_for(anext(client.subscribe("many/*", reconnect=False)), 5)
    assert caught.value.size is not None and caught.value.size > 2000


async def test_the_server_lets_go_of_a_subscriber_that_closed_with_1009(
    runner: ServerRunner, store: Layered, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    left = asyncio.Event()
    runner.server.on_unsubscribe = lambda key: left.set()
    await store.set("big", {"pad": "x" * (4 * 1024 * 1024)})  # fed to the socket in slices
    options = dataclasses.replace(FAST, max_frame_bytes=1024 * 1024)
    async with Client(runner.url, options=options) as small:
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(anext(small.subscribe("big")), 5)
    await asyncio.wait_for(left.wait(), 5)
    assert runner.server.pools.connections() == []
    async with client.subscribe("big") as sub:  # a subscriber that takes it still gets it whole
        assert len((await asyncio.wait_for(anext(sub), 10))["data"]["pad"]) == 4 * 1024 * 1024
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_glob_the_server_refuses_as_too_large_is_not_retried(store: Layered, gate: Gate) -> None:
    """ooo-storage closes a glob over its ``max_subscription_items`` after the upgrade, with the
    reason: a retry would rebuild the glob on the server only to be refused again."""
    for i in range(60):
        await store.set(f"many/{i}", i)
    runner = ServerRunner(store, port=0, middlewares=[gate.middleware], max_subscription_items=50)
    async with runner, Client(runner.url, options=FAST) as client:
        watch = Watch(client, "many/*")
        assert await watch.status() == Connected("many/*", 0, resumed=False, reconnect=False)
        lost = await watch.status()
        assert isinstance(lost, Disconnected) and lost.delay is None
        assert "matches more than 50 items" in lost.reason
        with pytest.raises(ClientError) as caught:
            await asyncio.wait_for(watch.task, 5)
    assert caught.value.status == 413
    assert caught.value.message == f"subscription refused: {lost.reason}"
    assert len(gate.transports) == 1 and watch.statuses.empty()


@pytest.mark.parametrize(
    ("code", "status"), [(4403, 403), (4404, 404), (4413, 413), (1009, 413)]
)
async def test_a_close_that_says_retrying_cannot_help_ends_the_subscription(
    runner: ServerRunner, gate: Gate, client: Client, code: int, status: int
) -> None:
    """A close code 4000 + a 4xx status says after the upgrade what a refused upgrade says before
    it; 1009 says the stream cannot go on."""
    watch = Watch(client, "box")
    await watch.connected()
    await close_streams(runner, code, "not for you")
    lost = await watch.status()
    assert isinstance(lost, Disconnected) and (lost.code, lost.delay) == (code, None)
    with pytest.raises(ClientError) as caught:
        await asyncio.wait_for(watch.task, 5)
    assert (caught.value.status, caught.value.message) == (status, "subscription refused: not for you")
    assert len(gate.transports) == 1


@pytest.mark.parametrize("code", [4408, 4429, 4500, 4000])
async def test_a_close_that_may_pass_is_retried(
    runner: ServerRunner, client: Client, code: int
) -> None:
    watch = Watch(client, "box")
    await watch.connected()
    await close_streams(runner, code, "later")
    lost = await watch.status()
    assert isinstance(lost, Disconnected) and (lost.code, lost.attempt) == (code, 1)
    assert lost.delay is not None
    assert await watch.status() == Connected("box", 1, resumed=True, reconnect=True)
    await watch.sub.close()


async def test_close_cuts_a_backoff_wait_short(runner: ServerRunner) -> None:
    options = ClientOptions(reconnect_initial=60, reconnect_jitter=0, heartbeat=None)
    async with Client(runner.url, options=options) as client:
        watch = Watch(client, "box")
        await watch.connected()
        await close_streams(runner, 1001, "server shutdown")
        lost = await watch.status()
        assert isinstance(lost, Disconnected) and lost.delay == 60
        await watch.sub.close()
        await asyncio.wait_for(watch.task, 5)  # the iteration ends now, not in a minute
