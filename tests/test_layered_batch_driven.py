"""Writers without a task and the iteration's batch (issue 10): a coroutine run by hand whose
driver resumes it (``Layered.driven``: the lean front's requests) joins the batch like a task,
only the iteration's first write committed alone; one that nobody resumes (no task, not driven)
is never handed a future: the queued batch is committed first, then its write, in arrival order.
Real LevelDB stores; the coroutines are stepped by hand outside any task, as the front does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer


async def _store(path: Path) -> tuple[Layered, LevelDBLayer, list[Event]]:
    layer = LevelDBLayer(path)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    return store, layer, seen


def _step(store: Layered, coro: Coroutine[Any, Any, str], driven: bool) -> tuple[str | None, Any]:
    """One step of ``coro`` by hand, outside any task: (its result, None) when it ended, else
    (None, what it yielded)."""
    store.driven = driven
    try:
        return None, coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    finally:
        store.driven = False


async def _outside_any_task(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a plain callback of the loop (no task is current there)."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()

    def call() -> None:
        try:
            assert asyncio.current_task() is None
            result.set_result(work())
        except Exception as exc:
            result.set_exception(exc)

    loop.call_soon(call)
    async with asyncio.timeout(10):
        return await result


async def test_writers_run_by_hand_join_the_batch_after_the_first(tmp_path: Path) -> None:
    store, layer, seen = await _store(tmp_path / "db")
    before, revision = layer.batches, store.revision
    coros = [store.set(f"d/{i}", {"i": i}) for i in range(4)]

    def burst() -> tuple[list[tuple[str | None, Any]], list[bool], list[str], Any]:
        steps = [_step(store, coro, driven=True) for coro in coros]
        pending = [waited is not None and not waited.done() for _, waited in steps]
        return steps, pending, [e.key for e in seen], store.peek("d/1")

    steps, pending, seen_then, peeked = await _outside_any_task(burst)
    assert steps[0] == ("0", None)  # the iteration's first write: committed at once
    assert pending == [False, True, True, True]  # the others wait for the batch
    assert seen_then == ["d/0"] and peeked is None  # not written yet
    waits = [waited for _, waited in steps[1:]]
    async with asyncio.timeout(10):
        await asyncio.gather(*waits)  # the batch, at the start of the next iteration
    assert layer.batches == before + 1
    assert [_step(store, coro, driven=True) for coro in coros[1:]] == [(str(i), None) for i in (1, 2, 3)]
    assert [(e.key, e.revision) for e in seen] == [(f"d/{i}", revision + 1 + i) for i in range(4)]
    assert [(await store.get(f"d/{i}")).value for i in range(4)] == [{"i": i} for i in range(4)]
    await store.close()


async def test_a_writer_nobody_resumes_commits_the_batch_first_then_its_write(tmp_path: Path) -> None:
    """Two tasks' writes (the first committed at once, the second queued), then in the same
    iteration a write run by hand outside any task and not driven: it ends in one step (no future
    it could not wait for), after the queued write, which it committed first."""
    store, layer, seen = await _store(tmp_path / "db")
    loop = asyncio.get_running_loop()
    before = layer.batches
    done: asyncio.Future[tuple[str | None, Any]] = loop.create_future()
    tasks: list[asyncio.Task[str]] = []

    def alone() -> None:
        try:
            assert asyncio.current_task() is None
            done.set_result(_step(store, store.set("alone", 3), driven=False))
        except Exception as exc:
            done.set_exception(exc)

    def start() -> None:
        tasks.append(loop.create_task(store.set("t/1", 1)))
        tasks.append(loop.create_task(store.set("t/2", 2)))
        loop.call_soon(alone)  # runs right after both tasks' first steps, in the same iteration

    loop.call_soon(start)
    async with asyncio.timeout(10):
        assert await done == ("alone", None)
        assert await asyncio.gather(*tasks) == ["1", "2"]
    assert [e.key for e in seen] == ["t/1", "t/2", "alone"]
    assert layer.batches == before + 1  # t/2's batch, written before "alone"
    assert (await store.get("alone")).value == 3
    await store.close()


async def test_a_batch_stores_what_a_write_committed_at_once_would(tmp_path: Path) -> None:
    """Writers run by hand writing one key three times in one batch after the iteration's first
    write: each object built over the one before it (created kept, updated rising), the stored
    bytes those of the last, and each writer's event carries its own object, in order."""
    store, layer, seen = await _store(tmp_path / "db")
    coros = [store.set("first", 0), *(store.set("same", {"n": n}) for n in range(3))]

    def burst() -> list[tuple[str | None, Any]]:
        return [_step(store, coro, driven=True) for coro in coros]

    steps = await _outside_any_task(burst)
    async with asyncio.timeout(10):
        await asyncio.gather(*(waited for _, waited in steps[1:]))
    assert [_step(store, coro, driven=True) for coro in coros[1:]] == [("same", None)] * 3
    assert [e.key for e in seen] == ["first", "same", "same", "same"]
    objs = [e.object for e in seen[1:] if e.object is not None]
    assert [orjson.loads(o.data) for o in objs] == [{"n": n} for n in range(3)]
    created, updated = {o.created for o in objs}, [o.updated for o in objs]
    assert len(created) == 1 and updated[0] == 0 and 0 < updated[1] < updated[2]
    last = await store.get("same")
    assert (last.created, last.updated, last.value) == (objs[0].created, updated[2], {"n": 2})
    assert layer.db.get(b"same") == last.to_json()
    await store.close()


