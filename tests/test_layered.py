"""The storage suite: every behaviour of docs/api.md and docs/protocol.md §2–3, run against every backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
import pytest

from ooo_storage import (
    CantLockGlob,
    Event,
    GlobNotAllowed,
    GlobRequired,
    InvalidData,
    InvalidLimit,
    InvalidPath,
    InvalidPattern,
    InvalidRange,
    Layered,
    LockNotFound,
    MemoryLayer,
    NotActive,
    NotFound,
    Object,
    Options,
    StorageError,
)
from ooo_storage.errors import AllLayersNil

if TYPE_CHECKING:
    from conftest import StoreFactory

from collections.abc import AsyncIterator
from pathlib import Path

from redis_server import REDIS_BACKENDS, redis_factory, redis_server, root_conftest  # noqa: F401 (a fixture)

BACKENDS, PERSISTENT, MIRRORED = (getattr(root_conftest(), n) for n in ("BACKENDS", "PERSISTENT", "MIRRORED"))


# The suite runs on every backend of conftest and on RedisLayer (with and without a mirror).
async def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    f = redis_factory(request, tmp_path)
    yield f
    await f.close_all()


@pytest.fixture(params=[*BACKENDS, *REDIS_BACKENDS])
async def factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for f in _factory(request, tmp_path):
        yield f


@pytest.fixture(params=[*PERSISTENT, *REDIS_BACKENDS])
async def persistent_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for f in _factory(request, tmp_path):
        yield f


@pytest.fixture(params=[*MIRRORED, "memory+redis"])
async def mirrored_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for f in _factory(request, tmp_path):
        yield f


async def settle(store: Layered) -> None:
    """Wait until every event queued so far has been delivered to the watchers."""
    assert store._chan is not None
    await store._chan.drain()


# -- lifecycle --------------------------------------------------------------------------------------
async def test_object_lifecycle(store: Layered) -> None:
    index = await store.set("users/1", {"name": "ana"})
    assert index == "1"
    obj = await store.get("users/1")
    assert obj.value == {"name": "ana"} and obj.path == "users/1" and obj.index == "1"
    assert obj.created > 0 and obj.updated == 0
    await store.set("users/1", b'{"name": "bob"}')
    again = await store.get("users/1")
    assert again.created == obj.created and again.updated > obj.created
    assert again.data == b'{"name":"bob"}'
    await store.delete("users/1")
    with pytest.raises(NotFound, match="^storage: not found$"):
        await store.get("users/1")
    with pytest.raises(NotFound):
        await store.delete("users/1")


async def test_data_forms(store: Layered) -> None:
    await store.set("s", '"hello"')
    assert (await store.get("s")).value == "hello"
    for value in (None, 0, 42, [], {}, ["text"], [1, {"a": None}]):
        await store.set("v", value)
        assert (await store.get("v")).value == value
    await store.set("compact", b' { "a" : [ 1 , 2 ] } ')
    assert (await store.get("compact")).data == b'{"a":[1,2]}'


@pytest.mark.parametrize("bad", [b"", "", b"{", "nope", b"1 2", b'{"a":1}x'])
async def test_invalid_data(store: Layered, bad: bytes | str) -> None:
    with pytest.raises(InvalidData):
        await store.set("k", bad)
    with pytest.raises(InvalidData):
        await store.push("k/*", bad)
    with pytest.raises(NotFound):
        await store.get("k")


async def test_empty_data_message(store: Layered) -> None:
    with pytest.raises(InvalidData) as info:
        await store.set("k", b"")
    assert str(info.value) == "storage: invalid data (empty)"


async def test_error_messages_and_order(store: Layered) -> None:
    cases = [
        (store.set("bad key", b"1"), InvalidPath, "storage: invalid path"),
        (store.set("bad key/*", b""), InvalidPath, "storage: invalid path"),
        (store.set("a/*", b""), GlobNotAllowed, "storage: glob pattern not allowed for this operation"),
        (store.get("a/*"), GlobNotAllowed, "storage: glob pattern not allowed for this operation"),
        (store.push("a/b", b""), GlobRequired, "storage: glob pattern required for this operation"),
        (store.get_list("a/b"), InvalidPattern, "storage: invalid pattern, glob required"),
        (store.get_n("a", 1), InvalidPattern, "storage: invalid pattern, glob required"),
        (store.keys_range("a", 0, 1), InvalidPattern, "storage: invalid pattern, glob required"),
        (store.get_n_range("a/*", 0, 0, 1), InvalidLimit, "storage: invalid limit"),
        (store.keys_range("a/*", 5, 1), InvalidRange, "storage: invalid range"),
        (store.get_and_lock("a/*"), CantLockGlob, "storage: can't lock a glob pattern path"),
        (store.set_and_unlock("a/*", b"1"), CantLockGlob, "storage: can't lock a glob pattern path"),
        (store.set_and_unlock("a/b", b"1"), LockNotFound, "storage: lock not found, can't unlock"),
        (store.unlock("a/b"), LockNotFound, "storage: lock not found, can't unlock"),
        (store.get_and_lock("missing"), NotFound, "storage: not found"),
    ]
    for coro, exc, message in cases:
        with pytest.raises(exc) as info:
            await coro
        assert str(info.value) == message
        assert isinstance(info.value, StorageError)


async def test_not_active(factory: StoreFactory) -> None:
    store = await factory.open()
    await store.close()
    assert not store.active
    for coro in (store.get("a"), store.set("a", 1), store.keys(), store.get_list("*"), store.delete("a")):
        with pytest.raises(NotActive, match="^storage: storage is not active$"):
            await coro


async def test_no_layers() -> None:
    with pytest.raises(AllLayersNil, match="^storage: all storage layers are nil$"):
        await Layered().start()


# -- lists ------------------------------------------------------------------------------------------
async def test_lists_ascending_descending(store: Layered) -> None:
    for i in range(5):
        await store.set(f"items/{i}", {"i": i})
    await store.set("items/2", {"i": 22})  # an update keeps its created time and place
    asc = await store.get_list("items/*")
    assert [o.index for o in asc] == ["0", "1", "2", "3", "4"]
    desc = await store.get_list_descending("items/*")
    assert [o.index for o in desc] == ["4", "3", "2", "1", "0"]
    assert [o.index for o in await store.get_n("items/*", 2)] == ["4", "3"]
    assert [o.index for o in await store.get_n("items/*", 0)] == ["4", "3", "2", "1", "0"]
    assert [o.index for o in await store.get_n_ascending("items/*", 2)] == ["0", "1"]
    assert await store.get_list("none/*") == []


async def test_created_ties_break_by_path(store: Layered) -> None:
    for name in ("b", "c", "a"):
        await store.set_with_meta(f"t/{name}", {"n": name}, 100, 0)
    assert [o.index for o in await store.get_list("t/*")] == ["a", "b", "c"]
    assert [o.index for o in await store.get_list_descending("t/*")] == ["c", "b", "a"]


async def test_ranges_with_meta(store: Layered) -> None:
    for i in range(1, 6):
        idx = await store.set_with_meta(f"r/{i}", {"i": i}, i * 10, i * 10 + 1)
        assert idx == str(i)
    obj = await store.get("r/3")
    assert (obj.created, obj.updated) == (30, 31)
    got = await store.get_n_range("r/*", 10, 20, 40)
    assert [o.index for o in got] == ["4", "3", "2"]
    assert [o.index for o in await store.get_n_range("r/*", 2, 0, 100)] == ["5", "4"]
    assert await store.get_n_range("r/*", 5, 40, 20) == []
    assert await store.keys_range("r/*", 20, 40) == ["r/2", "r/3", "r/4"]


async def test_multi_level_globs(store: Layered) -> None:
    for box in ("b1", "b2"):
        for thing in ("t1", "t2"):
            await store.set(f"box/{box}/things/{thing}", {"box": box})
    await store.set("box/b1/other/x", 1)
    await store.set("box/b1", 1)
    got = await store.get_list("box/*/things/*")
    assert sorted(o.path for o in got) == [
        "box/b1/things/t1", "box/b1/things/t2", "box/b2/things/t1", "box/b2/things/t2",
    ]
    assert [o.path for o in await store.get_list("box/*")] == ["box/b1"]
    assert sorted(o.path for o in await store.get_list("box/b*/things/t1")) == [
        "box/b1/things/t1", "box/b2/things/t1",
    ]


async def test_star_matches_only_top_level(store: Layered) -> None:
    await store.set("top", 1)
    await store.set("top/child", 2)
    await store.set("other", 3)
    assert sorted(o.path for o in await store.get_list("*")) == ["other", "top"]


async def test_keys_bytewise(store: Layered) -> None:
    for key in ("b", "a/2", "A", "a/10", "a"):
        await store.set(key, 1)
    assert await store.keys() == ["A", "a", "a/10", "a/2", "b"]


# -- writes -----------------------------------------------------------------------------------------
async def test_push_index_is_stored_index(store: Layered) -> None:
    indexes = [await store.push("logs/*", {"n": n}) for n in range(3)]
    assert indexes == sorted(indexes) and len(set(indexes)) == 3
    for n, index in enumerate(indexes):
        obj = await store.get(f"logs/{index}")
        assert obj.index == index and obj.value == {"n": n} and obj.updated == 0
        assert obj.created > int(index, 16)
    assert [o.index for o in await store.get_list("logs/*")] == indexes


async def test_glob_delete(store: Layered) -> None:
    for i in range(4):
        await store.set(f"g/{i}", i)
    await store.set("g/0/deeper", 1)
    await store.set("keep", 1)
    await store.delete("g/*")
    assert await store.get_list("g/*") == []
    assert await store.keys() == ["g/0/deeper", "keep"]
    await store.delete("nothing/*")  # a glob delete never errors


async def test_delete_silent_and_clear(store: Layered) -> None:
    events: list[Event] = []
    store.watch(events.append)
    await store.set("a", 1)
    await store.delete_silent("a")
    with pytest.raises(NotFound):
        await store.delete_silent("a")
    await store.set("b", 1)
    await store.clear()
    assert await store.keys() == []
    await settle(store)
    assert [(e.key, e.operation) for e in events] == [("a", "set"), ("b", "set")]


async def test_set_with_meta_skips_glob_and_empty_checks(store: Layered) -> None:
    await store.set_with_meta("lit/*", "", 5, 6)
    obj = await store.get_list("lit/*")
    assert [(o.path, o.data, o.created) for o in obj] == [("lit/*", b"{}", 5)]
    with pytest.raises(InvalidPath):
        await store.set_with_meta("bad path", 1, 1, 1)


# -- locks ------------------------------------------------------------------------------------------
async def test_lock_counter_no_lost_increment(store: Layered) -> None:
    await store.set("counter", 0)

    async def bump() -> None:
        obj = await store.get_and_lock("counter")
        await asyncio.sleep(0)  # let every other task pile up on the lock
        await store.set_and_unlock("counter", obj.value + 1)

    await asyncio.gather(*(bump() for _ in range(50)))
    assert (await store.get("counter")).value == 50
    assert len(store._locks) == 0


async def test_lock_blocks_plain_set_until_unlock(store: Layered) -> None:
    await store.set("k", 1)
    await store.get_and_lock("k")
    writer = asyncio.create_task(store.set("k", 2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not writer.done() and (await store.get("k")).value == 1
    await store.unlock("k")
    await writer
    assert (await store.get("k")).value == 2


async def test_lock_released_from_other_task_and_on_failure(store: Layered) -> None:
    await store.set("k", 1)
    await store.get_and_lock("k")
    await asyncio.create_task(store.unlock("k"))
    await store.get_and_lock("k")
    with pytest.raises(InvalidData):
        await store.set_and_unlock("k", b"")
    await store.get_and_lock("k")  # would hang if the failed set_and_unlock kept the lock
    await store.set_and_unlock("k", 3)
    assert (await store.get("k")).value == 3


async def test_get_and_lock_missing_keeps_no_lock(store: Layered) -> None:
    with pytest.raises(NotFound):
        await store.get_and_lock("ghost")
    assert len(store._locks) == 0
    with pytest.raises(LockNotFound):
        await store.unlock("ghost")


async def test_locks_reclaimed(factory: StoreFactory) -> None:
    store = await factory.open()
    # File-backed layers fsync every write, Redis takes round trips; a few hundred writes show
    # reclamation just as well.
    rounds = 200 if any(name in factory.backend for name in ("sos", "erasure", "redis")) else 2000
    for i in range(rounds):
        await store.push("many/*", i)
        await store.set(f"m/{i % 7}", i)
        if i % 3 == 0:
            await store.get_and_lock(f"m/{i % 7}")
            await store.set_and_unlock(f"m/{i % 7}", -i)
    assert len(store._locks) == 0
    assert len(await store.get_list("many/*")) == rounds


async def test_glob_delete_excludes_concurrent_sets(store: Layered) -> None:
    for i in range(20):
        await store.set(f"x/{i}", i)
    writers = [asyncio.create_task(store.set(f"x/{i}", -i)) for i in range(20)]
    deleter = asyncio.create_task(store.delete("x/*"))
    await asyncio.gather(*writers, deleter)
    remaining = await store.get_list("x/*")
    # Either a set landed before the delete (gone) or after it (present with its new value).
    assert all(o.value == -int(o.index) for o in remaining)


# -- events -----------------------------------------------------------------------------------------
async def test_events_carry_revision_and_objects(store: Layered) -> None:
    events: list[Event] = []
    handle = store.watch(events.append)
    start = store.revision
    await store.set("e/1", 1)
    await store.set("e/1", 2)
    await store.delete("e/1")
    await store.set("e/2", 1)
    await store.delete("e/*")
    await settle(store)
    by_key = {(e.key, e.operation, e.revision) for e in events}
    assert by_key == {
        ("e/1", "set", start + 1), ("e/1", "set", start + 2), ("e/1", "del", start + 3),
        ("e/2", "set", start + 4), ("e/*", "del", start + 5),
    }
    dele = next(e for e in events if e.key == "e/1" and e.operation == "del")
    assert dele.object is not None and dele.object.value == 2
    assert next(e for e in events if e.key == "e/*").object is None
    assert events[-1].key == "e/*"  # the glob delete comes after every earlier event
    handle.cancel()
    await store.set("e/3", 1)
    await settle(store)
    assert len(events) == 5


async def test_event_order_per_key_under_concurrent_writers(store: Layered) -> None:
    seen: dict[str, list[int]] = {}

    async def slow_watcher(event: Event) -> None:
        if event.operation == "set":
            seen.setdefault(event.key, []).append(orjson.loads(event.object.data))  # type: ignore[union-attr]
        await asyncio.sleep(0)

    store.watch(slow_watcher)

    async def writer(key: str) -> None:
        for n in range(40):
            await store.set(key, n)

    await asyncio.gather(*(writer(f"k/{w}") for w in range(8)))
    await settle(store)
    assert seen == {f"k/{w}": list(range(40)) for w in range(8)}


async def test_events_iterator_with_pattern(store: Layered) -> None:
    got: list[Event] = []

    async def consume() -> None:
        async for event in store.events("watched/*"):
            got.append(event)
            if len(got) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await store.set("other/1", 1)
    await store.set("watched/1", 1)
    await store.set("watched/2", 2)
    await asyncio.wait_for(task, 5)
    assert [e.key for e in got] == ["watched/1", "watched/2"]


async def test_hooks(factory: StoreFactory) -> None:
    calls: list[tuple[str, ...]] = []
    store = await factory.open(
        Options(
            before_read=lambda k: calls.append(("read", k)),
            after_write=lambda k: calls.append(("after", k)),
            after_write_op=lambda k, op: calls.append(("op", k, op)),
            no_broadcast_keys=("quiet/*",),
        )
    )
    events: list[Event] = []
    store.watch(events.append)
    await store.set("loud/1", 1)
    await store.set("quiet/1", 1)
    await store.get("loud/1")
    await store.get_list("loud/*")
    await store.delete("loud/1")
    with pytest.raises(InvalidPath):
        await store.set("no good", 1)
    await settle(store)
    assert calls == [
        ("op", "loud/1", "set"), ("after", "loud/1"),
        ("op", "quiet/1", "set"), ("after", "quiet/1"),
        ("read", "loud/1"), ("read", "loud/*"),
        ("op", "loud/1", "del"), ("after", "loud/1"),
    ]
    assert [(e.key, e.operation) for e in events] == [("loud/1", "set"), ("loud/1", "del")]


async def test_drop_counter(factory: StoreFactory) -> None:
    dropped: list[Event] = []
    store = await factory.open(Options(workers=1, queue_size=2, drop_timeout=0.05, on_drop=dropped.append))
    gate = asyncio.Event()

    async def stalled(event: Event) -> None:
        await gate.wait()

    store.watch(stalled)
    for i in range(6):
        await store.set(f"d/{i}", i)
    # one event is with the watcher, two are queued, the rest waited 50 ms and were dropped
    assert store.dropped == 3 and [e.key for e in dropped] == ["d/3", "d/4", "d/5"]
    gate.set()
    await settle(store)
    assert len(await store.keys()) == 6  # writes are never lost, only their events


async def test_lossless_watch_waits(factory: StoreFactory) -> None:
    store = await factory.open(Options(workers=1, queue_size=1, drop_timeout=0.01, lossless_watch=True))
    release = asyncio.Event()
    seen: list[str] = []

    async def slow(event: Event) -> None:
        await release.wait()
        seen.append(event.key)

    store.watch(slow)
    writers = asyncio.gather(*(store.set(f"l/{i}", i) for i in range(5)))
    await asyncio.sleep(0.05)
    assert store.dropped == 0 and not writers.done()
    release.set()
    await writers
    await settle(store)
    assert sorted(seen) == [f"l/{i}" for i in range(5)] and store.dropped == 0


# -- persistence ------------------------------------------------------------------------------------
async def test_restart_identical(persistent_factory: StoreFactory) -> None:
    factory = persistent_factory
    store = await factory.open()
    for i in range(50):
        await store.set(f"p/{i}", {"i": i, "s": "x" * i})
    await store.set("p/3", {"changed": True})
    await store.push("p/*", [1, 2])
    await store.delete("p/7")
    await store.set_with_meta("meta/1", "1", 11, 12)
    before = {k: (await store.get(k)).to_json() for k in await store.keys()}
    await store.close()
    again = await factory.open()
    after = {k: (await again.get(k)).to_json() for k in await again.keys()}
    assert after == before
    assert [o.path for o in await again.get_list("p/*")] == [o for o in sorted(before, key=lambda k: (orjson.loads(before[k])["created"], k)) if o.startswith("p/")]


async def test_memory_mirror_loaded_from_embedded(mirrored_factory: StoreFactory) -> None:
    factory = mirrored_factory
    store = await factory.open()
    await store.set("m/1", 1)
    await store.close()
    again = await factory.open()
    assert isinstance(again.memory, MemoryLayer) and len(again.memory) == 1
    assert (await again.get("m/1")).value == 1


async def test_object_json_exact(store: Layered) -> None:
    await store.set_with_meta("j/k", {"b": 1, "a": 2}, 7, 8)
    assert (await store.get_json("j/k")) == b'{"created":7,"updated":8,"index":"k","path":"j/k","data":{"b":1,"a":2}}'
    assert (await store.get("j/k")).to_json() == await store.get_json("j/k")
    with pytest.raises(NotFound):
        await store.get_json("j/none")
    assert Object.from_json(await store.get_json("j/k")) == await store.get("j/k")


async def test_big_integers_stored_exactly(store: Layered) -> None:
    text = b'{"n":123456789012345678901234567890,"m":[-99999999999999999999,1.5]}'
    await store.set("big/text", b" " + text + b"\n")
    assert (await store.get("big/text")).data == text
    assert (await store.get("big/text")).value == {"n": 123456789012345678901234567890, "m": [-99999999999999999999, 1.5]}
    await store.set("big/value", {"n": 10**30})
    assert (await store.get("big/value")).data == b'{"n":1000000000000000000000000000000}'


async def test_events_iterator_ends_when_store_closes(factory: StoreFactory) -> None:
    store = await factory.open()
    got: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        started.set()
        async for event in store.events():
            got.append(event.key)

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0)  # the iterator is now waiting for its first event
    await store.set("before/close", 1)
    await store.close()
    await asyncio.wait_for(task, 5)  # would hang forever if close did not end the iteration
    assert got == ["before/close"]


async def test_events_iterator_buffer_drops_when_full(factory: StoreFactory) -> None:
    store = await factory.open(Options(queue_size=2, drop_timeout=0.05))
    stream = store.events("b/*")
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    for i in range(5):
        await store.set(f"b/{i}", i)
    assert (await first).key == "b/0"
    await settle(store)
    # b/0 went to the waiting reader, b/1 and b/2 filled the buffer, b/3 and b/4 waited 50 ms and dropped
    assert store.dropped == 2
    assert [(await anext(stream)).key for _ in range(2)] == ["b/1", "b/2"]
    await stream.aclose()


async def test_silent_commit_observers_see_writes_that_emit_no_event(factory: StoreFactory) -> None:
    """Bookkeeping observers (usage per namespace) must see delete_silent and no_broadcast writes;
    the stream pools (plain observers) must not."""
    store = await factory.open(Options(no_broadcast_keys=("quiet/*",)))
    loud: list[tuple[str, str]] = []
    every: list[tuple[str, str]] = []
    store.on_commit(lambda e: loud.append((e.operation, e.key)))
    store.on_commit(lambda e: every.append((e.operation, e.key)), silent=True)
    await store.set("k", 1)
    await store.set("quiet/1", 1)
    await store.delete_silent("k")
    await store.delete("quiet/1")
    assert loud == [("set", "k")]
    assert every == [("set", "k"), ("set", "quiet/1"), ("del", "k"), ("del", "quiet/1")]


_TEXTS = [
    b'{"a":1}', b'{"a": 1}', b"123456789012345678901234567890", b"-9223372036854775809", b"18446744073709551616",
    b"[1e-400]", b"1e999", b'{"a":"\\u00e9"}', b"1.0", b"1e5", b"0.1", b"-0", b"5e-324", b"1.7976931348623157e308",
    b'"\\ud800"', b"NaN", b"[1] x", b"\xef\xbb\xbf{}", b'"\xff"', b'{"a":1,"a":2}', b'{"k":"\\/"}',
    b"[" * 300 + b"]" * 300, b"[" * 1100 + b"]" * 1100, b" 1", b"1 ",
]


@pytest.mark.parametrize("text", _TEXTS, ids=range(len(_TEXTS)))
def test_json_bytes_are_stored_exactly_as_the_exact_path_stores_them(text: bytes) -> None:
    """encode_data's fast path (bytes orjson writes back unchanged) gives the exact path's result:
    the same bytes, or the same refusal."""
    from ooo_storage.layered import encode_data
    from ooo_storage.protocol import jsontext

    try:
        expected: object = jsontext.dumps(jsontext.loads(text))
    except (ValueError, TypeError):
        expected = InvalidData
    try:
        got: object = encode_data(text)
    except InvalidData:
        got = InvalidData
    assert got == expected
