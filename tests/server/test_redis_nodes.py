"""Several ``ooo-storage serve --redis`` processes on one real Redis (issue 14): writers and websocket
subscribers spread over the nodes; every subscriber ends with the state a GET gives on every node,
having seen every revision of its pool, in order; a node killed with -9 and Redis restarted lose
nothing acknowledged."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, free_port, serve_redis

from ooo_storage.protocol import keys

NAMESPACE = "nodes"
GLOBS = ("pool/a/*", "pool/b/*", "pool/c/*")


class Node:
    """One ``ooo-storage serve --redis`` process on a fixed port (so it can come back on it)."""

    def __init__(self, url: str, port: int | None = None) -> None:
        self.url = url
        self.port = port or free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "ooo_storage", "serve", "--port", str(self.port),
            "--redis", self.url, "--namespace", NAMESPACE,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]),
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"node on {self.port} exited: {''.join(self.output)}")
                self.output.append(line)
                if "serving on" in line:
                    break
        self._drain = asyncio.create_task(self._read(self.proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.output.append(line.decode())

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            os.kill(proc.pid, sig)
        await proc.wait()
        if self._drain is not None:
            await self._drain


class Watcher:
    """A websocket subscriber that rebuilds its state from snapshots and patches, follows the
    frames' versions, and reconnects (to any node) with ``?v=`` when its node goes away."""

    def __init__(self, http: aiohttp.ClientSession, nodes: list[Node], first: int, glob: str) -> None:
        self.http, self.nodes, self.node, self.glob = http, nodes, first, glob
        self.state: Any = None
        self.version = ""
        self.frames: list[tuple[bool, int]] = []  # (snapshot, version) of every frame
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            node = self.nodes[self.node % len(self.nodes)]
            query = f"?v={self.version}" if self.version else ""
            try:
                async with self.http.ws_connect(f"ws://127.0.0.1:{node.port}/{self.glob}{query}") as ws:
                    async for msg in ws:
                        if msg.type is not aiohttp.WSMsgType.BINARY:
                            break
                        self._frame(orjson.loads(msg.data))
            except aiohttp.ClientError:
                pass
            self.node += 1  # the node went away: try the next one (the restarted one later)
            await asyncio.sleep(0.05)  # reconnect backoff of a client, not a synchronisation

    def _frame(self, frame: dict[str, Any]) -> None:
        if frame["snapshot"]:
            self.state = frame["data"]
        else:
            self.state = jsonpatch.JsonPatch(frame["data"]).apply(self.state, in_place=True)
        self.version = frame["version"]
        self.frames.append((frame["snapshot"], int(frame["version"], 16)))
        self.changed.set()

    async def until(self, expected: Any, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while self.state != expected:
                self.changed.clear()
                await self.changed.wait()


async def get_json(http: aiohttp.ClientSession, node: Node, key: str) -> Any:
    async with http.get(f"{node.base}/{key}") as resp:
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


async def stream_revisions(url: str) -> list[tuple[int, str, str]]:
    """(revision, operation, key) of every write in the shared stream."""
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        entries = await client.xrange(f"{NAMESPACE}:log")
    finally:
        await client.aclose()
    return [(int(eid.split(b"-")[0]), f[b"o"].decode(), f[b"k"].decode()) for eid, f in entries]


def check_order(watcher: Watcher, writes: list[tuple[int, str, str]]) -> None:
    """Every frame after the last snapshot is one revision of the watcher's glob, none missed or
    repeated, in order; versions never go back."""
    versions = [v for _, v in watcher.frames]
    assert versions == sorted(versions), f"{watcher.glob}: versions went back: {versions}"
    last = max(i for i, (snapshot, _) in enumerate(watcher.frames) if snapshot)
    since = watcher.frames[last][1]
    patches = [v for _, v in watcher.frames[last + 1 :]]
    wanted = [r for r, op, key in writes if r > since and op in "sdg" and key and keys.peer(watcher.glob, key)]
    assert patches == wanted, f"{watcher.glob} from {since}: got {patches}, the stream has {wanted}"


async def write_many(
    http: aiohttp.ClientSession, nodes: list[Node], writer: int, count: int, acked: dict[str, int],
    hold: asyncio.Event | None = None,
) -> None:
    """Writer ``writer``: ``count`` increasing values to its own key, on its node, moving to the
    next node when one fails (a 503, a refused connection); ``acked`` keeps the last acknowledged."""
    key = f"{GLOBS[writer % 3][:-1]}w{writer}"
    node = writer
    for value in range(count):
        if hold is not None and value == count // 2:
            await hold.wait()
        while True:
            try:
                async with http.post(f"{nodes[node % len(nodes)].base}/{key}", data=orjson.dumps({"v": value})) as resp:
                    if resp.status == 200:
                        acked[key] = value
                        break
                    assert resp.status == 503, await resp.text()
            except aiohttp.ClientError:
                pass
            node += 1
            await asyncio.sleep(0.02)  # a client's retry backoff, not a synchronisation


async def converge(http: aiohttp.ClientSession, nodes: list[Node], watchers: list[Watcher], url: str) -> None:
    """Every node answers the same for every glob, every watcher reaches it in order."""
    for glob in GLOBS:
        states = [await get_json(http, node, glob) for node in nodes]
        assert all(s == states[0] for s in states), f"nodes disagree on {glob}"
    expected = {glob: await get_json(http, nodes[0], glob) for glob in GLOBS}
    await asyncio.gather(*(w.until(expected[w.glob]) for w in watchers))
    writes = await stream_revisions(url)
    for watcher in watchers:
        check_order(watcher, writes)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, with ``appendfsync always`` (the promise: nothing acknowledged is
    lost, Redis restarts included)."""
    yield from serve_redis(tmp_path / "redis")


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def start_nodes(url: str, count: int) -> list[Node]:
    nodes = [Node(url) for _ in range(count)]
    await asyncio.gather(*(node.start() for node in nodes))
    return nodes


async def test_three_nodes_one_order(own_redis: RedisServer, http: aiohttp.ClientSession) -> None:
    """64 writers and 300 subscribers spread over 3 nodes: one state everywhere, every revision of
    every pool seen once and in order by every subscriber."""
    nodes = await start_nodes(own_redis.url, 3)
    watchers = [Watcher(http, nodes, i, GLOBS[(i // 3) % 3]) for i in range(300)]
    try:
        for watcher in watchers:
            watcher.task = asyncio.create_task(watcher.run())
        await asyncio.gather(*(w.until([]) for w in watchers))
        acked: dict[str, int] = {}
        await asyncio.gather(*(write_many(http, nodes, w, 6, acked) for w in range(64)))
        # a delete and a glob delete from different nodes, then more writes
        async with http.delete(f"{nodes[1].base}/pool/a/w0") as resp:
            assert resp.status == 204
        async with http.delete(f"{nodes[2].base}/pool/c/*") as resp:
            assert resp.status == 204
        await asyncio.gather(*(write_many(http, nodes, w, 2, acked) for w in range(0, 64, 5)))
        await converge(http, nodes, watchers, own_redis.url)
        final = {o["path"]: o["data"]["v"] for g in GLOBS for o in await get_json(http, nodes[0], g)}
        assert final == {k: v for k, v in acked.items() if k in final} and "pool/b/w1" in final
        assert all(len(w.frames) > 1 for w in watchers)
        for node in nodes:  # the log names the node, the Redis version and the stream position
            assert any(re.search(r"node \S+ on redis 7\.\S+ at .*stream position \d+", line)
                       for line in node.output), node.output
    finally:
        for watcher in watchers:
            if watcher.task is not None:
                watcher.task.cancel()
        await asyncio.gather(*(w.task for w in watchers if w.task), return_exceptions=True)
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_kill_a_node_and_restart_redis_under_load(own_redis: RedisServer, http: aiohttp.ClientSession) -> None:
    """kill -9 of a node and a Redis restart (appendfsync always) mid-load: writers move to another
    node, subscribers resume with ?v= elsewhere; nothing acknowledged is lost and every subscriber
    still ends with the state of every node, each revision after its last snapshot once, in order."""
    nodes = await start_nodes(own_redis.url, 3)
    watchers = [Watcher(http, nodes, i, GLOBS[i % 3]) for i in range(30)]
    acked: dict[str, int] = {}
    halfway = asyncio.Event()
    try:
        for watcher in watchers:
            watcher.task = asyncio.create_task(watcher.run())
        await asyncio.gather(*(w.until([]) for w in watchers))
        writers = [asyncio.create_task(write_many(http, nodes, w, 40, acked, halfway)) for w in range(12)]
        while len(acked) < 12:  # every writer has been acknowledged at least once
            await asyncio.sleep(0.01)  # polling a plain dict the writers fill
        await nodes[1].stop(signal.SIGKILL)
        own_redis.restart()
        halfway.set()
        await nodes[1].start()
        await asyncio.gather(*writers)
        await converge(http, nodes, watchers, own_redis.url)
        for glob in GLOBS:
            for obj in await get_json(http, nodes[1], glob):
                assert obj["data"]["v"] >= acked[obj["path"]]
        assert {o["path"] for g in GLOBS for o in await get_json(http, nodes[2], g)} == set(acked)
        for glob in GLOBS:
            assert all(o["data"]["v"] == 39 for o in await get_json(http, nodes[0], glob))
        assert any(snapshot for w in watchers for snapshot, _ in w.frames[1:])  # some resumed elsewhere
    finally:
        for watcher in watchers:
            if watcher.task is not None:
                watcher.task.cancel()
        await asyncio.gather(*(w.task for w in watchers if w.task), return_exceptions=True)
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_state_shows_each_node_s_place_in_the_stream(own_redis: RedisServer, http: aiohttp.ClientSession) -> None:
    nodes = await start_nodes(own_redis.url, 2)
    try:
        async with http.post(f"{nodes[0].base}/pool/a/k", data=b'{"v": 1}') as resp:
            assert resp.status == 200, await resp.text()
        async with asyncio.timeout(10):  # the other node's tail applies it in its own time
            while (await get_json(http, nodes[1], "pool/a/*")) == []:
                await asyncio.sleep(0.01)
        states = []
        for node in nodes:
            async with http.get(f"{node.base}/?api=state") as resp:
                assert resp.status == 200, await resp.text()
                states.append(orjson.loads(await resp.read())["redis"])
        revision = max(r for r, _, _ in await stream_revisions(own_redis.url))
        for state in states:
            assert state["position"] == state["head"] == revision
            assert state["lag"] == 0 and state["connected"] is True and state["resyncs"] == 0
        assert states[0]["node"] != states[1]["node"]
        own_redis.stop()
        await nodes[1].stop()  # (a stopped Redis would keep its shutdown waiting for nothing)
        async with asyncio.timeout(15):  # the tail notices within its XREAD block time
            while True:
                async with http.get(f"{nodes[0].base}/?api=state") as resp:
                    if not orjson.loads(await resp.read())["redis"]["connected"]:
                        break
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_serve_with_redis_down_answers_503_then_serves_once_it_is_up(
    own_redis: RedisServer, http: aiohttp.ClientSession
) -> None:
    own_redis.stop()
    node = Node(own_redis.url)
    await node.start()  # it listens: starting before Redis (or during its restart) is no failure
    try:
        async with http.post(f"{node.base}/pool/a/k", data=b'{"v": 1}') as resp:
            assert resp.status == 503
            assert f"unavailable: redis at {own_redis.url}: can't reach it" in await resp.text()
        async with http.get(f"{node.base}/readyz") as resp:
            assert resp.status == 503
        own_redis.start()
        async with asyncio.timeout(20):  # its backoff reaches 5 s at most
            while True:
                async with http.post(f"{node.base}/pool/a/k", data=b'{"v": 2}') as resp:
                    if resp.status == 200:
                        break
                    assert resp.status == 503, await resp.text()
                await asyncio.sleep(0.1)  # a client's retry, not a synchronisation
        assert (await get_json(http, node, "pool/a/k"))["data"] == {"v": 2}
        async with http.get(f"{node.base}/readyz") as resp:
            assert resp.status == 200
    finally:
        await node.stop()


async def test_a_redis_password_is_never_shown(http: aiohttp.ClientSession) -> None:
    port = free_port()  # nothing listens there
    node = Node(f"redis://user:s3cretpw@127.0.0.1:{port}/0?password=s3cretpw&db=0")
    await node.start()
    try:
        async with http.post(f"{node.base}/pool/a/k", data=b'{"v": 1}') as resp:
            assert resp.status == 503
            text = await resp.text()
    finally:
        await node.stop()
    shown = text + "".join(node.output)
    assert f"redis at redis://***@127.0.0.1:{port}/0?password=***&db=0" in shown
    assert "s3cretpw" not in shown
