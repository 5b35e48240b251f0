"""Every REST row and status code of PROTOCOL.md §4, against a real server."""

from __future__ import annotations

import orjson
import pytest
from server_live import Live, LiveFactory


async def test_get_missing_and_invalid(live: Live) -> None:
    assert await live.request("GET", "test") == (404, b"ooo: empty key")
    for bad in ["/a", "a/", "test//1", "test/*/**", "-x", "x.", "_x"]:
        status, body = await live.request("GET", bad)
        assert (status, body) == (400, b"ooo: key is not valid"), bad


async def test_double_slash_path(live: Live) -> None:
    status, body = await live.request("GET", "/test")  # GET //test
    assert (status, body) == (400, b"ooo: key is not valid")
    assert (await live.request("POST", "a//b", b"1"))[0] == 400


async def test_other_characters_404(live: Live) -> None:
    for bad in ["a%20b", "a:b", "a@b", "a+b", "caf%C3%A9"]:
        status, _ = await live.request("GET", bad)
        assert status == 404, bad


async def test_post_set_and_get(live: Live) -> None:
    status, body = await live.request("POST", "users/1", {"name": "ada"})
    assert (status, orjson.loads(body)) == (200, {"index": "1"})
    obj = await live.get("users/1")
    assert obj["data"] == {"name": "ada"} and obj["path"] == "users/1" and obj["updated"] == 0
    status, _ = await live.request("POST", "users/1", {"name": "bob"})
    again = await live.get("users/1")
    assert again["created"] == obj["created"] and again["updated"] > 0


@pytest.mark.parametrize("body", [b"null", b"{}", b"[]", b"42", b'"text"', b'  {"a": 1}\n'])
async def test_post_any_json_value(live: Live, body: bytes) -> None:
    status, _ = await live.request("POST", "v", body)
    assert status == 200
    assert (await live.get("v"))["data"] == orjson.loads(body)


@pytest.mark.parametrize("body", [b"", b"{", b"1 2", b"{} x", b"nope", b"   "])
async def test_post_invalid_body(live: Live, body: bytes) -> None:
    status, _ = await live.request("POST", "v", body)
    assert status == 400
    assert (await live.request("GET", "v"))[0] == 404


async def test_post_glob_rules(live: Live) -> None:
    assert await live.request("POST", "test/*/more", b"1") == (
        400,
        b"key: glob pattern must be at the end of the path",
    )
    assert await live.request("POST", "a/*/*", b"1") == (400, b"key: contains more than one glob pattern")
    status, body = await live.request("POST", "logs/*", {"n": 1})
    index = orjson.loads(body)["index"]
    assert status == 200 and len(index) == 16
    assert (await live.get(f"logs/{index}"))["data"] == {"n": 1}


async def test_post_body_cap(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=100)
    assert (await live.request("POST", "k", b"1" * 100))[0] == 200
    assert (await live.request("POST", "k", b"1" * 101))[0] == 413
    assert (await live.request("PATCH", "k", b"{" + b" " * 200 + b"}"))[0] == 413


async def test_default_cap_is_10_mib(live: Live) -> None:
    big = b'"' + b"x" * (10 * 1024 * 1024) + b'"'
    assert (await live.request("POST", "big", big))[0] == 413


async def test_glob_list_newest_first(live: Live) -> None:
    assert await live.get("items/*") == []
    for i in range(5):
        await live.request("POST", f"items/{i}", {"i": i})
    await live.request("POST", "items/0", {"i": 10})  # an update keeps its place
    await live.request("POST", "other/1", 1)
    listed = await live.get("items/*")
    assert [o["data"]["i"] for o in listed] == [4, 3, 2, 1, 10]
    assert await live.get("items/*") == listed
    assert [o["index"] for o in await live.get("*/3")] == ["3"]


async def test_nested_glob_get(live: Live) -> None:
    await live.request("POST", "box/1/things/a", 1)
    await live.request("POST", "box/2/things/b", 2)
    await live.request("POST", "box/2/other/c", 3)
    assert sorted(o["data"] for o in await live.get("box/*/things/*")) == [1, 2]


