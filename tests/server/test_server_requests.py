"""The request path under load (issue 8, commit 7172a42): large single-key GETs sent from the stored
bytes at the reader's pace, the budget of buffered request bodies, the per-client cap on busy
connections, no lingering after a refused body, a client gone mid-body, repeated 503s logged once per
interval, 415 for an unknown ``Content-Encoding``, ``HEAD`` like ``GET``, ``Expect: 100-continue``.
Real servers on 127.0.0.1, raw sockets where the bytes on the wire matter."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from server_live import Live, LiveFactory

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.server import Server, ServerRunner, chunked

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=["lean", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both HTTP engines (conftest.py): the lean front must keep every limit tested here."""
    return str(request.param)

LARGE = 3 * 1024 * 1024  # well over chunked.CHUNK_BYTES


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


def head(port: int, method: str = "GET", path: str = "/k", **headers: str | int) -> bytes:
    """A whole request head (``Content_Length=3`` gives ``Content-Length: 3``)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length; none for HEAD)."""
    line = await reader.readline()
    assert line, "the server closed the connection without a reply"
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        assert line, "the connection closed inside a response head"
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closing)."""
    chunks = []
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a state of the in-process server that no event announces to the outside."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def small_window_socket(port: int) -> socket.socket:
    """A connected socket whose receive window is tiny: what it does not read stays at the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def large_object(live: Live, key: str = "big", size: int = LARGE) -> bytes:
    """Store a value of about ``size`` bytes; return the object's JSON as the store makes it."""
    value = {"text": "x" * size, "n": 1, "nested": {"a": [1, 2, 3]}}
    assert (await live.request("POST", key, value))[0] == 200
    return (await live.store.get(key)).to_json()


# -- 1. large single-key GETs ----------------------------------------------------------------------


async def test_large_get_is_exactly_the_object_json(live: Live) -> None:
    expected = await large_object(live)
    assert len(expected) > chunked.CHUNK_BYTES
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, path="/big"))
        status, headers, body = await response(reader)
        assert status == 200
        assert headers["content-length"] == str(len(expected))
        assert headers["content-type"].startswith("application/json")
        assert "transfer-encoding" not in headers
        assert body == expected
        writer.write(head(port, path="/big"))  # the connection is still good for the next request
        assert (await response(reader))[2] == expected
    parsed = orjson.loads(body)  # PROTOCOL.md §2.1: compact, in this key order, data last
    assert list(parsed) == ["created", "updated", "index", "path", "data"]
    assert parsed["path"] == "big" and parsed["updated"] == 0
    assert body.startswith(b'{"created":%d,"updated":0,"index":' % parsed["created"])
    assert b'"path":"big","data":{"text":"xxx' in body[:200] and body.endswith(b'}}')
    assert parsed["data"] == {"text": "x" * LARGE, "n": 1, "nested": {"a": [1, 2, 3]}}


async def test_large_get_of_a_pushed_key_is_the_object_json(live: Live) -> None:
    assert (await live.request("POST", "logs/*", {"t": "y" * LARGE}))[0] == 200
    (key,) = await live.store.keys()
    stored = (await live.store.get(key)).to_json()
    assert f'"path":"{key}","data":'.encode() in stored
    status, body = await live.request("GET", key)
    assert (status, body) == (200, stored)


async def test_a_slow_reader_gets_the_whole_large_value(live: Live) -> None:
    expected = await large_object(live)
    port = live.runner.port
    sock = await small_window_socket(port)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, head(port, path="/big"))
        received = bytearray()
        while not received.endswith(expected[-64:]) or len(received) < len(expected):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 16384), 10)
            assert chunk, "the server closed the connection of a reader that reads"
            received += chunk
            await asyncio.sleep(0.001)  # the slow part: a few ms per 16 KiB
    finally:
        sock.close()
    assert received.split(b"\r\n\r\n", 1)[1] == expected


