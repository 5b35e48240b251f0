"""The access log (``server/accesslog.py``): one line per request on both HTTP engines, parsed
from a real ``ooo-storage serve --log-format json --access-log``; off by default; refused requests
logged without a traceback."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import signal
from typing import Any

import aiohttp
import orjson
import pytest
from serve_process import serve_process
from server_live import LiveFactory, next_frame

from ooo_storage.server.accesslog import AccessLog, Batch, BatchedHandler, TextFormatter

BOTH = pytest.mark.parametrize("engine", ["lean", "aiohttp"], indirect=True)
ENGINES = pytest.mark.parametrize("http_engine", ["lean", "aiohttp"])


async def _serve(*flags: str) -> tuple[asyncio.subprocess.Process, int]:
    return await serve_process("--memory-only", *flags)

async def _access_lines(proc: asyncio.subprocess.Process, count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The next ``count`` access lines of ``proc``'s stderr, and the other lines read meanwhile
    (every one of them must be a JSON object)."""
    assert proc.stderr is not None
    access: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(access) < count:
            line = await proc.stderr.readline()
            assert line, "server exited"
            doc = orjson.loads(line)
            (access if doc["logger"] == "ooo_storage.access" else others).append(doc)
    return access, others


@ENGINES
async def test_json_lines_of_a_known_workload(http_engine: str) -> None:
    proc, port = await _serve("--log-format", "json", "--access-log", "--http-engine", http_engine)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            asked = [
                ("POST", "/a/1", b'{"n":1}', 200),
                ("GET", "/a/1", None, 200),
                ("GET", "/a/*?limit=1", None, 200),
                ("HEAD", "/a/1", None, 200),
                ("GET", "/missing", None, 404),
                ("POST", "/a/2", b"{not json", 400),
                ("DELETE", "/a/1", None, 204),
                ("GET", "/healthz", None, 200),
            ]
            sizes = []
            for method, path, body, status in asked:
                async with http.request(method, base + path, data=body) as resp:
                    assert resp.status == status, await resp.text()
                    sizes.append(0 if method == "HEAD" else len(await resp.read()))
            access, others = await _access_lines(proc, len(asked))
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    got = [(a["method"], a["path"], a["status"], a["bytes"]) for a in access]
    assert got == [(m, p, s, n) for (m, p, _, s), n in zip(asked, sizes, strict=True)]
    for line in access:
        assert line["level"] == "INFO" and line["remote"] == "127.0.0.1"
        assert isinstance(line["us"], int) and 0 <= line["us"] < 10_000_000
        assert line["message"] == (f"{line['method']} {line['path']} {line['status']} {line['bytes']} "
                                   f"{line['us']}us 127.0.0.1")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]
    # the client mistakes: one INFO line each, no traceback
    refusals = [o for o in others if "refused" in o["message"]]
    assert [o["message"][:22] for o in refusals] == ["GET /missing refused: ", "POST /a/2 refused: 400"]
    assert all(o["level"] == "INFO" and "traceback" not in o for o in refusals)


async def test_text_lines_of_serve() -> None:
    """``serve --access-log`` writes its lines as the text formatter writes the others."""
    proc, port = await _serve("--access-log")
    assert proc.stderr is not None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/t/1", data=b"[1]") as resp:
                assert resp.status == 200
            async with asyncio.timeout(10):
                while "ooo_storage.access" not in (line := (await proc.stderr.readline()).decode()):
                    assert line, "server exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ooo_storage\.access: "
                        r"POST /t/1 200 13 \d+us 127\.0\.0\.1\n", line), line


async def test_off_by_default(make_live: LiveFactory, caplog: pytest.LogCaptureFixture) -> None:
    live = await make_live()
    with caplog.at_level(logging.INFO, logger="ooo_storage.access"):
        await live.request("POST", "a", 1)
        await live.request("GET", "a")
    assert [r for r in caplog.records if r.name == "ooo_storage.access"] == []


class _Lines(logging.Handler):
    """The access lines, and an event set once ``want`` of them arrived."""

    def __init__(self, want: int) -> None:
        super().__init__(logging.INFO)
        self.lines: list[logging.LogRecord] = []
        self.want = want
        self.enough = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record)
        if len(self.lines) >= self.want:
            self.enough.set()


@BOTH
async def test_text_lines_and_streams(make_live: LiveFactory) -> None:
    live = await make_live(access_log=True)
    logger = logging.getLogger("ooo_storage.access")
    handler, level = _Lines(3), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await live.request("POST", "a", {"x": 1})
        ws = await live.ws("a")
        await next_frame(ws)
        await ws.close()
        await live.request("GET", "nothing/here")
        async with asyncio.timeout(5):  # the stream's line comes once its handler ended
            await handler.enough.wait()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in handler.lines]
    patterns = [
        r"POST /a 200 13 \d+us 127\.0\.0\.1",
        r"GET /a 101 \d+ \d+us 127\.0\.0\.1",  # the websocket, once it closed
        r"GET /nothing/here 404 14 \d+us 127\.0\.0\.1",
    ]
    assert len(lines) == 3, lines
    for pattern in patterns:
        assert sum(re.fullmatch(pattern, line) is not None for line in lines) == 1, (pattern, lines)
    assert all(r.exc_info is None for r in handler.lines)


class _Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_lines_of_one_loop_iteration_go_out_in_one_write() -> None:
    stream = _Writes()
    handler = BatchedHandler(Batch(stream))
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.batched")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for n in range(3):
            AccessLog(logger).line("GET", f"/k/{n}", 200, 2, 0.000_041, "127.0.0.1")
        assert stream.writes == []  # not yet: at the end of this iteration
        turn = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(turn.set_result, None)  # runs after the handler's flush
        await turn
        assert len(stream.writes) == 1
        lines = stream.writes[0].splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == [
            f"GET /k/{n} 200 2 41us 127.0.0.1" for n in range(3)]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO test\.batched", lines[0].split(": ")[0])

        AccessLog(logger).line("GET", "/k/3", 200, 2, 0.0, "127.0.0.1")
        logger.warning("a warning goes out at once, after what waits")
        assert stream.writes[1].splitlines()[0].endswith("GET /k/3 200 2 0us 127.0.0.1")
        assert stream.writes[-1].rstrip().endswith("a warning goes out at once, after what waits")
    finally:
        logger.removeHandler(handler)


@BOTH
async def test_aiohttp_own_answers_log_their_size(make_live: LiveFactory) -> None:
    """A path no key has (``/%0aINJ``: a newline) gets aiohttp's own ``404: Not Found`` page: its
    line gives the 14 bytes sent (it said 0)."""
    live = await make_live(access_log=True)
    logger = logging.getLogger("ooo_storage.access")
    handler, level = _Lines(1), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with live.http.get(live.url("%0aINJ")) as resp:
            assert (resp.status, await resp.read()) == (404, b"404: Not Found")
        async with asyncio.timeout(5):
            await handler.enough.wait()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    line = handler.lines[0].getMessage()
    assert re.fullmatch(r"GET /%0AINJ 404 14 \d+us 127\.0\.0\.1", line), line
