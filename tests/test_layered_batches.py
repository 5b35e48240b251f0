"""Writes of one event-loop iteration share one LevelDB WriteBatch (non-sync mode): one write of
the database for many writers, each write still with its own revision and event in arrival order,
acknowledged only once the batch is written; a failed batch fails every write in it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import plyvel
import pytest

from ooo_storage import (
    Event,
    Layered,
    LevelDBLayer,
    MemoryLayer,
    NoSpace,
    NotFound,
    Object,
    StorageUnavailable,
)


async def _store(path: Path) -> tuple[Layered, LevelDBLayer]:
    layer = LevelDBLayer(path)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    return store, layer


def _stored(path: Path) -> dict[str, Object]:
    """What the database itself holds (read with plyvel after the store closed)."""
    db = plyvel.DB(str(path))
    try:
        return {k.decode(): Object.from_json(v) for k, v in db.iterator()}
    finally:
        db.close()


async def test_writes_of_one_iteration_share_one_batch_and_survive_a_restart(tmp_path: Path) -> None:
    store, layer = await _store(tmp_path / "db")
    seen: list[Event] = []
    store.on_commit(seen.append)
    before = store.revision
    writes = [asyncio.ensure_future(store.set(f"c/{i}", {"i": i})) for i in range(64)]
    await asyncio.gather(*writes)
    # The first write of the iteration is committed inline, the 63 others as one batch.
    assert layer.batches == 1
    assert [e.key for e in seen] == [f"c/{i}" for i in range(64)]  # arrival order
    assert [e.revision for e in seen] == list(range(before + 1, before + 65))
    assert store.revision == before + 64
    assert [(await store.get(f"c/{i}")).value for i in range(64)] == [{"i": i} for i in range(64)]
    await store.close()
    stored = _stored(tmp_path / "db")
    assert sorted(stored) == sorted(f"c/{i}" for i in range(64))
    assert all(stored[f"c/{i}"].value == {"i": i} and stored[f"c/{i}"].path == f"c/{i}" for i in range(64))

    again, _ = await _store(tmp_path / "db")
    assert [o.value for o in await again.get_list("c/*")] == [{"i": i} for i in range(64)]
    await again.close()


async def test_a_batch_is_invisible_until_written_and_the_writers_wait_for_it(tmp_path: Path) -> None:
    store, layer = await _store(tmp_path / "db")
    await store.set("k", 0)
    first = asyncio.ensure_future(store.set("a", 1))
    queued = [asyncio.ensure_future(store.set("k", v)) for v in (1, 2)]
    await asyncio.sleep(0)  # the three writers ran: "a" inline, the two sets of k queued
    assert first.done() and not any(w.done() for w in queued)
    assert (await store.get("k")).value == 0  # not acknowledged, not visible
    db = layer.db
    assert Object.from_json(db.get(b"k")).value == 0
    created = (await store.get("k")).created
    await asyncio.gather(*queued)
    k = await store.get("k")
    assert k.value == 2 and k.created == created and k.updated > 0  # built over the write before
    assert Object.from_json(db.get(b"k")) == k and layer.batches == 1
    await store.close()


async def test_an_isolated_write_is_committed_without_suspending(tmp_path: Path) -> None:
    store, layer = await _store(tmp_path / "db")
    for i in range(3):
        await asyncio.sleep(0)  # a fresh iteration: this is its first write
        write = store.set(f"k/{i}", i)
        with pytest.raises(StopIteration):
            write.send(None)  # completed in one step: no future, no task switch
    assert layer.batches == 0 and [o.value for o in await store.get_list("k/*")] == [0, 1, 2]
    await store.close()


async def test_other_writes_commit_the_queued_batch_first(tmp_path: Path) -> None:
    """A delete, a lock, a glob delete arriving behind queued sets see them committed: commits
    keep the order of arrival."""
    store, layer = await _store(tmp_path / "db")
    seen: list[Event] = []
    store.on_commit(seen.append)
    await store.set("warm", 0)
    await asyncio.sleep(0)
    ops: list[Any] = [
        asyncio.ensure_future(store.set("x/0", 0)),
        asyncio.ensure_future(store.set("x/1", 1)),  # queued
        asyncio.ensure_future(store.delete("x/1")),  # sees x/1: no NotFound
        asyncio.ensure_future(store.set("x/2", 2)),  # queued
        asyncio.ensure_future(store.get_and_lock("x/2")),  # reads the queued value
        asyncio.ensure_future(store.set("x/3", 3)),  # queued
        asyncio.ensure_future(store.delete("x/*")),
    ]
    results = await asyncio.gather(*ops)
    assert results[4].value == 2
    await store.unlock("x/2")
    assert [(e.operation, e.key) for e in seen[1:]] == [
        ("set", "x/0"), ("set", "x/1"), ("del", "x/1"), ("set", "x/2"), ("set", "x/3"), ("del", "x/*"),
    ]
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))
    assert await store.keys() == ["warm"] and layer.batches == 3  # each one settled by the next op
    await store.close()
    assert sorted(_stored(tmp_path / "db")) == ["warm"]


async def test_a_cancelled_queued_write_is_not_made(tmp_path: Path) -> None:
    store, _ = await _store(tmp_path / "db")
    writes = [asyncio.ensure_future(store.set(f"c/{i}", i)) for i in range(3)]
    await asyncio.sleep(0)
    writes[1].cancel()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    with pytest.raises(NotFound):
        await store.get("c/1")
    assert await store.keys() == ["c/0", "c/2"]
    await store.close()
    assert sorted(_stored(tmp_path / "db")) == ["c/0", "c/2"]


async def _round(store: Layered, start: int, n: int) -> list[Any]:
    """``n`` concurrent writes of 20 kB values in one iteration."""
    return await asyncio.gather(
        *(store.set(f"fill/{start + i}", {"x": "x" * 20_000, "n": start + i}) for i in range(n)),
        return_exceptions=True,
    )


async def test_a_batch_that_fills_the_disk_fails_every_write_in_it(tmpfs: Any) -> None:
    """A real 2 MiB filesystem: rounds of 16 concurrent writes until one fails. The batched writes
    of that round fail together (memory untouched, no event); after freeing space every
    acknowledged write is there after a restart, and none of the failed ones."""
    root = tmpfs("2m")
    ballast = root / "ballast"
    ballast.write_bytes(b"\0" * 400_000)
    path = root / "db"
    store, layer = await _store(path)
    seen: list[Event] = []
    store.on_commit(seen.append)
    acked: list[str] = []
    failed: list[str] = []
    start = 0
    while not failed:
        results = await _round(store, start, 16)
        for i, result in enumerate(results):
            ok = not isinstance(result, BaseException)
            (acked if ok else failed).append(f"fill/{start + i}")
            assert ok or isinstance(result, NoSpace), result
        if failed:
            # The batch (every write after the inline first one) failed as one: one error for all.
            assert all(r is results[1] for r in results[1:]), results
            assert "write failed" in str(results[1]) and "No space left" in str(results[1])
        start += 16
    assert acked and layer.batches >= 1
    assert [e.key for e in seen] == acked  # no event for a failed write
    for key in failed:
        with pytest.raises(NotFound):
            await store.get(key)
    assert await store.keys() == sorted(acked)

    ballast.unlink()
    await _accepted(store.set, "after", 1)
    await store.close()
    assert sorted(_stored(path)) == sorted([*acked, "after"])
    again, _ = await _store(path)
    assert sorted(o.value["n"] for o in await again.get_list("fill/*")) == sorted(
        int(k.split("/")[1]) for k in acked
    )
    await again.close()


async def _accepted(write: Any, *args: Any) -> None:
    """Retry ``write`` while the layer refuses writes (it reopens with a short backoff)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while True:
        try:
            await write(*args)
            return
        except StorageUnavailable as exc:
            if "refused" not in str(exc) or loop.time() > end:
                raise
        await asyncio.sleep(0.02)  # the backoff has no event to wait on


