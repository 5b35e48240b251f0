"""A transaction reaches each pool it touches as ONE frame (issue 12): all its patches, at the
transaction's revision, so no subscriber ever holds a state between two of its ops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from server_live import Follower, Live, no_frame

from ooo_storage import HistoryOptions, Layered, LevelDBLayer, MemoryLayer
from ooo_storage.protocol.objects import make_event
from ooo_storage.protocol.txn import TxnOp
from ooo_storage.server import Server, ServerRunner


async def _follow(live: Live, key: str) -> Follower:
    f = Follower(await live.ws(key))
    await f.step()
    return f


def _total(state: list[dict[str, Any]]) -> int:
    return sum(o["data"]["balance"] for o in state)


async def test_a_transaction_is_one_frame_per_pool(live: Live) -> None:
    store = live.store
    for name in "abc":
        await store.set(f"acc/{name}", {"balance": 100})
    glob = await _follow(live, "acc/*")
    single = await _follow(live, "acc/a")
    elsewhere = await _follow(live, "other/*")
    done = await store.commit([
        TxnOp("set", "acc/a", {"balance": 90}),
        TxnOp("set", "acc/b", {"balance": 110}),
        TxnOp("del", "acc/c"),
        TxnOp("set", "acc/d", {"balance": 100}),
        TxnOp("set", "unwatched", 1),
    ])
    frame = await glob.step()
    assert frame["snapshot"] is False and int(frame["version"], 16) == done.revision
    assert sorted(op["op"] for op in frame["data"]) == ["add", "remove", "replace", "replace"]
    assert glob.state == await live.get("acc/*")
    await no_frame(glob.ws)
    frame = await single.step()
    assert int(frame["version"], 16) == done.revision and single.state["data"] == {"balance": 90}
    await no_frame(single.ws)
    await no_frame(elsewhere.ws)
    # Plain writes after it are frames of their own again.
    await store.set("acc/a", {"balance": 1})
    await store.set("acc/b", {"balance": 2})
    await glob.step()
    await glob.step()
    assert glob.state == await live.get("acc/*")


async def test_every_frame_of_transfers_keeps_the_total(live: Live) -> None:
    store = live.store
    names = [f"bank/{n}" for n in range(6)]
    for name in names:
        await store.set(name, {"balance": 100})
    f = await _follow(live, "bank/*")
    for n in range(40):
        a, b = names[n % 6], names[(n * 5 + 1) % 6]
        if a == b:
            continue
        va, vb = (await store.get(a)).value, (await store.get(b)).value
        await store.commit([
            TxnOp("set", a, {"balance": va["balance"] - n}),
            TxnOp("set", b, {"balance": vb["balance"] + n}),
        ])
        await f.step()
        assert _total(f.state) == 600, f.frames[-1]
    assert f.state == await live.get("bank/*")


async def test_a_glob_delete_in_a_transaction_is_one_snapshot(live: Live) -> None:
    store = live.store
    for n in range(3):
        await store.set(f"t/{n}", n)
    f = await _follow(live, "t/*")
    done = await store.commit([TxnOp("del", "t/*"), TxnOp("set", "u", 1)])
    frame = await f.step()
    assert frame == {"snapshot": True, "version": format(done.revision, "x"), "data": []}
    await no_frame(f.ws)


async def test_a_resume_across_a_transaction_patches_it_whole(tmp_path: Path) -> None:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")),
                    history=HistoryOptions(tmp_path / "history"))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    live = Live(store, runner.server, runner, aiohttp.ClientSession())
    try:
        for n in range(4):
            await store.set(f"acc/{n}", {"balance": 100})
        f = await _follow(live, "acc/*")
        await f.ws.close()
        await store.commit([TxnOp("set", "acc/0", {"balance": 50}), TxnOp("set", "acc/1", {"balance": 150}),
                            TxnOp("del", "acc/2"), TxnOp("set", "acc/9", {"balance": 100})])
        again = Follower(await live.ws(f"acc/*?v={f.version}"))
        again.state = f.state
        frame = await again.step()
        assert frame["snapshot"] is False and again.state == await live.get("acc/*")
        assert _total(again.state) == 400
    finally:
        await live.http.close()
        await runner.stop()
        await store.close()


async def test_held_changes_go_out_if_a_transaction_never_ends(live: Live) -> None:
    """Should the last event of a transaction never come (``more`` on every one told), what the
    pools hold goes out before the next event's frame: held, never lost."""
    store = live.store
    await store.set("h/1", 1)
    f = await _follow(live, "h/*")
    obj = (await store.get("h/1"))._replace(updated=1, data=b"2")
    live.server.pools.on_event(make_event("h/1", "set", obj, store.revision + 1, 2, True))
    await no_frame(f.ws, 0.1)
    await store.set("h/2", 3)
    held, after = await f.step(), await f.step()
    assert held["data"][0]["value"]["data"] == 2 and after["data"][0]["op"] == "add"
