"""A subscriber that reads slowly but steadily is not a stalled one (issue 11, finding 3 of the
outside attack): docs/protocol.md §5.5 closes a subscriber only when its socket takes nothing for
``write_timeout``. With a kernel send buffer autotuned to megabytes, Linux reports the socket
writable only once a third of it is free, so a reader taking ~50 KB/s moved nothing out of the
transport's buffer for many seconds and was closed (``write timeout``) without ever getting its
conflation snapshot. Progress is now what the peer acknowledges (``connection.unacked``), and the
kernel queues at most ``TCP_NOTSENT_LOWAT`` unsent bytes for a subscriber (``connection._UNSENT``),
so its snapshot comes within seconds, not after megabytes of stale frames read at its pace.

Pacing the reader (one frame per ``PACE`` seconds) is what these tests are about, not a wait for an
event."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import orjson
from server_live import Live, LiveFactory
from test_server_conflation import Logged, RawSubscriber, _server_side, _state

from ooo_storage.protocol.jsonpatch import apply_patch

WRITE_TIMEOUT = 0.5
TRICKLE = 3.0  # seconds of slow reading while writes flow, at least: several write timeouts
SNAPSHOT_WITHIN = 30.0  # its conflation snapshot comes while it still reads slowly (~5 s)
PACE = 0.02  # seconds between two frames the slow reader takes (~50 KB/s of 1 KB frames)
PAD = "x" * 1000
KEYS = 10


class Trickle(RawSubscriber):
    """The raw subscriber (4 KiB receive buffer) reading one frame per :data:`PACE` seconds."""

    async def take(self) -> None:
        """Read and apply the next data frame (a close frame fails the test)."""
        while True:
            opcode, payload = await self._frame()
            if opcode == 0x8:
                raise AssertionError(f"the server closed the slow reader: {payload[2:]!r}")
            if opcode == 0x2:
                break
        frame = orjson.loads(payload)
        self.frames += 1
        if frame["snapshot"]:
            self.snapshots += 1
            self.state = frame["data"]
        else:
            self.state = apply_patch(self.state, frame["data"])

    async def trickle(self, until: float) -> None:
        while time.monotonic() < until:
            await self.take()
            await asyncio.sleep(PACE)


async def _write(live: Live, stop: asyncio.Event) -> int:
    """Writes to the subscribed keys as fast as the store takes them until ``stop`` is set."""
    count = 0
    for i in itertools.count():
        if stop.is_set():
            break
        await live.store.set(f"c/{i % KEYS}", {"i": i, "pad": PAD})
        count += 1
        if i % 20 == 0:
            await asyncio.sleep(0)  # let the server flush and the reader read
    return count


async def _open(live: Live) -> Trickle:
    for k in range(KEYS):
        await live.store.set(f"c/{k}", {"i": -1, "pad": PAD})
    sub = await Trickle.open(live, "c/*")
    await sub.until(await live.get("c/*"))
    return sub


async def test_a_slow_steady_reader_is_conflated_not_closed(make_live: LiveFactory) -> None:
    live = await make_live(outbox_bytes=64 * 1024, write_timeout=WRITE_TIMEOUT)
    sub = await _open(live)
    conn = _server_side(live, sub)
    stop = asyncio.Event()
    writer = asyncio.create_task(_write(live, stop))
    start = time.monotonic()
    try:
        async with asyncio.timeout(SNAPSHOT_WITHIN):
            while sub.snapshots < 2 or time.monotonic() - start < TRICKLE:
                await sub.take()
                await asyncio.sleep(PACE)
    except TimeoutError:
        raise AssertionError(
            f"no conflation snapshot in {SNAPSHOT_WITHIN}s of slow reading (closed: {conn.closed}, "
            f"{conn.close_reason!r}): what the kernel queues for it is not bounded"
        ) from None
    finally:
        stop.set()
        writes = await writer
    assert not conn.closed, f"a reader taking a frame every {PACE}s was closed: {conn.close_reason}"
    expected = await live.get("c/*")
    async with asyncio.timeout(30):
        await sub.until(expected)  # reading fast now
    assert sub.frames < writes  # patches were dropped, not all delivered
    state = await _state(live)
    assert state["conflations"] >= 1 and state["slowDisconnects"] == 0
    assert not conn.closed
    sub.sock.close()


async def test_a_slow_reader_that_stops_is_still_closed(make_live: LiveFactory) -> None:
    live = await make_live(outbox_bytes=64 * 1024, write_timeout=WRITE_TIMEOUT)
    sub = await _open(live)
    conn = _server_side(live, sub)
    stop = asyncio.Event()
    writer = asyncio.create_task(_write(live, stop))
    await sub.trickle(time.monotonic() + 1.0)  # unacknowledged bytes wait now
    stop.set()
    await writer
    with Logged(logging.getLogger("ooo_storage.server"), "dropping slow subscriber") as dropped:
        async with asyncio.timeout(30):
            for i in itertools.count():  # it reads nothing more; writes go on until it is closed
                if dropped.seen.is_set():
                    break
                await live.store.set(f"c/{i % KEYS}", {"i": i, "pad": PAD})
                if i % 20 == 0:
                    await asyncio.sleep(0)
    assert conn.closed and conn.close_reason == "write timeout"
    assert (await _state(live))["slowDisconnects"] == 1
    sub.sock.close()