async def test_a_reader_that_reads_nothing_is_cut_after_write_timeout(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ooo_storage.server")
    live = await make_live(write_timeout=0.3)
    expected = await large_object(live, size=8_000_000)  # more than the kernel's buffers can hold (4 MiB)
    port = live.runner.port
    sock = await small_window_socket(port)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, head(port, path="/big"))
        await until(lambda: "peer read nothing for" in caplog.text, timeout=10)
        received = bytearray()  # now read: what was sent, then the end (or a reset)
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                received += chunk
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < len(expected), "the whole value was sent to a reader that read nothing"
    assert await live.request("GET", "missing") == (404, b"ooo: empty key")


async def test_readers_that_read_nothing_share_the_stored_bytes(live: Live) -> None:
    """100 clients ask for a 3 MB value and never read: the server must not hold a copy each (it
    held 100 × 3 MB). Measured as memory allocated by this process while they wait."""
    await large_object(live)
    port = live.runner.port
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            sock = await small_window_socket(port)
            socks.append(sock)
            await loop.sock_sendall(sock, head(port, path="/big"))
        for sock in socks:  # each response has started: its head (and a little more) is here
            assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10) == b"H"
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for sock in socks:
            sock.close()
    # A copy each is 100 copies (315 MB); a slice each measures ~16 MB. Fewer than 30 copies: no
    # copy per reader, with room for what the kernel leaves in the transports' buffers.
    assert held < 30 * LARGE, f"{held / 1e6:.0f} MB held for 100 readers of a {LARGE / 1e6:.0f} MB value"


# -- 2. the body budget ----------------------------------------------------------------------------

KIB = 1024
UPLOAD = 600 * KIB


def upload_body(size: int = UPLOAD) -> bytes:
    return b'{"v":"' + b"u" * (size - 8) + b'"}'


async def test_a_large_body_that_does_not_fit_the_budget_gets_503(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=UPLOAD, max_buffered_body_bytes=1024 * KIB)
    port, budget = live.runner.port, live.server.budget
    body = upload_body()
    sent = UPLOAD - 1000
    async with connection(port) as (first_reader, first):
        first.write(head(port, "POST", "/first", Content_Length=len(body)) + body[:sent])
        await until(lambda: budget.used == sent)  # what has arrived is held
        async with connection(port) as (reader, writer):
            writer.write(head(port, "POST", "/second", Content_Length=len(body)) + body[:sent])
            status, headers, text = await response(reader)
            assert status == 503
            assert headers["retry-after"].isdigit()
            assert b"retry later" in text and b"budget" in text
            assert await until_closed(reader) == b""  # connection closed
        small = {"s": "x" * 60_000}  # ≤ 64 KiB: never refused because of large uploads
        assert (await live.request("POST", "small", small))[0] == 200
        first.write(body[sent:])
        status, _, _ = await response(first_reader)
        assert status == 200
    assert (await live.get("first"))["data"] == orjson.loads(body)
    assert budget.used == 0
    assert (await live.request("POST", "third", body))[0] == 200  # the budget was released


async def test_the_budget_is_released_when_the_client_vanishes_mid_body(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=UPLOAD, max_buffered_body_bytes=1024 * KIB)
    port, budget = live.runner.port, live.server.budget
    body = upload_body()
    for _ in range(3):  # would exhaust the budget if any hold leaked
        async with connection(port) as (_, writer):
            writer.write(head(port, "POST", "/gone", Content_Length=len(body)) + body[: UPLOAD - 1000])
            await until(lambda: budget.used == UPLOAD - 1000)
        await until(lambda: budget.used == 0)
    assert (await live.request("POST", "after", body))[0] == 200
    assert (await live.request("GET", "gone"))[0] == 404


