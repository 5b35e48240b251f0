"""One connection of the lean front (package doc): its requests parsed and answered in order, or
handed over to aiohttp."""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ...errors import HTTPFailure
from ...protocol.pages import next_headers
from .. import chunked, lists, offload, rest, txn
from ..errors import ClientGone, log_error
from ..limits import GuardedConnection, raw_response
from .wire import (
    SERVER_LINE,
    NotOurs,
    Request,
    bearer,
    failure_answer,
    head_only,
    header_lines,
    json_answer,
    read_head,
)

if TYPE_CHECKING:
    from ...protocol.objects import Object
    from . import Lean

MAX_PENDING = 16
"""Requests parsed ahead of their answers (pipelining) before the front stops reading."""
MAX_BUFFERED = 256 * 1024
"""Bytes of parsed requests waiting for their answers before the front stops reading."""
_BARE_LF = re.compile(rb"(?<!\r)\n").search
"""A line ended by a bare LF: aiohttp refuses such a head at once (the front would wait for a
``\r\n\r\n`` that never comes)."""
_INLINE_BYTES = offload.INLINE_BYTES
"""The largest body a POST of a run may have (``rest._large``: a larger one is checked in a thread)."""
FLUSH_BYTES = 64 * 1024
"""Answers of pipelined requests are written together up to this size."""
BODY_PATIENCE = 1 / 16
"""The share of ``body_timeout`` a body may take here before the request goes to aiohttp, whose
body watch then allows ``body_timeout`` of silence: a stalled body is closed after about
``1 + BODY_PATIENCE`` times ``body_timeout``, as under aiohttp (the front waited the whole
``body_timeout`` first, and aiohttp as long again)."""

_T = TypeVar("_T")
_Admitted = tuple[Request, bytes, bool]
"""A request of a run with its answer's CORS lines and whether it counts in the usage."""

_HANDED_OVER_QUEUE: deque[Request] = deque(maxlen=0)
"""The queue of every handed-over connection: empty for good (``maxlen=0`` drops an append)."""
_HANDED_OVER_BUF = bytearray()
"""The buffer of every handed-over connection, empty: aiohttp reads its bytes (``data_received``
forwards them before this is touched)."""


