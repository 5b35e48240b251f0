"""How ``server/errors.py`` logs what it answers: a refusal (4xx, a 501 for what this store does not
do) is one INFO line without a traceback, on both HTTP engines; a defect of ours (500) stays an
ERROR with its traceback, a storage failure (503) an ERROR line."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
from server_live import ENGINES, LiveFactory

from ooo_storage import HistoryOptions, Layered, MemoryLayer
from ooo_storage.errors import HTTPFailure, StorageUnavailable
from ooo_storage.layers import SOSLayer
from ooo_storage.server import ServerRunner
from ooo_storage.server.errors import Notices, log_error

LOGGER = "ooo_storage.server"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every server test here runs on both engines: both log through ``log_error``."""
    return str(request.param)


def lines_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


def assert_one_info_refusal(caplog: pytest.LogCaptureFixture, what: str) -> None:
    records = lines_about(caplog, what)
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.INFO, None)], records
    assert "refused: 501" in records[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER]


async def test_backup_on_a_memory_store_is_a_501_logged_as_a_refusal(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    live = await make_live("memory")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, body = await live.request("POST", "?api=backup&target=/tmp/ooo-never-written")
    assert status == 501, body
    assert_one_info_refusal(caplog, "POST /")


async def test_a_transaction_on_sos_is_a_501_logged_as_a_refusal(
    tmp_path: Path, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Layered(memory=MemoryLayer(), embedded=SOSLayer(str(tmp_path / "sos")))
    ops = [{"op": "set", "key": "a", "data": 1}]
    async with store, ServerRunner(store, "127.0.0.1", 0, http_engine=engine) as runner, \
            aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            async with http.post(f"{runner.url}/?api=txn", data=orjson.dumps({"ops": ops})) as resp:
                status, text = resp.status, await resp.text()
    assert status == 501, text
    assert_one_info_refusal(caplog, "POST /")


def test_a_defect_is_an_error_with_its_traceback_and_a_storage_failure_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        log_error(Notices(), "GET", "/a", "127.0.0.1", RuntimeError("a bug"))
        log_error(Notices(), "POST", "/b", "127.0.0.1", StorageUnavailable("disk gone"))
        log_error(Notices(), "POST", "/c", "127.0.0.1", HTTPFailure(400, "ooo: bad"))
    [bug] = lines_about(caplog, "GET /a")
    assert bug.levelno == logging.ERROR and bug.exc_info is not None and "failed" in bug.getMessage()
    [storage] = lines_about(caplog, "POST /b")
    assert storage.levelno == logging.ERROR and "failed" in storage.getMessage()
    [refusal] = lines_about(caplog, "POST /c")
    assert (refusal.levelno, refusal.exc_info) == (logging.INFO, None)


class _BrokenPeek(Layered):
    """A store whose mirror read fails as a defect would (not a storage error): what a damaged
    history or a bug under ``pools.join`` looks like to the subscribe handler."""

    def peek_scan(self, *args: object) -> tuple:  # type: ignore[type-arg, override]
        raise RuntimeError("peek broke")


async def test_a_subscription_failing_by_a_defect_is_closed_1011_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _BrokenPeek(memory=MemoryLayer())
    async with store, ServerRunner(store, "127.0.0.1", 0) as runner, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            async with http.ws_connect(f"{runner.url.replace('http', 'ws', 1)}/a/*") as ws:
                msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1011, "ooo: internal error")
    records = lines_about(caplog, "subscribe to a/* failed")
    assert [(r.levelno, r.exc_info is not None) for r in records] == [(logging.ERROR, True)], records


class _DamagedHistory(Layered):
    """A store whose history fails on reading as a damaged journal would (a ValueError, not a
    StorageError): what O2 met with an item larger than the journal's read chunk."""

    def replay(self, since: int, upto: int | None = None):  # type: ignore[no-untyped-def]
        if since < self.revision - 1:  # a resume's first part, read up to its start, works
            return super().replay(since, upto)
        return self._damaged()  # the few events since, read with the pool's state, fail

    @staticmethod
    def _damaged():  # type: ignore[no-untyped-def]
        yield from ()
        raise ValueError("journal: reading 1127891 bytes at once exceeds max_chunk (1048576)")


async def test_an_unreadable_history_answers_410_and_a_snapshot_never_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DamagedHistory(memory=MemoryLayer(), history=HistoryOptions(tmp_path / "h"))
    async with store, ServerRunner(store, "127.0.0.1", 0) as runner, aiohttp.ClientSession() as http:
        await store.set("a/1", {"n": 1})
        since = store.revision
        for n in range(2, 5):
            await store.set(f"a/{n}", {"n": n})
        with caplog.at_level(logging.INFO, logger=LOGGER):
            async with http.get(f"{runner.url}/a/*?since={since:x}") as resp:
                status, text = resp.status, await resp.text()
            ws_url = f"{runner.url.replace('http', 'ws', 1)}/a/*?v={since:x}"
            async with http.ws_connect(ws_url) as ws:
                frame = await ws.receive_bytes()
    assert status == 410, text
    assert frame.startswith(b"{") and b'"snapshot":true' in frame.replace(b" ", b""), frame[:200]
    warned = lines_about(caplog, "history unreadable")
    assert warned and all(r.levelno == logging.WARNING for r in warned), warned
