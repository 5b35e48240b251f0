"""``GET /metrics`` (``server/metrics.py``): after a known workload on a real server (both HTTP
engines), the figures parsed with ``prometheus_client``'s own parser equal what was done."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_live import Live, LiveFactory, next_frame

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.layers import ErasureLayer
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.server import Server, ServerRunner

BOTH = pytest.mark.parametrize("engine", ["lean", "aiohttp"], indirect=True)


class Scrape:
    """The samples of one scrape, by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


async def scrape(live: Live, **kw: Any) -> Scrape:
    async with live.http.get(live.url("metrics"), **kw) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.headers["Content-Type"].startswith("text/plain; version="), resp.headers
    return Scrape(text)


@BOTH
async def test_counters_equal_a_known_workload(make_live: LiveFactory) -> None:
    live = await make_live()
    n_posts, n_gets, k_frames = 7, 5, 4
    ws = await live.ws("feed/*")
    await next_frame(ws)  # the snapshot
    for i in range(n_posts):
        assert (await live.request("POST", f"items/{i}", {"i": i}))[0] == 200
    for i in range(k_frames):
        assert (await live.request("POST", f"feed/{i}", {"i": i}))[0] == 200
        await next_frame(ws)
    for i in range(n_gets):
        assert (await live.request("GET", f"items/{i}"))[0] == 200
    assert (await live.request("GET", "items/*"))[0] == 200
    assert (await live.request("GET", "missing"))[0] == 404
    assert (await live.request("POST", "items/bad", b"{not json"))[0] == 400
    assert (await live.request("DELETE", "items/0"))[0] == 204

    during = await scrape(live)
    assert during("ooo_stream_subscribers") == 1
    assert during("ooo_stream_pools") == 1
    await ws.close()
    m = await scrape(live)

    writes = n_posts + k_frames
    assert m("ooo_http_requests_total", route="write", method="POST", status="200") == writes
    assert m("ooo_http_requests_total", route="write", method="POST", status="400") == 1
    assert m("ooo_http_requests_total", route="object", method="GET", status="200") == n_gets
    assert m("ooo_http_requests_total", route="object", method="GET", status="404") == 1
    assert m("ooo_http_requests_total", route="list", method="GET", status="200") == 1
    assert m("ooo_http_requests_total", route="delete", method="DELETE", status="204") == 1
    assert m("ooo_http_requests_total", route="stream", method="GET", status="101") == 1
    assert m("ooo_http_requests_total", route="metrics", method="GET", status="200") == 1  # the first scrape
    # the latency histogram counts every request of its route, in cumulative buckets
    hist = "ooo_http_request_duration_seconds"
    assert m(f"{hist}_count", route="write", method="POST") == writes + 1
    assert m(f"{hist}_bucket", route="write", method="POST", le="+Inf") == writes + 1
    buckets = [s for s in m.families[hist].samples
               if s.name.endswith("_bucket") and s.labels["route"] == "write"]
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    assert 0 < m(f"{hist}_sum", route="write", method="POST") < 10

    assert m("ooo_store_writes_total", operation="set") == writes
    assert m("ooo_store_writes_total", operation="del") == 1
    assert m("ooo_store_keys") == writes - 1
    assert m("ooo_store_revision") == live.store.revision
    assert m("ooo_store_active") == 1
    assert m("ooo_stream_subscribers") == 0
    assert m("ooo_stream_conflations_total") == 0
    assert m("ooo_stream_slow_disconnects_total") == 0
    assert m("ooo_store_dropped_events_total") == 0
    assert m.get("process_resident_memory_bytes") is not None


async def test_leveldb_figures(make_live: LiveFactory) -> None:
    live = await make_live("memory+leveldb")
    assert (await live.request("POST", "k/0", {"i": 0}))[0] == 200  # a batch of one (Layered.set_run)
    # writes of one loop iteration: the first inline, the others in one batch (layered.py)
    await asyncio.gather(*(live.store.set(f"k/{i}", i) for i in range(1, 5)))
    m = await scrape(live)
    assert m("ooo_store_writes_total", operation="set") == 5
    assert m("ooo_leveldb_batches_total") == 2
    assert m("ooo_leveldb_commits_total") == 0  # durable group commits: --sync only
    assert m("ooo_leveldb_refusing_writes") == 0
    assert m("ooo_leveldb_reopens_total") == 0
    assert m("ooo_leveldb_disk_bytes") > 0


