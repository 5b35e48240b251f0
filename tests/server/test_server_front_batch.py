"""The lean front's writes of one event-loop iteration in one LevelDB WriteBatch (issue 10): single
POSTs of many connections read in the same iteration are two writes of the database (the
iteration's first committed at once, the others together), each with its own revision and event, every answer sent only once its write is in the database; a write that fails before the
store fails alone, a failed batch fails every write in it; a pipelined burst's writes are one
batch, in order, up to a write that waits for a lock. Real servers on 127.0.0.1 over real LevelDB stores (a layer that
counts its own writes), raw sockets; a real ``serve`` process for the kill -9 test."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import plyvel
import pytest
from raw_http import HOST, req, responses
from serve_process import serve_process

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, Object, Options
from ooo_storage.protocol.access import RIGHTS, Policy, token_digest
from ooo_storage.server import Server, ServerRunner
from ooo_storage.server.front import Front


def doc(i: int) -> bytes:
    return b'{"name":"Ada","n":%d}' % i




def complete(raw: bytes, count: int) -> bool:
    """Whether ``raw`` holds ``count`` whole responses."""
    at = 0
    for _ in range(count):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            return False
        match = re.search(rb"\r\nContent-Length: (\d+)", raw[at:end + 4])
        at = end + 4 + (int(match.group(1)) if match else 0)
    return at <= len(raw)


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    raw = b""
    async with asyncio.timeout(10):
        while not complete(raw, count):
            chunk = await reader.read(65536)
            assert chunk, f"connection closed after {responses(raw)}"
            raw += chunk
    return responses(raw)


async def answers(port: int, data: bytes, count: int) -> list[tuple[int, bytes]]:
    """The first ``count`` answers to ``data`` sent at once on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await read_answers(reader, count)
    finally:
        writer.close()


