"""Transactions across ``ooo-storage serve --redis`` nodes (issue 14 with issue 12): bank transfers
through ``POST /?api=txn`` on 3 real nodes on one real Redis, websocket subscribers on every node
checking the total in EVERY state they rebuild (snapshots replace, patches apply), the final state
equal on every node; a node, then Redis (``appendfsync always``), killed with -9 mid-transfer
lose no acknowledged transfer and never leave half of one."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
from redis_server import RedisServer, redis_server, serve_redis  # noqa: F401 (a fixture)
from test_redis_nodes import Node, start_nodes

from ooo_storage import Layered, MemoryLayer
from ooo_storage.client import Client, TxnConflict
from ooo_storage.layers import RedisLayer
from ooo_storage.server import ServerRunner

ACCOUNTS = 12
BALANCE = 1000
TOTAL = ACCOUNTS * BALANCE
GLOB = "acc/*"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """``appendfsync always``: the promise, nothing acknowledged is lost."""
    yield from serve_redis(tmp_path / "redis")


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


class Auditor:
    """A subscriber of ``acc/*`` on one node (moving to the next when its node goes, with ``?v=``)
    that checks the total after every frame."""

    def __init__(self, http: aiohttp.ClientSession, nodes: list[Node], first: int) -> None:
        self.http, self.nodes, self.node = http, nodes, first
        self.state: list[dict[str, Any]] = []
        self.version = ""
        self.versions: list[int] = []
        self.broken: list[tuple[int, int]] = []
        """(frame number, total) of each frame after which the total was wrong."""
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            node = self.nodes[self.node % len(self.nodes)]
            query = f"?v={self.version}" if self.version else ""
            try:
                async with self.http.ws_connect(f"ws://127.0.0.1:{node.port}/{GLOB}{query}") as ws:
                    async for msg in ws:
                        if msg.type is not aiohttp.WSMsgType.BINARY:
                            break
                        self.frame(orjson.loads(msg.data))
            except aiohttp.ClientError:
                pass
            self.node += 1
            await asyncio.sleep(0.05)  # a client's reconnect backoff, not a synchronisation

    def frame(self, frame: dict[str, Any]) -> None:
        if frame["snapshot"]:
            self.state = frame["data"]
        else:
            self.state = jsonpatch.JsonPatch(frame["data"]).apply(self.state, in_place=True)
        self.version = frame["version"]
        self.versions.append(int(frame["version"], 16))
        total = sum(int(o["data"]) for o in self.state)
        if self.state and total != TOTAL:
            self.broken.append((len(self.versions), total))
        self.changed.set()

    async def until(self, expected: Any, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while self.state != expected:
                self.changed.clear()
                await self.changed.wait()


async def get(http: aiohttp.ClientSession, node: Node, key: str) -> tuple[int, Any]:
    async with http.get(f"{node.base}/{key}") as resp:
        return resp.status, orjson.loads(await resp.read()) if resp.status == 200 else None


async def transfer(
    http: aiohttp.ClientSession, nodes: list[Node], client: int, n: int, acked: list[str], rng: random.Random
) -> None:
    """One transfer with a ledger entry ``ledger/<client>-<n>`` expected missing, so that a retry
    after an unknown outcome (its node killed) never applies it twice; retried on 409, and on
    another node when its node fails."""
    tid = f"{client}-{n}"
    node = client
    a, b = (f"acc/{i}" for i in rng.sample(range(ACCOUNTS), 2))
    while True:
        target = nodes[node % len(nodes)]
        try:
            status, _ = await get(http, target, f"ledger/{tid}")
            if status == 200:  # an earlier attempt went through, unacknowledged: it is done
                return
            (status_a, src), (status_b, dst) = await get(http, target, a), await get(http, target, b)
            assert status_a == status_b == 200, (status_a, status_b)
            amount = rng.randint(1, 40)
            body = {
                "expect": {a: src["updated"] or src["created"], b: dst["updated"] or dst["created"],
                           f"ledger/{tid}": None},
                "ops": [{"op": "set", "key": a, "data": int(src["data"]) - amount},
                        {"op": "set", "key": b, "data": int(dst["data"]) + amount},
                        {"op": "set", "key": f"ledger/{tid}", "data": [a, b, amount]}],
            }
            async with http.post(f"{target.base}/?api=txn", data=orjson.dumps(body)) as resp:
                text = await resp.read()
                if resp.status == 200:
                    acked.append(tid)
                    return
                if resp.status == 409:
                    continue
                assert resp.status == 503, (resp.status, text)
        except aiohttp.ClientError:  # its node went away
            pass
        node += 1
        await asyncio.sleep(0.02)  # a client's retry backoff, not a synchronisation


async def client_loop(
    http: aiohttp.ClientSession, nodes: list[Node], client: int, count: int, acked: list[str],
    halfway: asyncio.Event | None = None,
) -> None:
    rng = random.Random(client)
    for n in range(count):
        if halfway is not None and n == count // 2:
            await halfway.wait()
        await transfer(http, nodes, client, n, acked, rng)


async def open_accounts(http: aiohttp.ClientSession, nodes: list[Node]) -> None:
    ops = [{"op": "set", "key": f"acc/{i}", "data": BALANCE} for i in range(ACCOUNTS)]
    async with http.post(f"{nodes[0].base}/?api=txn", data=orjson.dumps({"ops": ops})) as resp:
        assert resp.status == 200, await resp.text()


async def check_every_node(
    http: aiohttp.ClientSession, nodes: list[Node], acked: list[str]
) -> tuple[list[Any], list[Any]]:
    """Every node holds the same accounts and ledger; every acknowledged transfer is in the
    ledger; the balances are exactly the opening ones moved by every ledger entry (no half
    transfer either way); the total holds."""
    states = []
    for node in nodes:
        async with asyncio.timeout(30):  # each node's tail applies the stream in its own time
            while True:
                _, accounts = await get(http, node, GLOB)
                _, ledger = await get(http, node, "ledger/*")
                states.append((accounts, ledger))
                if len(states) == 1 or states[-1] == states[0]:
                    break
                states.pop()
                await asyncio.sleep(0.05)  # polling another process's state
    accounts, ledger = states[0]
    assert all(state == states[0] for state in states)
    assert set(acked) <= {o["path"].removeprefix("ledger/") for o in ledger}
    balances = {f"acc/{i}": BALANCE for i in range(ACCOUNTS)}
    for entry in ledger:
        src, dst, amount = entry["data"]
        balances[src] -= amount
        balances[dst] += amount
    assert {o["path"]: o["data"] for o in accounts} == balances
    assert sum(balances.values()) == TOTAL
    return accounts, ledger


async def stop_all(auditors: list[Auditor], nodes: list[Node]) -> None:
    for auditor in auditors:
        if auditor.task is not None:
            auditor.task.cancel()
    await asyncio.gather(*(a.task for a in auditors if a.task), return_exceptions=True)
    await asyncio.gather(*(node.stop() for node in nodes))


async def test_transfers_through_three_nodes_keep_the_total_in_every_frame_even_across_a_kill_9(
    own_redis: RedisServer, http: aiohttp.ClientSession
) -> None:
    """Transfers through 3 nodes, 3 subscribers per node checking the total after every frame;
    then more transfers while one node is killed with -9 (its transfers in flight have an unknown
    outcome, which the clients find in the ledger or retry elsewhere) and restarted, then while
    Redis is killed with -9 and restarted: no acknowledged transfer lost, none half applied, none
    twice, one state everywhere."""
    nodes = await start_nodes(own_redis.url, 3)
    auditors = [Auditor(http, nodes, i) for i in range(9)]
    halfway = asyncio.Event()
    try:
        await open_accounts(http, nodes)
        for auditor in auditors:
            auditor.task = asyncio.create_task(auditor.run())
        acked: list[str] = []
        await asyncio.gather(*(client_loop(http, nodes, c, 8, acked) for c in range(12)))
        assert len(acked) == 12 * 8
        accounts, ledger = await check_every_node(http, nodes, acked)
        assert len(ledger) == 12 * 8
        await asyncio.gather(*(a.until(accounts) for a in auditors))
        for auditor in auditors:
            assert auditor.broken == [], f"half a transfer seen: {auditor.broken[:5]}"
            assert auditor.versions == sorted(set(auditor.versions))
            assert len(auditor.versions) > 12  # it followed the transfers, not one snapshot

        clients = [asyncio.create_task(client_loop(http, nodes, c, 10, acked, halfway)) for c in range(12, 24)]
        async with asyncio.timeout(60):
            while len(acked) < 12 * 8 + 12 * 3:  # transfers are going through every node
                await asyncio.sleep(0.01)  # polling a list the clients fill
        await nodes[1].stop(signal.SIGKILL)  # transfers in flight on it: outcome unknown to them
        halfway.set()
        await nodes[1].start()
        await asyncio.gather(*clients)
        accounts, ledger = await check_every_node(http, nodes, acked)
        assert len(ledger) == 12 * 8 + 12 * 10  # every transfer once: unknown outcomes found there
        await asyncio.gather(*(a.until(accounts) for a in auditors))
        for auditor in auditors:
            assert auditor.broken == [], f"half a transfer seen: {auditor.broken[:5]}"

        # Redis itself killed with -9 mid-transfer (appendfsync always) and restarted
        halfway.clear()
        done = len(acked)
        clients = [asyncio.create_task(client_loop(http, nodes, c, 6, acked, halfway)) for c in range(24, 30)]
        async with asyncio.timeout(60):
            while len(acked) < done + 6 * 2:
                await asyncio.sleep(0.01)  # polling a list the clients fill
        own_redis.stop(signal.SIGKILL)
        own_redis.start()
        halfway.set()
        await asyncio.gather(*clients)
        accounts, ledger = await check_every_node(http, nodes, acked)
        assert len(ledger) == 12 * 8 + 12 * 10 + 6 * 6
        await asyncio.gather(*(a.until(accounts) for a in auditors))
        for auditor in auditors:
            assert auditor.broken == [], f"half a transfer seen: {auditor.broken[:5]}"
    finally:
        await stop_all(auditors, nodes)


@pytest.mark.parametrize("engine", ["lean", "aiohttp"])  # (a `from conftest` import depends on collection order)
async def test_post_txn_on_one_node_is_one_frame_on_another_on_both_engines(
    redis_server: RedisServer, http: aiohttp.ClientSession, engine: str  # noqa: F811
) -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    a = Layered(MemoryLayer(), RedisLayer(redis_server.url, namespace))
    b = Layered(MemoryLayer(), RedisLayer(redis_server.url, namespace))
    async with a, b, ServerRunner(a, "127.0.0.1", 0, http_engine=engine) as ra, \
            ServerRunner(b, "127.0.0.1", 0, http_engine=engine) as rb:
        await a.set("acc/x", 10)
        await a.set("acc/y", 0)
        async with asyncio.timeout(10):
            while b.revision < a.revision:
                await asyncio.sleep(0.005)  # b's tail applies a's writes in its own task
        x = await a.get("acc/x")
        async with http.ws_connect(f"{rb.url.replace('http', 'ws')}/acc/*") as ws:
            first = orjson.loads((await ws.receive()).data)
            assert first["snapshot"] and {o["path"]: o["data"] for o in first["data"]} == {"acc/x": 10, "acc/y": 0}
            body = {"expect": {"acc/x": x.updated or x.created},
                    "ops": [{"op": "set", "key": "acc/x", "data": 3}, {"op": "set", "key": "acc/y", "data": 7}]}
            async with http.post(f"{ra.url}/?api=txn", data=orjson.dumps(body)) as resp:
                assert resp.status == 200, await resp.text()
                revision = orjson.loads(await resp.read())["revision"]
            frame = orjson.loads((await ws.receive()).data)  # ONE frame: both patches
            assert not frame["snapshot"] and frame["version"] == revision
            state = jsonpatch.JsonPatch(frame["data"]).apply(first["data"])
            assert {o["path"]: o["data"] for o in state} == {"acc/x": 3, "acc/y": 7}
            async with http.post(f"{rb.url}/?api=txn", data=orjson.dumps(body)) as resp:  # stale now
                assert resp.status == 409
                assert orjson.loads(await resp.read())["keys"] == ["acc/x"]
        async with Client(rb.url) as client:  # Client.txn, unchanged, on the other node
            with pytest.raises(TxnConflict) as caught:
                await client.txn([("set", "acc/x", 0)], {"acc/x": x.updated or x.created})
            assert caught.value.keys == ["acc/x"]
            now = await b.get("acc/x")
            done = await client.txn([("set", "acc/x", 4), ("del", "acc/y")], {"acc/x": now.updated})
            assert done["indexes"] == ["x", ""]
        async with asyncio.timeout(10):
            while a.revision < int(done["revision"], 16):
                await asyncio.sleep(0.005)  # a's tail applies b's transaction in its own task
        assert [(o.path, o.value) for o in await a.get_list("acc/*")] == [("acc/x", 4)]
