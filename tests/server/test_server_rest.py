"""Every REST row and status code of PROTOCOL.md §4, against a real server."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from urllib.parse import urlsplit

import orjson
import pytest
from server_live import Live, LiveFactory

from ooo_storage.server import offload
from ooo_storage.server.errors import BadRequestLogFilter


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
    """A 405 says which methods the path takes (RFC 9110: ``Allow`` is required with a 405)."""
    for method in ["PUT", "TRACE", "PROPFIND"]:
        async with live.http.request(method, live.url("k")) as resp:
            assert resp.status == 405, method
            assert resp.headers["Allow"] == "GET, POST, PATCH, DELETE, HEAD, OPTIONS"
    async with live.http.request("PUT", live.url("")) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert (await live.request("POST", "", b"1"))[0] == 405


async def test_cors(make_live: LiveFactory) -> None:
    # Any origin only when the operator says so; the rules are in test_server_origin.py.
    live = await make_live(allowed_origins=["*"])
    page = {"Origin": "http://any.example"}
    async with live.http.options(live.url("k"), headers=page) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    async with live.http.get(live.url("missing"), headers=page) as resp:
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
        "conflations": 0,
    }
    async with live.http.get(live.base + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
        assert 'id="tree"' in page and "a/1" not in page  # the explorer: it reads the keys itself


async def test_storage_failure_is_503_not_traceback(live: Live) -> None:
    await live.store.close()
    status, body = await live.request("GET", "k")
    assert (status, body) == (503, b"storage: storage is not active")
    await live.store.start()


# -- bad input is a 4xx with one INFO line, never a 500 with a traceback (issue 8 item 5) ---------


def _nested(depth: int, leaf: bytes) -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


BAD_REQUESTS = [
    ("POST", "bad/1", b"[" * 1000 + b"123456789012345678901234" + b"]" * 1000, {}, 400),
    ("POST", "bad/2", b"garbage!!", {"Content-Encoding": "deflate"}, 400),
    ("POST", "bad/3", b"garbage!!", {"Content-Encoding": "gzip"}, 400),
    ("PATCH", "bad/deep", _nested(400, b"2"), {}, 400),
    ("GET", "?api=keys&page=18446744073709551617", None, {}, 400),
    ("GET", "?api=keys&page=9223372036854775809", None, {}, 400),
    ("GET", "?api=keys&limit=1e3", None, {}, 400),
]


@pytest.mark.parametrize(("method", "key", "body", "headers", "expected"), BAD_REQUESTS)
async def test_bad_input_is_4xx_logged_as_one_info_line(
    live: Live, caplog: pytest.LogCaptureFixture, method: str, key: str, body: bytes | None,
    headers: dict[str, str], expected: int,
) -> None:
    assert (await live.request("POST", "bad/deep", _nested(400, b"1")))[0] == 200
    caplog.clear()
    with caplog.at_level("INFO"):
        status, reply = await live.request(method, key, body, headers=headers)
        assert status == expected, reply
        assert (await live.request("GET", "bad/deep"))[0] == 200  # the server still serves
    assert [r for r in caplog.records if r.levelname != "INFO" or r.exc_info] == []
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "\n" not in refused[0] and reply.decode() in refused[0]


async def test_a_valid_compressed_body_is_still_accepted(live: Live) -> None:
    status, _ = await live.request("POST", "gz/1", gzip.compress(b'{"a": 1}'),
                                   headers={"Content-Encoding": "gzip"})
    assert status == 200 and (await live.get("gz/1"))["data"] == {"a": 1}


# -- large JSON work (issue 8 item 4, first bullet) ------------------------------------------------

LARGE = 600_000  # bytes of JSON: over offload.INLINE_BYTES, so parsed and merged by the worker


def _document(variant: int, size: int = LARGE) -> dict[str, object]:
    entries = size // 90
    return {f"k{i}": {"name": f"item {i} v{variant}", "value": i * variant, "big": 10**30 + i}
            for i in range(entries)}


def _text(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def test_large_patch_and_post_give_what_small_ones_give(live: Live) -> None:
    base, patch = _document(1), _document(2)
    patch["extra"] = {"n": -(10**40)}
    assert (await live.request("POST", "large/1", _text(base)))[0] == 200
    status, body = await live.request("PATCH", "large/1", _text(patch))
    assert status == 200, body
    expected = {**base, **patch}
    assert json.loads((await live.request("GET", "large/1"))[1])["data"] == expected
    # stored compact with sorted keys, like a small merge
    raw = (await live.store.get("large/1")).data
    assert raw == json.dumps(expected, separators=(",", ":"), sort_keys=True).encode()


async def test_large_bodies_are_refused_like_small_ones(live: Live) -> None:
    invalid = b'{"a": [' + b"1," * LARGE + b"]"
    assert (await live.request("POST", "large/2", invalid))[0] == 400
    assert (await live.request("PATCH", "large/missing", invalid))[0] == 400  # body first
    large = _text(_document(1))
    assert (await live.request("PATCH", "large/missing", large))[0] == 404
    await live.request("POST", "large/3", {"k1": {"x": 1}})
    mismatch = _text({**_document(1), "k1": 3})
    status, body = await live.request("PATCH", "large/3", mismatch)
    assert (status, body) == (400, b'merge: patch value must be object for key "k1"')
    assert (await live.get("large/3"))["data"] == {"k1": {"x": 1}}
    assert (await live.request("PATCH", "large/3", {"k1": {"y": 1}}))[0] == 200  # lock released


async def test_merged_document_larger_than_the_body_cap_is_413(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=1000)
    await live.request("POST", "m/1", {"a": "x" * 600})
    status, body = await live.request("PATCH", "m/1", {"b": "y" * 600})
    assert status == 413 and body.startswith(b"ooo: merged document too large")
    assert (await live.get("m/1"))["data"] == {"a": "x" * 600}
    assert (await live.request("PATCH", "m/1", {"c": 1}))[0] == 200  # lock released


async def test_large_patch_does_not_stall_the_event_loop(live: Live) -> None:
    """The server runs in this process: while it merges a ~9 MB document the loop must keep
    running (the old code stalled it for nearly the whole PATCH)."""
    size = 9_000_000
    await live.request("POST", "big/doc", _text(_document(1, size)))
    body = _text(_document(2, size))
    loop = asyncio.get_running_loop()
    wakes = [loop.time()]

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.005)
            wakes.append(loop.time())

    watcher = asyncio.create_task(watch())
    status, _ = await live.request("PATCH", "big/doc", body)
    wakes.append(loop.time())  # a stall still running when the PATCH ended counts too
    watcher.cancel()
    assert status == 200
    took = wakes[-1] - wakes[0]
    stalls = [b - a for a, b in zip(wakes, wakes[1:], strict=False)]
    assert max(stalls) < took / 4, (max(stalls), took)


async def test_a_dead_json_worker_is_replaced(live: Live) -> None:
    assert (await live.request("POST", "w/1", _text(_document(1))))[0] == 200
    proc = offload._worker._proc
    assert proc is not None and proc.poll() is None
    proc.kill()
    proc.wait()
    assert (await live.request("POST", "w/1", _text(_document(2))))[0] == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /a/1 HTTP/1.1\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nxx",
        b"GET /a/1 HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /a/1 HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ],
)
async def test_requests_aiohttp_refuses_itself_are_one_info_line_with_the_filter(
    live: Live, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    logger = logging.getLogger("aiohttp.server")
    quiet = BadRequestLogFilter()
    logger.addFilter(quiet)
    port = urlsplit(live.base).port
    request = head.replace(b"\r\n", b"\r\nHost: 127.0.0.1:%d\r\n" % port, 1)
    try:
        with caplog.at_level("INFO"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status_line = await reader.readline()
            await reader.read()  # aiohttp closes the connection after such a request
            writer.close()
    finally:
        logger.removeFilter(quiet)
    assert status_line.split()[1] == b"400"
    logged = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [(r.levelname, r.exc_info) for r in logged] == [("INFO", None)]
    assert "refused: 400" in logged[0].getMessage() and "\n" not in logged[0].getMessage()