class Counted(LevelDBLayer):
    """A real LevelDB layer that counts its writes: a ``set`` per write committed alone, the size
    of each ``set_many`` batch; ``fail_next`` makes the next batch fail before it reaches the
    database (a write error: nothing of it is written); ``fail_after`` lets that many batches
    through first."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.puts = 0
        self.sizes: list[int] = []
        self.fail_next = False
        self.fail_after = 0
        self.batch_tried = asyncio.Event()  # set by every ``set_many``, written or failed

    def set(self, key: str, obj: Object) -> Any:
        self.puts += 1
        return super().set(key, obj)

    def set_many(self, items: Sequence[tuple[str, Object]]) -> None:
        self.batch_tried.set()
        if self.fail_next and self.fail_after:
            self.fail_after -= 1
        elif self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        self.sizes.append(len(items))
        super().set_many(items)

    def writes(self) -> tuple[int, list[int]]:
        """The puts and batch sizes so far (a copy, to compare with later)."""
        return self.puts, list(self.sizes)


class Served:
    def __init__(self, store: Layered, layer: Counted, runner: ServerRunner) -> None:
        self.store, self.layer, self.runner = store, layer, runner
        self.port = runner.port
        self.events: list[Event] = []
        store.on_commit(self.events.append)

    def since(self, before: tuple[int, list[int]]) -> tuple[int, list[int]]:
        """The puts and the batch sizes since ``before`` (:meth:`Counted.writes`)."""
        puts, sizes = before
        return self.layer.puts - puts, self.layer.sizes[len(sizes):]

    def stored(self, key: str) -> dict[str, Any] | None:
        raw = self.layer.db.get(key.encode())
        return None if raw is None else Object.from_json(raw).value  # type: ignore[no-any-return]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[Layered, ServerRunner]] = []

    async def make(store_options: Options | None = None, **options: Any) -> Served:
        layer = Counted(tmp_path / f"db{len(made)}")
        store = Layered(memory=MemoryLayer(), embedded=layer)
        await store.start(store_options)
        server = Server(store, shutdown_timeout=1.0, http_engine="lean", **options)
        runner = ServerRunner(store, "127.0.0.1", 0, server=server)
        await runner.start()
        made.append((store, runner))
        return Served(store, layer, runner)

    yield make
    for store, runner in made:
        await runner.stop()
        await store.close()


async def test_a_pipelined_burst_is_one_batch_in_order(served: Any) -> None:
    """The 16 POSTs of a pipelined burst are one batch of the database (they were 16 puts), each
    with its own revision and event in order; the GET behind them reads the last one."""
    s = await served()
    before, revision = s.layer.writes(), s.store.revision
    burst = b"".join(req("POST", f"/burst/{i}", doc(i)) for i in range(16)) + req("GET", "/burst/15")
    got = await answers(s.port, burst, 17)
    assert got[:16] == [(200, b'{"index":"%d"}' % i) for i in range(16)]
    assert got[16][0] == 200 and orjson.loads(got[16][1])["data"] == orjson.loads(doc(15))
    assert s.since(before) == (0, [16])
    assert [(e.key, e.revision) for e in s.events] == [(f"burst/{i}", revision + 1 + i) for i in range(16)]
    assert all(s.stored(f"burst/{i}") == orjson.loads(doc(i)) for i in range(16))


async def test_a_bad_request_in_a_burst_is_answered_in_its_place_the_others_are_one_batch(
    served: Any,
) -> None:
    """A document that is not JSON and a key that is not valid, in the middle of a burst: each is
    answered 400 in its place, with no effect; the other writes are one batch, in order."""
    s = await served()
    before, revision = s.layer.writes(), s.store.revision
    burst = [req("POST", f"/mix/{i}", doc(i)) for i in range(6)]
    burst[2] = req("POST", "/mix/2", b"{nope")
    burst[4] = req("POST", "/mix//4", doc(4))
    got = await answers(s.port, b"".join(burst), 6)
    assert [status for status, _ in got] == [200, 200, 400, 200, 400, 200]
    assert b"JSON" in got[2][1] and b"key is not valid" in got[4][1]
    assert s.since(before) == (0, [4])
    written = ["mix/0", "mix/1", "mix/3", "mix/5"]
    assert [(e.key, e.revision) for e in s.events] == [(k, revision + 1 + i) for i, k in enumerate(written)]
    assert s.store.peek("mix/2") is None and s.stored("mix/2") is None


async def test_a_failed_burst_fails_every_write_in_it_with_503(served: Any) -> None:
    s = await served()
    before = s.layer.writes()
    s.layer.fail_next = True
    got = await answers(s.port, b"".join(req("POST", f"/fb/{i}", doc(i)) for i in range(5)), 5)
    assert [status for status, _ in got] == [503] * 5
    assert all(b"Input/output error" in body for _, body in got)
    assert s.since(before) == (0, []) and s.events == []
    assert all(s.store.peek(f"fb/{i}") is None and s.stored(f"fb/{i}") is None for i in range(5))
    got = await answers(s.port, b"".join(req("POST", f"/fb/{i}", doc(i)) for i in range(5)), 5)
    assert [status for status, _ in got] == [200] * 5 and s.since(before) == (0, [5])


async def test_a_locked_key_ends_a_burst_the_writes_before_it_are_answered(served: Any) -> None:
    """POSTs 0-2, then one to a key another writer holds, then 4-5: the first three are one batch,
    answered while the fourth waits for its lock; once it is released, the rest follow in order."""
    s = await served()
    await s.store.set("lk/held", {"n": 0})
    await s.store.get_and_lock("lk/held")
    before = s.layer.writes()
    burst = [req("POST", f"/lk/{i}", doc(i)) for i in range(6)]
    burst[3] = req("POST", "/lk/held", doc(3))
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        writer.write(b"".join(burst))
        assert await read_answers(reader, 3) == [(200, b'{"index":"%d"}' % i) for i in range(3)]
        assert s.since(before) == (0, [3])
        await s.store.unlock("lk/held")
        got = await read_answers(reader, 3)
        assert got == [(200, b'{"index":"held"}'), (200, b'{"index":"4"}'), (200, b'{"index":"5"}')]
    finally:
        writer.close()
    assert [e.key for e in s.events][-6:] == ["lk/0", "lk/1", "lk/2", "lk/held", "lk/4", "lk/5"]
    assert s.stored("lk/held") == orjson.loads(doc(3))


async def test_a_request_not_ours_in_a_burst_goes_to_aiohttp_after_the_run(served: Any) -> None:
    """A burst whose third POST the access policy refuses: the first two are one batch, answered by
    the front; the refused one and those behind it are aiohttp's (403, then 200s), in order."""
    s = await served(auth=policy())
    auth = HOST + b"Authorization: Bearer writer\r\n"
    before = s.layer.writes()
    keys = ["ok/a", "ok/b", "no/c", "ok/d"]
    got = await answers(s.port, b"".join(req("POST", "/" + k, doc(i), auth) for i, k in enumerate(keys)), 4)
    assert [status for status, _ in got] == [200, 200, 403, 200]
    assert s.since(before)[1][:1] == [2]
    assert [e.key for e in s.events] == ["ok/a", "ok/b", "ok/d"]
    assert s.stored("no/c") is None


