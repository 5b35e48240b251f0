"""Usage per namespace (server/usage.py) without a server: request windows under a fake clock,
objects and bytes kept from events, checked against a brute-force recomputation from a model, and
through a real store (memory + LevelDB) whose commit observer it is."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ooo_storage import Layered, LevelDBLayer, MemoryLayer, NotFound, Options
from ooo_storage.protocol import jsontext, keys
from ooo_storage.protocol.access import Namespace, Policy
from ooo_storage.protocol.objects import Event, Object, load_object, make_object
from ooo_storage.server.usage import Usage, data_size

START = 1_700_000_000.0  # 22:13:20 UTC: not on an hour
HOUR = 3600.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def obj(key: str, data: bytes) -> Object:
    return make_object(1, 0, keys.last_index(key), key, data)


def setting(key: str, data: bytes, revision: int = 1) -> Event:
    return Event(key, "set", obj(key, data), revision)


def figures(usage: Usage, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [ns for ns in usage.snapshot()["namespaces"] if ns["name"] == name]
    assert len(found) == 1
    return found[0]


ACME = [Namespace("acme", "acme/"), Namespace("acme-logs", "acme/logs/"), Namespace("beta", "beta/")]


# -- the brute-force reference ------------------------------------------------------------------


def expected(
    namespaces: list[Namespace], stored: dict[str, bytes], requests: list[tuple[float, str]], now: float
) -> list[dict[str, Any]]:
    """Each namespace's figures recomputed from scratch: the longest-prefix rule of
    ``Policy.namespace_of`` over every stored key, and every request timestamp ever counted."""
    policy = Policy(namespaces=tuple(namespaces))
    hour, minute = int(now // HOUR), int(now // 60)
    found = []
    for ns in namespaces:
        mine = [data for key, data in stored.items() if policy.namespace_of(key) == ns]
        times = [t for t, name in requests if name == ns.name]
        per_hour = [sum(1 for t in times if int(t // HOUR) == hour - 23 + i) for i in range(24)]
        last_hour = sum(1 for t in times if minute - 59 <= int(t // 60) <= minute)
        found.append({
            "name": ns.name,
            "prefix": ns.prefix,
            "objects": len(mine),
            "bytes": sum(len(d) for d in mine),
            "requests": {"lastHour": last_hour, "last24h": sum(per_hour), "perHour": per_hour},
        })
    return found


# -- requests -----------------------------------------------------------------------------------


def test_requests_are_counted_per_namespace_in_the_longest_prefix() -> None:
    usage = Usage(ACME, clock=FakeClock())
    for key in ("acme/1", "acme/2", "acme/logs/1", "acme/logs/*", "acme/*", "beta/x/y", "other/1", "*",
                "acmex/1", "acme"):
        usage.count_request(key)
    assert [ns["requests"]["last24h"] for ns in usage.snapshot()["namespaces"]] == [3, 2, 1]


def test_a_request_counts_in_the_current_hour_and_moves_back_as_hours_pass() -> None:
    clock = FakeClock()
    usage = Usage(ACME, clock=clock)
    usage.count_request("acme/1")
    assert figures(usage, "acme")["requests"]["perHour"] == [0] * 23 + [1]
    clock.now += HOUR  # the next hour: a new, empty bucket
    usage.count_request("acme/1")
    usage.count_request("acme/2")
    requests = figures(usage, "acme")["requests"]
    assert requests["perHour"] == [0] * 22 + [1, 2]
    assert requests["last24h"] == 3
    clock.now += 5 * HOUR  # no request in between: the buckets passed are empty
    assert figures(usage, "acme")["requests"]["perHour"] == [0] * 17 + [1, 2] + [0] * 5


def test_buckets_follow_the_clock_hours_not_the_start() -> None:
    clock = FakeClock(10 * HOUR - 1)  # one second before 10:00
    usage = Usage(ACME, clock=clock)
    usage.count_request("acme/1")
    clock.now += 2  # 10:00:01, two seconds later: already the next hour's bucket
    usage.count_request("acme/1")
    assert figures(usage, "acme")["requests"]["perHour"][-2:] == [1, 1]


def test_requests_leave_the_24_hour_window() -> None:
    clock = FakeClock()
    usage = Usage(ACME, clock=clock)
    usage.count_request("acme/1")
    clock.now += 23 * HOUR  # the first request's hour is now the oldest bucket
    usage.count_request("acme/1")
    assert figures(usage, "acme")["requests"]["perHour"] == [1] + [0] * 22 + [1]
    clock.now += HOUR  # ... and now it is out
    requests = figures(usage, "acme")["requests"]
    assert requests["perHour"] == [0] * 22 + [1, 0]
    assert requests["last24h"] == 1


def test_a_pause_longer_than_the_window_empties_it() -> None:
    clock = FakeClock()
    usage = Usage(ACME, clock=clock)
    for _ in range(5):
        usage.count_request("acme/1")
    clock.now += 30 * 24 * HOUR
    usage.count_request("acme/1")
    requests = figures(usage, "acme")["requests"]
    assert requests["perHour"] == [0] * 23 + [1]
    assert requests["lastHour"] == 1


def test_last_hour_is_the_last_60_minutes_not_the_clock_hour() -> None:
    clock = FakeClock(10 * HOUR - 120)  # 09:58
    usage = Usage(ACME, clock=clock)
    for _ in range(3):
        usage.count_request("acme/1")
    clock.now += 180  # 10:01: a new hour bucket, but the requests of 09:58 were 3 minutes ago
    usage.count_request("acme/1")
    requests = figures(usage, "acme")["requests"]
    assert requests["perHour"][-2:] == [3, 1]
    assert requests["lastHour"] == 4
    clock.now += 57 * 60  # 10:58: 09:58 is exactly 60 minutes ago, out of the current and 59 before
    assert figures(usage, "acme")["requests"]["lastHour"] == 1


def test_a_clock_stepping_back_counts_in_the_newest_bucket() -> None:
    clock = FakeClock()
    usage = Usage(ACME, clock=clock)
    clock.now += 2 * HOUR
    usage.count_request("acme/1")
    clock.now -= 2 * HOUR  # NTP stepped the clock back: no older bucket is rewritten
    usage.count_request("acme/1")
    requests = figures(usage, "acme")["requests"]
    assert requests["perHour"] == [0] * 23 + [2]  # the window still ends at the newest bucket
    assert requests["last24h"] == 2


# -- objects and bytes --------------------------------------------------------------------------


def test_set_overwrite_and_delete_keep_objects_and_data_bytes() -> None:
    usage = Usage(ACME, clock=FakeClock())
    usage.on_event(setting("acme/1", b'{"a":1}'))
    usage.on_event(setting("acme/2", b"[1,2,3]"))
    usage.on_event(setting("other/1", b'"not counted"'))
    assert (figures(usage, "acme")["objects"], figures(usage, "acme")["bytes"]) == (2, 14)
    usage.on_event(setting("acme/1", b"1"))  # overwrite: the old size is replaced, not added
    assert (figures(usage, "acme")["objects"], figures(usage, "acme")["bytes"]) == (2, 8)
    usage.on_event(Event("acme/2", "del", obj("acme/2", b"[1,2,3]"), 4))
    assert (figures(usage, "acme")["objects"], figures(usage, "acme")["bytes"]) == (1, 1)


def test_a_delete_needs_no_object_and_a_missing_key_changes_nothing() -> None:
    usage = Usage(ACME, clock=FakeClock())
    usage.on_event(setting("acme/1", b"12345"))
    usage.on_event(Event("acme/9", "del", None, 2))
    assert figures(usage, "acme")["bytes"] == 5
    usage.on_event(Event("acme/1", "del", None, 3))  # the size comes from Usage's own map
    assert (figures(usage, "acme")["objects"], figures(usage, "acme")["bytes"]) == (0, 0)


def test_nested_prefixes_count_objects_in_the_longest() -> None:
    usage = Usage(ACME, clock=FakeClock())
    usage.on_event(setting("acme/logs/1", b"22"))
    usage.on_event(setting("acme/logs", b"333"))  # a key, not under "acme/logs/"
    usage.on_event(setting("acme/logs/a/b", b"4444"))
    assert (figures(usage, "acme-logs")["objects"], figures(usage, "acme-logs")["bytes"]) == (2, 6)
    assert (figures(usage, "acme")["objects"], figures(usage, "acme")["bytes"]) == (1, 3)


@pytest.mark.parametrize(
    ("glob", "left"),
    [
        ("acme/*", {"acme/logs/1", "acme/x/1", "beta/1", "other/1"}),
        ("acme/*/1", {"acme/a", "acme/b", "beta/1", "other/1"}),
        ("acme/logs/*", {"acme/a", "acme/b", "acme/x/1", "beta/1", "other/1"}),
        ("*/1", {"acme/a", "acme/b", "acme/logs/1", "acme/x/1", "other/1"}),
        ("*", {"acme/a", "acme/b", "acme/logs/1", "acme/x/1", "beta/1", "other/1"}),
        ("a*/a", {"acme/b", "acme/logs/1", "acme/x/1", "beta/1", "other/1"}),
    ],
)
def test_a_glob_delete_removes_exactly_its_matches(glob: str, left: set[str]) -> None:
    stored = {k: b"1" * (i + 1) for i, k in
              enumerate(["acme/a", "acme/b", "acme/logs/1", "acme/x/1", "beta/1", "other/1"])}
    usage = Usage(ACME, clock=FakeClock())
    for key, data in stored.items():
        usage.on_event(setting(key, data))
    usage.on_event(Event(glob, "del", None, 9))
    remaining = {k: v for k, v in stored.items() if k in left}
    assert usage.snapshot()["namespaces"] == expected(ACME, remaining, [], START)


def test_load_replaces_the_objects_and_keeps_the_requests() -> None:
    usage = Usage(ACME, clock=FakeClock())
    usage.on_event(setting("acme/1", b"1"))
    usage.count_request("acme/1")
    usage.load([obj("acme/2", b"22"), obj("acme/3", b"333"), obj("acme/logs/1", b"4"), obj("zz/1", b"5")])
    acme = figures(usage, "acme")
    assert (acme["objects"], acme["bytes"], acme["requests"]["last24h"]) == (2, 5, 1)
    usage.load(())  # what to do after Layered.clear(), which emits no event
    assert [(ns["objects"], ns["bytes"]) for ns in usage.snapshot()["namespaces"]] == [(0, 0)] * 3


def test_load_counts_raw_stored_values_like_the_objects_they_parse_to() -> None:
    objects = [obj("acme/1", b'{"a":[1,2]}'), obj("acme/logs/2", b"22"), obj("zz/1", b"5")]
    by_objects, by_raw = Usage(ACME, clock=FakeClock()), Usage(ACME, clock=FakeClock())
    by_objects.load(objects)
    by_raw.load([(o.path, o.to_json()) for o in objects] + [("acme/gone", None)])
    assert by_raw.snapshot() == by_objects.snapshot()
    assert figures(by_raw, "acme")["bytes"] == 11


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=6), st.text(max_size=6), json_value, st.booleans(),
)
def test_data_size_of_stored_bytes_is_the_parsed_data_size(
    created: int, updated: int, index: str, path: str, value: Any, reordered: bool
) -> None:
    stored = make_object(created, updated, index, path, jsontext.dumps(value))
    raw = stored.to_json()
    if reordered:  # the same object in a layout of someone else's: parsed, not read from the layout
        raw = jsontext.dumps({"data": value, "path": path, "index": index, "updated": updated,
                            "created": created})
    assert data_size(path or "k", raw) == len(load_object(path or "k", raw).data)


def test_reconfigure_keeps_the_requests_of_namespaces_that_keep_their_name() -> None:
    usage = Usage(ACME, clock=FakeClock())
    for key in ("acme/1", "beta/1", "beta/2"):
        usage.count_request(key)
    stored = [obj("acme/1", b"1"), obj("beta/1", b"22"), obj("gamma/1", b"333")]
    usage.reconfigure([Namespace("beta", "beta/"), Namespace("gamma", "gamma/")], stored)
    snap = usage.snapshot()["namespaces"]
    assert [(ns["name"], ns["objects"], ns["bytes"], ns["requests"]["last24h"]) for ns in snap] == [
        ("beta", 1, 2, 2), ("gamma", 1, 3, 0)]
    usage.count_request("acme/1")  # acme is gone: not counted anywhere
    usage.reconfigure(ACME, stored)  # acme comes back with a fresh count
    assert figures(usage, "acme")["requests"]["last24h"] == 0
    assert figures(usage, "beta")["requests"]["last24h"] == 2


@pytest.mark.parametrize(
    "namespaces",
    [
        [Namespace("a", "acme")],  # no trailing "/"
        [Namespace("a", "ac*/")],
        [Namespace("a", "acme/"), Namespace("a", "beta/")],
        [Namespace("a", "acme/"), Namespace("b", "acme/")],
    ],
)
def test_bad_namespaces_are_refused_and_a_refused_reconfigure_changes_nothing(
    namespaces: list[Namespace],
) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Usage(namespaces)
    usage = Usage(ACME, clock=FakeClock())
    usage.on_event(setting("acme/1", b"1"))
    before = usage.snapshot()
    with pytest.raises(ValueError, match="namespace"):
        usage.reconfigure(namespaces, [])
    assert usage.snapshot() == before


def test_the_snapshot_is_json_ready() -> None:
    clock = FakeClock()
    usage = Usage(ACME, clock=clock)
    clock.now += 10
    usage.on_event(setting("acme/1", b'{"x":1}'))
    usage.count_request("acme/1")
    snap = orjson.loads(orjson.dumps(usage.snapshot()))
    assert snap["since"] == START and snap["at"] == START + 10
    assert snap["namespaces"][0] == {
        "name": "acme", "prefix": "acme/", "objects": 1, "bytes": 7,
        "requests": {"lastHour": 1, "last24h": 1, "perHour": [0] * 23 + [1]},
    }


segment = st.sampled_from(["a", "b", "ab", "x1"])
key_st = st.lists(segment, min_size=1, max_size=4).map("/".join)
prefix_st = st.lists(segment, min_size=1, max_size=3).map(lambda segs: "/".join(segs) + "/")
namespaces_st = st.lists(prefix_st, unique=True, max_size=5).map(
    lambda prefixes: [Namespace(f"n{i}", p) for i, p in enumerate(prefixes)])
glob_st = st.lists(st.sampled_from(["a", "b", "*", "a*", "*b", "x1"]), min_size=1, max_size=4).map("/".join)


@given(namespaces_st, st.one_of(key_st, glob_st))
def test_the_namespace_of_a_key_is_the_policys(namespaces: list[Namespace], key: str) -> None:
    assert Usage(namespaces).namespace_of(key) == Policy(namespaces=tuple(namespaces)).namespace_of(key)


# -- against the model: random sequences --------------------------------------------------------


class UsageMachine(RuleBasedStateMachine):
    """Writes as ``Layered`` emits their events (a delete of a missing key and a glob delete that
    removes nothing emit none), requests, time passing, restarts and reloads; after every step the
    snapshot equals the recomputation from the model."""

    @initialize(namespaces=namespaces_st)
    def start(self, namespaces: list[Namespace]) -> None:
        self.clock = FakeClock()
        self.namespaces = namespaces
        self.usage = Usage(namespaces, clock=self.clock)
        self.stored: dict[str, bytes] = {}
        self.requests: list[tuple[float, str]] = []
        self.revision = 0

    def emit(self, key: str, op: Any, o: Object | None) -> None:
        self.revision += 1
        self.usage.on_event(Event(key, op, o, self.revision))

    @rule(key=key_st, size=st.integers(1, 50))
    def set(self, key: str, size: int) -> None:  # set, push, set_with_meta, set_and_unlock alike
        self.stored[key] = b"7" * size
        self.emit(key, "set", obj(key, self.stored[key]))

    @rule(key=key_st)
    def delete(self, key: str) -> None:
        old = self.stored.pop(key, None)
        if old is not None:
            self.emit(key, "del", obj(key, old))

    @rule(glob=glob_st)
    def delete_glob(self, glob: str) -> None:
        doomed = [k for k in self.stored if keys.match(glob, k)]
        for key in doomed:
            del self.stored[key]
        if doomed:
            self.emit(glob, "del", None)

    @rule(key=st.one_of(key_st, glob_st))
    def request(self, key: str) -> None:
        self.usage.count_request(key)
        ns = Policy(namespaces=tuple(self.namespaces)).namespace_of(key)
        if ns is not None:
            self.requests.append((self.clock.now, ns.name))

    @rule(seconds=st.sampled_from([1, 59, 60, 61, 1799, 3599, 3600, 3601, 7200, 23 * 3600, 86400, 90000]))
    def tick(self, seconds: int) -> None:
        self.clock.now += seconds

    @rule()
    def restart(self) -> None:
        """A new process: a fresh Usage loaded with what is stored (requests start again)."""
        self.usage = Usage(self.namespaces, clock=self.clock)
        self.usage.load([obj(k, v) for k, v in self.stored.items()])
        self.requests = []

    @rule()
    def clear(self) -> None:
        self.stored.clear()
        self.usage.load(())

    @rule(namespaces=namespaces_st)
    def reconfigure(self, namespaces: list[Namespace]) -> None:
        self.usage.reconfigure(namespaces, [obj(k, v) for k, v in self.stored.items()])
        names = {ns.name for ns in namespaces}
        self.requests = [(t, name) for t, name in self.requests if name in names]
        self.namespaces = namespaces

    @invariant()
    def matches_the_model(self) -> None:
        assert self.usage.snapshot()["namespaces"] == expected(
            self.namespaces, self.stored, self.requests, self.clock.now)


TestUsageMachine = UsageMachine.TestCase
TestUsageMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


# -- through a real store -----------------------------------------------------------------------


async def recount(store: Layered, namespaces: list[Namespace]) -> list[dict[str, Any]]:
    stored = {key: (await store.get(key)).data for key in await store.keys()}
    return [{k: v for k, v in ns.items() if k != "requests"} for ns in expected(namespaces, stored, [], 0)]


def without_requests(usage: Usage) -> list[dict[str, Any]]:
    return [{k: v for k, v in ns.items() if k != "requests"} for ns in usage.snapshot()["namespaces"]]


async def random_writes(store: Layered, rng: random.Random, count: int) -> None:
    """Every kind of write of the store, on keys in and out of the namespaces."""
    segs = ["acme", "logs", "beta", "a", "b", "x"]

    def key() -> str:
        return "/".join(rng.choice(segs) for _ in range(rng.randint(1, 3)))

    for _ in range(count):
        kind = rng.random()
        data = {"v": "x" * rng.randint(0, 40)}
        try:
            if kind < 0.45:
                await store.set(key(), data)
            elif kind < 0.55:
                await store.push(rng.choice(["acme/logs/*", "acme/*", "beta/*", "x/*"]), data)
            elif kind < 0.62:
                await store.set_with_meta(key(), rng.choice([data, ""]), 5, 6)
            elif kind < 0.68:
                k = key()
                await store.set(k, 0)
                locked = await store.get_and_lock(k)
                await store.set_and_unlock(k, locked.value + rng.randint(1, 10**6))
            elif kind < 0.9:
                await store.delete(key())
            else:
                await store.delete(rng.choice(["acme/*", "acme/logs/*", "*/a", "acme/*/b", "*", "beta/*"]))
        except NotFound:
            pass


@pytest.mark.parametrize("memory", [True, False], ids=["memory+leveldb", "leveldb"])
async def test_a_real_store_as_commit_observer_matches_a_recount(tmp_path: Path, memory: bool) -> None:
    def open_store() -> Layered:
        return Layered(memory=MemoryLayer() if memory else None, embedded=LevelDBLayer(str(tmp_path / "db")))

    rng = random.Random(9)
    usage = Usage(ACME)
    async with open_store() as store:
        store.on_commit(usage.on_event)
        for _ in range(6):
            await random_writes(store, rng, 150)
            assert without_requests(usage) == await recount(store, ACME)
        before = without_requests(usage)
        assert sum(ns["objects"] for ns in before) > 10  # the sequence left something to count
    async with open_store() as store:  # a restart: load() from what the store holds
        restarted = Usage(ACME)
        restarted.load([await store.get(key) for key in await store.keys()])
        assert without_requests(restarted) == before
        if store.memory is not None:  # the raw values, not parsed: the same figures
            mirror, stored = store.memory, store.memory.keys()
            raw = Usage(ACME)
            raw.load((key, mirror.get_raw(key)) for key in stored)
            assert without_requests(raw) == before
        store.on_commit(restarted.on_event)
        await random_writes(store, rng, 150)
        assert without_requests(restarted) == await recount(store, ACME)
        await store.clear()
        restarted.load(())
        assert without_requests(restarted) == await recount(store, ACME)


async def test_silent_writes_are_counted_too(tmp_path: Path) -> None:
    """Writes without an event (delete_silent: a limit filter's trimming; no_broadcast_keys) still
    change what is stored: usage registered with ``silent=True`` follows them."""
    usage = Usage(ACME)
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")))
    await store.start(Options(no_broadcast_keys=("acme/quiet/*",)))
    try:
        store.on_commit(usage.on_event, silent=True)
        for i in range(5):
            await store.set(f"acme/{i}", {"i": i})
        await store.set("acme/quiet/1", {"q": 1})
        await store.delete_silent("acme/0")
        await store.delete_silent("acme/1")
        assert without_requests(usage) == await recount(store, ACME)
    finally:
        await store.close()
