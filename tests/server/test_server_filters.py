"""Filters and hooks (PROTOCOL.md §6) over REST and streams, static mode included."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from server_live import Live, LiveFactory, next_frame
from test_server_streams import Follower

from ooo_storage import Object
from ooo_storage.server import bearer_token


def refused(key: str) -> tuple[int, bytes]:
    return 400, f"filters: route not defined, key:{key}".encode()


async def test_static_mode(make_live: LiveFactory) -> None:
    live = await make_live(static=True)
    live.server.open_filter("open/*")
    live.server.read_list_filter("ro/*", lambda key, objs: objs)
    assert await live.request("POST", "x", b"1") == refused("x")
    assert await live.request("GET", "x") == refused("x")
    assert await live.request("DELETE", "x") == refused("x")
    assert await live.request("PATCH", "x", b"{}") == refused("x")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("x")
    assert err.value.status == 400

    assert (await live.request("POST", "open/1", b"1"))[0] == 200
    assert (await live.request("POST", "open/*", b"2"))[0] == 200
    assert len(await live.get("open/*")) == 2
    assert (await live.get("open/1"))["data"] == 1
    assert (await live.request("DELETE", "open/1"))[0] == 204
    follower = Follower(await live.ws("open/*"))
    await follower.step()

    # a read-list filter permits list and single reads under it, not writes
    assert await live.get("ro/*") == []
    assert (await live.request("GET", "ro/1"))[0] == 404
    assert await live.request("POST", "ro/1", b"1") == refused("ro/1")
    filters = orjson.loads((await live.request("GET", "?api=filters"))[1])
    assert filters["static"] is True and len(filters["filters"]) == 5


async def test_write_filter(live: Live) -> None:
    def stamp(key: str, data: Any) -> Any:
        if data == "bad":
            raise ValueError("filters: bad value")
        if data == "empty":
            return None
        if data == "text":
            return b"not json"
        return {**data, "stamped": key}

    live.server.write_filter("w/*", stamp)
    assert (await live.request("POST", "w/1", {"a": 1}))[0] == 200
    assert (await live.get("w/1"))["data"] == {"a": 1, "stamped": "w/1"}
    _, body = await live.request("POST", "w/*", {"b": 1})
    index = orjson.loads(body)["index"]
    assert (await live.get(f"w/{index}"))["data"] == {"b": 1, "stamped": "w/*"}
    assert await live.request("POST", "w/1", "bad") == (400, b"filters: bad value")
    invalid = (400, b"filters: invalid filter result error, key:w/1")
    assert await live.request("POST", "w/1", "empty") == invalid
    assert await live.request("POST", "w/1", "text") == invalid
    # PATCH: the filter sees the merged document
    assert (await live.request("PATCH", "w/1", {"c": 2}))[0] == 200
    assert (await live.get("w/1"))["data"] == {"a": 1, "c": 2, "stamped": "w/1"}


async def test_first_matching_filter_only(live: Live) -> None:
    live.server.write_filter("f/special", lambda k, d: {"by": "special"})
    live.server.write_filter("f/*", lambda k, d: b'{"by":"generic"}')
    await live.request("POST", "f/special", b"1")
    await live.request("POST", "f/other", b"1")
    assert (await live.get("f/special"))["data"] == {"by": "special"}
    assert (await live.get("f/other"))["data"] == {"by": "generic"}


async def test_delete_and_after_write_filters(live: Live) -> None:
    written: list[str] = []

    async def after(key: str) -> None:
        written.append(key)

    def guard(key: str) -> None:
        if key.endswith("keep"):
            raise PermissionError("filters: protected")

    live.server.delete_filter("d/*", guard)
    live.server.after_write_filter("d/*", after)
    await live.request("POST", "d/keep", b"1")
    await live.request("PATCH", "d/keep", b"{}")
    assert written == ["d/keep", "d/keep"]
    assert await live.request("DELETE", "d/keep") == (400, b"filters: protected")
    assert (await live.get("d/keep"))["data"] == 1


async def test_read_filters_on_get_and_streams(live: Live) -> None:
    def hide_secret(key: str, obj: Object) -> Object | None:
        value = obj.value
        if value.get("hidden"):
            return None
        value.pop("secret", None)
        return obj._replace(data=orjson.dumps(value))

    def odd_only(key: str, objs: list[Object]) -> list[Object]:
        return [o for o in objs if o.value["n"] % 2]

    live.server.read_object_filter("r/*", hide_secret)
    live.server.read_list_filter("odd/*", odd_only)
    single = Follower(await live.ws("r/1"))
    listing = Follower(await live.ws("r/*"))
    odd = Follower(await live.ws("odd/*"))
    for f in (single, listing, odd):
        await f.step()
    await live.request("POST", "r/1", {"name": "a", "secret": "s"})
    await live.request("POST", "r/2", {"hidden": True})
    await live.request("POST", "r/1", {"name": "b", "secret": "t"})
    for n in range(5):
        await live.request("POST", f"odd/{n}", {"n": n})
    await live.request("POST", "odd/1", {"n": 2})
    assert (await live.get("r/1"))["data"] == {"name": "b"}
    assert (await live.request("GET", "r/2"))[0] == 404
    await single.until(await live.get("r/1"))
    await listing.until(await live.get("r/*"))
    assert [o["data"] for o in listing.state] == [{"name": "b"}]
    await odd.until(await live.get("odd/*"))
    assert [o["data"]["n"] for o in odd.state] == [3]


async def test_limit_filter(live: Live) -> None:
    live.server.limit_filter("lim/*", limit=3)
    follower = Follower(await live.ws("lim/*"))
    await follower.step()
    for i in range(3):
        await live.request("POST", "lim/*", {"i": i})
        await follower.step()
    await live.request("POST", "lim/*", {"i": 3})
    frame = await follower.step()
    assert [op["op"] for op in frame["data"]] == ["remove", "add"]
    assert frame["data"][0]["path"] == "/2" and frame["data"][1]["path"] == "/0"
    for i in range(4, 6):
        await live.request("POST", "lim/*", {"i": i})
    listed = await live.get("lim/*")
    assert [o["data"]["i"] for o in listed] == [5, 4, 3]
    await follower.until(listed)
    assert len(await live.store.keys()) == 3  # evicted silently from the store too
    late = Follower(await live.ws("lim/*"))
    await late.step()
    assert late.state == listed


async def test_limit_filter_ascending_and_max_age(live: Live) -> None:
    live.server.limit_filter("asc/*", limit=2, order="asc")
    live.server.limit_filter("age/*", max_age=60)
    follower = Follower(await live.ws("asc/*"))
    await follower.step()
    for i in range(3):
        await live.request("POST", "asc/*", {"i": i})
    listed = await live.get("asc/*")
    assert [o["data"]["i"] for o in listed] == [1, 2]
    await follower.until(listed)
    _, body = await live.request("POST", "age/*", {"i": 0})
    aged = f"age/{orjson.loads(body)['index']}"
    assert [o["data"]["i"] for o in await live.get("age/*")] == [0]
    # Rather than wait a minute: the same item, created an hour earlier.
    item = await live.store.get(aged)
    await live.store.set_with_meta(aged, item.data, item.created - 3600 * 10**9, item.updated)
    await live.request("POST", "age/*", {"i": 1})
    assert [o["data"]["i"] for o in await live.get("age/*")] == [1]
    assert aged not in await live.store.keys()  # evicted from the store by the write


async def test_subscribe_hooks(live: Live) -> None:
    events: list[tuple[str, str]] = []

    def on_subscribe(key: str) -> bool:
        events.append(("sub", key))
        return not key.startswith("private")

    unsubscribed = asyncio.Event()

    async def on_unsubscribe(key: str) -> None:
        events.append(("unsub", key))
        unsubscribed.set()

    live.server.on_subscribe = on_subscribe
    live.server.on_unsubscribe = on_unsubscribe
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("private/1")
    assert err.value.status == 400
    ws = await live.ws("public/1")
    await next_frame(ws)
    await ws.close()
    await asyncio.wait_for(unsubscribed.wait(), 5)
    assert events == [("sub", "private/1"), ("sub", "public/1"), ("unsub", "public/1")]


async def test_middleware_gates_rest_and_upgrade(make_live: LiveFactory) -> None:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if bearer_token(request) != "letmein":
            return web.Response(status=401, text="auth: token required")
        return await handler(request)

    live = await make_live(middlewares=[auth])
    assert await live.request("GET", "k") == (401, b"auth: token required")
    headers = {"Authorization": "Bearer letmein"}
    assert (await live.request("POST", "k", b"1", headers=headers))[0] == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("k")
    assert err.value.status == 401
    ws = await live.ws("k", protocols=("bearer", "letmein"))
    assert ws.protocol == "bearer"
    assert (await next_frame(ws))["data"]["data"] == 1


async def test_failing_read_filter_is_400_not_500(live: Live) -> None:
    def broken(key: str, value: Any) -> Any:
        raise KeyError("filters: cannot show")

    live.server.read_object_filter("broken/1", broken)
    live.server.read_list_filter("broken/*", broken)
    await live.request("POST", "broken/1", b"1")
    assert (await live.request("GET", "broken/1"))[0] == 400
    assert (await live.request("GET", "broken/*"))[0] == 400
