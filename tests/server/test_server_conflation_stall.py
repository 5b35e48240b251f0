"""Conflation under a stall in the middle of a write flow (issue 11, "How it is checked"): a
subscriber stops reading while writes flow, then reads again while they still flow. It is never
disconnected, ends with GET's state, gets patches again afterwards, and the subscribers that kept
reading got every write in order. (The 10 s / 100 000 writes version, with the other subscribers'
p99 and the server's RSS, is bench/conflation.py, figures in bench/RESULTS.md.)"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import orjson
from server_live import Follower, LiveFactory
from test_server_conflation import Ordered, RawSubscriber, _server_side, _state

from ooo_storage.protocol.jsonpatch import apply_patch

KEYS = [f"s/{k}" for k in range(10)]
WRITES = 20_000
STALL_UNTIL = 10_000  # the stalled subscriber reads nothing until this many writes are done
OUTBOX = 64 * 1024
PAD = "x" * 1000  # ~11 MB of frames during the stall: far beyond the outbox plus socket buffers


class Stalled(RawSubscriber):
    """The raw subscriber (4 KiB receive buffer, reads only when told), read up to a condition."""

    async def read_until(self, done: Callable[[Any], bool], start: asyncio.Event) -> None:
        """Once ``start`` is set, read and apply frames until ``done(state)``."""
        await start.wait()
        while not done(self.state):
            opcode, payload = await self._frame()
            if opcode == 0x8:
                self.closed = (struct.unpack("!H", payload[:2])[0], payload[2:])
                raise AssertionError(f"the server closed the stream: {self.closed}")
            if opcode == 0x2:
                frame = orjson.loads(payload)
                self.frames += 1
                if frame["snapshot"]:
                    self.snapshots += 1
                    self.state = frame["data"]
                else:
                    self.state = apply_patch(self.state, frame["data"])


async def test_a_subscriber_stalled_mid_flow_catches_up_and_stays(make_live: LiveFactory) -> None:
    live = await make_live(outbox_bytes=OUTBOX, write_timeout=30.0)
    store = live.store
    for key in KEYS:
        await store.set(key, {"n": -1})
    stalled = await Stalled.open(live, "s/*")
    try:
        await stalled.until(await live.get("s/*"))  # its first snapshot; then it stops reading
        readers = [Ordered(Follower(await live.ws("s/*"))) for _ in range(2)]
        for reader in readers:
            await reader.follower.step()
        conn = _server_side(live, stalled)
        stall_over = asyncio.Event()
        most_queued = 0

        async def write() -> None:
            nonlocal most_queued
            for n in range(WRITES):
                await store.set(KEYS[n % len(KEYS)], {"n": n, "pad": PAD})
                most_queued = max(most_queued, conn.queued_bytes)
                if n % 50 == 49:
                    await asyncio.sleep(0)  # let the readers and the stalled socket in
                    assert not conn.closed, conn.close_reason
                if n + 1 == STALL_UNTIL:
                    assert conn.behind, "the stalled subscriber was not conflated"
                    stall_over.set()

        def done(state: Any) -> bool:
            return sorted(item["data"]["n"] for item in state) == list(range(WRITES - 10, WRITES))

        async with asyncio.timeout(120):
            await asyncio.gather(
                write(), *(r.read_until(done) for r in readers), stalled.read_until(done, stall_over)
            )
        expected = await live.get("s/*")
        assert done(expected) and stalled.state == expected
        assert not conn.closed and stalled.closed is None
        assert stalled.snapshots >= 2  # the catch-up snapshot after its first one
        assert stalled.frames < WRITES  # its queued patches were dropped, not all delivered
        for reader in readers:  # the others: every write, in order, no snapshot (Ordered checks it)
            assert reader.follower.state == expected
            assert len(reader.versions) == WRITES and reader.versions == sorted(reader.versions)
        state = await _state(live)
        assert state["conflations"] >= 1 and state["slowDisconnects"] == 0
        biggest = len(live.server.pools.pools["s/*"].snapshot_frame())
        transport = conn.request.transport
        assert transport is not None
        high_water = transport.get_write_buffer_limits()[1]
        assert most_queued <= OUTBOX + biggest + high_water + 64 * 1024, most_queued

        # Live again: the next write reaches it as a patch, not as another snapshot.
        snapshots = stalled.snapshots
        await store.set(KEYS[0], {"n": WRITES, "pad": PAD})
        async with asyncio.timeout(10):
            await stalled.until(await live.get("s/*"))
        assert stalled.snapshots == snapshots
    finally:
        stalled.sock.close()