async def test_patch(live: Live) -> None:
    assert await live.request("PATCH", "p", {"a": 1}) == (404, b"ooo: not found")
    await live.request("POST", "p", {"b": 2, "a": {"x": 1}, "l": [{"v": 1}, {"v": 2}]})
    status, body = await live.request("PATCH", "p", {"a": {"y": 2}, "c": None, "l": {"1": {"w": 3}}})
    assert (status, orjson.loads(body)) == (200, {"index": "p"})
    assert (await live.get("p"))["data"] == {
        "a": {"x": 1, "y": 2},
        "b": 2,
        "c": None,
        "l": [{"v": 1}, {"v": 2, "w": 3}],
    }


async def test_patch_type_mismatch_leaves_storage(live: Live) -> None:
    await live.request("POST", "p", {"a": {"x": 1}})
    before = await live.get("p")
    status, body = await live.request("PATCH", "p", {"a": 5})
    assert (status, body) == (400, b'merge: patch value must be object for key "a"')
    assert await live.get("p") == before
    # the lock was released: a valid patch still works
    assert (await live.request("PATCH", "p", {"a": {"y": 1}}))[0] == 200


async def test_patch_errors(live: Live) -> None:
    await live.request("POST", "p", {"a": 1})
    assert await live.request("PATCH", "p/*", {"a": 1}) == (
        400,
        b"ooo: glob pattern not allowed for this operation",
    )
    assert (await live.request("PATCH", "p", b""))[0] == 400
    assert (await live.request("PATCH", "p", b"{nope"))[0] == 400
    assert (await live.request("PATCH", "a//b", b"{}"))[0] == 400


async def test_delete(live: Live) -> None:
    await live.request("POST", "d/1", 1)
    await live.request("POST", "d/2", 2)
    assert await live.request("DELETE", "d/1") == (204, b"")
    assert await live.request("DELETE", "d/1") == (404, b"storage: not found")
    assert await live.request("DELETE", "d/*") == (204, b"")
    assert await live.request("DELETE", "d/*") == (204, b"")
    assert await live.get("d/*") == []
    assert (await live.request("DELETE", "d//1"))[0] == 400


async def test_methods(live: Live) -> None:
    for method in ["PUT", "HEAD", "TRACE"]:
        assert (await live.request(method, "k"))[0] == 405, method
    assert (await live.request("POST", "", b"1"))[0] == 405


async def test_cors(live: Live) -> None:
    async with live.http.options(live.url("k")) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    async with live.http.get(live.url("missing")) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_root(live: Live) -> None:
    for k in ["b", "a/1", "a/2"]:
        await live.request("POST", k, 1)
    status, body = await live.request("GET", "", headers={"Accept": "application/json"})
    assert (status, orjson.loads(body)) == (200, {"keys": ["a/1", "a/2", "b"]})
    status, body = await live.request("GET", "?api=keys&page=1&limit=1&filter=a/*")
    assert orjson.loads(body) == {"keys": ["a/1"], "total": 2, "page": 1, "limit": 1, "filter": "a/*"}
    status, body = await live.request("GET", "?api=keys&page=2&limit=1&filter=a/*")
    assert orjson.loads(body)["keys"] == ["a/2"]
    assert (await live.request("GET", "?api=keys&limit=501"))[0] == 400
    assert (await live.request("GET", "?api=keys&limit=0"))[0] == 400
    for api in ["info", "filters", "state"]:
        status, body = await live.request("GET", f"?api={api}")
        assert status == 200 and isinstance(orjson.loads(body), dict)
    assert orjson.loads((await live.request("GET", "?api=state"))[1]) == {
        "pools": [],
        "totalConnections": 0,
        "slowDisconnects": 0,
    }
    async with live.http.get(live.base + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "a/1" in await resp.text()


async def test_storage_failure_is_503_not_traceback(live: Live) -> None:
    await live.store.close()
    status, body = await live.request("GET", "k")
    assert (status, body) == (503, b"storage: storage is not active")
    await live.store.start()