class BrokenBatches(LevelDBLayer):
    """A real LevelDB layer whose next batch reports a failure after reaching the database (as a
    write error after LevelDB applied the record would): the restore of the failed keys is real."""

    fail = False

    def set_many(self, items: Any) -> None:
        super().set_many(items)
        if self.fail:
            self.fail = False
            ops = [(key.encode(), None) for key, _ in items]
            # what the keys held before this batch, as LevelDB's failure path would record it
            self._suspects.update({k: self._before.get(k) for k, _ in ops})
            raise self._failed(ops, OSError(5, "Input/output error"), "storage: write failed")

    _before: dict[bytes, bytes | None] = {}


async def test_failed_batch_restores_every_key_and_rolls_nothing_into_memory(tmp_path: Path) -> None:
    layer = BrokenBatches(tmp_path / "db")
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    await store.set("k", 0)
    await asyncio.sleep(0)
    layer._before = {b"k": layer.db.get(b"k"), b"new": None}
    layer.fail = True
    results = await asyncio.gather(store.set("warm", 1), store.set("k", 1), store.set("new", 1),
                                   return_exceptions=True)
    assert results[0] == "warm"  # the inline first write of the iteration
    assert all(isinstance(r, StorageUnavailable) and "write failed" in str(r) for r in results[1:])
    assert [e.key for e in seen] == ["k", "warm"]
    assert (await store.get("k")).value == 0
    with pytest.raises(NotFound):
        await store.get("new")
    await store.set("other", 2)  # reopens, puts k and new back as they were
    assert layer.reopens == 1
    await store.close()
    stored = _stored(tmp_path / "db")
    assert sorted(stored) == ["k", "other", "warm"] and stored["k"].value == 0


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer

    async def main(path, round_):
        layer = LevelDBLayer(path)
        store = Layered(memory=MemoryLayer(), embedded=layer)
        await store.start()
        print("ready", flush=True)

        async def writer(w):
            seq = 0
            while True:
                key = f"r{round_}/w{w}/{seq}"
                await store.set(key, {"w": w, "seq": seq})
                sys.stdout.write(f"{key} {layer.batches}\\n")
                await asyncio.sleep(0)  # one write per task per iteration, like requests
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(32)))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_acknowledged_batched_writes_survive_kill_9(tmp_path: Path) -> None:
    """32 concurrent writers (their writes batched) in a process killed with SIGKILL: every write
    it acknowledged is in the database (without --sync a batch is in the OS's hands before its
    writers resume; only a power loss could take it)."""
    path = str(tmp_path / "db")
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, str(round_)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        acked = []
        for line in child.stdout:
            acked.append(line.split())
            if len(acked) >= 500 * (round_ + 1):
                break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acked.extend(line.split() for line in rest.splitlines()[:-1])  # the last line may be torn
        assert int(acked[-1][1]) > 10, "the writes were not batched"
        stored = _stored(Path(path))
        for key, _ in acked:
            w, seq = int(key.split("/")[1][1:]), int(key.split("/")[2])
            assert stored[key].value == {"w": w, "seq": seq}, key
