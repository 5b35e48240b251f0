"""Shared directories at the library level (issue 11): several processes, each with its own
``Layered`` over one SOS root (or one set of erasure drives), see each other's writes.

Every process here is a real child interpreter (``CHILD`` below) driven over stdin/stdout in JSON
lines: it records every event its store emits (``on_commit``) and answers ``wait`` once it has
seen a given event, so the tests wait on what the children report, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ooo_storage import Layered, MemoryLayer
from ooo_storage.errors import HistoryTrimmed, StorageUnavailable
from ooo_storage.journal import SegmentLog
from ooo_storage.layers.erasure import ErasureLayer
from ooo_storage.layers.shared import Change, SharedOptions
from ooo_storage.layers.sos import SOSLayer
from ooo_storage.protocol.objects import Object

REPO = str(Path(__file__).resolve().parents[2])

CHILD = r'''
import asyncio, json, sys, time
from ooo_storage import Layered, MemoryLayer
from ooo_storage.layers.shared import SharedOptions

def layer(spec):
    options = SharedOptions(indexer_rate=spec["rate"], indexer=spec["indexer"],
                            max_bytes=spec.get("max_bytes", 16 << 20),
                            dead_after=spec.get("dead_after", 3600.0))
    if spec["kind"] == "sos":
        from ooo_storage.layers.sos import SOSLayer
        return SOSLayer(spec["root"], shared=options, durability="none")
    from ooo_storage.layers.erasure import ErasureLayer
    return ErasureLayer(spec["drives"], k=2, m=1, shared=options, durability="none", repair="off")

async def main():
    spec = json.loads(sys.argv[1])
    store = Layered(memory=MemoryLayer(), embedded=layer(spec))
    events, arrived = [], asyncio.Event()
    def seen(event):
        data = None if event.object is None else event.object.data.decode()
        events.append([event.key, event.operation, data, time.time_ns()])
        arrived.set()
    await store.start()
    store.on_commit(seen)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    def say(**reply):
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    say(ready=True, name=store.embedded.shared.name)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "set":
            for key, value in cmd["items"]:
                await store.set(key, value)
            say(ok=True)
        elif op == "del":
            await store.delete(cmd["key"])
            say(ok=True)
        elif op == "dump":
            pattern = cmd.get("pattern")
            if pattern is None:  # every key
                objs = [await store.get(key) for key in await store.keys()]
            else:
                objs = await store.get_list(pattern)
            say(state={o.path: o.data.decode() for o in objs}, keys=await store.embedded.keys(),
                reloads=store.embedded.reloads)
        elif op == "wait":  # until an event of this key with this data (None: a delete) arrived
            want = [cmd["key"], cmd["data"]]
            while not any([e[0], e[2] if e[1] == "set" else None] == want for e in events):
                arrived.clear()
                await arrived.wait()
            say(ok=True)
        elif op == "events":
            say(events=events)
        elif op == "quit":
            break
    await store.close()
    say(closed=True)

asyncio.run(main())
'''


class Child:
    """One child process running ``CHILD`` on a shared store."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.name = ""

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Child:
        env = {**os.environ, "PYTHONPATH": REPO}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        child = cls(proc)
        child.name = (await child.reply())["name"]
        return child

    async def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise AssertionError(f"child exited with {await self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    async def ask(self, timeout: float = 30, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self.reply(), timeout)

    async def set(self, *items: tuple[str, Any]) -> None:
        await self.ask(op="set", items=list(items))

    async def wait_for(self, key: str, data: str | None) -> None:
        """Until this child saw an event of ``key`` with ``data`` (None: its delete)."""
        await self.ask(op="wait", key=key, data=data)

    async def events(self) -> list[list[Any]]:
        return (await self.ask(op="events"))["events"]  # type: ignore[no-any-return]

    async def dump(self, pattern: str | None = None) -> dict[str, Any]:
        return await self.ask(op="dump", pattern=pattern)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            await self.ask(op="quit")
            await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


def sos_spec(root: Path, indexer: str = "auto", **extra: Any) -> dict[str, Any]:
    return {"kind": "sos", "root": str(root), "rate": 0.05, "indexer": indexer, **extra}


def erasure_spec(tmp: Path, indexer: str = "auto", **extra: Any) -> dict[str, Any]:
    drives = [str(tmp / f"drive{i}") for i in range(3)]
    return {"kind": "erasure", "drives": drives, "rate": 0.05, "indexer": indexer, **extra}


@pytest.fixture
async def children() -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    started: list[Child] = []

    async def start(spec: dict[str, Any]) -> Child:
        child = await Child.start(spec)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
        await child.proc.wait()


def per_key(events: list[list[Any]]) -> dict[str, list[str | None]]:
    """The data of each key's events, in arrival order (None for a delete)."""
    out: dict[str, list[str | None]] = {}
    for key, op, data, _ in events:
        out.setdefault(key, []).append(data if op == "set" else None)
    return out


async def load_fresh(spec: dict[str, Any]) -> dict[str, str]:
    """What a new store on the same files holds (the truth on disk)."""
    if spec["kind"] == "sos":
        layer: Any = SOSLayer(spec["root"])
    else:
        layer = ErasureLayer(spec["drives"], k=2, m=1, repair="off")
    async with Layered(memory=MemoryLayer(), embedded=layer) as store:
        return {key: (await store.get(key)).data.decode() for key in await store.keys()}


# -- every write delivered, in per-key order, same final state ------------------------------------
@pytest.mark.parametrize("kind", ["sos", "sos-poll", "erasure"])
async def test_every_write_of_one_process_reaches_the_other_in_key_order(
    tmp_path: Path, children: Any, kind: str
) -> None:
    if kind == "erasure":
        spec = erasure_spec(tmp_path)
    else:  # polling only, as over NFS where inotify does not see the other clients' writes
        spec = sos_spec(tmp_path / "sos", indexer="poll" if kind == "sos-poll" else "auto")
    a = await children(spec)
    b = await children(spec)
    writes = [(f"k/{i % 10}", {"n": i}) for i in range(200)]
    for start in range(0, len(writes), 20):  # batches of 20 sequential writes
        await b.set(*writes[start : start + 20])
    await a.wait_for("k/9", '{"n":199}')
    received = per_key(await a.events())
    for key in {k for k, _ in writes}:
        assert received[key] == [json.dumps(v, separators=(",", ":")) for k, v in writes if k == key]
    state_a, state_b = (await a.dump())["state"], (await b.dump())["state"]
    assert state_a == state_b == await load_fresh(spec)
    assert len(state_a) == 10


async def test_writes_both_ways_and_the_key_index_of_each_process(tmp_path: Path, children: Any) -> None:
    spec = sos_spec(tmp_path / "sos")
    a = await children(spec)
    b = await children(spec)
    await a.set(("from/a", 1))
    await b.set(("from/b", 2))
    await a.wait_for("from/b", "2")
    await b.wait_for("from/a", "1")
    for child in (a, b):  # glob reads use the key index, which now knows the other's key
        dumped = await child.dump("from/*")
        assert dumped["state"] == {"from/a": "1", "from/b": "2"}
        assert {"from/a", "from/b"} <= set(dumped["keys"])


# -- deletes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sos", "erasure"])
async def test_deletes_and_glob_deletes_propagate(tmp_path: Path, children: Any, kind: str) -> None:
    spec = sos_spec(tmp_path / "sos") if kind == "sos" else erasure_spec(tmp_path)
    a = await children(spec)
    b = await children(spec)
    await b.set(*[(f"g/{i}", i) for i in range(5)], ("one", 1), ("keep/1", 1))
    await a.wait_for("keep/1", "1")
    await b.ask(op="del", key="one")
    await b.ask(op="del", key="g/*")
    await b.set(("barrier", 0))
    await a.wait_for("barrier", "0")
    events = await a.events()
    assert events[-3][:2] == ["one", "del"]
    assert events[-2][:3] == ["g/*", "del", None]  # one event for the glob, as locally
    state = (await a.dump())["state"]
    assert state == {"keep/1": "1", "barrier": "0"} == (await b.dump())["state"]
    assert await load_fresh(spec) == state
    assert not [k for k in (await a.dump())["keys"] if k.startswith("g/")]


# -- restarts -------------------------------------------------------------------------------------
async def test_a_restarted_process_does_not_resurrect_old_values(tmp_path: Path, children: Any) -> None:
    spec = sos_spec(tmp_path / "sos")
    a = await children(spec)
    b = await children(spec)
    await a.set(("k", {"v": "old-a"}), ("gone", 1))
    await b.wait_for("gone", "1")
    await b.set(("k", {"v": "new-b"}))
    await b.ask(op="del", key="gone")
    await a.wait_for("gone", None)
    await a.stop()
    a2 = await children(spec)  # a's journal still holds k=old-a and gone=1
    c = await children(spec)  # a fresh process, after all of it
    await b.set(("barrier", 1))
    for child in (a2, c):
        await child.wait_for("barrier", "1")  # b's journal is read in order: nothing old came before
        assert [e[0] for e in await child.events()] == ["barrier"]
        assert (await child.dump())["state"] == {"k": '{"v":"new-b"}', "barrier": "1"}
    assert (await b.dump())["state"] == {"k": '{"v":"new-b"}', "barrier": "1"}


async def test_concurrent_writers_of_one_key_end_with_what_the_store_holds(
    tmp_path: Path, children: Any
) -> None:
    spec = sos_spec(tmp_path / "sos")
    a = await children(spec)
    b = await children(spec)
    rounds = 30
    await asyncio.gather(
        a.set(*[("hot", {"a": i}) for i in range(rounds)]),
        b.set(*[("hot", {"b": i}) for i in range(rounds)]),
    )
    await a.set(("barrier/a", 1))
    await b.set(("barrier/b", 1))
    await a.wait_for("barrier/b", "1")
    await b.wait_for("barrier/a", "1")
    truth = await load_fresh(spec)
    # reads back after a race settle within a few indexer periods; wait on the state itself
    for child in (a, b):
        for _ in range(200):
            if (await child.dump())["state"] == truth:
                break
            await asyncio.sleep(0.05)
        assert (await child.dump())["state"] == truth


# -- bounds ---------------------------------------------------------------------------------------
async def test_a_dead_process_journal_is_removed(tmp_path: Path, children: Any) -> None:
    spec = sos_spec(tmp_path / "sos", dead_after=0.3)
    a = await children(spec)
    b = await children(spec)
    await b.set(("x", 1))
    await a.wait_for("x", "1")
    journals = tmp_path / "sos" / ".shared"
    assert (journals / b.name).is_dir()
    b.kill()
    await b.proc.wait()
    for _ in range(400):  # a sweeps every dead_after / 4 seconds
        if not (journals / b.name).exists():
            break
        await asyncio.sleep(0.025)
    assert not (journals / b.name).exists()
    assert (journals / a.name).is_dir()  # a live process's journal stays


async def test_journal_is_bounded_and_a_reader_left_behind_reloads(tmp_path: Path, children: Any) -> None:
    root = tmp_path / "sos"
    reader = await children(sos_spec(root))
    options = SharedOptions(indexer_rate=0.05, max_bytes=64 * 1024)
    writer = SOSLayer(root, shared=options, durability="none")
    async with Layered(memory=MemoryLayer(), embedded=writer) as w:
        assert writer.shared is not None
        await w.set("big/0", {"i": -1})
        await reader.wait_for("big/0", '{"i":-1}')
        reader.proc.send_signal(signal.SIGSTOP)  # a reader that falls behind
        try:
            payload = "x" * 2000
            for i in range(100):  # ~200 KB of journal: three times its bound
                await w.set(f"big/{i % 7}", {"i": i, "p": payload})
            await w.delete("big/6")
            await w.set("barrier", 1)
            own = root / ".shared" / writer.shared.name
            assert sum(f.stat().st_size for f in own.iterdir()) <= 64 * 1024
        finally:
            reader.proc.send_signal(signal.SIGCONT)
        await reader.wait_for("barrier", "1")
        dumped = await reader.dump()
        assert dumped["reloads"] >= 1  # its place in the journal was evicted: it reloaded
        assert dumped["state"] == {o.path: o.data.decode() for o in [*await w.get_list("big/*"),
                                                                     await w.get("barrier")]}
        assert "big/6" not in dumped["keys"]


def test_change_encoding_round_trips() -> None:
    for change in (
        Change("set", "a/b", 12, b'{"created":1}'),
        Change("ref", "a/b", 3),
        Change("del", "a/*", 5),
        Change("clear", "", 7),
    ):
        assert Change.decode(change.encode()) == change


# -- in one process: two stores on one root, orderings set up exactly ------------------------------
async def settled(store: Layered, done: Callable[[], bool], timeout: float = 10) -> None:
    """Wait until ``done()``, re-checking after each event of ``store`` (remote writes are events)."""
    changed = asyncio.Event()
    store.on_commit(lambda event: changed.set())
    async with asyncio.timeout(timeout):
        while not done():
            changed.clear()
            await changed.wait()


async def test_an_older_stamped_write_stored_last_wins_everywhere(tmp_path: Path) -> None:
    """Stamps and the order of the store disagree: b's write is newer by its stamp, a's reached the
    store last (a clock behind, or a slow fsync). Both processes end with what the store holds."""
    options = SharedOptions(indexer_rate=0.05)
    a = Layered(memory=MemoryLayer(), embedded=SOSLayer(tmp_path, shared=options))
    b = Layered(memory=MemoryLayer(), embedded=SOSLayer(tmp_path, shared=options))
    async with a, b:
        await b.set("hot", {"b": 1})
        await settled(a, lambda: a.peek("hot") is not None)
        await a.set_with_meta("hot", {"a": 1}, 1, 2)  # stamped long ago, stored last
        await a.set("barrier", 1)
        await settled(b, lambda: b.peek("barrier") is not None)
        await settled(b, lambda: (b.peek("hot") or Object.empty()).value == {"a": 1})
        assert (await a.get("hot")).value == {"a": 1}



def test_a_journal_reader_left_behind_by_eviction_follows_again(tmp_path: Path) -> None:
    """The journal fix this needs: a reader whose segments were all evicted by the writer used to
    stay stuck on them forever (it looked for the segment right after its own only)."""
    options = SharedOptions(max_bytes=64 * 1024).journal()
    writer = SegmentLog(tmp_path, options)
    reader = SegmentLog(tmp_path, options)
    try:
        writer.append(b"first")
        reader.refresh()
        assert reader.next_index == 1
        for i in range(200):  # 200 KB through a 64 KB journal: the reader's segment is long gone
            writer.append(b"%d:" % i + b"x" * 1000)
        reader.refresh()
        assert reader.next_index == writer.next_index
        with pytest.raises(HistoryTrimmed):
            reader.chunk(1)
        items = [item for _, item in reader.scan(writer.first_index)]
        assert items[-1].startswith(b"199:")
        writer.append(b"later")
        reader.refresh()
        assert [item for _, item in reader.chunk(writer.next_index - 1)] == [b"later"]
    finally:
        writer.close()
        reader.close()


async def test_journals_that_cannot_be_made_fail_the_start_with_the_reason(tmp_path: Path) -> None:
    plain = SOSLayer(tmp_path)
    await plain.start()  # a valid store...
    await plain.close()
    (tmp_path / ".shared").write_text("not a directory")  # ...whose journal directory is taken
    store = Layered(memory=MemoryLayer(), embedded=SOSLayer(tmp_path, shared=True))
    with pytest.raises(StorageUnavailable, match="can't open the shared journals in .*/.shared"):
        await store.start()


async def test_a_store_without_mirror_gets_the_events_and_the_keys(tmp_path: Path) -> None:
    options = SharedOptions(indexer_rate=0.05)
    bare = Layered(embedded=SOSLayer(tmp_path, shared=options))  # reads go to the store
    other = Layered(memory=MemoryLayer(), embedded=SOSLayer(tmp_path, shared=options))
    async with bare, other:
        seen: list[tuple[str, str]] = []
        bare.on_commit(lambda e: seen.append((e.key, e.operation)))
        await other.set("m/1", 1)
        await other.set("m/2", 2)
        await other.delete("m/1")
        await settled(bare, lambda: ("m/1", "del") in seen)
        assert seen == [("m/1", "set"), ("m/2", "set"), ("m/1", "del")]
        assert [o.path for o in await bare.get_list("m/*")] == ["m/2"]  # the key index knows m/2


async def test_erasure_journals_are_never_made_where_a_missing_drive_should_be(tmp_path: Path) -> None:
    drives = [str(tmp_path / f"drive{i}") for i in range(3)]
    async with Layered(memory=MemoryLayer(), embedded=ErasureLayer(drives, k=2, m=1, repair="off")) as s:
        await s.set("x", 1)
    shutil.rmtree(drives[0])  # the drive that holds the journals is gone
    store = Layered(memory=MemoryLayer(), embedded=ErasureLayer(drives, k=2, m=1, repair="off", shared=True))
    with pytest.raises(StorageUnavailable, match="shared journals"):
        await store.start()
    assert not os.path.exists(drives[0])  # not silently replaced by an empty folder