async def test_erasure_figures(tmp_path: Path) -> None:
    layer = ErasureLayer([str(tmp_path / f"drive{i}") for i in range(3)], k=2, m=1)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0)
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{runner.url}/a", data=b"1") as resp:
                assert resp.status == 200
            async with http.get(f"{runner.url}/metrics") as resp:
                m = Scrape(await resp.text())
    finally:
        await runner.stop()
        await store.close()
    assert m("ooo_erasure_degraded_objects") == 0
    assert m("ooo_erasure_repair_queue") == 0
    assert m("ooo_erasure_offline_drives") == 0
    assert m.get("ooo_leveldb_disk_bytes") is None


async def test_each_server_counts_its_own(make_live: LiveFactory) -> None:
    one, two = await make_live(), await make_live()
    for _ in range(3):
        await one.request("POST", "a", 1)
    await two.request("POST", "a", 1)
    assert (await scrape(one))("ooo_http_requests_total", route="write", method="POST", status="200") == 3
    assert (await scrape(two))("ooo_http_requests_total", route="write", method="POST", status="200") == 1


@BOTH
async def test_only_a_plain_get_of_the_path_is_the_endpoint(make_live: LiveFactory) -> None:
    """``metrics`` stays a key: written, deleted, subscribed to, listed; ``GET /metrics`` is the
    endpoint; with ``metrics=False`` it reads the key again."""
    live = await make_live()
    assert (await live.request("POST", "metrics", {"mine": True}))[0] == 200
    status, body = await live.request("GET", "metrics")
    assert status == 200 and b"ooo_http_requests_total" in body
    assert [o["data"] for o in await live.get("metric*")] == [{"mine": True}]
    ws = await live.ws("metrics")
    assert (await next_frame(ws))["data"]["data"] == {"mine": True}  # a snapshot of the key
    await ws.close()
    assert (await live.request("GET", "metrics/x"))[0] == 404  # a deeper key is a key

    off = await make_live(metrics=False)
    await off.request("POST", "metrics", {"mine": True})
    assert (await off.get("metrics"))["data"] == {"mine": True}


@BOTH
async def test_metrics_outside_access_control_unless_asked(make_live: LiveFactory) -> None:
    policy = Policy.from_dict({"tokens": [
        {"name": "root", "sha256": token_digest("root-token-0123456789"),
         "rules": [{"paths": ["*"], "rights": ["admin", "read"]}]},
        {"name": "reader", "sha256": token_digest("reader-token-0123456789"),
         "rules": [{"paths": ["*"], "rights": ["read"]}]},
    ]})
    open_metrics = await make_live(auth=policy)
    await scrape(open_metrics)  # no token needed
    status, _ = await open_metrics.request("GET", "x")
    assert status == 401  # everything else still is guarded

    guarded = await make_live(auth=policy, metrics_auth=True)
    assert (await guarded.request("GET", "metrics"))[0] == 401
    headers = {"Authorization": "Bearer reader-token-0123456789"}
    assert (await guarded.request("GET", "metrics", headers=headers))[0] == 403
    await scrape(guarded, headers={"Authorization": "Bearer root-token-0123456789"})


async def test_no_metrics_means_no_counting(tmp_path: Path) -> None:
    store = Layered(memory=MemoryLayer())
    await store.start()
    try:
        server = Server(store, metrics=False)
        assert server.metrics is None and "metrics" not in server.endpoints
    finally:
        await store.close()


def _frame_size(payload: bytes) -> int:
    """A server frame's size on the wire: unmasked, header 2, 4 or 10 bytes."""
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


@BOTH
async def test_frames_and_bytes_sent_to_subscribers(make_live: LiveFactory) -> None:
    """Every frame two subscribers received, large ones (handed over in slices) included, is
    counted once per subscriber with its exact size on the wire."""
    live = await make_live()
    subscribers = [await live.ws("feed/*") for _ in range(2)]
    got: list[bytes] = []

    async def receive(ws: aiohttp.ClientWebSocketResponse) -> None:
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        got.append(msg.data)

    for ws in subscribers:
        await receive(ws)  # the snapshot
    for value in ({"i": 1}, {"big": "x" * 300_000}, {"i": 3}):
        assert (await live.request("POST", "feed/a", value))[0] == 200
        for ws in subscribers:
            await receive(ws)
    m = await scrape(live)
    for ws in subscribers:
        await ws.close()
    assert m("ooo_stream_frames_sent_total") == len(got) == 8
    assert m("ooo_stream_bytes_sent_total") == sum(_frame_size(p) for p in got)


