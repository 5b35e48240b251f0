"""The lean HTTP front (server/front.py): the same bytes on the wire as aiohttp, pipelining in order,
a connection handed to aiohttp mid-way, bounded memory for a client that does not read, and a
client gone mid-body. Real servers on 127.0.0.1 over real stores, raw sockets."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from raw_http import END, HOST, exchange, responses

from ooo_storage import Layered, MemoryLayer
from ooo_storage.protocol.access import RIGHTS, Policy, token_digest
from ooo_storage.protocol.objects import Object
from ooo_storage.protocol.pages import encode_cursor, json_array
from ooo_storage.server import Server, ServerRunner, lists
from ooo_storage.server.chunked import CHUNK_BYTES
from ooo_storage.server.front import MAX_PENDING, Front

DOC = orjson.dumps({"name": "Ada Lovelace", "email": "ada@example.org", "age": 36, "tags": ["math", "poetry"],
                    "address": {"city": "London", "street": "St James's Square 12"}, "ok": True})
EVERYWHERE = ["*", "*/*", "*/*/*"]
TXN = orjson.dumps({"expect": {"front/u": None}, "ops": [
    {"op": "set", "key": "front/u", "data": {"n": 1}}, {"op": "patch", "key": "front/t", "data": {"age": 37}},
    {"op": "del", "key": "front/none/*"}]})
"""A transaction that commits (once: it expects ``front/u`` not to exist, then makes it)."""
CONFLICT = orjson.dumps({"expect": {"front/t": None}, "ops": [{"op": "set", "key": "front/u", "data": 1}]})
"""A transaction that conflicts once ``front/t`` exists (a 409 with a JSON body)."""


def req(method: str, path: str, body: bytes | None = None, headers: bytes = HOST, version: str = "1.1") -> bytes:
    head = f"{method} {path} HTTP/{version}\r\n".encode() + headers
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


def masked(raw: bytes) -> bytes:
    """``raw`` without what differs between two servers: the Date, the port in messages, the times
    of each write (in objects, a transaction's revision, and in list cursors, which keep the path
    they name)."""
    raw = re.sub(rb"Date: [^\r]*", b"Date: -", raw)
    raw = re.sub(rb'"(created|updated)":\d+', rb'"\1":-', raw)
    raw = re.sub(rb'"revision":"[0-9a-f]+"', b'"revision":-', raw)  # a transaction's: a time
    raw = re.sub(rb"(X-Next-Cursor: |cursor=)([A-Za-z0-9_-]+)", _cursor_path, raw)
    return re.sub(rb"127\.0\.0\.1:\d+", b"127.0.0.1:PORT", raw)


def _cursor_path(match: re.Match[bytes]) -> bytes:
    cursor = match.group(2)
    created, _, path = base64.urlsafe_b64decode(cursor + b"=" * (-len(cursor) % 4)).partition(b":")
    assert created.isdigit()
    return match.group(1) + b"<" + path + b">"


class Pair:
    """The same requests on two servers: aiohttp's and the front's, each over its own memory store
    (so that each sees the same history: the times inside objects aside, the same answers)."""

    def __init__(self, plain: ServerRunner, lean: ServerRunner) -> None:
        self.plain, self.lean = plain, lean
        self.store = lean.server.store

    async def both(self, data: bytes, end: bytes = END) -> tuple[bytes, bytes]:
        """What aiohttp answers to ``data`` on a new connection, then what the front answers."""
        old = await exchange(self.plain.port, data, end)
        new = await exchange(self.lean.port, data, end)
        return masked(old), masked(new)


@pytest.fixture
async def pair_factory() -> AsyncIterator[Any]:
    opened: list[tuple[Layered, ServerRunner]] = []

    async def make(**options: Any) -> Pair:
        runners = []
        for engine in ("aiohttp", "lean"):
            store = Layered(memory=MemoryLayer())
            await store.start()
            server = Server(store, shutdown_timeout=1.0, http_engine=engine, **options)
            runner = ServerRunner(store, "127.0.0.1", 0, server=server)
            await runner.start()
            runners.append(runner)
            opened.append((store, runner))
        return Pair(*runners)

    yield make
    for store, runner in opened:
        await runner.stop()
        await store.close()


def fronts(runner: ServerRunner) -> list[Front]:
    assert runner.gate is not None
    return [c for c in runner.gate.open if isinstance(c, Front)]


# Byte for byte what aiohttp answers


CASES = {
    "post": req("POST", "/front/a", DOC),
    "get": req("POST", "/front/a", DOC) + req("GET", "/front/a"),
    "get-missing": req("GET", "/front/missing"),
    "bad-key": req("POST", "/front//bad", DOC) + req("GET", "/front/a/"),
    "bad-chars": req("GET", "/front/%41"),
    "405": req("PUT", "/front/a", DOC),
    "head": req("HEAD", "/front/a"),
    "413": req("POST", "/front/a", b"[" + b"1," * 600 + b"1]"),
    "bad-json": req("POST", "/front/a", b"{nope"),
    "empty-body": req("POST", "/front/a", b""),
    "no-length": b"POST /front/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "patch": req("POST", "/front/p", DOC) + req("PATCH", "/front/p", b'{"age": 37}') + req("GET", "/front/p"),
    "patch-missing": req("PATCH", "/front/none", b'{"age": 37}'),
    "patch-glob": req("PATCH", "/front/*", b'{"age": 37}'),
    "delete": req("POST", "/front/d", DOC) + req("DELETE", "/front/d") + req("DELETE", "/front/d"),
    "glob-get": req("GET", "/front/*"),
    "query": req("GET", "/front/a?limit=1"),
    "bad-host": req("GET", "/front/a", headers=b"Host: evil.example\r\n"),
    "no-host": req("GET", "/front/a", headers=b""),
    "http10": req("GET", "/front/a", version="1.0"),
    "keep-alive": req("GET", "/front/a", headers=HOST + b"Connection: keep-alive\r\n"),
    "close": req("GET", "/front/a", headers=HOST + b"Connection: close\r\n"),
    "malformed": b"GET /front/a HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    "bare-lf": b"GET /front/a HTTP/1.1\nHost: 127.0.0.1\n\n",
    "origin-allowed": req("GET", "/front/a", headers=HOST + b"Origin: http://good.example\r\n")
    + req("GET", "/front/none", headers=HOST + b"Origin: http://good.example\r\n")
    + req("DELETE", "/front/none", headers=HOST + b"Origin: http://good.example\r\n"),
    "origin-refused": req("POST", "/front/o", DOC, headers=HOST + b"Origin: http://evil.example\r\n"),
    "chunked": b"POST /front/a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "gzip": req("POST", "/front/a", b"{}", headers=HOST + b"Content-Encoding: gzip\r\n"),
    "upgrade-missing": req("GET", "/front/a", headers=HOST + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"),
    "push": req("POST", "/front/logs/*", DOC) + req("DELETE", "/front/logs/*"),
    "head-found": req("POST", "/front/h", DOC) + req("HEAD", "/front/h") + req("GET", "/front/h"),
    "head-bad-key": req("HEAD", "/front//bad") + req("HEAD", "/front/%41") + req("HEAD", "/front/a/"),
    "head-glob": req("POST", "/front/g/a", DOC) + req("HEAD", "/front/g/*") + req("HEAD", "/front/g/*?limit=1")
    + req("HEAD", "/front/g/*?limit=0") + req("HEAD", "/front/none/*"),
    "head-body": req("HEAD", "/front/a", b"{}"),
    "head-origin": req("POST", "/front/h", DOC) + req("HEAD", "/front/h", headers=HOST + b"Origin: http://good.example\r\n")
    + req("HEAD", "/front/h", headers=HOST + b"Origin: http://evil.example\r\n"),
    # POST /?api=txn (issue 12): committed, conflicting (409 JSON), malformed, too large, CORS, refused
    "txn": req("POST", "/front/t", DOC) + req("POST", "/?api=txn", TXN) + req("GET", "/front/t") + req("GET", "/front/u"),
    "txn-409": req("POST", "/front/t", DOC) + req("POST", "/?api=txn", CONFLICT) + req("GET", "/front/u"),
    "txn-400": req("POST", "/?api=txn", b"{") + req("POST", "/?api=txn", b'{"ops": []}') + req("POST", "/?api=txn", b""),
    "txn-bad-key": req("POST", "/?api=txn", b'{"ops": [{"op": "set", "key": "a//b", "data": 1}]}'),
    "txn-413": req("POST", "/?api=txn", b'{"ops": [{"op": "set", "key": "a", "data": "' + b"x" * 1000 + b'"}]}'),
    "txn-origin": req("POST", "/?api=txn", TXN, headers=HOST + b"Origin: http://good.example\r\n")
    + req("POST", "/?api=txn", CONFLICT, headers=HOST + b"Origin: http://good.example\r\n")
    + req("POST", "/?api=txn", TXN, headers=HOST + b"Origin: http://evil.example\r\n"),
    "txn-not-ours": req("POST", "/?api=txn&x=1", TXN) + req("GET", "/?api=txn") + req("PATCH", "/?api=txn", TXN)
    + req("POST", "/?api=txn", TXN, headers=HOST + b"Content-Encoding: gzip\r\n"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_front_answers_byte_for_byte_like_aiohttp(pair_factory: Any, case: str) -> None:
    pair = await pair_factory(max_body_bytes=1000, allowed_origins=["http://good.example"])
    old, new = await pair.both(CASES[case])
    if case == "push":  # a push makes a new key each time: its index differs
        old, new = (re.sub(rb'"index":"[^"]*"', b'"index":"-"', b) for b in (old, new))
    assert new == old
    assert new.startswith(b"HTTP/1.")


async def test_a_full_disk_and_a_missing_store_answer_like_aiohttp(pair_factory: Any) -> None:
    pair = await pair_factory()
    for runner in (pair.plain, pair.lean):
        await runner.server.store.close()  # 503, "not active", for every request
    burst = req("POST", "/front/a", DOC) + req("POST", "/front/b", DOC)  # a pipelined run
    for data in (req("POST", "/front/a", DOC), burst, req("GET", "/front/a"), req("DELETE", "/front/a")):
        old, new = await pair.both(data)
        assert new == old
        assert new.startswith(b"HTTP/1.1 503 ")


def policy(*tokens: dict[str, Any]) -> Policy:
    return Policy.from_dict({
        "tokens": [*tokens,
            {"name": "none", "sha256": token_digest("none"), "rules": [{"paths": ["open/*"], "rights": ["read"]}]},
            {"name": "root", "sha256": token_digest("root"), "rules": [{"paths": EVERYWHERE, "rights": list(RIGHTS)}]},
            {"name": "reader", "sha256": token_digest("reader"), "rules": [{"paths": EVERYWHERE, "rights": ["read"]}]},
        ],
        "anonymous": {"rules": [{"paths": ["open/*"], "rights": ["read"]}]},
        "namespaces": [{"name": "front", "prefix": "front/"}],
    })


def bearer(token: str | None) -> bytes:
    return HOST if token is None else HOST + f"Authorization: Bearer {token}\r\n".encode()


@pytest.mark.parametrize(
    ("token", "method", "status"),
    [(None, "POST", b"401"), ("wrong", "POST", b"401"), ("reader", "POST", b"403"), ("root", "POST", b"200"),
     ("reader", "GET", b"200"), ("reader", "DELETE", b"403"), (None, "GET", b"401"), ("root", "DELETE", b"204"),
     ("root", "PATCH", b"200"), ("reader", "PATCH", b"403"), ("root", "GET", b"200"),
     ("reader", "HEAD", b"200"), (None, "HEAD", b"401"), ("wrong", "HEAD", b"401"), ("none", "HEAD", b"403")],
)
async def test_an_access_policy_answers_like_aiohttp(
    pair_factory: Any, token: str | None, method: str, status: bytes
) -> None:
    pair = await pair_factory(auth=policy())
    setup = req("POST", "/front/a", DOC, headers=bearer("root"))
    body = b'{"age": 1}' if method in ("POST", "PATCH") else None
    old, new = await pair.both(setup + req(method, "/front/a", body, headers=bearer(token)))
    assert new == old
    assert new.split(b"HTTP/1.1 ")[2].startswith(status)


async def test_a_refused_post_whose_body_is_arriving_is_answered_and_closed_like_aiohttp(
    pair_factory: Any,
) -> None:
    """docs/protocol.md §9.3: a refused request whose body is still arriving is answered at once and
    its connection closed, the body not read (the front waited for the whole body first: with a
    body timeout of 600 s, about 37 s)."""
    pair = await pair_factory(auth=policy(), body_timeout=600.0)
    head = b"POST /front/a HTTP/1.1\r\n" + bearer("reader") + b"Content-Length: 1000\r\n\r\n"
    old, new = await pair.both(head + b'{"a":"' + b"x" * 100, end=b"")  # the rest never comes
    assert new == old
    assert responses(new) == [(403, b"ooo: forbidden: reader may not write front/a")]


async def test_anonymous_reads_allowed_by_the_policy_and_usage_counts_match(pair_factory: Any) -> None:
    pair = await pair_factory(auth=policy())
    data = (req("POST", "/front/a", DOC, headers=bearer("root")) + req("GET", "/front/a", headers=bearer("root"))
            + req("GET", "/open/x") + req("GET", "/front/a", headers=bearer("reader")) * 3
            + req("GET", "/front/a") + req("HEAD", "/front/a", headers=bearer("reader")))  # a HEAD counts nowhere
    old, new = await pair.both(data)
    assert new == old
    stats = []
    for runner in (pair.plain, pair.lean):
        report = responses(await exchange(runner.port, req("GET", "/?api=stats", headers=bearer("root"))))[0][1]
        stats.append(orjson.loads(report)["namespaces"])
    assert stats[0] == stats[1]
    assert stats[1][0]["requests"]["lastHour"] == 5  # the anonymous GET of front/a was refused


@pytest.mark.parametrize("options", [{}, {"auth": policy()}, {"allowed_origins": ["http://good.example"]}])
async def test_plain_requests_stay_on_the_front(pair_factory: Any, options: dict[str, Any]) -> None:
    pair = await pair_factory(**options)
    headers = bearer("root") + (b"Origin: http://good.example\r\n" if "allowed_origins" in options else b"")
    data = (req("POST", "/stay/a", DOC, headers=headers) + req("GET", "/stay/a", headers=headers)
            + req("PATCH", "/stay/a", b"{}", headers=headers) + req("DELETE", "/stay/a", headers=headers)
            + req("GET", "/stay/a", headers=headers))
    lists = (fill("stay", 100, headers=headers) + req("GET", "/stay/*", headers=headers)
             + req("GET", "/stay/*?limit=10", headers=headers)
             + req("GET", f"/stay/*?cursor={ALL}&limit=3", headers=headers)
             + req("GET", "/stay/*?limit=0", headers=headers) + req("GET", "/st*/0", headers=headers))
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(data + lists)
        raw = b""
        while raw.count(b"HTTP/1.1 ") < 110:
            raw += await asyncio.wait_for(reader.read(65536), 10)
        answers = responses(raw)
        assert [s for s, _ in answers[:5]] == [200, 200, 200, 204, 404]
        assert [s for s, _ in answers[105:]] == [200, 200, 200, 400, 200]
        assert [len(orjson.loads(b)) for _, b in answers[105:108]] == [100, 10, 3]
        [front] = fronts(pair.lean)
        assert front.handler is None  # no aiohttp handler: the front answered them all
    finally:
        writer.close()


@pytest.mark.parametrize("options", [{}, {"auth": policy()}, {"allowed_origins": ["http://good.example"]}])
async def test_heads_stay_on_the_front(pair_factory: Any, options: dict[str, Any]) -> None:
    """A HEAD is answered here, its head only: the connection goes on with the next request."""
    pair = await pair_factory(**options)
    headers = bearer("root") + (b"Origin: http://good.example\r\n" if "allowed_origins" in options else b"")
    data = (req("POST", "/hs/a", DOC, headers=headers) + req("HEAD", "/hs/a", headers=headers)
            + req("HEAD", "/hs/none", headers=headers) + req("HEAD", "/hs/*", headers=headers)
            + req("GET", "/hs/a", headers=headers))
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(data)
        raw = b""
        while not raw.endswith(b'"data":' + orjson.dumps(orjson.loads(DOC)) + b"}"):
            raw += await asyncio.wait_for(reader.read(65536), 10)
        heads = raw.split(b"\r\n\r\n")
        assert [h.split(b" ", 2)[1] for h in heads[1:4]] == [b"200", b"404", b"200"]
        assert heads[2].startswith(b"HTTP/1.1 ") and heads[3].startswith(b"HTTP/1.1 ")  # no body between
        [front] = fronts(pair.lean)
        assert front.handler is None  # the front answered them all
    finally:
        writer.close()


# Transactions: POST /?api=txn


@pytest.mark.parametrize("options", [{}, {"auth": policy()}, {"allowed_origins": ["http://good.example"]}])
async def test_transactions_stay_on_the_front(pair_factory: Any, options: dict[str, Any]) -> None:
    """Committed, conflicting and malformed transactions are answered here, pipelined with key
    requests (the old front handed the connection to aiohttp at the first one)."""
    pair = await pair_factory(**options)
    headers = bearer("root") + (b"Origin: http://good.example\r\n" if "allowed_origins" in options else b"")
    data = (req("POST", "/front/t", DOC, headers=headers) + req("POST", "/?api=txn", TXN, headers=headers)
            + req("POST", "/?api=txn", CONFLICT, headers=headers) + req("POST", "/?api=txn", b"{", headers=headers)
            + req("GET", "/front/u", headers=headers))
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(data)
        raw = b""
        while not raw.endswith(b'"data":{"n":1}}'):
            raw += await asyncio.wait_for(reader.read(65536), 10)
        answers = responses(raw)
        assert [s for s, _ in answers] == [200, 200, 409, 400, 200]
        assert orjson.loads(answers[2][1])["keys"] == ["front/t"]
        [front] = fronts(pair.lean)
        assert front.handler is None  # no aiohttp handler: the front answered them all
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("token", "status"), [("root", b"200"), ("reader", b"403"), ("none", b"403"), ("wrong", b"401"), (None, b"401")]
)
async def test_transactions_under_an_access_policy_answer_like_aiohttp(
    pair_factory: Any, token: str | None, status: bytes
) -> None:
    """The principal of the token decides each op (``txn.run``), and each op counts once in its
    namespace's usage, on both engines alike."""
    pair = await pair_factory(auth=policy())
    setup = req("POST", "/front/t", DOC, headers=bearer("root"))
    old, new = await pair.both(setup + req("POST", "/?api=txn", TXN, headers=bearer(token)))
    assert new == old
    assert new.split(b"HTTP/1.1 ")[2].startswith(status)
    stats = []
    for runner in (pair.plain, pair.lean):
        report = responses(await exchange(runner.port, req("GET", "/?api=stats", headers=bearer("root"))))[0][1]
        stats.append(orjson.loads(report)["namespaces"])
    assert stats[1] == stats[0]


