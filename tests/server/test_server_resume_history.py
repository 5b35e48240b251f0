"""Resuming a subscription from the event history (issue 11): a client reconnecting with ``?v=``
gets ONE patch frame from its state at that version to now when the history covers it, a snapshot
otherwise (docs/protocol.md §5.4); its state then equals GET."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from serve_process import serve_process
from server_live import Follower, Live, no_frame

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer, Options
from ooo_storage.server import Server, ServerRunner, resume

KEYS = [f"r/{i:02}" for i in range(0, 100, 10)]


async def _live(tmp_path: Path, history: bool = True, **options: Any) -> Live:
    store = Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(str(tmp_path / "db")),
        history=HistoryOptions(tmp_path / "history", max_bytes=1 << 20) if history else None,
    )
    await store.start()
    server = Server(store, shutdown_timeout=1.0, **options)
    runner = ServerRunner(store, "127.0.0.1", 0, server=server)
    await runner.start()
    return Live(store, server, runner, aiohttp.ClientSession())


async def _close(live: Live) -> None:
    await live.http.close()
    await live.runner.stop()
    await live.store.close()


@pytest.fixture
async def hist(tmp_path: Path) -> AsyncIterator[Live]:
    live = await _live(tmp_path)
    yield live
    await _close(live)


async def _left(live: Live, f: Follower, key: str) -> None:
    """Close ``f`` and wait until the server has pruned its pool (the next subscriber builds it
    again from the store: nothing of the old pool helps the resume)."""
    left = asyncio.Event()
    live.server.on_unsubscribe = lambda k: left.set()
    await f.ws.close()
    await left.wait()
    assert key not in live.server.pools.pools


async def _follow(live: Live, key: str) -> Follower:
    f = Follower(await live.ws(key))
    await f.step()
    return f


async def _resume(live: Live, key: str, f: Follower) -> tuple[Follower, dict[str, Any]]:
    """Reconnect with ``f``'s version and state; the first frame."""
    again = Follower(await live.ws(f"{key}?v={f.version}"))
    again.state = f.state
    return again, await again.step()


async def test_500_writes_to_10_keys_come_back_as_one_patch(hist: Live) -> None:
    for n in range(100):  # the glob holds 100 keys, 10 of which change
        await hist.store.set(f"r/{n:02}", {"n": 0, "pad": "x" * 50})
    f = await _follow(hist, "r/*")
    await _left(hist, f, "r/*")
    for n in range(500):
        await hist.store.set(KEYS[n % 10], {"n": n, "pad": "x" * 50})
    resumed, frame = await _resume(hist, "r/*", f)
    assert frame["snapshot"] is False
    assert [op["op"] for op in frame["data"]] == ["replace"] * 10
    assert resumed.state == await hist.get("r/*")
    assert int(frame["version"], 16) == hist.store.revision
    snapshot = Follower(await hist.ws("r/*"))
    await snapshot.step()
    assert len(resumed.raw[0]) < len(snapshot.raw[0]) / 5  # 10 objects of 100
    # Patches go on from there, on the resumed state.
    await hist.store.delete(KEYS[3])
    await resumed.step()
    assert resumed.state == await hist.get("r/*")


async def test_resume_with_the_pool_alive_also_patches(hist: Live) -> None:
    await hist.store.set("r/a", 1)
    watcher = await _follow(hist, "r/*")  # keeps the pool alive
    f = await _follow(hist, "r/*")
    await f.ws.close()
    await hist.store.set("r/b", 2)
    await hist.store.set("r/a", 3)
    await watcher.step()
    await watcher.step()
    resumed, frame = await _resume(hist, "r/*", f)
    assert frame["snapshot"] is False
    assert resumed.state == watcher.state == await hist.get("r/*")