async def test_a_large_chunked_body_is_counted_as_it_arrives(make_live: LiveFactory) -> None:
    """A chunked body holds what has arrived, and is refused once it cannot."""
    live = await make_live(max_body_bytes=UPLOAD, max_buffered_body_bytes=1024 * KIB)
    port, budget = live.runner.port, live.server.budget
    body = upload_body()
    async with connection(port) as (_, first):
        first.write(head(port, "POST", "/first", Content_Length=len(body)) + body[: UPLOAD - 1000])
        await until(lambda: budget.used == UPLOAD - 1000)
        async with connection(port) as (reader, writer):
            writer.write(head(port, "POST", "/second", Transfer_Encoding="chunked"))
            piece = body[: 100 * KIB]
            for _ in range(6):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            status, headers, _ = await response(reader)
            assert (status, "retry-after" in headers) == (503, True)
    await until(lambda: budget.used == 0)


async def test_announcing_large_bodies_holds_nothing(make_live: LiveFactory) -> None:
    """30 connections announcing a large body and sending a byte now and then used to hold their
    whole Content-Length each, and every other large upload got 503 for as long as they liked."""
    live = await make_live(max_body_bytes=UPLOAD, max_buffered_body_bytes=1024 * KIB)
    port, budget = live.runner.port, live.server.budget
    body = upload_body()
    async with contextlib.AsyncExitStack() as stack:
        for i in range(30):
            _, writer = await stack.enter_async_context(connection(port))
            writer.write(head(port, "POST", f"/slow{i}", Content_Length=len(body)) + body[:100])
        await until(lambda: live.server.share.busy.get("127.0.0.1", 0) >= 30)  # all being read
        assert budget.used == 0  # 100 B each: under the free size, nothing held
        assert (await live.request("POST", "large", body))[0] == 200


# -- 3. the per-client cap -------------------------------------------------------------------------


async def test_one_client_may_keep_only_its_share_of_connections_busy(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    live = await make_live(max_connections_per_client=2)
    sockets = [await live.ws("a"), await live.ws("b")]
    await until(lambda: live.server.share.busy.get("127.0.0.1") == 2)
    status, text = await live.request("GET", "k")
    assert status == 503
    assert text == b"ooo: too many busy connections from 127.0.0.1 (limit 2 per client), retry later"
    await sockets[0].close()
    await until(lambda: live.server.share.busy.get("127.0.0.1") == 1)
    assert await live.request("GET", "k") == (404, b"ooo: empty key")
    await sockets[1].close()
    await until(lambda: not live.server.share.busy)
    assert "raise --max-connections-per-client" in caplog.text


async def test_the_per_client_cap_defaults_to_three_quarters_of_the_connections(make_live: LiveFactory) -> None:
    live = await make_live(max_connections=8)
    assert live.server.share.limit == 6


async def test_clients_without_an_address_are_not_capped_together(tmp_path: Path) -> None:
    """On a unix socket no client has an address (``request.remote`` is empty): they used to share
    one count, so that the per-client cap became a cap on all of them."""
    store = Layered(memory=MemoryLayer())
    await store.start()
    server = Server(store, max_connections_per_client=1)
    runner = web.AppRunner(server.app)
    await runner.setup()
    path = str(tmp_path / "s.sock")
    await web.UnixSite(runner, path).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path)) as http:
            first = await http.ws_connect("http://localhost/a")
            async with http.get("http://localhost/k") as resp:
                assert (resp.status, await resp.text()) == (404, "ooo: empty key")
            await first.close()
    finally:
        await runner.cleanup()
        await store.close()


# -- 4. gzip bombs ---------------------------------------------------------------------------------