@pytest.mark.parametrize("first", [b"", req("DELETE", "/x")], ids=["by-hand", "in-a-task"])
async def test_a_run_joining_the_batch_whose_last_post_is_bad_is_answered_whole(
    served: Any, first: bytes
) -> None:
    """The second run of an iteration joins its batch; its last POST, not JSON, fails at once while
    the one before it waits for the batch: every answer comes, in order (an outsider's pipeline
    that dropped or hung the connection; a DELETE first makes the rest go on in a task)."""
    s = await served()
    burst = first + b"".join([req("POST", "/h/a", doc(1)), req("POST", "/h/b", doc(2)), req("GET", "/h/a"),
                              req("POST", "/h/c", doc(3)), req("POST", "/h/d", b"{bad"), req("GET", "/h/c")])
    count = 7 if first else 6
    got = await answers(s.port, burst, count)
    statuses = [status for status, _ in got][-6:]
    assert statuses == [200, 200, 200, 200, 400, 200]
    assert orjson.loads(got[-1][1])["data"] == orjson.loads(doc(3))
    assert s.stored("h/c") == orjson.loads(doc(3)) and s.stored("h/d") is None


async def test_a_waiting_run_counts_once_in_its_clients_share(served: Any) -> None:
    """A pipelined run waiting for its writes counts as one request of its client (as under
    aiohttp), not one per POST: another connection of the same client is still served (it was
    refused 503 "too many busy connections" with a share of 2)."""
    s = await served(Options(workers=1, queue_size=1, lossless_watch=True), max_connections_per_client=2)
    gate = asyncio.Event()

    async def slow(event: Event) -> None:
        await gate.wait()

    s.store.watch(slow)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    other_reader, other = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        for i in range(2):  # the watcher holds the first event, the queue the second
            writer.write(req("POST", f"/sh/{i}", doc(i)))
            assert await read_answers(reader, 1) == [(200, b'{"index":"%d"}' % i)]
        writer.write(b"".join(req("POST", f"/sh/{i}", doc(i)) for i in range(2, 5)))
        share = s.runner.server.share
        async with asyncio.timeout(10):
            while not share.busy:
                await asyncio.sleep(0)  # the run arriving: no event to wait for
        assert share.busy == {"127.0.0.1": 1}
        other.write(req("GET", "/sh/0"))
        [(status, body)] = await read_answers(other_reader, 1)
        assert status == 200 and orjson.loads(body)["data"] == orjson.loads(doc(0))
        gate.set()
        assert await read_answers(reader, 3) == [(200, b'{"index":"%d"}' % i) for i in range(2, 5)]
    finally:
        writer.close()
        other.close()


async def test_single_posts_of_many_connections_in_one_iteration_are_one_batch(served: Any) -> None:
    """Eight keep-alive connections, one POST each, all read by the server in the same iteration
    (sent from this loop without a pause: the server's next poll finds all eight)."""
    s = await served()
    conns = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(8)]
    try:
        for round_ in range(2):
            before = s.layer.writes()
            for i, (_, writer) in enumerate(conns):
                writer.write(req("POST", f"/conns/{round_}/{i}", doc(i)))
            got = await asyncio.gather(*(read_answers(reader, 1) for reader, _ in conns))
            assert got == [[(200, b'{"index":"%d"}' % i)] for i in range(8)]
            assert s.since(before) == (0, [1, 7])
            assert all(s.stored(f"conns/{round_}/{i}") == orjson.loads(doc(i)) for i in range(8))
    finally:
        for _, writer in conns:
            writer.close()
    assert [e.key for e in s.events] == [f"conns/{r}/{i}" for r in range(2) for i in range(8)]