async def test_transactions_are_counted_and_logged_like_aiohttp(
    pair_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``ooo_http_requests_total`` (route root, method POST) and the access log see a transaction
    answered here as they see it under aiohttp (the old front left both to aiohttp)."""
    pair = await pair_factory(access_log=True)
    data = (req("POST", "/front/t", DOC) + req("POST", "/?api=txn", TXN) + req("POST", "/?api=txn", CONFLICT)
            + req("POST", "/?api=txn", b"{"))
    with caplog.at_level(logging.INFO, logger="ooo_storage.access"):
        await exchange(pair.plain.port, data)
        plain = [r.getMessage() for r in caplog.records if r.name == "ooo_storage.access"]
        caplog.clear()
        await exchange(pair.lean.port, data)
        lean = [r.getMessage() for r in caplog.records if r.name == "ooo_storage.access"]
    counts = []
    for runner in (pair.plain, pair.lean):
        metrics = runner.server.metrics
        assert metrics is not None
        statuses = metrics.requests.series[("root", "POST")].statuses
        counts.append({status: n for status, n in enumerate(statuses) if n})
    assert counts[1] == counts[0] == {200: 1, 409: 1, 400: 1}
    timeless = [[re.sub(r" \d+us ", " -us ", line) for line in lines] for lines in (plain, lean)]
    assert timeless[1] == timeless[0]
    assert [line.split(" ")[:4] for line in timeless[1][1:4]] == [
        ["POST", "/?api=txn", "200", "51"], ["POST", "/?api=txn", "409", "98"], ["POST", "/?api=txn", "400", "101"]]


# Glob GETs: pages of a list


def fill(prefix: str, n: int, doc: bytes = DOC, headers: bytes = HOST) -> bytes:
    """Pipelined POSTs of ``prefix/000``... in order (so that both servers list them in the same
    order, whatever the clock: newest first, ties by path)."""
    return b"".join(req("POST", f"/{prefix}/{i:03}", doc, headers=headers) for i in range(n))


ALL = encode_cursor((2**62, "z"))  # before every item (newest first): the whole list
NONE = encode_cursor((0, "a"))  # after every item: nothing left
LIST_CASES = {
    "empty": req("GET", "/none/*"),
    "one": fill("one", 1) + req("GET", "/one/*"),
    "hundred": fill("many", 100) + req("GET", "/many/*"),
    "limit": fill("many", 100) + req("GET", "/many/*?limit=10"),
    "limit-over-cap": fill("many", 30) + req("GET", "/many/*?limit=999999"),
    "limit-empty": fill("many", 3) + req("GET", "/many/*?limit="),
    "cursor-empty": fill("many", 3) + req("GET", "/many/*?cursor="),
    "cursor-all": fill("many", 12) + req("GET", f"/many/*?limit=5&cursor={ALL}"),
    "cursor-first": fill("many", 12) + req("GET", f"/many/*?cursor={ALL}&limit=5"),
    "cursor-end": fill("many", 12) + req("GET", f"/many/*?cursor={NONE}"),
    "cap-truncated": fill("many", 30) + req("GET", "/many/*"),
    "bad-limit": req("GET", "/many/*?limit=0") + req("GET", "/many/*?limit=abc") + req("GET", "/many/*?limit=-1")
    + req("GET", "/many/*?limit=1%30"),
    "bad-cursor": req("GET", "/many/*?cursor=abc") + req("GET", "/many/*?cursor=!!") + req("GET", "/many/*?cursor=a+b"),
    "other-query": fill("many", 3) + req("GET", "/many/*?limit=1&limit=2") + req("GET", "/many/*?foo=1")
    + req("GET", "/many/*?") + req("GET", "/many/*?limit=1;cursor=") + req("GET", "/many/*?limit"),
    "glob-mid": fill("mid/a", 2) + fill("mid/b", 1) + req("GET", "/mid/*/000") + req("GET", "/mid/*/*"),
    "glob-bad": req("GET", "/mid/**") + req("GET", "/mid/a*") + req("GET", "/mid//*")
    + req("POST", "/mid/a/000?limit=1", DOC) + req("DELETE", "/mid/*?limit=1"),
    "origin": fill("many", 12) + req("GET", "/many/*?limit=5", headers=HOST + b"Origin: http://good.example\r\n"),
    "pipelined": b"".join(fill("p", 3) + req("GET", f"/p/*?limit={i}") for i in range(1, 4)),
}


@pytest.mark.parametrize("case", sorted(LIST_CASES))
async def test_glob_gets_answer_byte_for_byte_like_aiohttp(pair_factory: Any, case: str) -> None:
    pair = await pair_factory(list_limit=20, allowed_origins=["http://good.example"])
    old, new = await pair.both(LIST_CASES[case])
    assert new == old
    assert new.startswith(b"HTTP/1.")


def even_only(key: str, obj: Object) -> Object | None:
    return obj if int(obj.path[-3:]) % 2 == 0 else None


FILTERS = {
    "none": lambda server: None,
    "read-object": lambda server: server.read_object_filter("f/*", even_only),
    "read-list": lambda server: server.read_list_filter("f/*", lambda key, objs: objs[::-1]),
    "limit": lambda server: server.limit_filter("f/*", limit=9),
    "limit-asc": lambda server: server.limit_filter("f/*", limit=9, order="asc"),
    "refusing": lambda server: server.read_object_filter("f/*", lambda key, obj: 1 // 0),
}


@pytest.mark.parametrize("filters", sorted(FILTERS))
async def test_pages_followed_by_their_cursors_answer_like_aiohttp(pair_factory: Any, filters: str) -> None:
    pair = await pair_factory()
    pages: list[list[bytes]] = []
    for runner in (pair.plain, pair.lean):
        FILTERS[filters](runner.server)
        assert (await exchange(runner.port, fill("f", 14))).count(b"HTTP/1.1 200 OK") == 14
        raw = await exchange(runner.port, req("GET", "/f/*?limit=4"))
        walk = [raw]
        while (cursor := re.search(rb"X-Next-Cursor: ([A-Za-z0-9_-]+)", raw)) is not None:
            raw = await exchange(runner.port, req("GET", f"/f/*?limit=4&cursor={cursor.group(1).decode()}"))
            walk.append(raw)
        raw = await exchange(runner.port, req("GET", f"/f/*?cursor={ALL}"))  # refused under a read-list filter
        pages.append([masked(page) for page in [*walk, raw]])
    assert pages[1] == pages[0]
    assert len(pages[1]) > 1 or filters in ("read-list", "refusing")


ODD_OBJECTS = [
    Object(1, 0, "a", "", b"{}"),  # no path: omitted
    Object(2, 3, 'q"u\\o', 'x/q"u\\o', b'"s"'),  # escaped by orjson in to_json
    Object(3, 0, "t\tab\x7f\u2028", "t\tab\x7f\u2028", b"[1,2]"),  # control and non-printable
    Object(4, 0, "\u00e9t\u00e9", "\u00e9t\u00e9", '{"v":"\u00e9"}'.encode()),  # printable, not ASCII
    Object(2**64, -(2**63) - 1, "big", "n/big", b"null"),  # over 64 bits: orjson cannot write it
    Object(-5, 2**63 - 1, "i", "n/i", b"0"),
]


@pytest.mark.parametrize("start", range(len(ODD_OBJECTS)))
def test_one_chunk_writes_json_arrays_bytes(start: int) -> None:
    """A page sent as one chunk is the bytes of the streamed array (``Object.to_json`` per item),
    whatever its objects hold: paths omitted or escaped, ints of any size."""
    items = ODD_OBJECTS[start:] + ODD_OBJECTS[:start]
    for count in range(len(items) + 1):
        assert lists.one_chunk(items[:count]) == b"".join(json_array(items[:count]))


def test_one_chunk_refuses_a_page_over_one_chunk_by_its_data_alone() -> None:
    fill_ = b'"%s"' % (b"x" * (CHUNK_BYTES - 2))
    assert lists.one_chunk([Object(1, 0, "a", "", fill_)]) is None  # the data is the limit: the object is over
    assert lists.one_chunk([Object(1, 0, "a", "", fill_[:-60] + b'"')]) is not None


async def test_a_page_too_large_for_one_chunk_is_streamed_by_aiohttp(pair_factory: Any) -> None:
    pair = await pair_factory()
    big = orjson.dumps({"blob": "x" * 3000})
    data = fill("big", 30, big) + req("GET", "/big/*") + req("GET", "/big/*?limit=2")
    old, new = await pair.both(data)
    assert new == old
    assert b"Transfer-Encoding: chunked" in new  # more than chunked.CHUNK_BYTES: sent at the reader's pace
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(req("GET", "/big/*?limit=2") + req("GET", "/big/*"))
        await asyncio.wait_for(reader.readuntil(b"Transfer-Encoding: chunked"), 10)
        [front] = fronts(pair.lean)
        assert front.handler is not None  # handed over
    finally:
        writer.close()


@pytest.mark.parametrize("over", [0, 1])
async def test_a_page_of_exactly_one_chunk_is_plain_one_byte_more_is_streamed(pair_factory: Any, over: int) -> None:
    pair = await pair_factory()
    await pair.lean.server.store.set("size/a", orjson.dumps({"b": ""}))  # its list with no data: the size of the rest
    length = re.search(rb"Content-Length: (\d+)", await exchange(pair.lean.port, req("GET", "/size/*")))
    assert length is not None
    size = int(length.group(1))
    doc = orjson.dumps({"b": "x" * (CHUNK_BYTES + over - size)})
    for runner in (pair.plain, pair.lean):
        await runner.server.store.set("edge/a", doc)
    old, new = await pair.both(req("GET", "/edge/*"))
    assert new == old
    if over:
        assert b"Transfer-Encoding: chunked" in new
    else:
        assert b"Content-Length: %d\r\n" % CHUNK_BYTES in new


@pytest.mark.parametrize(
    ("token", "path", "status"),
    [("reader", "/front/*", b"200"), ("root", "/front/*?limit=2", b"200"), (None, "/front/*", b"401"),
     ("wrong", "/front/*", b"401"), (None, "/open/*", b"200"), ("reader", "/*", b"200"),
     ("reader", "/front/*?limit=0", b"400"), ("writer", "/front/*", b"403"), ("writer", "/w/*", b"200")],
)
async def test_glob_gets_under_an_access_policy_answer_like_aiohttp(
    pair_factory: Any, token: str | None, path: str, status: bytes
) -> None:
    writer = {"name": "writer", "sha256": token_digest("writer"),
              "rules": [{"paths": ["w/*"], "rights": ["read", "write"]}]}
    pair = await pair_factory(auth=policy(writer))
    setup = (fill("front", 5, headers=bearer("root")) + fill("open", 2, headers=bearer("root"))
             + fill("w", 2, headers=bearer("root")))
    old, new = await pair.both(setup + req("GET", path, headers=bearer(token)))
    assert new == old
    assert new.split(b"HTTP/1.1 ")[10].startswith(status)
    stats = []
    for runner in (pair.plain, pair.lean):
        report = responses(await exchange(runner.port, req("GET", "/?api=stats", headers=bearer("root"))))[0][1]
        stats.append(orjson.loads(report)["namespaces"])
    assert stats[1] == stats[0]


async def test_a_large_object_handed_over_is_counted_once(pair_factory: Any) -> None:
    pair = await pair_factory(auth=policy())
    for runner in (pair.plain, pair.lean):
        await runner.server.store.set("front/big", orjson.dumps({"blob": "x" * 100_000}))
    old, new = await pair.both(req("GET", "/front/big", headers=bearer("reader")))
    assert new == old
    stats = []
    for runner in (pair.plain, pair.lean):
        report = responses(await exchange(runner.port, req("GET", "/?api=stats", headers=bearer("root"))))[0][1]
        stats.append(orjson.loads(report)["namespaces"])
    assert stats[1] == stats[0]
    assert stats[1][0]["requests"]["lastHour"] == 1


# Pipelining, handover


async def test_sixteen_pipelined_requests_get_sixteen_answers_in_order(pair_factory: Any) -> None:
    pair = await pair_factory()
    writes = b"".join(req("POST", f"/pipe/{i}", orjson.dumps({"i": i})) for i in range(16))
    reads = b"".join(req("GET", f"/pipe/{i}") for i in range(16))
    raw = await exchange(pair.lean.port, writes + reads)
    answers = responses(raw)
    assert len(answers) == 33  # and the END request's 404
    assert answers[:16] == [(200, b'{"index":"%d"}' % i) for i in range(16)]
    assert [orjson.loads(body)["data"] for _, body in answers[16:32]] == [{"i": i} for i in range(16)]
    assert [s for s, _ in answers[16:32]] == [200] * 16


async def test_a_connection_is_handed_to_aiohttp_mid_way_and_keeps_its_order(pair_factory: Any) -> None:
    pair = await pair_factory()
    data = (req("POST", "/hand/a", DOC) + req("GET", "/hand/a") + req("GET", "/?api=filters")
            + req("GET", "/hand/a") + req("DELETE", "/hand/a"))
    old, new = await pair.both(data)
    assert new == old
    answers = responses(await exchange(pair.lean.port, data))
    assert [s for s, _ in answers] == [200, 200, 200, 200, 204, 404]
    assert orjson.loads(answers[2][1]) == {"static": False, "filters": []}


async def test_a_websocket_upgrade_after_fast_requests_is_served_by_aiohttp(pair_factory: Any) -> None:
    pair = await pair_factory()
    upgrade = (b"GET /ws/a HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(req("POST", "/ws/a", DOC) + req("GET", "/ws/a") + upgrade)
        first = await asyncio.wait_for(reader.readuntil(b"HTTP/1.1 101 Switching Protocols\r\n"), 10)
        assert [s for s, _ in responses(first.rpartition(b"HTTP/1.1 101")[0])] == [200, 200]
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in rest
        frame = await asyncio.wait_for(reader.read(2), 10)  # the snapshot frame (binary, unmasked)
        assert frame[0] == 0x82
    finally:
        writer.close()


# Flow control, clients gone


async def test_a_client_that_does_not_read_costs_bounded_memory(pair_factory: Any) -> None:
    pair = await pair_factory()
    big = orjson.dumps({"blob": "x" * 60_000})
    await pair.store.set("slow/a", big)
    count = 800  # ~48 MB of answers if they were all produced
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    writer.transport.set_write_buffer_limits(high=1 << 30)  # the client keeps writing, never reads
    try:
        writer.write(req("GET", "/slow/a") * count)
        [front] = fronts(pair.lean)
        stalled = 0
        last = -1
        while stalled < 10:  # until the server stops producing answers (nobody reads them)
            await asyncio.sleep(0.05)
            progress = (len(front.queue), front.transport.get_write_buffer_size() if front.transport else 0,
                        len(front.buf))
            stalled = stalled + 1 if progress == last else 0
            last = progress  # type: ignore[assignment]
        assert front.reading is False
        assert len(front.queue) <= MAX_PENDING
        assert front.transport is not None
        assert front.transport.get_write_buffer_size() <= 4 * len(big) + 256 * 1024
        assert len(front.buf) <= 512 * 1024
        received = 0
        while received < count:  # reading now gets every answer, in order
            line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert line.startswith(b"HTTP/1.1 200 OK")
            size = int(re.search(rb"Content-Length: (\d+)", line).group(1))  # type: ignore[union-attr]
            await reader.readexactly(size)
            received += 1
    finally:
        writer.close()


@pytest.mark.parametrize("engine", ["lean", "aiohttp"])
async def test_a_client_gone_mid_body_writes_nothing_and_frees_its_connection(
    pair_factory: Any, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    pair = await pair_factory()
    runner = pair.lean if engine == "lean" else pair.plain
    caplog.set_level(logging.INFO, "ooo_storage.server")
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
    writer.write(req("POST", "/gone/a", DOC)[:-10])
    await writer.drain()
    gone = "POST /gone/a from 127.0.0.1: ooo: the client went away before its request body ended"
    assert runner.gate is not None
    async with asyncio.timeout(10):
        while not runner.gate.open or (engine == "lean" and not fronts(runner)[0].buf):
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        while runner.gate.open or gone not in caplog.messages:  # let go, one INFO line says why
            await asyncio.sleep(0.01)
    assert await runner.server.store.keys() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status = await exchange(runner.port, req("POST", "/gone/b", DOC))
    assert responses(status)[0] == (200, b'{"index":"b"}')


async def test_stopping_the_server_closes_the_fronts_connections(pair_factory: Any) -> None:
    pair = await pair_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(req("POST", "/stop/a", DOC))
        assert responses(await asyncio.wait_for(reader.readuntil(b'{"index":"a"}'), 10))[0][0] == 200
        await asyncio.wait_for(pair.lean.stop(), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not left open on a stopped server
        assert pair.lean.gate is not None and not pair.lean.gate.open
    finally:
        writer.close()


async def test_a_pending_handover_reads_nothing_more(pair_factory: Any) -> None:
    """Answers a client does not read hold a request for aiohttp back: the front stops reading
    until it can hand over (it kept reading, and one connection made it buffer 1 GB in 2 s)."""
    pair = await pair_factory()
    await pair.store.set("held/a", orjson.dumps({"blob": "x" * 60_000}))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answers cannot all fit
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", pair.lean.port))
    reader, writer = await asyncio.open_connection(sock=client)
    writer.transport.set_write_buffer_limits(high=1 << 30)
    try:
        async with asyncio.timeout(10):
            while not fronts(pair.lean):
                await asyncio.sleep(0.01)
        [front] = fronts(pair.lean)
        assert front.transport is not None
        front.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.write(req("GET", "/held/a") * 8 + req("GET", "/?api=info"))
        async with asyncio.timeout(10):
            while not front.hand_over or front.writable is None:  # stuck behind unread answers
                await asyncio.sleep(0.01)
        junk = b"x" * (1 << 20)
        for _ in range(64):  # 64 MiB more: what the kernel's buffers cannot all take
            writer.write(junk)
            await asyncio.sleep(0)
        stalled, last = 0, -1
        while stalled < 10:  # until the server takes nothing more
            await asyncio.sleep(0.05)
            size = len(front.buf)
            stalled, last = (stalled + 1 if size == last else 0), size
        assert front.handler is None and front.reading is False
        assert len(front.buf) < 16 << 20, len(front.buf)
    finally:
        writer.close()


async def test_an_upload_in_progress_is_not_idle(pair_factory: Any) -> None:
    """At the connection limit the gate closes idle connections, not one whose body is arriving
    (the front called an upload idle, and it was cut to make room)."""
    pair = await pair_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.lean.port)
    try:
        writer.write(req("POST", "/up/a", DOC)[:-5])
        async with asyncio.timeout(10):
            while not fronts(pair.lean) or fronts(pair.lean)[0].partial is None:
                await asyncio.sleep(0.01)
        [front] = fronts(pair.lean)
        assert not front.waiting()
        writer.write(req("POST", "/up/a", DOC)[-5:])
        answer = await asyncio.wait_for(reader.readuntil(b'{"index":"a"}'), 10)
        assert responses(answer)[0][0] == 200
        assert front.waiting()
    finally:
        writer.close()


async def test_a_head_with_a_bare_lf_is_refused_at_once(pair_factory: Any) -> None:
    """A header line ended by a bare LF: aiohttp's 400 at once, as without the front (it waited
    for the header timeout)."""
    pair = await pair_factory()
    data = b"GET /lf/a HTTP/1.1\r\nHost: 127.0.0.1\n\r\n"
    async with asyncio.timeout(5):  # the header timeout is 10 s; nothing follows the head
        old, new = await pair.both(data, end=b"")
    assert new == old and new.split(b"\r\n")[0].endswith(b" 400 Bad Request")


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server ends the connection (whatever it says first), at most ``limit``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return limit
    return loop.time() - start


@pytest.mark.parametrize("engine", ["lean", "aiohttp"])
@pytest.mark.parametrize("head_in_pieces", [False, True])
async def test_a_stalled_body_is_closed_after_body_timeout_as_under_aiohttp(
    pair_factory: Any, engine: str, head_in_pieces: bool
) -> None:
    """A body that stops arriving is closed about ``body_timeout`` after its head, on both engines:
    the front held it its own ``body_timeout`` before aiohttp started another one (twice in all),
    and a head that arrived in pieces kept its ``header_timeout`` for the body."""
    timeout = 0.5
    pair = await pair_factory(body_timeout=timeout, header_timeout=3.0)
    runner = pair.lean if engine == "lean" else pair.plain
    data = req("POST", "/stall/a", DOC)
    head_end = data.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
    try:
        if head_in_pieces:
            writer.write(data[:20])
            await writer.drain()
            await asyncio.sleep(0.2)  # a slow client: the head's second piece comes later
        writer.write(data[20 if head_in_pieces else 0 : head_end + 10])  # the head, then 10 bytes of body
        await writer.drain()
        elapsed = await closed_after(reader, 4 * timeout)
    finally:
        writer.close()
    assert elapsed < 1.5 * timeout, f"closed after {elapsed:.2f} s, body_timeout {timeout} s"
    assert await runner.server.store.keys() == []


async def closed_at(reader: asyncio.StreamReader) -> float:
    """The loop time at which the server ends the connection (within 5 s)."""
    await closed_after(reader, 5)
    return asyncio.get_running_loop().time()


@pytest.mark.parametrize("engine", ["lean", "aiohttp"])
async def test_connections_that_send_nothing_are_closed_after_keepalive_timeout(
    pair_factory: Any, engine: str
) -> None:
    """A connection that never sends a byte is closed ``keepalive_timeout`` after it opened, on both
    engines (the front times every such connection with one timer: the second, opened later, is
    closed later), and one that speaks in time is served."""
    pair = await pair_factory(keepalive_timeout=0.3)
    port = (pair.lean if engine == "lean" else pair.plain).port
    loop = asyncio.get_running_loop()
    first_open = loop.time()  # before: the server may see the connection before the client does
    first = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.2)  # a later connection: a later due time
    second_open = loop.time()
    second = await asyncio.open_connection("127.0.0.1", port)
    third = await asyncio.open_connection("127.0.0.1", port)
    try:
        ends = asyncio.gather(closed_at(first[0]), closed_at(second[0]))
        third[1].write(req("GET", "/quiet/a"))
        answer = await asyncio.wait_for(third[0].readuntil(b"ooo: empty key"), 10)
        assert responses(answer)[0][0] == 404
        first_end, second_end = await ends
        assert 0.3 <= first_end - first_open < 3
        assert 0.3 <= second_end - second_open < 3
        assert first[0].at_eof() and second[0].at_eof()
    finally:
        for _, writer in (first, second, third):
            writer.close()
