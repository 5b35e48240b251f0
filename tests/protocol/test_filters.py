"""The filter rules of PROTOCOL.md §6 without a server: which entry runs, static mode, list views,
limits and write filter results."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ooo_storage.errors import FilterRejected, InvalidData
from ooo_storage.protocol.clock import now
from ooo_storage.protocol.filters import Filters, Limit, ListView, parse_json, read_guard
from ooo_storage.protocol.objects import Object


def obj(path: str, created: int, data: Any = None) -> Object:
    return Object(created, 0, path.rpartition("/")[2], path, orjson.dumps(data if data is not None else created))


def paths(objs: list[Object]) -> list[str]:
    return [o.path for o in objs]


def refused(key: str) -> str:
    return f"filters: route not defined, key:{key}"


def raising(exc: Exception) -> Any:
    """A filter or hook that fails with ``exc`` whatever it is called with."""

    def fail(*args: Any) -> Any:
        raise exc

    return fail


# -- which entry runs ------------------------------------------------------------------------------


def test_the_first_matching_entry_runs_and_only_it() -> None:
    filters = Filters()
    filters.add("read_object", "users/*", lambda key, o: o._replace(data=b'"first"'))
    filters.add("read_object", "users/1", lambda key, o: o._replace(data=b'"second"'))
    filters.add("read_object", "other", lambda key, o: None)
    shown = filters.read_object("users/1", obj("users/1", 1))
    assert shown is not None and shown.data == b'"first"'  # registered first wins over an exact path
    assert filters.read_object("other", obj("other", 1)) is None
    unfiltered = obj("users/1/x", 1)  # more segments: users/* does not match
    assert filters.read_object("users/1/x", unfiltered) is unfiltered


def test_an_exact_path_entry_covers_only_that_key() -> None:
    filters = Filters()
    filters.add("write", "a/b")
    filters.add("write", "a/*/c")
    assert filters.find("write", "a/b") is not None
    assert filters.find("write", "a/bb") is None
    entry = filters.find("write", "a/x/c")
    assert entry is not None and entry.path == "a/*/c"
    assert filters.find("delete", "a/b") is None  # kinds are separate


def test_filter_paths_are_keys() -> None:
    with pytest.raises(ValueError):
        Filters().add("write", "a//b")


def test_describe_lists_entries_by_kind_in_registration_order() -> None:
    filters = Filters(static=True)
    filters.add("write", "w/*", lambda key, data: data)
    filters.add("read_list", "l/*", limit=Limit(3))
    filters.add("read_object", "o")
    assert filters.describe() == [
        {"kind": "write", "path": "w/*", "limit": False, "permitOnly": False},
        {"kind": "read_object", "path": "o", "limit": False, "permitOnly": True},
        {"kind": "read_list", "path": "l/*", "limit": True, "permitOnly": True},
    ]


# -- static mode -----------------------------------------------------------------------------------


async def test_static_mode_refuses_operations_without_an_entry_of_their_kind() -> None:
    filters = Filters(static=True)
    filters.add("write", "w/*")
    filters.add("delete", "d/*")
    filters.add("read_object", "r/*")
    with pytest.raises(FilterRejected, match=refused("x")) as caught:
        filters.write_entry("x")
    assert caught.value.status == 400
    entry = filters.write_entry("w/1")
    assert entry is not None and entry.fn is None  # permits only
    with pytest.raises(FilterRejected, match=refused("w/1")):
        await filters.check_delete("w/1")
    await filters.check_delete("d/1")
    with pytest.raises(FilterRejected, match=refused("d/1")):
        filters.permit_read("d/1")
    filters.permit_read("r/1")
    with pytest.raises(FilterRejected, match=refused("d/1")):
        await filters.check_subscribe("d/1")
    await filters.check_subscribe("r/1")


def test_static_mode_a_list_filter_permits_single_reads_under_it() -> None:
    filters = Filters(static=True)
    filters.add("read_list", "ro/*", lambda key, objs: objs)
    filters.permit_read("ro/*")
    filters.permit_read("ro/1")
    with pytest.raises(FilterRejected, match=refused("ro/1/x")):
        filters.permit_read("ro/1/x")
    with pytest.raises(FilterRejected, match=refused("ro/1")):
        filters.write_entry("ro/1")


async def test_without_static_mode_nothing_needs_an_entry() -> None:
    filters = Filters()
    assert filters.write_entry("x") is None
    await filters.check_delete("x")
    filters.permit_read("x")
    await filters.check_subscribe("x")
    o = obj("x", 1)
    assert filters.read_object("x", o) is o
    assert filters.list_view("x/*") == ListView("x/*")


# -- hooks that refuse -----------------------------------------------------------------------------


async def test_delete_filters_refuse_by_raising() -> None:
    filters = Filters()
    seen: list[str] = []

    async def guard(key: str) -> None:
        seen.append(key)
        if key.endswith("keep"):
            raise PermissionError("filters: this one stays")

    filters.add("delete", "d/*", guard)
    filters.add("delete", "e/*", raising(RuntimeError()))
    await filters.check_delete("d/go")
    with pytest.raises(FilterRejected, match="^filters: this one stays$"):
        await filters.check_delete("d/keep")
    with pytest.raises(FilterRejected, match="^filters: delete refused, key:e/1$"):  # no message
        await filters.check_delete("e/1")
    assert seen == ["d/go", "d/keep"]


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (lambda key: False, "filters: subscription refused, key:private/1"),
        (raising(PermissionError("auth: who are you")), "auth: who are you"),
        (raising(RuntimeError()), "filters: subscription refused, key:private/1"),
    ],
    ids=["false", "raises", "raises-without-message"],
)
async def test_on_subscribe_refuses_by_returning_false_or_raising(hook: Any, message: str) -> None:
    filters = Filters()
    filters.on_subscribe = hook
    with pytest.raises(FilterRejected) as caught:
        await filters.check_subscribe("private/1")
    assert str(caught.value) == message


async def test_on_subscribe_may_be_async_and_may_return_nothing() -> None:
    filters = Filters()
    seen: list[str] = []

    async def hook(key: str) -> None:
        seen.append(key)

    filters.on_subscribe = hook
    await filters.check_subscribe("k")
    assert seen == ["k"]


def test_read_guard_turns_a_failing_read_filter_into_a_refusal() -> None:
    assert read_guard("k", lambda a, b: a + b, 1, 2) == 3
    with pytest.raises(FilterRejected, match="^filters: cannot show$"):
        read_guard("k", raising(LookupError("filters: cannot show")), 1)
    with pytest.raises(FilterRejected, match="^filters: read refused, key:k$"):
        read_guard("k", raising(ValueError()))


# -- write filters ---------------------------------------------------------------------------------


async def run_write(fn: Any, value: Any, key: str = "w/1") -> bytes:
    filters = Filters()
    filters.add("write", "w/*", fn)
    entry = filters.write_entry(key)
    assert entry is not None
    return await filters.run_write(entry, key, value)


async def test_write_filter_results_become_compact_json() -> None:
    assert await run_write(lambda key, data: {**data, "by": key}, {"a": 1}) == b'{"a":1,"by":"w/1"}'
    assert await run_write(lambda key, data: b'{ "spaced" : [1, 2] }', 0) == b'{"spaced":[1,2]}'
    assert await run_write(lambda key, data: '"text"', 0) == b'"text"'
    assert await run_write(lambda key, data: b"null", 0) == b"null"  # how a filter stores null
    assert await run_write(lambda key, data: 12345678901234567890123, 0) == b"12345678901234567890123"

    async def later(key: str, data: Any) -> Any:
        return [data, data]

    assert await run_write(later, 7) == b"[7,7]"


@pytest.mark.parametrize(
    "result",
    [None, b"not json", "", b"[1,", {"set": {1, 2}}],
    ids=["none", "not-json", "empty-text", "truncated", "not-serialisable"],
)
async def test_a_write_filter_result_that_is_not_json_is_refused(result: Any) -> None:
    with pytest.raises(FilterRejected, match="^filters: invalid filter result error, key:w/1$"):
        await run_write(lambda key, data: result, {"a": 1})


async def test_a_write_filter_refuses_by_raising() -> None:
    def reject(key: str, data: Any) -> Any:
        raise ValueError("filters: too big" if data else "")

    with pytest.raises(FilterRejected, match="^filters: too big$"):
        await run_write(reject, 1)
    with pytest.raises(FilterRejected, match="^filters: write refused, key:w/1$"):
        await run_write(reject, 0)

    def own(key: str, data: Any) -> Any:
        raise FilterRejected("filters: my own words")

    with pytest.raises(FilterRejected, match="^filters: my own words$"):
        await run_write(own, 1)


def test_parse_json_needs_exactly_one_value() -> None:
    assert parse_json(b' {"a": [1, 2.5]} ') == {"a": [1, 2.5]}
    with pytest.raises(InvalidData, match=r"^storage: invalid data \(empty\)$"):
        parse_json(b"")
    with pytest.raises(InvalidData, match=r"^storage: invalid data \(not JSON: "):
        parse_json(b"{} {}")


# -- limits and list views -------------------------------------------------------------------------


def test_limit_trim_keeps_the_newest_items() -> None:
    newest_first = [obj(f"l/{i}", i) for i in (5, 4, 3, 2, 1)]
    assert paths(Limit(2).trim(newest_first)) == ["l/5", "l/4"]
    assert paths(Limit(10).trim(newest_first)) == paths(newest_first)
    assert Limit(order="asc").trim(newest_first) == newest_first  # order is for showing, not trimming
    assert Limit().cutoff() is None


def test_limit_max_age_is_measured_on_the_clock_of_created() -> None:
    """Objects are stamped by ``protocol.clock``; the cutoff reads the same (or the wall) clock,
    so an hour-old object is expired and a fresh one is kept under a one-minute max age."""
    limit = Limit(max_age=60)
    stamp = now()
    cutoff = limit.cutoff()
    assert cutoff is not None and abs((stamp - 60 * 10**9) - cutoff) < 10 * 10**9
    fresh, old = obj("l/fresh", stamp), obj("l/old", stamp - 3600 * 10**9)
    assert limit.trim([fresh, old]) == [fresh]
    assert Limit(limit=1, max_age=60).trim([old]) == []
    both = Limit(limit=1, max_age=3600 * 2)
    assert both.trim([fresh, old]) == [fresh]


def hide_odd(key: str, o: Object) -> Object | None:
    """An object filter that hides odd values and tags the others with the key it was called with."""
    value = orjson.loads(o.data)
    return None if value % 2 else o._replace(data=orjson.dumps({"v": value, "via": key}))


def test_list_view_applies_limit_then_object_filter_then_order_then_list_filter() -> None:
    newest_first = [obj(f"l/{i}", i) for i in (6, 5, 4, 3, 2)]
    calls: list[list[str]] = []

    def list_fn(key: str, objs: list[Object]) -> list[Object]:
        calls.append(paths(objs))
        return objs[:2]

    view = ListView("l/*", hide_odd, list_fn, Limit(4, order="asc"))
    assert not view.plain and not view.descending
    shown = view.apply(newest_first)
    # limit 4 keeps 6,5,4,3; the object filter hides 5 and 3; ascending; then the list filter
    assert calls == [["l/4", "l/6"]]
    assert [orjson.loads(o.data) for o in shown] == [{"v": 4, "via": "l/*"}, {"v": 6, "via": "l/*"}]
    # present() takes a list that is already limited: nothing more is trimmed
    assert paths(view.present(newest_first)) == ["l/2", "l/4"]


def test_plain_views() -> None:
    newest_first = [obj(f"l/{i}", i) for i in (3, 2, 1)]
    assert ListView("l/*").plain and ListView("l/*").descending
    assert ListView("l/*").apply(newest_first) == newest_first
    ascending = ListView("l/*", limit=Limit(2, order="asc"))
    assert ascending.plain and paths(ascending.apply(newest_first)) == ["l/2", "l/3"]


def test_list_view_of_the_registry() -> None:
    filters = Filters()

    def by_path(key: str, objs: list[Object]) -> list[Object]:
        return sorted(objs, key=lambda o: o.path)

    filters.add("read_object", "l/*", hide_odd)
    filters.add("read_list", "l/*", by_path)
    filters.add("read_list", "lim/*", by_path, limit=Limit(2))
    view = filters.list_view("l/*")
    assert view == ListView("l/*", hide_odd, by_path, None)
    # a limit entry shows with its limit, never with a function of its own
    assert filters.list_view("lim/*") == ListView("lim/*", None, None, Limit(2))
    assert filters.object_fn("l/1") is hide_odd and filters.object_fn("x") is None