class Front(GuardedConnection):
    """One connection: served here while its requests qualify, then by aiohttp (``self.handler``
    set by :meth:`GuardedConnection.attach`, every call forwarded).

    Slots, and a handed-over connection's queue and buffer given back (:meth:`_hand_over`): it
    lives on, as a websocket for hours, holding only what forwarding needs (the attributes' dict
    and the empty ``deque`` cost about 1 KiB per subscriber)."""

    __slots__ = ("lean", "loop", "buf", "scan", "queue", "worker", "local", "remote", "host", "by_hand",
                 "hand_over", "reading", "writable", "lost", "closing", "out", "out_bytes", "flush_soon",
                 "stopping", "partial", "active_at", "idle_timer", "stall_timer", "stall_head",
                 "ended", "pending")

    def __init__(self, lean: Lean) -> None:
        super().__init__(lean.gate)
        self.lean = lean
        self.loop = asyncio.get_running_loop()  # looked up once: each look-up is a getpid() call
        self.buf = bytearray()
        self.scan = 0  # bytes of ``buf`` parsed into ``queue`` (the rest: an incomplete request)
        self.queue: deque[Request] = deque()
        # A task, or ``_work`` itself while it waits run by hand (:meth:`_drive`), or the write (or
        # the room) a POST alone waits for (:meth:`_post_alone`): None when idle
        self.worker: asyncio.Future[Any] | Coroutine[Any, Any, None] | None = None
        self.local: tuple[str, int] | None = None
        self.remote = ""
        self.host: str | None = None  # the last Host header allowed on this connection
        self.by_hand = False  # ``_work`` runs in ``data_received``, not in a task
        self.hand_over = False  # a request that is not ours waits behind ``queue``
        self.reading = True
        self.writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self.lost = False
        self.closing = False  # the answer being written ends the connection
        self.out: list[bytes] = []  # answers not written yet (pipelined requests: one write)
        self.out_bytes = 0
        self.flush_soon = False
        self.stopping = False  # the server stops: answer what is queued, then close
        self.partial: Request | None = None  # a request whose body is still arriving
        self.active_at = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None
        self.stall_head = False  # the stall timer times a request head (else a body)
        self.ended: asyncio.Future[None] | None = None  # :meth:`stop` waits for ``_work`` run by hand
        self.pending: tuple[Request, bytes, bool, float] | None = None  # :meth:`_post_alone`'s

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if not self.gate.admit(self):
            busy = "ooo: too many connections, retry later"
            transport.write(raw_response(503, "Service Unavailable", busy))
            transport.close()
            return
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1]) if isinstance(sockname, tuple) else None
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        self.active_at = self.loop.time()
        self.lean.unheard(self)  # its idle timer once it is heard, and if it stays ours

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            super().data_received(data)
            return
        self.buf += data
        if self.hand_over:  # what follows is aiohttp's, once the queue is answered: hold it back
            self._pause_reading()
            return
        if self.worker is None and not self.queue:
            self._parse()
            if self.idle_timer is None and self.handler is None:
                self._heard()
            if self.queue and self.worker is None:
                self._run()
        else:
            self._parse()

    def eof_received(self) -> None:
        if self.handler is not None:
            super().eof_received()
        # None: the transport closes, as under aiohttp

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lean.silent.pop(self, None)
        self.queue.clear()
        partial = self.partial
        if partial is not None and self.handler is None:  # one INFO line, as from rest.read_body
            failures = self.lean.server.failures
            log_error(failures, partial.method, "/" + partial.key, self.remote, ClientGone())
        self._cancel_timers()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            super().pause_writing()
        elif self.writable is None:
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.handler is not None:
            super().resume_writing()
            return
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- the gate's view -----------------------------------------------------------------------
    def waiting(self) -> bool:
        if self.handler is not None:
            return super().waiting()
        # a request whose body is arriving is busy, as under aiohttp (the gate closed uploads)
        return not self.queue and self.worker is None and self.partial is None

    def abort(self) -> None:
        if self.handler is not None:
            super().abort()
            return
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    def stop(self) -> asyncio.Future[None] | None:
        """The server stops: close now when idle, else once the queued requests are answered (the
        future to wait for)."""
        worker = self.worker
        if worker is None:
            self.abort()
            return None
        self.stopping = True
        self._pause_reading()
        if isinstance(worker, asyncio.Future):
            return worker
        if self.ended is None:  # run by hand: done when ``_work`` ends
            self.ended = self.loop.create_future()
        return self.ended

    # -- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        """Parse every complete request of the buffer into the queue, until one is not ours."""
        buf, lean, queue = self.buf, self.lean, self.queue
        while not self.hand_over:
            start = self.scan
            if len(queue) >= MAX_PENDING or start >= MAX_BUFFERED:
                self._pause_reading()
                return
            if start == len(buf):
                return  # every byte parsed (the common case: whole requests arrive)
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                self._incomplete(start, head=True)
                return
            head = bytes(buf[start : end + 4])
            try:
                request = read_head(head, lean.max_head, lean.max_headers, lean.max_body)
            except NotOurs:
                self._hand_over_soon()
                return
            body_end = end + 4 + request.size
            if len(buf) < body_end:
                if self.partial is None and self._refused(request):
                    self._hand_over_soon()  # aiohttp refuses it before its body, and closes
                    return
                self.partial = request
                self._incomplete(start, head=False)
                return
            self.partial = None
            if request.size:
                request.body = bytes(buf[end + 4 : body_end])
            request.size = body_end - start
            self.scan = body_end
            queue.append(request)
            if self.stall_timer is not None:
                self.stall_timer.cancel()
                self.stall_timer = None

    def _refused(self, request: Request) -> bool:
        """Whether the access policy refuses ``request``, whose body is still arriving: aiohttp is
        to answer it now, without reading its body, and close the connection (docs/protocol.md
        §9.3), as it does under the aiohttp engine; waiting for the body first kept the connection
        open."""
        if self.lean.server.guard.policy is None:
            return False
        try:
            self._admit(request)
        except NotOurs:
            return True
        return False

    def _incomplete(self, start: int, head: bool) -> None:
        """The request at ``start`` is not all here: wait for the rest, within the config's time."""
        buf = self.buf
        if start == len(buf):
            return
        if head and (len(buf) - start > self.lean.max_head or _BARE_LF(buf, start) is not None):
            self._hand_over_soon()  # too large, or lines ended by a bare LF: aiohttp's to refuse
            return
        if self.stall_timer is not None:
            if self.stall_head == head:
                return
            self.stall_timer.cancel()  # the head is complete: its body has a time of its own
        cfg = self.gate.config
        timeout = cfg.header_timeout if head else cfg.body_timeout * BODY_PATIENCE
        self.stall_head = head
        self.stall_timer = self.loop.call_later(timeout, self._stalled, head)

    def _stalled(self, head: bool) -> None:
        self.stall_timer = None
        if self.handler is None and self.scan < len(self.buf):
            self._hand_over_soon()
            if head and self.handler is not None:
                self._head_done()
                self._head_timed_out()  # aiohttp's handler waits for this head: 408, as it would

    # -- answering -----------------------------------------------------------------------------
    def _run(self) -> None:
        """Answer the queued requests right here, in ``data_received``: :meth:`_work` run by hand,
        without a task, as long as each request may be answered outside one (:meth:`_inline`: a
        read from memory, a plain write), the answers written with one call. A task per burst of
        requests cost about a fifth of a small request's CPU (its creation, its steps, its
        registration), and a burst of one request is the common case. A GET of one key or a plain
        POST alone in the queue (the commonest requests) go without even :meth:`_work`'s
        coroutine (:meth:`_read`, :meth:`_post_alone`)."""
        queue = self.queue
        if len(queue) == 1 and self.writable is None:
            request = queue[0]
            if self._reads(request):
                try:
                    answer = self._read(request)
                except NotOurs:
                    pass  # :meth:`_work` hands it over
                else:
                    self._alone(answer)
                    return
            elif request.method == "POST" and self._runs(request) and self._post_alone(request):
                return
        self._drive(self._work())

    def _alone(self, answer: bytes) -> None:
        """The request alone in the queue is answered without :meth:`_work` (:meth:`_run`): its
        ``answer`` goes, then what came meanwhile (:meth:`_work`'s steps after an answer)."""
        queue = self.queue
        self._answered(queue.popleft(), answer)
        self.active_at = self.loop.time()
        if self.closing:
            self._close()
            return
        if queue:  # parsed while a POST waited: on in order (then what stopping or handing over asks)
            self._drive(self._work())
            return
        if self.stopping:  # the server stops: this was the last answer
            self._flush()
            self.abort()
            return
        if self.hand_over:  # a request behind it is aiohttp's
            self._hand_over()
            return
        if not self.reading:
            self._resume_reading()
        if self.scan < len(self.buf):
            self._parse()  # what came meanwhile
        if queue:
            self._drive(self._work())
        else:
            self._flush()

    def _post_alone(self, request: Request) -> bool:
        """:meth:`_answer` to a plain POST alone in the queue (:meth:`_runs`) without a coroutine:
        its write goes through ``Layered.set_run``, answered at once when committed at once (the
        loop iteration's first write), else once its batch is written (:meth:`_posted`, the
        future's callback: no chain of coroutines to pause and resume, about an eighth of a POST's
        CPU). False when :meth:`_work` is to answer it: a request that is not ours, or a write the
        store makes wait (a key locked, a transaction in progress)."""
        start = time.perf_counter()
        try:
            cors, counted = self._admitted(request)
        except NotOurs:
            return False
        key = request.key
        try:
            if not request.valid:  # else known valid from its URL
                rest.check_key(key)
            filters = self.lean.context.filters
            if filters.static:
                filters.write_entry(key)  # refused in static mode without a filter
        except Exception as exc:
            self._alone(self._done(request, self._failed(request, exc, cors), counted, start))
            return True
        futs = self.lean.store.set_run(((key, request.body),), checked=True)
        if futs is None:
            return False  # nothing done: :meth:`_answer` decides again
        [fut] = futs
        self.pending = (request, cors, counted, start)
        if fut.done():
            self._posted(fut)
        else:
            share, who = self.lean.server.share, self.remote
            share.busy[who] = share.busy.get(who, 0) + 1  # as :meth:`_answer` counts it
            self.worker = fut
            fut.add_done_callback(self._posted)
        return True

    def _posted(self, fut: asyncio.Future[tuple[Object, asyncio.Future[None] | None]]) -> None:
        """The write of the POST alone in the queue (:meth:`_post_alone`) is done: its answer."""
        if self.worker is fut:  # it waited for its batch
            self.worker = None
            share, who = self.lean.server.share, self.remote
            if (left := share.busy[who] - 1) > 0:
                share.busy[who] = left
            else:
                del share.busy[who]
        assert self.pending is not None
        request, cors, counted, start = self.pending
        self.pending = None  # its body not kept while the connection waits for the next request
        error = fut.exception()
        if error is not None:
            answer = self._failed(request, cast(Exception, error), cors)
        else:
            obj, waiter = fut.result()
            answer = json_answer(self.lean.dates.line(), rest.index_json(obj.index), cors)
        answer = self._done(request, answer, counted, start)  # counted, as aiohttp counts it
        if self.lost:  # even when its client is gone
            return
        if error is not None or waiter is None or waiter.done():
            self._alone(answer)
        else:  # a library watcher's queue is full: the answer once there is room, as ``set`` waits
            self.worker = waiter
            waiter.add_done_callback(lambda _: self._roomy(waiter, answer))

    def _roomy(self, waiter: asyncio.Future[None], answer: bytes) -> None:
        """The room a write waited for in a library watcher's queue (:meth:`_posted`) is there."""
        if self.worker is waiter:
            self.worker = None
        if not self.lost:
            self._alone(answer)

    def _drive(self, work: Coroutine[Any, Any, None]) -> None:
        """Take one step of ``work`` (:meth:`_work`) by hand (``send(None)``), as a task would:
        when it stops at a future (a write's place in the store's batch, a key's lock, a full
        socket buffer), it goes on by hand once that is done (:meth:`_wake`); when it yields
        anything else (a request that needs a task: ``_work`` says so with a bare yield), a task
        goes on with it from there. While it runs, the store knows its writers can wait for a batch
        (``Layered.driven``: writers without a task could not otherwise)."""
        store = self.lean.store
        self.by_hand = store.driven = True
        try:
            waited = work.send(None)
        except StopIteration:
            return
        finally:
            self.by_hand = store.driven = False
        if waited is _TURN:  # the others' turn (a long pipeline): then on by hand again
            self.worker = work
            self.loop.call_soon(self._drive, work)
            return
        if getattr(waited, "_asyncio_future_blocking", False):  # a future, as asyncio.Task tells
            waited._asyncio_future_blocking = False
            self._flush()  # the answers so far go now: the next one may wait
            self.worker = work
            waited.add_done_callback(self._wake)
            return
        self._flush()
        self.worker = self.loop.create_task(_go_on(_Started(work, waited)))

    def _wake(self, _: asyncio.Future[Any]) -> None:
        """What ``_work`` waited for is done: on with it, by hand."""
        self._drive(self.worker)  # type: ignore[arg-type]

    def _inline(self, request: Request) -> bool:
        """Whether ``request`` may be answered outside any task: nothing its answer runs before
        its first wait may need one (``asyncio.timeout``, a layer's own waits, a filter's
        function). A GET or HEAD of one key on a store whose layers are all synchronous
        (``Layer.asynchronous``) or that has a memory mirror, or a POST to one that no write or
        after-write filter sees on a store whose layers are all synchronous."""
        method, key = request.method, request.key
        if not key or "*" in key:
            return False
        if method == "GET" or method == "HEAD":
            return self.lean.inline_reads
        return method == "POST" and self.lean.inline and self.lean.context.filters.plain_write(key)

    async def _work(self) -> None:
        """Answer the queued requests in order: run by hand (:meth:`_drive`) until a request needs
        a task, then in one (one per burst of requests that need it)."""
        queue, buf = self.queue, self.buf
        answered = 0  # since this connection last let the others have a turn
        try:
            if self.writable is not None:
                await self.writable
            while queue and not self.lost:
                request = queue[0]
                if len(queue) > 1 and request.method == "POST" and self._runs(request):
                    # pipelined POSTs: one batch (a POST alone goes below, or through
                    # :meth:`_post_alone` when it arrives alone: cheaper than a run of one)
                    answers = await self._post_run()
                    if not answers:  # the first is not ours
                        self.hand_over = True
                        break
                    if self.lost:
                        break
                    out = self.out
                    for answer in answers:  # :meth:`_answered`, inline (16 times per burst)
                        size = queue.popleft().size
                        del buf[:size]
                        self.scan -= size
                        out.append(answer)
                        self.out_bytes += len(answer)
                    if self.closing:  # its last answer closes the connection
                        self._close()
                        return
                    count = len(answers)
                else:
                    try:
                        if self._reads(request):
                            answer = self._read(request)  # no coroutine: a read never waits
                        else:
                            if self.by_hand and not self._inline(request):
                                await asyncio.sleep(0)  # back to ``_drive``: the rest in a task
                            answer = await self._answer(request)
                    except NotOurs:
                        self.hand_over = True
                        break
                    if self.lost:
                        break
                    self._answered(queue.popleft(), answer)
                    if self.closing:
                        self._close()
                        return
                    count = 1
                if not queue and not self.hand_over and not self.stopping:
                    if not self.reading:
                        self._resume_reading()
                    if self.scan < len(buf):
                        self._parse()
                if not queue or self.writable is not None or self.out_bytes >= FLUSH_BYTES:
                    self._flush()
                    if self.writable is not None:
                        await self.writable
                elif not self.flush_soon and not self.by_hand:  # answers of pipelined requests
                    self.flush_soon = True  # go out together, unless a request makes the worker
                    self.loop.call_soon(self._flush_soon)  # wait: then at once
                answered += count
                if answered >= MAX_PENDING and queue:  # a long pipeline answered without a wait
                    answered = 0  # would hold every other connection back: their turn first
                    self._flush()
                    await (_TURN if self.by_hand else asyncio.sleep(0))
        finally:
            self.worker = None
            self.active_at = self.loop.time()
            if self.ended is not None and not self.ended.done():
                self.ended.set_result(None)
        if self.stopping:
            self.abort()
            return
        if self.hand_over and not self.lost:
            self._hand_over()

    async def _answer(self, request: Request) -> bytes:
        """The complete answer to ``request`` (NotOurs before any effect when it is aiohttp's)."""
        start = time.perf_counter()
        cors, counted = self._admitted(request)
        share, who = self.lean.server.share, self.remote
        share.busy[who] = share.busy.get(who, 0) + 1
        try:
            if request.method == "POST" and self._plain_post(request):
                answer = await self._post(request, cors)
            else:
                answer = await self._serve(request, cors)
        except NotOurs:
            raise
        except Exception as exc:
            answer = self._failed(request, exc, cors)
        finally:
            if (left := share.busy[who] - 1) > 0:
                share.busy[who] = left
            else:
                del share.busy[who]
        return self._done(request, answer, counted, start)

    def _reads(self, request: Request) -> bool:
        """Whether ``request`` is a GET or HEAD of one key on a store that reads without waiting
        (:meth:`_read`)."""
        method, key = request.method, request.key
        return ((method == "GET" or method == "HEAD") and self.lean.inline_reads
                and key != "" and "*" not in key)

    def _read(self, request: Request) -> bytes:
        """:meth:`_answer` to a GET or HEAD of one key (:meth:`_reads`), without a coroutine: the
        read never waits, and needs no count in the client's share (nothing else runs meanwhile)."""
        start = time.perf_counter()
        cors, counted = self._admitted(request)
        try:
            answer = self._get(request, cors)
        except NotOurs:
            raise
        except Exception as exc:
            answer = self._failed(request, exc, cors)
        return self._done(request, answer, counted, start)

    def _admitted(self, request: Request) -> tuple[bytes, bool]:
        """What a request must pass to be answered here (NotOurs, before any effect, when aiohttp
        is to answer it: its other routes, a refused Host or Origin, a client over its share, a
        refusal of the access policy): its answer's CORS lines, and whether it counts in the
        usage once answered (:meth:`_admit`)."""
        lean = self.lean
        server = lean.server
        if request.key in lean.endpoints:
            raise NotOurs()
        if request.host != self.host:  # a connection's requests mostly name one Host
            if lean.host_refusal(request.host, self.local) is not None:
                raise NotOurs()
            self.host = request.host
        cors: bytes = b""
        if request.origin is not None:
            if server.origins.origin_refusal(request.origin, request.host) is not None:
                raise NotOurs()
            allow = server.origins.cors_origin(request.origin)
            if allow is not None:
                cors = f"Access-Control-Allow-Origin: {allow}\r\nVary: Origin\r\n".encode()
        share = server.share
        if share.busy.get(self.remote, 0) >= share.limit:
            raise NotOurs()
        return cors, server.guard.policy is not None and self._admit(request)

    def _done(self, request: Request, answer: bytes, counted: bool, start: float) -> bytes:
        """``answer``, as sent (a HEAD's without its body), once counted and observed."""
        lean = self.lean
        if counted and (usage := lean.server.guard.usage) is not None:
            usage.count_request(request.key)  # once known to be ours: aiohttp counts the others
        if request.method == "HEAD":
            answer = head_only(answer)
        if lean.observed:
            self._observe(request, answer, time.perf_counter() - start)
        return answer

    def _runs(self, request: Request) -> bool:
        """Whether the POST ``request`` may be one of a run (:meth:`_post_run`): the store's write
        alone (:meth:`_plain_post`) on a store whose layers are all synchronous."""
        return self.lean.inline and self._plain_post(request)

    async def _post_run(self) -> list[bytes]:
        """The answers of the plain POSTs at the head of the queue (a run: up to the first request
        that is not one, or whose key is locked, up to :data:`MAX_PENDING`), their writes made as
        one batch of the store (``Layered.set_run``): a pipelined burst is one LevelDB
        ``WriteBatch`` and one wait, where each write on its own cost a ``write()`` and a chain of
        four coroutines. What each request passes is :meth:`_answer`'s; one that fails its checks
        is answered in its place, with no effect. Empty when the first request is not ours
        (NotOurs), the queue as it was; one that is not ours further on ends the run, and goes to
        aiohttp once the run is answered."""
        start = time.perf_counter()
        run, answers, writes = self._take_run()
        if not writes:
            return [self._done(request, cast(bytes, answer), counted, start)
                    for (request, _, counted), answer in zip(run, answers, strict=True)]
        store = self.lean.store
        share, who = self.lean.server.share, self.remote
        share.busy[who] = share.busy.get(who, 0) + 1  # one request in progress, as aiohttp counts
        try:
            futs = store.set_run(writes, checked=True)  # valid (URL or check_key), no glob (_runs)
            if futs is None:  # a transaction in progress: one by one
                outcomes = [await _outcome(store.set(key, raw)) for key, raw in writes]
            else:
                for fut in futs:  # those in the batch are done together (any may have failed
                    if not fut.done():  # its checks at once, the last one too)
                        try:  # noqa: SIM105 (``contextlib.suppress`` costs two calls more here)
                            await fut
                        except Exception:
                            pass  # each write's outcome is read below
                outcomes = [fut.exception() or fut.result()[0].index for fut in futs]
                for fut in futs:
                    if fut.exception() is None and (waiter := fut.result()[1]) is not None:
                        await waiter  # a library watcher's queue is full: its room first
        finally:
            if (left := share.busy[who] - 1) > 0:
                share.busy[who] = left
            else:
                del share.busy[who]
        done = iter(outcomes)
        date = self.lean.dates.line()
        out: list[bytes] = []
        for (request, cors, counted), answer in zip(run, answers, strict=True):
            if answer is None:
                outcome = next(done)
                if isinstance(outcome, str):
                    answer = json_answer(date, rest.index_json(outcome), cors)
                else:
                    answer = self._failed(request, cast(Exception, outcome), cors)
            out.append(self._done(request, answer, counted, start))
        return out

    def _take_run(self) -> tuple[list[_Admitted], list[bytes | None], list[tuple[str, bytes]]]:
        """The run at the head of the queue (:meth:`_post_run`): each request with its answer's CORS
        lines and whether it counts in the usage (:meth:`_admitted`); each one's answer when it
        failed its checks, else None; the writes of the others, in order."""
        lean = self.lean
        filters, store = lean.context.filters, lean.store
        run: list[_Admitted] = []
        answers: list[bytes | None] = []
        writes: list[tuple[str, bytes]] = []
        for request in self.queue:
            key = request.key
            if run and (request.method != "POST" or not self._plain_post(request) or store.held(key)):
                break  # a write that waits for a lock goes on its own, the run's answers first
            try:
                cors, counted = self._admitted(request)
            except NotOurs:
                if run:
                    self.hand_over = True  # once the run is answered, what follows is aiohttp's
                break
            run.append((request, cors, counted))
            try:
                if not request.valid:  # else known valid from its URL
                    rest.check_key(key)
                if filters.static:
                    filters.write_entry(key)  # refused in static mode without a filter
            except Exception as exc:
                answers.append(self._failed(request, exc, cors))
                if self.closing:
                    break
                continue
            answers.append(None)
            writes.append((key, request.body))
            if len(run) >= MAX_PENDING:
                break
        return run, answers, writes

    def _failed(self, request: Request, exc: Exception, cors: bytes) -> bytes:
        """The answer to a request that failed with ``exc``, logged as aiohttp's ``errors.py`` does."""
        log_error(self.lean.server.failures, request.method, "/" + request.key, self.remote, exc)
        if isinstance(exc, HTTPFailure) and exc.close:
            self.closing = True  # once the answers so far are sent
        return failure_answer(self.lean.dates.line(), exc, cors)

    def _observe(self, request: Request, answer: bytes, seconds: float) -> None:
        """Count an answered request in the metrics and log it, as ``metrics.observe`` does for
        aiohttp's (only requests answered here: one handed over is aiohttp's to count). The status
        is the answer's (``HTTP/1.1 NNN``)."""
        lean, method, key = self.lean, request.method, request.key
        status = 200 if answer.startswith(b"200", 9) else int(answer[9:12])
        series = lean.glob_series if "*" in key else lean.key_series if key else lean.root_series
        if series is not None:
            series[method].observe(status, seconds)
        if lean.access is not None:
            path = "/" + request.key
            if request.query is not None:
                path += "?" + "&".join(f"{k}={v}" for k, v in request.query.items())
            body = len(answer) - answer.index(b"\r\n\r\n") - 4
            lean.access.line(method, path, status, body, seconds, self.remote)

    async def _serve(self, request: Request, cors: bytes) -> bytes:
        """The answer to an admitted request (NotOurs before any effect when it is aiohttp's)."""
        lean = self.lean
        ctx, dates = lean.context, lean.dates
        method, key = request.method, request.key
        if not key:  # wire.read_head: POST /?api=txn
            return await self._txn(request, cors)
        if method == "GET" or method == "HEAD":  # app.py: rest.get answers both
            rest.check_key(key)
            ctx.filters.permit_read(key)
            if "*" in key:
                return await self._list(request, cors)
            if ctx.filters.object_fn(key) is not None:
                raise NotOurs()  # it may need aiohttp's sending of a large object
            obj = await rest.read_object(ctx, key)
            if len(obj.data) > chunked.CHUNK_BYTES:
                raise NotOurs()  # sent at the reader's pace by aiohttp (the read was free)
            return json_answer(dates.line(), obj.to_json(), cors)
        if method == "POST":
            entry = rest.post_entry(ctx, key)
            return json_answer(dates.line(), await rest.post_body(ctx, key, entry, request.body), cors)
        if method == "PATCH":
            entry = rest.patch_entry(ctx, key)
            return json_answer(dates.line(), await rest.patch_body(ctx, key, entry, request.body), cors)
        await rest.remove(ctx, key)
        return b"HTTP/1.1 204 No Content\r\n%s%s%s\r\n" % (cors, dates.line(), SERVER_LINE)

    def _plain_post(self, request: Request) -> bool:
        """Whether the POST ``request`` is the store's write alone (:meth:`_post`): one key, no
        filter sees it, a body small enough to be checked inline (``rest._large``)."""
        key = request.key
        return (len(request.body) <= _INLINE_BYTES and "*" not in key and key != ""
                and self.lean.context.filters.plain_write(key))

    async def _post(self, request: Request, cors: bytes) -> bytes:
        """:meth:`_serve`'s POST of one key that no filter sees (:meth:`_plain_post`): the store's
        ``set`` at once, without ``rest.post_entry``/``post_body`` and the after-write follow-up,
        which are for what a filter may see (a chain of three calls and two filter look-ups)."""
        key = request.key
        if not request.valid:  # else known valid from its URL
            rest.check_key(key)
        filters = self.lean.context.filters
        if filters.static:
            filters.write_entry(key)  # refused in static mode without a filter
        index = await self.lean.store.set(key, request.body)
        return json_answer(self.lean.dates.line(), rest.index_json(index), cors)

    def _get(self, request: Request, cors: bytes) -> bytes:
        """:meth:`_serve`'s GET (or HEAD) of one key on a store that ``reads_now``, without a
        coroutine (``read_object``'s chain of three, ``_serve``, the per-client count around it: about
        4 k of a GET's 82 k instructions)."""
        lean, key = self.lean, request.key
        ctx = lean.context
        if not request.valid:  # else known valid from its URL
            rest.check_key(key)
        if not ctx.filters.plain_read(key):
            raise NotOurs()  # an object filter: it may need aiohttp's sending of a large object
        obj = ctx.store.read_now(key)
        if obj is None:
            raise rest.missing()
        if len(obj.data) > chunked.CHUNK_BYTES:
            raise NotOurs()  # sent at the reader's pace by aiohttp (the read was free)
        return json_answer(lean.dates.line(), obj.to_json(), cors)

    async def _txn(self, request: Request, cors: bytes) -> bytes:
        """A transaction, as ``txn.handle`` answers it. The principal is the policy's for the
        request's token: :meth:`_admit` let it in through ``Guard.admit`` (which authenticates it;
        tokens the policy knows are remembered, so this is one look-up), and ``txn.run`` decides
        each op and ``expect`` key and counts them, as it does under aiohttp."""
        lean = self.lean
        policy = lean.server.guard.policy
        principal = None if policy is None else policy.authenticate(bearer(request.token))
        status, body = await txn.run(lean.context, request.body, principal)
        return json_answer(lean.dates.line(), body, cors, b"", status)

    async def _list(self, request: Request, cors: bytes) -> bytes:
        """A page of a glob, as ``lists.get`` answers it when the page is one chunk; NotOurs when
        it is streamed (aiohttp reads it again and sends it at the reader's pace: reading a page
        has no effect)."""
        lean = self.lean
        key, query = request.key, request.query or {}
        result, limit = await lists.read(lean.context, key, query.get("limit"), query.get("cursor"))
        body = lists.one_chunk(result.items)
        if body is None:
            raise NotOurs()
        extra = header_lines(next_headers(key, limit, result))
        return json_answer(lean.dates.line(), body, cors, extra)

    def _answered(self, request: Request, answer: bytes) -> None:
        """``request`` (just taken off the queue) is answered: its bytes dropped, ``answer`` queued."""
        del self.buf[: request.size]
        self.scan -= request.size
        self.out.append(answer)
        self.out_bytes += len(answer)

    def _close(self) -> None:
        """The last answer ends the connection (a failure that closes it)."""
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def _flush(self) -> None:
        """Write the answers not written yet, in one call."""
        out, transport = self.out, self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self.out_bytes = 0

    def _flush_soon(self) -> None:
        self.flush_soon = False
        self._flush()

    def _admit(self, request: Request) -> bool:
        """What ``auth.Guard``'s middleware does for a request it lets in (``Guard.admit``);
        NotOurs when it would refuse, for aiohttp to answer, log and count. True when the request
        counts in the usage (counted once answered here: a request handed over is aiohttp's to
        count). A HEAD needs read like a GET (app.py ``_authorize_head``) and counts nowhere."""
        head = request.method == "HEAD"
        try:
            counted = self.lean.server.guard.admit(
                bearer(request.token), "GET" if head else request.method, request.key
            )
        except Exception:
            raise NotOurs() from None
        return counted and not head

    # -- handing over to aiohttp ---------------------------------------------------------------
    def _hand_over_soon(self) -> None:
        """Hand the connection over once every queued request is answered; read nothing more
        until then (a client not reading its answers kept sending, and the front buffered 1 GB)."""
        self.hand_over = True
        if not self.queue and self.worker is None:
            self._hand_over()  # at once, without pausing and resuming (a websocket's upgrade)
        else:
            self._pause_reading()

    def _hand_over(self) -> None:
        transport = self.transport
        if self.handler is not None or transport is None or transport.is_closing():
            return
        self._cancel_timers()
        self.lean.silent.pop(self, None)
        self._flush()  # every earlier answer goes before aiohttp's
        rest_bytes = bytes(self.buf)
        self.buf = _HANDED_OVER_BUF
        self.queue = _HANDED_OVER_QUEUE
        self._resume_reading()
        writable = self.writable
        self.writable = None
        self.attach(transport)
        if writable is not None and self.handler is not None:
            self.handler.pause_writing()  # still paused: aiohttp's writes wait like ours did
        if rest_bytes:
            super().data_received(rest_bytes)

    # -- flow control and timers ---------------------------------------------------------------
    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()

    def _heard(self) -> None:
        """The first bytes of a connection that stays ours: its idle timer from now on (a websocket's
        upgrade, handed over at once, never arms one: aiohttp's handler has its own)."""
        self.lean.silent.pop(self, None)
        self.idle_timer = self.loop.call_later(self.gate.config.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        """Close a connection idle for ``keepalive_timeout`` (no request, nothing pending)."""
        self.idle_timer = None
        if self.handler is not None or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        timeout = self.gate.config.keepalive_timeout
        idle = not self.queue and self.worker is None and not self.buf
        due = self.active_at + timeout
        if idle and loop.time() >= due:
            self.transport.close()
            return
        self.idle_timer = loop.call_at(max(due, loop.time() + 0.5) if idle else loop.time() + timeout,
                                       self._idle_check)

    def _cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.stall_timer = None


class _Turn:
    """What :meth:`Front._work` awaits, run by hand, to let the other connections have a turn:
    :meth:`Front._drive` goes on with it in the loop's next iteration, without a task (it yields
    itself; a task would refuse it, so ``_work`` in a task sleeps instead)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield self


_TURN = _Turn()


async def _outcome(writing: Awaitable[str]) -> str | BaseException:
    """A write's index, or the error it failed with (``Front._post_run``: one by one)."""
    try:
        return await writing
    except Exception as exc:
        return exc


async def _go_on(started: _Started[None]) -> None:
    """The task that goes on with a :class:`_Started` ``Front._work``."""
    await started


class _Started(Generic[_T]):
    """A coroutine started by hand (``send(None)``: ``Front._work`` by :meth:`Front._drive`)
    that stopped at ``waited`` (a future, or None: a bare yield):
    awaited, it goes on from there as if it had been awaited from the start (what ``await`` does
    with a coroutine, ``yield from``)."""

    __slots__ = ("answering", "waited")

    def __init__(self, answering: Coroutine[Any, Any, _T], waited: Any) -> None:
        self.answering = answering
        self.waited = waited

    def __await__(self) -> Generator[Any, Any, _T]:
        answering, waited = self.answering, self.waited
        while True:
            try:
                sent = yield waited
            except GeneratorExit:
                answering.close()
                raise
            except BaseException as exc:  # a cancellation: into the answer, where it waits
                try:
                    waited = answering.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    waited = answering.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
