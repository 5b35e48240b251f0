"""Glob GETs (issue 8 item 4, second bullet): ``?limit=``/``?cursor=`` pages, the default cap and
its headers, read filters, and bodies streamed at the reader's pace."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from server_live import Live, LiveFactory

from ooo_storage.protocol.objects import Object


async def _page(live: Live, key: str, **query: Any) -> tuple[list[dict[str, Any]], Any]:
    async with live.http.get(live.url(key), params={k: str(v) for k, v in query.items()}) as resp:
        body = await resp.read()
        assert resp.status == 200, body
        return orjson.loads(body), resp.headers


async def _fill(live: Live, prefix: str, n: int) -> list[str]:
    """``n`` keys ``prefix/<i>`` created in order; returns their paths newest first."""
    for i in range(n):
        assert (await live.request("POST", f"{prefix}/{i}", {"i": i}))[0] == 200
    return [f"{prefix}/{i}" for i in reversed(range(n))]


async def _walk(live: Live, key: str, limit: int) -> list[str]:
    """Every page of ``key`` following X-Next-Cursor; the paths seen, in order."""
    seen: list[str] = []
    items, headers = await _page(live, key, limit=limit)
    while True:
        seen += [o["path"] for o in items]
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            return seen
        items, headers = await _page(live, key, limit=limit, cursor=cursor)


async def test_default_cap_truncates_and_says_so(make_live: LiveFactory) -> None:
    live = await make_live(list_limit=5)
    paths = await _fill(live, "items", 12)
    items, headers = await _page(live, "items/*")
    assert [o["path"] for o in items] == paths[:5]
    assert headers["X-List-Truncated"] == "true"
    cursor = headers["X-Next-Cursor"]
    link = headers["Link"]
    assert link.startswith("</items/*?") and link.endswith('>; rel="next"')
    query = parse_qs(urlsplit(link[1 : link.index(">")]).query)
    assert query == {"limit": ["5"], "cursor": [cursor]}
    items, headers = await _page(live, "items/*", cursor=cursor)
    assert [o["path"] for o in items] == paths[5:10]
    items, _ = await _page(live, "items/*", limit="", cursor="")  # empty: the defaults
    assert [o["path"] for o in items] == paths[:5]
    items, headers = await _page(live, "items/*", limit=50)  # above the cap: the cap
    assert [o["path"] for o in items] == paths[:5] and headers["X-List-Truncated"] == "true"


async def test_pages_cover_the_list_exactly_once_in_order(make_live: LiveFactory) -> None:
    live = await make_live(list_limit=5)
    paths = await _fill(live, "items", 13)
    for limit in (1, 4, 5):
        assert await _walk(live, "items/*", limit) == paths
    items, headers = await _page(live, "items/*", limit=5, cursor=_cursor(live, paths[7]))
    assert [o["path"] for o in items] == paths[8:13] and "X-Next-Cursor" not in headers


def _cursor(live: Live, path: str) -> str:
    obj = live.store.peek(path)
    assert obj is not None
    return base64.urlsafe_b64encode(f"{obj.created}:{path}".encode()).rstrip(b"=").decode()


async def test_a_cursor_is_stable_under_concurrent_writes(live: Live) -> None:
    paths = await _fill(live, "items", 10)
    first, headers = await _page(live, "items/*", limit=3)
    assert [o["path"] for o in first] == paths[:3]
    # meanwhile: newer items, an overwrite (keeps its place), a delete of an item not seen yet
    for i in range(3):
        await live.request("POST", f"items/n{i}", {"late": i})
    await live.request("POST", paths[5], {"changed": True})
    await live.request("DELETE", paths[6])
    rest: list[str] = []
    cursor = headers["X-Next-Cursor"]
    while cursor:
        items, headers = await _page(live, "items/*", limit=3, cursor=cursor)
        rest += [o["path"] for o in items]
        cursor = headers.get("X-Next-Cursor")
    assert rest == [p for p in paths[3:] if p != paths[6]]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=0", b"limit must be a whole number from 1 (a page holds at most 5 items)"),
        ("limit=-1", b"limit must be"),
        ("limit=abc", b"limit must be"),
        ("limit=1e3", b"limit must be"),
        ("limit=99999999999999999999999", b"limit must be"),
        ("cursor=!!!", b"invalid cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"x:items/1").decode(), b"invalid cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"12:a//b").decode(), b"invalid cursor"),
        ("cursor=" + "A" * 5000, b"invalid cursor"),
    ],
)
async def test_bad_limit_or_cursor_is_400_with_the_reason(
    make_live: LiveFactory, query: str, reason: bytes
) -> None:
    live = await make_live(list_limit=5)
    await _fill(live, "items", 2)
    status, body = await live.request("GET", f"items/*?{query}")
    assert status == 400 and reason in body, body


async def test_a_small_list_is_one_plain_response(live: Live) -> None:
    paths = await _fill(live, "items", 3)
    async with live.http.get(live.url("items/*")) as resp:
        assert resp.headers["Content-Length"] == str(len(await resp.read()))
        assert "X-List-Truncated" not in resp.headers and "X-Next-Cursor" not in resp.headers
        assert [o["path"] for o in orjson.loads(await resp.read())] == paths


async def test_a_read_list_filter_is_cut_after_it_ran_and_refuses_cursors(
    make_live: LiveFactory,
) -> None:
    live = await make_live(list_limit=5)
    live.server.read_list_filter("items/*", lambda key, objs: objs[::-1])  # oldest first
    paths = await _fill(live, "items", 8)
    items, headers = await _page(live, "items/*", limit=3)
    assert [o["path"] for o in items] == paths[::-1][:3]
    assert headers["X-List-Truncated"] == "true"
    assert "X-Next-Cursor" not in headers and "Link" not in headers
    status, body = await live.request("GET", f"items/*?cursor={_cursor(live, paths[0])}")
    assert status == 400 and b"read-list filter" in body


async def test_an_object_filter_hides_items_and_pages_skip_them(live: Live) -> None:
    def even_only(key: str, obj: Object) -> Object | None:
        return obj if orjson.loads(obj.data)["i"] % 2 == 0 else None

    live.server.read_object_filter("items/*", even_only)
    paths = await _fill(live, "items", 11)
    assert await _walk(live, "items/*", 2) == [p for p in paths if int(p.split("/")[1]) % 2 == 0]


async def test_limit_filter_pages_in_its_own_order(live: Live) -> None:
    live.server.limit_filter("logs/*", limit=6, order="asc")
    for i in range(10):
        assert (await live.request("POST", "logs/*", {"i": i}))[0] == 200
    whole, _ = await _page(live, "logs/*")
    assert [o["data"]["i"] for o in whole] == [4, 5, 6, 7, 8, 9]  # the 6 newest, oldest first
    first, headers = await _page(live, "logs/*", limit=4)
    rest, headers2 = await _page(live, "logs/*", limit=4, cursor=headers["X-Next-Cursor"])
    assert first + rest == whole and "X-Next-Cursor" not in headers2


async def test_a_large_list_is_streamed_in_chunks(live: Live) -> None:
    value = {"text": "x" * 1000}
    for i in range(300):
        await live.request("POST", f"big/{i:03}", value)
    async with live.http.get(live.url("big/*")) as resp:
        body = await resp.read()
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in resp.headers
    expected = await live.store.get_list_descending("big/*")
    assert body == b"[" + b",".join(o.to_json() for o in expected) + b"]"


async def test_the_key_listing_of_the_explorer_is_streamed_too(live: Live) -> None:
    for i in range(10_000):
        await live.store.set(f"k/{i:05}", b"1")
    async with live.http.get(live.base + "/", headers={"Accept": "application/json"}) as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert orjson.loads(await resp.read()) == {"keys": [f"k/{i:05}" for i in range(10_000)]}


@contextmanager
def _on_log(text: str) -> Iterator[asyncio.Event]:
    """An event set when the server logs a line containing ``text``."""
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                loop.call_soon_threadsafe(seen.set)

    handler = Handler()
    logger = logging.getLogger("ooo_storage.server")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def test_a_peer_that_reads_nothing_holds_one_chunk_then_is_cut_off(
    make_live: LiveFactory,
) -> None:
    """20 MB of list for a client that never reads: the server writes what the socket takes,
    waits, and after write_timeout closes the connection (the old code queued all 20 MB)."""
    live = await make_live(write_timeout=0.5)
    value = b'{"blob":"%s"}' % (b"y" * 100_000)
    for i in range(200):
        await live.store.set(f"blob/{i:03}", value)
    port = int(urlsplit(live.base).port or 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    with _on_log("peer read nothing") as cut_off:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET /blob/* HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        async with asyncio.timeout(10):
            await cut_off.wait()
    received = 0
    try:
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 1 << 16):
                received += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert received < 20_000_000 // 4, received


async def test_a_sparse_glob_pages_within_a_visit_budget(
    make_live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A glob that matches few of many keys costs each request a bounded walk: short (even empty)
    pages with a cursor to go on from; followed to the end they hold exactly the matches."""
    from ooo_storage.server import lists

    monkeypatch.setattr(lists, "PAGE_VISIT", 50)
    live = await make_live()
    for i in range(400):
        await live.store.set(f"items/{i}", i)
    await live.store.set("x/k1", 1)
    for i in range(400, 420):
        await live.store.set(f"items/{i}", i)
    got: list[str] = []
    cursor: str | None = None
    requests = 0
    while True:
        items, headers = await _page(live, "*/k1", limit=1, **({"cursor": cursor} if cursor else {}))
        requests += 1
        got.extend(o["path"] for o in items)
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert got == ["x/k1"]
    assert requests >= 421 // 50  # each request walked at most 50 keys