async def test_adds_removes_moves_and_recreations_in_any_mix(hist: Live) -> None:
    """Random rounds of new keys, overwrites, deletes, delete-then-recreate (a new ``created``, so
    a new position) and writes elsewhere: the patch always leads to GET's list."""
    rng = random.Random(11)
    store = hist.store
    names = [f"m/{i}" for i in range(30)]
    for name in names[:15]:
        await store.set(name, {"v": name})
    f = await _follow(hist, "m/*")
    for _ in range(25):
        await f.ws.close()
        for _ in range(rng.randrange(0, 40)):
            name = rng.choice(names)
            roll = rng.random()
            if roll < 0.2 and store.peek(name) is not None:
                await store.delete(name)
            elif roll < 0.3:
                await store.push("m/*", {"pushed": True})
            elif roll < 0.4:
                await store.set(f"other/{rng.randrange(5)}", 1)
            else:
                await store.set(name, {"v": rng.randrange(1000)})
        resumed, frame = await _resume(hist, "m/*", f)
        assert frame["snapshot"] is False, frame
        assert resumed.state == await hist.get("m/*")
        f = resumed


async def test_nothing_changed_in_the_pool_gives_an_empty_patch_at_the_new_version(tmp_path: Path) -> None:
    """After a restart the pool is built at the store's revision (no remembered version): a client
    whose state is still current learns the new version from an empty patch, not a snapshot."""
    live = await _live(tmp_path)
    try:
        await live.store.set("r/1", 1)
        f = await _follow(live, "r/*")
        g = await _follow(live, "one")
    finally:
        await _close(live)
    live = await _live(tmp_path)
    try:
        await live.store.set("elsewhere", 1)
        for key, old in (("r/*", f), ("one", g)):
            resumed, frame = await _resume(live, key, old)
            assert frame == {"snapshot": False, "version": format(live.store.revision, "x"), "data": []}
            assert resumed.state == (await live.get(key) if "*" in key else old.state)
            await no_frame(await live.ws(f"{key}?v={resumed.version}"))
    finally:
        await _close(live)


async def test_a_single_key_that_changed_gets_its_document(hist: Live) -> None:
    await hist.store.set("one", {"a": 1})
    f = await _follow(hist, "one")
    await _left(hist, f, "one")
    await hist.store.set("one", {"a": 2})
    _, frame = await _resume(hist, "one", f)
    assert frame["snapshot"] is True and frame["data"]["data"] == {"a": 2}
    await hist.store.delete("one*")  # a glob delete reaching it
    _, frame = await _resume(hist, "one", f)
    assert frame["snapshot"] is True
    assert frame["data"] == {"created": 0, "updated": 0, "index": "", "data": {}}


async def test_what_the_history_cannot_say_gets_a_snapshot(tmp_path: Path) -> None:
    live = await _live(tmp_path)
    try:
        store = live.store
        await store.set("g/1", 1)
        f = await _follow(live, "g/*")
        await f.ws.close()
        await store.delete("g/*")  # which keys it took is not in the history
        await store.set("g/2", 2)
        resumed, frame = await _resume(live, "g/*", f)
        assert frame["snapshot"] is True and resumed.state == await live.get("g/*")

        # A version from the future (another data directory), or not hex: a snapshot.
        for v in (format(store.revision + 10, "x"), "zz"):
            frame = await Follower(await live.ws(f"g/*?v={v}")).step()
            assert frame["snapshot"] is True

        # A history that no longer reaches back: a snapshot, not a wrong patch.
        await f.ws.close()
        old = resumed.version
        for n in range(400):  # 1 MiB of history, 8 segments: the oldest are evicted
            await store.set(f"g/{n % 3}", {"pad": "p" * 4000})
        _, frame = await _resume(live, "g/*", resumed)
        assert frame["snapshot"] is True, old
    finally:
        await _close(live)


async def test_no_history_and_read_filters_keep_the_snapshot(tmp_path: Path) -> None:
    live = await _live(tmp_path / "plain", history=False)
    try:
        await live.store.set("g/1", 1)
        f = await _follow(live, "g/*")
        await f.ws.close()
        await live.store.set("g/1", 2)
        _, frame = await _resume(live, "g/*", f)
        assert frame["snapshot"] is True
    finally:
        await _close(live)
    live = await _live(tmp_path / "filtered")
    live.server.read_list_filter("g/*", lambda key, objs: objs[:1])
    try:
        await live.store.set("g/1", 1)
        f = await _follow(live, "g/*")
        await f.ws.close()
        await live.store.set("g/2", 2)
        resumed, frame = await _resume(live, "g/*", f)
        assert frame["snapshot"] is True and resumed.state == await live.get("g/*")
    finally:
        await _close(live)