async def at_once(port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """One request on each of ``len(requests)`` new connections, all sent without a pause (the
    server reads them in one iteration); their answers, in that order."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]
    try:
        for (_, writer), data in zip(conns, requests, strict=True):
            writer.write(data)
        got = await asyncio.gather(*(read_answers(reader, 1) for reader, _ in conns))
        return [answer for [answer] in got]
    finally:
        for _, writer in conns:
            writer.close()


async def test_a_write_refused_fails_alone_the_others_share_the_batch(served: Any) -> None:
    s = await served()
    before = s.layer.writes()
    got = await at_once(s.port, [req("POST", "/f/a", doc(1)), req("POST", "/f/b", doc(2)),
                                 req("POST", "/f/bad", b"{nope"), req("POST", "/f//c", doc(3)),
                                 req("POST", "/f/d", doc(4))])
    assert [status for status, _ in got] == [200, 200, 400, 400, 200]
    assert b"JSON" in got[2][1] or b"json" in got[2][1]
    assert s.since(before) == (0, [1, 2])  # a alone, b and d together
    assert [e.key for e in s.events] == ["f/a", "f/b", "f/d"]
    assert s.stored("f/bad") is None and s.store.peek("f/bad") is None


def policy() -> Policy:
    return Policy.from_dict({
        "tokens": [
            {"name": "writer", "sha256": token_digest("writer"),
             "rules": [{"paths": ["ok/*"], "rights": list(RIGHTS)}, {"paths": ["no/*"], "rights": ["read"]}]},
        ],
    })


async def test_a_request_not_ours_goes_to_aiohttp_the_others_share_the_batch(served: Any) -> None:
    """A POST the access policy refuses, read in the same iteration as three it allows: aiohttp
    answers it (403, nothing written); the three are the iteration's put and a batch of two."""
    s = await served(auth=policy())
    auth = HOST + b"Authorization: Bearer writer\r\n"
    before = s.layer.writes()
    got = await at_once(s.port, [req("POST", "/ok/0", doc(0), auth), req("POST", "/ok/1", doc(1), auth),
                                 req("POST", "/no/2", doc(2), auth), req("POST", "/ok/3", doc(3), auth)])
    assert [status for status, _ in got] == [200, 200, 403, 200]
    assert s.since(before) == (0, [1, 2])
    assert sorted(e.key for e in s.events) == ["ok/0", "ok/1", "ok/3"]
    assert s.stored("no/2") is None


async def test_a_failed_batch_fails_every_write_in_it_with_503(served: Any) -> None:
    s = await served()
    before = s.layer.writes()
    s.layer.fail_next, s.layer.fail_after = True, 1
    got = await at_once(s.port, [req("POST", f"/e/{i}", doc(i)) for i in range(4)])
    assert [status for status, _ in got] == [200, 503, 503, 503]
    assert b"write failed" in got[1][1] and b"Input/output error" in got[1][1]
    assert s.since(before) == (0, [1])
    assert [e.key for e in s.events] == ["e/0"]  # no event for a failed write
    for i in (1, 2, 3):
        assert s.store.peek(f"e/{i}") is None and s.stored(f"e/{i}") is None
    # the next ones are written
    got = await at_once(s.port, [req("POST", "/e/1", doc(1)), req("POST", "/e/2", doc(2))])
    assert [status for status, _ in got] == [200, 200]
    assert s.stored("e/2") == orjson.loads(doc(2))


async def the_fronts(runner: ServerRunner, count: int = 1) -> list[Front]:
    """The ``count`` connections the front serves (once the server accepted them)."""
    assert runner.gate is not None
    async with asyncio.timeout(10):
        while len(found := [c for c in runner.gate.open if isinstance(c, Front)]) < count:
            await asyncio.sleep(0)  # accepting: no event to wait for
    return found


@pytest.mark.parametrize("fail", [False, True], ids=["written", "failed"])
async def test_a_connection_closed_while_its_batch_is_pending(served: Any, fail: bool) -> None:
    """Four connections send a POST each, three close at once: the writes in the batch go on
    (written, or all failed), nothing is written to the closed connections, nothing is logged as an
    error (a failed batch's error is not left unretrieved), and the server goes on serving."""
    s = await served()
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: problems.append(context))
    try:
        before = s.layer.writes()
        s.layer.fail_next, s.layer.fail_after = fail, 1
        s.layer.batch_tried.clear()
        conns = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(4)]
        fronts = await the_fronts(s.runner, 4)
        for i, (_, writer) in enumerate(conns):
            writer.write(req("POST", f"/gone/{i}", doc(i)))
            if i:
                writer.close()
        assert await read_answers(conns[0][0], 1) == [(200, b'{"index":"0"}')]
        conns[0][1].close()
        async with asyncio.timeout(10):
            await s.layer.batch_tried.wait()
            while any(f.worker is not None or not f.lost for f in fronts):
                await asyncio.sleep(0)  # the answers go nowhere: no event to wait for
        keys = [f"gone/{i}" for i in range(4)]
        if fail:
            assert s.since(before) == (0, [1])
            assert [k for k in keys if s.store.peek(k) is not None] == ["gone/0"]
        else:
            assert s.since(before) == (0, [1, 3])
            assert all(s.stored(k) == orjson.loads(doc(int(k[5:]))) for k in keys)
        gc.collect()
        await asyncio.sleep(0)
        assert problems == []
        got = await answers(s.port, req("POST", "/after", doc(0)), 1)
        assert got == [(200, b'{"index":"after"}')]
    finally:
        loop.set_exception_handler(None)