# -- a run of writes (``Layered.set_run``: a pipelined burst of the lean front) ------------------


async def test_a_run_first_in_its_iteration_is_one_batch_at_once(tmp_path: Path) -> None:
    """Committed before ``set_run`` returns (the futures done), one batch, each write its own
    revision and event in order; a document that is not JSON and a glob key fail alone."""
    store, layer, seen = await _store(tmp_path / "db")
    before, revision = layer.batches, store.revision
    run = [("r/0", b'{"i":0}'), ("r/1", b"{nope"), ("r/*", b"{}"), ("r/0", b'{"i":2}'), ("r/3", b'[3]')]
    futs = store.set_run(run)
    assert futs is not None and all(fut.done() for fut in futs)
    assert [type(fut.exception()).__name__ for fut in futs] == ["NoneType", "InvalidData", "GlobNotAllowed",
                                                                 "NoneType", "NoneType"]
    assert layer.batches == before + 1
    assert [(e.key, e.revision) for e in seen] == [("r/0", revision + 1), ("r/0", revision + 2),
                                                   ("r/3", revision + 3)]
    assert orjson.loads(layer.get("r/0").data) == {"i": 2}  # type: ignore[union-attr]
    assert futs[0].result()[0].index == "0" and futs[4].result()[0].data == b"[3]"
    await store.close()


async def test_a_run_after_another_write_joins_the_iterations_batch(tmp_path: Path) -> None:
    """A write made earlier in the iteration: the run's futures are done with the iteration's
    batch (one batch with the other writers queued meanwhile), in arrival order."""
    store, layer, seen = await _store(tmp_path / "db")

    def work() -> Any:
        first = store.set_run([("j/a", b"1")])
        later = store.set_run([("j/b", b"2"), ("j/c", b"3")])
        assert first is not None and later is not None
        assert all(f.done() for f in first) and not any(f.done() for f in later)
        return later

    before = layer.batches
    later = await _outside_any_task(work)
    async with asyncio.timeout(10):
        await asyncio.gather(*later)
    assert layer.batches == before + 2
    assert [e.key for e in seen] == ["j/a", "j/b", "j/c"]
    await store.close()


async def test_a_run_is_refused_while_a_key_of_it_is_locked(tmp_path: Path) -> None:
    """None (the caller writes one by one, waiting for the lock) when a key of the run is held,
    and nothing of the run is written; ``held`` says so beforehand."""
    store, layer, seen = await _store(tmp_path / "db")
    await store.set("l/held", 0)
    await store.get_and_lock("l/held")
    assert store.held("l/held") and not store.held("l/free")
    assert store.set_run([("l/free", b"1"), ("l/held", b"2")]) is None
    assert store.peek("l/free") is None and [e.key for e in seen] == ["l/held"]
    await store.unlock("l/held")
    assert not store.held("l/held")
    await store.close()


async def test_a_run_on_a_closed_store_fails_every_write(tmp_path: Path) -> None:
    store, layer, seen = await _store(tmp_path / "db")
    await store.close()
    futs = store.set_run([("c/a", b"1"), ("c/b", b"2")])
    assert futs is not None and [type(f.exception()).__name__ for f in futs] == ["NotActive", "NotActive"]
    assert seen == []


async def test_a_run_on_a_memory_only_store_is_committed_at_once() -> None:
    """Nothing to batch: each write committed before ``set_run`` returns, as ``set`` commits it."""
    store = Layered(memory=MemoryLayer())
    await store.start()
    seen: list[Event] = []
    store.on_commit(seen.append)
    futs = store.set_run([("m/a", b"1"), ("m/b", b"{x"), ("m/c", b"3")])
    assert futs is not None and all(f.done() for f in futs)
    assert type(futs[1].exception()).__name__ == "InvalidData"
    assert [e.key for e in seen] == ["m/a", "m/c"] and store.peek("m/c") is not None
    await store.close()