async def test_a_patch_larger_than_the_snapshot_is_sent_as_the_snapshot(hist: Live) -> None:
    for n in range(200):
        await hist.store.set(f"b/{n}", {"pad": "p" * 20})
    f = await _follow(hist, "b/*")
    await f.ws.close()
    for n in range(200):
        await hist.store.delete(f"b/{n}")
    await hist.store.set("b/x", 1)
    resumed, frame = await _resume(hist, "b/*", f)
    # 200 removes and an add (~5 KB) against a one-item list: the list is smaller.
    assert frame["snapshot"] is True and resumed.state == await hist.get("b/*")


# -- across a restart of a real ``serve`` process ------------------------------------------------
async def _serve(data: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc, port = await serve_process("--data", str(data), "--history-bytes", str(4 << 20))
    return proc, f"http://127.0.0.1:{port}"

async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    assert await proc.wait() == 0


async def _post_all(http: aiohttp.ClientSession, base: str, writes: range) -> None:
    for n in writes:
        async with http.post(f"{base}/{KEYS[n % 10]}", data=orjson.dumps({"n": n, "pad": "x" * 50})) as r:
            assert r.status == 200


async def test_resume_across_a_serve_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, base = await _serve(data)
    try:
        async with aiohttp.ClientSession() as http:
            await _post_all(http, base, range(10))
            f = Follower(await http.ws_connect(base.replace("http", "ws") + "/r/*"))
            await f.step()
            await f.ws.close()
            await _post_all(http, base, range(250))
    finally:
        await _stop(proc)
    proc, base = await _serve(data)
    try:
        async with aiohttp.ClientSession() as http:
            await _post_all(http, base, range(250, 500))
            again = Follower(await http.ws_connect(base.replace("http", "ws") + f"/r/*?v={f.version}"))
            again.state = f.state
            frame = await again.step()
            assert frame["snapshot"] is False
            assert len(frame["data"]) == 10
            async with http.get(f"{base}/r/*") as resp:
                assert again.state == orjson.loads(await resp.read())
    finally:
        await _stop(proc)


async def test_a_long_history_is_read_in_steps_while_writes_go_on(
    hist: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history is read ahead in steps of resume.STEP events with the loop free in between
    (writes go on meanwhile, and the patch still leads to GET); past REPLAY_MAX: a snapshot."""
    monkeypatch.setattr(resume, "STEP", 16)
    store = hist.store
    await store.set("r/00", 0)
    f = await _follow(hist, "r/*")
    await _left(hist, f, "r/*")
    for n in range(3000):
        await store.set(f"z/{n % 50}", n)  # elsewhere: read and skipped
    await store.set("r/00", 1)
    steps = 0
    real_turn = hist.server.pools._turn
    writes = 0

    def counted() -> asyncio.Future[None]:
        nonlocal steps
        steps += 1
        return real_turn()

    async def writer() -> None:
        nonlocal writes
        while True:  # during the read-ahead: new keys, overwrites, deletes
            await store.set(f"r/w{writes % 7}", writes)
            if writes % 5 == 4:
                await store.delete(f"r/w{writes % 7}")
            writes += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(hist.server.pools, "_turn", counted)
    task = asyncio.ensure_future(writer())
    try:
        resumed, frame = await _resume(hist, "r/*", f)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert frame["snapshot"] is False
    assert steps >= 3001 // 16 and writes > 10
    await resumed.until(await hist.get("r/*"))

    monkeypatch.setattr(resume, "REPLAY_MAX", 1000)
    _, frame = await _resume(hist, "r/*", f)
    assert frame["snapshot"] is True


async def test_clients_resuming_from_one_version_share_one_reading(
    hist: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart every subscriber of a pool comes back with the same version: the history is
    read once, the others get the same frame bytes, until the pool changes."""
    for n in range(20):
        await hist.store.set(f"r/{n:02}", n)
    f = await _follow(hist, "r/*")
    await _left(hist, f, "r/*")
    for n in range(100):
        await hist.store.set(f"r/{n % 5:02}", -n)
    readings = 0
    real_ahead = resume.Replay.ahead

    async def counted(self: resume.Replay, *args: Any) -> None:
        nonlocal readings
        readings += 1
        await real_ahead(self, *args)

    monkeypatch.setattr(resume.Replay, "ahead", counted)
    together = await asyncio.gather(*[_resume(hist, "r/*", f) for _ in range(5)])  # all reading
    first, _ = await _resume(hist, "r/*", f)
    others = [*together, *[await _resume(hist, "r/*", f) for _ in range(5)]]  # kept frame
    assert readings == 1
    assert all(o.raw == first.raw for o, _ in others) and first.frames[0]["snapshot"] is False
    await hist.store.set("r/00", {"changed": True})
    for o, _ in others:
        await o.step()
    late, _ = await _resume(hist, "r/*", f)  # a new version of the pool: read again
    assert readings == 2 and late.state == await hist.get("r/*")
    # Readings under way are shared (one journal chunk in memory, however many clients).
    monkeypatch.setattr(resume, "STEP", 4)
    pools = hist.server.pools
    replays = await asyncio.gather(*[pools._read_ahead("r/*", int(f.version, 16)) for _ in range(3)])
    assert readings == 3 and replays[0] is replays[1] is replays[2] and replays[0].known


async def test_the_python_client_resumes_across_a_restart_with_one_patch(tmp_path: Path) -> None:
    """ooo_storage.Client keeps its state over a reconnect and applies the resume patch: the server
    restarts on the same port after 200 writes to 5 of 50 keys, the client reconnects with ?v=,
    gets the patch (no snapshot) and its state equals GET."""
    from ooo_storage.client import Client, ClientOptions, Connected

    live = await _live(tmp_path)
    port = live.runner.port
    for n in range(50):
        await live.store.set(f"c/{n:02}", {"n": 0})
    seen: list[Any] = []
    options = ClientOptions(reconnect_initial=0.05, reconnect_max=0.2)
    async with Client(live.base, options=options) as client:
        sub = client.subscribe("c/*", on_status=seen.append)
        states = sub.__aiter__()
        first = await states.__anext__()
        assert len(first) == 50
        version = sub.version
        await _close(live)  # the client retries meanwhile
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")),
                        history=HistoryOptions(tmp_path / "history", max_bytes=1 << 20))
        await store.start()
        for n in range(200):  # before the server listens: all of them missed
            await store.set(f"c/{(n % 5) * 10:02}", {"n": n})
        runner = ServerRunner(store, "127.0.0.1", port, server=Server(store, shutdown_timeout=1.0))
        await runner.start()
        live = Live(store, runner.server, runner, aiohttp.ClientSession())
        try:
            state = await asyncio.wait_for(states.__anext__(), 10)
            assert state == await live.get("c/*")
            assert [s.resumed for s in seen if isinstance(s, Connected)] == [False, True]
            frame = runner.server.pools.pools["c/*"].resume_frame(int(version, 16))
            assert frame and orjson.loads(frame[frame.index(b"{"):])["snapshot"] is False
        finally:
            await sub.close()
            await _close(live)


async def test_writes_without_events_are_never_patched_over(tmp_path: Path) -> None:
    """Writes that emit no event are not in the history: a path that no_broadcast_keys or a limit
    filter's silent trimming (of an overlapping glob) may reach gets a snapshot, never a patch
    that would leave the client without them."""
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")),
                    history=HistoryOptions(tmp_path / "history"))
    await store.start(Options(no_broadcast_keys=("q/hidden",)))
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    live = Live(store, runner.server, runner, aiohttp.ClientSession())
    live.server.limit_filter("l/a*", limit=2)
    try:
        await store.set("q/1", 1)
        await store.set("l/b", 1)
        quiet, trimmed = await _follow(live, "q/*"), await _follow(live, "l/*")
        await _left(live, quiet, "q/*")
        await _left(live, trimmed, "l/*")
        await store.set("q/hidden", {"no": "event"})
        for n in range(4):  # the oldest two are trimmed silently
            await live.request("POST", f"l/a{n}", {"n": n})
        for old, key in ((quiet, "q/*"), (trimmed, "l/*")):
            resumed, frame = await _resume(live, key, old)
            assert frame["snapshot"] is True and resumed.state == await live.get(key)
            status, _ = await live.request("GET", f"{key}?since={old.version}")
            assert status == 410
    finally:
        await _close(live)