async def test_stopping_while_a_write_waits_by_hand_answers_it_then_closes(served: Any) -> None:
    """A POST to a locked key waits for the lock outside any task; the server stops meanwhile: it
    waits for that answer (the key unlocked), sends it, then closes the connection."""
    s = await served()
    await s.store.set("held", {"n": 0})
    await s.store.get_and_lock("held")
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        writer.write(req("POST", "/first", doc(0)) + req("POST", "/held", doc(1)))
        assert await read_answers(reader, 1) == [(200, b'{"index":"first"}')]
        [front] = await the_fronts(s.runner)
        assert front.worker is not None and not isinstance(front.worker, asyncio.Task)
        stopping = asyncio.ensure_future(s.runner.stop())
        async with asyncio.timeout(10):
            while front.ended is None:
                await asyncio.sleep(0)
        await s.store.unlock("held")
        raw = b""
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                raw += chunk
        assert responses(raw) == [(200, b'{"index":"held"}')]
        await stopping
        assert s.stored("held") == orjson.loads(doc(1))
    finally:
        writer.close()


async def test_a_post_alone_is_answered_once_a_full_watchers_queue_has_room(served: Any) -> None:
    """A library watcher that does not keep up (its queue of one full, ``lossless_watch``): a POST
    is written at once but answered only once its event has room, as ``Layered.set`` returns; a GET
    sent meanwhile waits behind it; the server stopping meanwhile sends both answers, then closes
    the connection."""
    s = await served(Options(workers=1, queue_size=1, lossless_watch=True))
    gate, seen = asyncio.Event(), []

    async def slow(event: Event) -> None:
        seen.append(event.key)
        await gate.wait()

    s.store.watch(slow)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        for i in range(2):  # the watcher holds the first event, the queue the second
            writer.write(req("POST", f"/room/{i}", doc(i)))
            assert await read_answers(reader, 1) == [(200, b'{"index":"%d"}' % i)]
        [front] = await the_fronts(s.runner)
        writer.write(req("POST", "/room/2", doc(2)))
        async with asyncio.timeout(10):
            while s.store.peek("room/2") is None or front.worker is None:
                await asyncio.sleep(0)  # the request arriving: no event to wait for
        assert isinstance(front.worker, asyncio.Future) and not front.worker.done()
        assert s.stored("room/2") == orjson.loads(doc(2))  # written, not yet answered
        writer.write(req("GET", "/room/2"))
        async with asyncio.timeout(10):
            while len(front.queue) < 2:
                await asyncio.sleep(0)  # the request arriving: no event to wait for
        stopping = asyncio.ensure_future(s.runner.stop())
        async with asyncio.timeout(10):
            while not front.stopping:
                await asyncio.sleep(0)
        gate.set()
        raw = b""
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                raw += chunk
        got = responses(raw)
        assert got[0] == (200, b'{"index":"2"}') and len(got) == 2
        assert got[1][0] == 200 and orjson.loads(got[1][1])["data"] == orjson.loads(doc(2))
        await stopping
    finally:
        writer.close()
    assert seen[:2] == ["room/0", "room/1"]


# -- kill -9 of a real server during pipelined POSTs ---------------------------------------------


async def start_serve(data: Path) -> tuple[asyncio.subprocess.Process, int]:
    return await serve_process("--data", str(data), "--http-engine", "lean")

async def post_bursts(port: int, conn: int, acked: list[str], enough: asyncio.Event) -> None:
    """Bursts of 16 pipelined POSTs of new keys; a key is recorded once its 200 arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seq = 0
    try:
        while True:
            keys = [f"k/{conn}/{seq + i}" for i in range(16)]
            seq += 16
            writer.write(b"".join(req("POST", "/" + key, doc(conn)) for key in keys))
            for key in keys:
                head = await reader.readuntil(b"\r\n\r\n")
                size = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                body = await reader.readexactly(size)
                assert (head[:12], body) == (b"HTTP/1.1 200", b'{"index":"%s"}' % key.split("/")[2].encode())
                acked.append(key)
            if len(acked) >= 3000:
                enough.set()
    except (ConnectionError, asyncio.IncompleteReadError):
        return  # killed: the rest of this burst is not acknowledged
    finally:
        writer.close()


async def test_every_acknowledged_pipelined_write_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "db"
    proc, port = await start_serve(data)
    acked: list[str] = []
    enough = asyncio.Event()
    try:
        clients = [asyncio.ensure_future(post_bursts(port, c, acked, enough)) for c in range(8)]
        async with asyncio.timeout(60):
            await enough.wait()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        async with asyncio.timeout(10):
            await asyncio.gather(*clients)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    db = plyvel.DB(str(data))
    try:
        missing = [key for key in acked if db.get(key.encode()) is None]
    finally:
        db.close()
    assert len(acked) >= 3000 and missing == []
