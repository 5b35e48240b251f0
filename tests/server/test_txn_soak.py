"""The bank-transfer soak of issue 12: 64 HTTP clients move money between 100 accounts with
``POST /?api=txn`` (read both balances, then a transaction expecting the versions read; a 409
is retried with fresh reads) while 100 websocket subscribers follow ``accounts/*``.

The total is constant in the store at the end AND in the state every subscriber reconstructs
after EACH frame (snapshots replace, patches apply with ``jsonpatch``): no frame may show half a
transfer. A real server on 127.0.0.1 over memory + LevelDB, real sockets.

``OOO_SOAK_SECONDS`` sets how long the transfers run (default 20, what the issue asks; 3 will do
while developing).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch
import orjson
from server_live import Live, LiveFactory

ACCOUNTS = 100
CLIENTS = 64
SUBSCRIBERS = 100
BALANCE = 1000
TOTAL = ACCOUNTS * BALANCE
SECONDS = float(os.environ.get("OOO_SOAK_SECONDS", "20"))


@dataclass
class Watcher:
    """One subscriber's state as a client keeps it, and the frames whose state broke the total."""

    ws: aiohttp.ClientWebSocketResponse
    state: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""
    frames: int = 0
    broken: list[tuple[int, int, str]] = field(default_factory=list)
    """(frame number, total seen, frame) of every frame after which the total was wrong."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    target: str | None = None
    """The version to reach (the store's last revision, once the transfers are over)."""

    async def follow(self) -> None:
        """Apply every frame, checking the total after each, until cancelled."""
        while True:
            msg = await self.ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            frame = orjson.loads(msg.data)
            if frame["snapshot"]:
                self.state = frame["data"]
            else:
                self.state = jsonpatch.JsonPatch(frame["data"]).apply(self.state, in_place=True)
            self.version = frame["version"]
            self.frames += 1
            total = balance_sum(self.state)
            if total != TOTAL and len(self.broken) < 5:
                self.broken.append((self.frames, total, msg.data[:300].decode(errors="replace")))
            self.aim(self.target)

    def aim(self, target: str | None) -> None:
        """Reach for ``target``: ``reached`` is set once the state is at that version."""
        self.target = target
        if target is not None and self.version == target:
            self.reached.set()


def balance_sum(objects: list[dict[str, Any]]) -> int:
    return sum(int(obj["data"]["balance"]) for obj in objects)


@dataclass
class Tally:
    committed: int = 0
    conflicts: int = 0


async def read(live: Live, key: str) -> dict[str, Any]:
    async with live.http.get(live.url(key)) as resp:
        assert resp.status == 200, await resp.text()
        return dict(orjson.loads(await resp.read()))


async def transfer(live: Live, rng: random.Random, tally: Tally) -> None:
    """Move a random amount between two random accounts, retrying on 409 with fresh reads."""
    a, b = (f"accounts/{i}" for i in rng.sample(range(ACCOUNTS), 2))
    while True:
        src, dst = await read(live, a), await read(live, b)
        have = int(src["data"]["balance"])
        amount = rng.randint(0, min(have, 50))
        body = {
            "expect": {a: src["updated"] or src["created"], b: dst["updated"] or dst["created"]},
            "ops": [{"op": "set", "key": a, "data": {"balance": have - amount}},
                    {"op": "set", "key": b, "data": {"balance": int(dst["data"]["balance"]) + amount}}],
        }
        async with live.http.post(f"{live.base}/?api=txn", data=orjson.dumps(body)) as resp:
            text = await resp.read()
            if resp.status == 200:
                tally.committed += 1
                return
            assert resp.status == 409, text
            tally.conflicts += 1


async def client(live: Live, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        await transfer(live, rng, tally)


async def test_transfers_keep_the_total_in_the_store_and_in_every_frame(make_live: LiveFactory) -> None:
    live = await make_live("memory+leveldb")
    opening = [{"op": "set", "key": f"accounts/{i}", "data": {"balance": BALANCE}} for i in range(ACCOUNTS)]
    async with live.http.post(f"{live.base}/?api=txn", data=orjson.dumps({"ops": opening})) as resp:
        assert resp.status == 200, await resp.text()
    watchers = [Watcher(await live.ws("accounts/*")) for _ in range(SUBSCRIBERS)]
    following = [asyncio.create_task(w.follow()) for w in watchers]
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    await asyncio.gather(*(client(live, seed, deadline, tally) for seed in range(CLIENTS)))
    last = f"{live.store.revision:x}"  # every write was to accounts/*: the pools' last version
    for watcher in watchers:
        watcher.aim(last)
    reached = asyncio.ensure_future(asyncio.gather(*(w.reached.wait() for w in watchers)))
    await asyncio.wait([reached, *following], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    for task in [reached, *following]:
        if task.done():
            task.result()  # a subscriber that failed says why
        task.cancel()
    await asyncio.gather(reached, *following, return_exceptions=True)
    behind = [w.version for w in watchers if w.version != last]
    assert not behind, f"{len(behind)} subscribers never reached version {last} (one is at {behind[0]})"
    for watcher in watchers:
        await watcher.ws.close()

    stored = [(await live.store.get(f"accounts/{i}")).value["balance"] for i in range(ACCOUNTS)]
    assert sum(stored) == TOTAL
    assert min(stored) >= 0
    assert tally.committed > CLIENTS, tally
    broken = {i: w.broken for i, w in enumerate(watchers) if w.broken}
    assert not broken, (
        f"{len(broken)} of {SUBSCRIBERS} subscribers saw a total other than {TOTAL} after a frame "
        f"(first: subscriber {next(iter(broken))}: {next(iter(broken.values()))}); "
        f"{tally.committed} transfers, {tally.conflicts} conflicts"
    )
    for watcher in watchers:
        assert sorted(o["data"]["balance"] for o in watcher.state) == sorted(stored)