async def test_a_gzip_bomb_gets_413_and_the_connection_is_closed(make_live: LiveFactory) -> None:
    """The compressed body is only partly sent: the server must close at once instead of lingering
    (reading, and decompressing, what follows)."""
    live = await make_live(max_body_bytes=64 * KIB)
    port = live.runner.port
    bomb = gzip.compress(b"[" + b"0," * 5_000_000 + b"0]")  # 10 MB of JSON, ~10 KB compressed
    assert len(bomb) < 64 * KIB
    async with connection(port) as (reader, writer):
        writer.write(head(port, "POST", "/bomb", Content_Length=len(bomb), Content_Encoding="gzip"))
        writer.write(bomb[: len(bomb) // 2])  # far over the limit once decompressed; the rest withheld
        status, _, text = await response(reader)
        assert (status, text) == (413, b"ooo: request body too large (limit 65536 bytes)")
        assert await until_closed(reader, timeout=5) == b""  # the server closed; it lingered 10 s
    assert live.server.budget.used == 0  # what the body held of the budget is released on refusal
    assert (await live.request("GET", "bomb"))[0] == 404


# -- 5. a client gone mid-body ---------------------------------------------------------------------


async def test_a_client_gone_mid_body_is_one_info_line(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    live = await make_live()
    port = live.runner.port
    body = upload_body(200 * KIB)
    async with connection(port) as (_, writer):
        writer.write(head(port, "POST", "/gone", Content_Length=len(body)) + body[: 100 * KIB])
        await until(lambda: live.server.budget.used == 100 * KIB)  # the handler is reading it
    await until(lambda: "went away" in caplog.text)
    assert await live.request("GET", "k") == (404, b"ooo: empty key")  # still serving
    assert (await live.request("POST", "k", {"v": 1}))[0] == 200
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO, caplog.text
    assert "127.0.0.1" in gone[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert " 500" not in caplog.text and "Traceback" not in caplog.text


# -- 6. repeated storage failures ------------------------------------------------------------------


async def test_repeated_storage_failures_are_one_error_line(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A LevelDB store whose database is closed underneath fails every write with the same 503: one
    ERROR line for all of them (the others are counted in a line at the end of the interval)."""
    live = await make_live("leveldb")
    assert live.store.embedded is not None
    live.store.embedded.close()
    for n in range(20):
        status, text = await live.request("POST", f"k{n}", {"n": n})
        assert status == 503, text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "ooo_storage.server"]
    assert len(errors) == 1, caplog.text
    assert "POST /k0 failed" in errors[0].getMessage()


# -- 7. encodings, HEAD, Expect --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["compress", "x-foo", "gzip, x-foo"])
async def test_an_unknown_content_encoding_gets_415(live: Live, encoding: str) -> None:
    status, text = await live.request("POST", "k", b'{"a":1}', headers={"Content-Encoding": encoding})
    assert status == 415
    assert text.startswith(f"ooo: unsupported Content-Encoding {encoding!r} (accepted: identity, gzip, deflate".encode())
    assert (await live.request("GET", "k"))[0] == 404  # nothing stored


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", "identity"])
async def test_known_content_encodings_are_decoded(live: Live, encoding: str) -> None:
    raw = b'{"a":1}'
    body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(encoding.lower(), lambda b: b)(raw)
    status, text = await live.request("POST", "k", body, headers={"Content-Encoding": encoding})
    assert status == 200, text
    assert (await live.get("k"))["data"] == {"a": 1}


@pytest.mark.parametrize("size", [10, LARGE])
async def test_head_of_a_key_is_get_without_the_body(live: Live, size: int) -> None:
    assert (await live.request("POST", "h", {"v": "z" * size}))[0] == 200
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, "GET", "/h"))
        got = await response(reader)
        writer.write(head(port, "HEAD", "/h"))
        headed = await response(reader, "HEAD")
        writer.write(head(port, "GET", "/h"))  # nothing stray was sent after the HEAD's head
        assert await response(reader) == got
    assert headed[0] == 200 == got[0]
    assert headed[1]["content-length"] == got[1]["content-length"] == str(len(got[2]))
    assert headed[1]["content-type"] == got[1]["content-type"]
    assert headed[2] == b""


async def test_head_of_a_glob_sends_no_body(live: Live) -> None:
    for n in range(3):
        assert (await live.request("POST", f"g/{n}", {"v": "w" * 40_000}))[0] == 200
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, "HEAD", "/g/*"))
        status, _, _ = await response(reader, "HEAD")
        assert status == 200
        writer.write(head(port, "GET", "/missing"))  # nothing stray (no chunked body) before this
        assert (await response(reader))[:1] == (404,)


async def test_head_of_a_missing_key_is_404(live: Live) -> None:
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, "HEAD", "/nothing"))
        status, headers, _ = await response(reader, "HEAD")
        assert status == 404
        assert headers["content-length"] == str(len(b"ooo: empty key"))
        writer.write(head(port, "GET", "/nothing"))  # nothing stray was sent after the HEAD's head
        assert (await response(reader))[::2] == (404, b"ooo: empty key")


def read_only_policy() -> Policy:
    return Policy.from_dict({"tokens": [
        {"name": "reader", "sha256": token_digest("reader-token"), "rules": [{"paths": ["a/*"], "rights": ["read"]}]},
        {"name": "writer", "sha256": token_digest("writer-token"), "rules": [{"paths": ["a/*"], "rights": ["write"]}]},
    ]})


@pytest.mark.parametrize(
    ("token", "path", "status"),
    [(None, "a/1", 401), ("writer-token", "a/1", 403), ("reader-token", "b/1", 403), ("reader-token", "a/1", 200),
     ("reader-token", "a/2", 404), (None, "a/*", 401), ("writer-token", "a/*", 403), ("reader-token", "a/*", 200)],
)
async def test_head_needs_read(make_live: LiveFactory, token: str | None, path: str, status: int) -> None:
    live = await make_live(auth=read_only_policy())
    assert (await live.request("POST", "a/1", {"v": 1}, headers={"Authorization": "Bearer writer-token"}))[0] == 200
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with live.http.head(live.url(path), headers=headers) as resp:
        assert resp.status == status
        assert await resp.read() == b""


async def test_expect_continue_over_the_limit_is_refused_before_continue(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=1000)
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, "POST", "/k", Content_Length=1001, Expect="100-continue"))
        status, headers, text = await response(reader)  # the first thing sent is the refusal
        assert (status, text) == (413, b"ooo: request body too large (limit 1000 bytes)")
        assert await until_closed(reader) == b""


async def test_expect_continue_within_the_limit_gets_continue_then_200(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=1000)
    port = live.runner.port
    body = b'{"e":1}'
    async with connection(port) as (reader, writer):
        writer.write(head(port, "POST", "/k", Content_Length=len(body), Expect="100-continue"))
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status, headers, _ = await response(reader)
        assert status == 200
        writer.write(head(port, "GET", "/k"))  # the response proper was framed right: keep-alive works
        status, _, got = await response(reader)
        assert status == 200 and orjson.loads(got)["data"] == {"e": 1}


async def test_an_unknown_expect_gets_417(live: Live) -> None:
    port = live.runner.port
    async with connection(port) as (reader, writer):
        writer.write(head(port, "POST", "/k", Content_Length=2, Expect="something-else"))
        status, _, text = await response(reader)
        assert status == 417
        assert text == b"ooo: unknown Expect: something-else"
    assert (await live.request("GET", "k"))[0] == 404


async def test_a_full_disk_is_one_error_line_however_many_writes_fail(
    tmpfs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A real LevelDB on a small tmpfs that fills up: every later write gets a 503 whose message
    changes ("next attempt in 0.37 s"), and still the log has one ERROR line about them."""
    root = tmpfs("3m")
    (root / "ballast").write_bytes(b"\0" * 600_000)
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(root / "db")))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, server=Server(store, shutdown_timeout=1.0))
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http:
            refused = 0
            for n in range(1000):
                async with http.post(f"{runner.url}/fill/{n}", data=orjson.dumps({"x": "x" * 20_000})) as r:
                    if r.status == 503:
                        refused += 1
                        if refused == 40:
                            break
                    else:
                        assert r.status == 200, await r.text()
            assert refused == 40, "the filesystem never filled up"
    finally:
        await runner.stop()
        await store.close()
    failed = [r for r in caplog.records if r.name == "ooo_storage.server" and r.levelno >= logging.ERROR]
    assert len(failed) == 1, "\n".join(r.getMessage() for r in failed)