async def test_event_queue_depth(make_live: LiveFactory) -> None:
    """A library watcher that does not return holds the events behind the one it is given: the
    gauge shows them waiting, then 0 once it let go and had them all."""
    live = await make_live()
    release, given, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Any] = []

    async def stuck(event: Any) -> None:
        given.set()
        await release.wait()
        seen.append(event)
        if len(seen) == 5:
            done.set()

    live.store.watch(stuck)
    for i in range(5):
        assert (await live.request("POST", "q", {"i": i}))[0] == 200  # one key: one shard
    await given.wait()
    assert (await scrape(live))("ooo_store_queued_events") == 4
    release.set()
    await done.wait()
    assert (await scrape(live))("ooo_store_queued_events") == 0


async def test_group_commit_sizes(tmp_path: Path) -> None:
    """--sync: one write alone is a group of 1; 20 concurrent writers share fewer fsyncs. The
    histogram counts every group commit and every write in one."""
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db"), sync=True))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0)
    await runner.start()
    try:
        await store.set("alone", 0)
        await asyncio.gather(*(store.set(f"k/{i}", i) for i in range(20)))
        async with aiohttp.ClientSession() as http, http.get(f"{runner.url}/metrics") as resp:
            m = Scrape(await resp.text())
    finally:
        await runner.stop()
        await store.close()
    hist = "ooo_leveldb_group_commit_writes"
    commits = m("ooo_leveldb_commits_total")
    assert m(f"{hist}_sum") == 21
    assert m(f"{hist}_count") == m(f"{hist}_bucket", le="+Inf") == commits
    assert m(f"{hist}_bucket", le="1") >= 1  # the write alone
    assert commits < 21  # the concurrent writers were grouped
    buckets = [s.value for s in m.families[hist].samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and len(buckets) == 10


async def test_disk_bytes_leave_the_reserve_out(tmp_path: Path) -> None:
    """The reserve file (32 MiB under serve) is not data: ooo_leveldb_disk_bytes leaves it out (it
    said 33.5 MB for an empty store), ooo_leveldb_reserve_bytes shows it."""
    store = Layered(memory=MemoryLayer(),
                    embedded=LevelDBLayer(str(tmp_path / "db"), reserve_bytes=4_000_000))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0)
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{runner.url}/metrics") as resp:
            m = Scrape(await resp.text())
    finally:
        await runner.stop()
        await store.close()
    assert 0 < m("ooo_leveldb_disk_bytes") < 1_000_000
    assert m("ooo_leveldb_reserve_bytes") == 4_000_000


async def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection to 127.0.0.1:``port``; what the server answered before
    it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


@BOTH
async def test_requests_refused_below_the_handlers_are_counted(engine: str) -> None:
    """A head too large (431), a head too slow (408) and a connection over the limit (503) never
    reach a handler: they are counted as route ``refused``; storage failures (503) by operation."""
    store = Layered(memory=MemoryLayer())  # not started: reads and writes fail with 503
    server = Server(store, http_engine=engine, max_head_bytes=1024, header_timeout=0.2,
                    max_connections=2)
    assert server.metrics is not None
    assert server.metrics.notices is server.notices and server.metrics.failures is server.failures
    runner = ServerRunner(store, "127.0.0.1", 0, server=server)
    await runner.start()
    try:
        big = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 4000
        assert (await _raw(runner.port, big)).startswith(b"HTTP/1.1 431 ")
        assert (await _raw(runner.port, b"GET /a HTTP/1.1\r\n")).startswith(b"HTTP/1.1 408 ")
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(b"POST /a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n1")  # busy
        await writer.drain()
        other = await asyncio.open_connection("127.0.0.1", runner.port)
        other[1].write(b"POST /b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n1")
        await other[1].drain()
        try:
            assert (await _raw(runner.port, b"")).startswith(b"HTTP/1.1 503 ")
        finally:
            writer.close()
            other[1].close()
        async with asyncio.timeout(5):  # the server lets them go (nothing to await but its state)
            while runner.gate is not None and runner.gate.open:
                await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            for method in ("POST", "POST", "GET"):
                async with http.request(method, f"{runner.url}/k", data=b"1") as resp:
                    assert resp.status == 503
            async with http.get(f"{runner.url}/metrics") as resp:
                m = Scrape(await resp.text())
    finally:
        await runner.stop()
    requests = "ooo_http_requests_total"
    assert m(requests, route="refused", method="other", status="431") == 1
    assert m(requests, route="refused", method="other", status="408") == 1
    assert m(requests, route="refused", method="other", status="503") == 1
    assert m("ooo_storage_errors_total", operation="write", error="NotActive") == 2
    assert m("ooo_storage_errors_total", operation="read", error="NotActive") == 1
