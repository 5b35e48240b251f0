"""``GET /metrics``: the server's figures in the Prometheus text format (``prometheus-client``).

Nothing here adds work to a request but :meth:`Requests.record`: a few plain-int updates (a count
per route, method and status, one bucket of a latency histogram per route and method), called by
both HTTP engines (the lean front, ``front/``, and :func:`observe`, the aiohttp middleware). Every
other figure is read when Prometheus scrapes, from what the server already keeps: the store
(revision, keys, dropped events), its persistent layer (LevelDB commits and batches, a refusal of
writes, its size on disk; an erasure-coded store's degraded keys and repair queue), the stream
pools (subscribers, conflations, slow subscribers dropped), the usage of the policy's namespaces.
Writes are counted by a commit observer (one call per committed event, ``Layered.on_commit``).

Each :class:`~.app.Server` has its own :class:`Metrics` and ``CollectorRegistry`` (several servers
may run in one process, tests do); the process figures (CPU, memory, descriptors) come from
``prometheus_client``'s own collector.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..layered import WatchHandle
from ..layers import LevelDBLayer
from ..protocol.objects import Event
from .accesslog import AccessLog
from .errors import STORAGE, Notices
from .rest import request_key
from .streams import wants_websocket

if TYPE_CHECKING:
    from .context import Context

BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
          2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency buckets: a request served from memory takes tens of
microseconds, a durable write an fsync (milliseconds), a websocket stream its whole life."""
_LE = tuple(repr(b) for b in BOUNDS)
_FIRST = BOUNDS[0]
CLIENT_CLOSED = 499
"""The status counted for a request whose handler was cancelled (its client went away before the
answer; nginx's 499): every other outcome is an answer the error middleware made."""
_REFUSALS = {"refused": 503, "head-time": 408, "head-size": 431}
"""The notices (``limits.py``) of requests refused below aiohttp, and the status each got: counted
as route ``refused``, method ``other`` (no head was read whole)."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})
"""Methods named in the labels; any other counts as ``other`` (the client chooses it)."""


class Series:
    """The requests of one route and method: a count per status, and their latency histogram (a
    count per bucket of :data:`BOUNDS`, the last one above them all, and the sum)."""

    __slots__ = ("statuses", "counts", "total")

    def __init__(self) -> None:
        self.statuses = [0] * 1000  # by status code (aiohttp allows 100 to 999): an index costs
        # less than a dict update
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0

    def observe(self, status: int, seconds: float) -> None:
        """One request answered with ``status`` after ``seconds``."""
        self.statuses[status] += 1
        # most requests take less than the first bound: they need no search
        self.counts[0 if seconds <= _FIRST else bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count of requests <= le)`` pairs, ``+Inf`` last, as Prometheus wants them."""
        buckets, running = [], 0
        for le, count in zip((*_LE, "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((le, float(running)))
        return buckets


class Requests:
    """The requests answered, one :class:`Series` per (route, method). Plain ints and dicts (no
    lock, no label objects): one event loop updates them, a scrape reads them. The routes are a
    fixed set (:func:`route_of`) and the methods too, so the number of series stays bounded
    whatever clients send."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}

    def of(self, route: str, method: str) -> Series:
        """The series of ``route`` and ``method``, created empty if there is none yet."""
        series = self.series.get((route, method))
        if series is None:
            series = self.series[(route, method)] = Series()
        return series

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        self.of(route, method).observe(status, seconds)


def route_of(method: str, key: str | None, websocket: bool, endpoints: frozenset[str]) -> str:
    """The ``route`` label of a request on ``key`` (``rest.request_key``'s: None when the path can
    name no key): ``object`` or ``list`` (a GET or HEAD of a key or a glob), ``write`` (POST,
    PATCH), ``delete``, ``stream`` (a subscription), ``clock`` (the stream on ``/``), ``root``
    (``GET /`` and its ``?api=``), one of the server's own endpoints (``metrics``, ``healthz``,
    ``readyz``), or ``other`` (a path no key has, a method no route has)."""
    if key is None:
        return "other"
    if not key:
        return "clock" if websocket else "root"
    if method in ("GET", "HEAD"):
        if websocket:
            return "stream"
        if key in endpoints:
            return key
        return "list" if "*" in key else "object"
    if method in ("POST", "PATCH"):
        return "write"
    return "delete" if method == "DELETE" else "other"


class Metrics:
    """One server's figures: its :class:`Requests`, its count of committed writes, and the
    collector that reads everything else at scrape time (module doc)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.requests = Requests()
        self.sets = 0
        self.deletes = 0
        self._observer: WatchHandle | None = None
        self.notices: Notices | None = None
        """The server's notices of limits hit (``Server.notices``), read for the requests refused
        before any handler runs; set by the server."""
        self.failures: Notices | None = None
        """The server's notices of storage failures (``Server.failures``), read for
        ``ooo_storage_errors_total``; set by the server."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def start(self) -> None:
        """Count the committed writes from now on (the application's startup)."""
        if self._observer is None:
            self._observer = self.ctx.store.on_commit(self._count)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.cancel()
            self._observer = None

    def _count(self, event: Event) -> None:
        if event.operation == "set":
            self.sets += 1
        else:
            self.deletes += 1

    def render(self) -> bytes:
        """The exposition text of every figure, as of now."""
        return generate_latest(self.registry)

    def response(self) -> web.Response:
        """The answer of ``GET /metrics``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def observe(metrics: Metrics | None, access: AccessLog | None, endpoints: frozenset[str]) -> Middleware:
    """The outermost aiohttp middleware: each request counted in ``metrics`` and logged to
    ``access`` once its handler returned (a websocket when it closed); the lean front does the
    same for the requests it answers itself. Requests aiohttp refuses before any middleware runs
    (a malformed head, a refused ``Expect``) are neither counted nor logged."""

    @web.middleware
    async def observed(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status, size = CLIENT_CLOSED, 0  # unless an answer or an HTTPException comes out
        try:
            response = await handler(request)
            status = response.status
            size = _body_size(response, request.method)
            return response
        except web.HTTPException as exc:  # aiohttp's own answer (its 404 page): the body it sends
            status = exc.status
            size = _body_size(exc, request.method)
            raise
        finally:
            seconds = time.perf_counter() - start
            if metrics is not None:
                method = request.method if request.method in _METHODS else "other"
                route = route_of(method, request_key(request), wants_websocket(request), endpoints)
                metrics.requests.record(route, method, status, seconds)
            if access is not None:
                access.line(request.method, request.raw_path, status, size, seconds, request.remote)

    return observed


def _body_size(response: web.StreamResponse, method: str) -> int:
    """Bytes of the response body: its ``Content-Length`` (0 for a HEAD), or for an answer already
    sent at the reader's pace (a streamed list, a websocket) what aiohttp wrote of it."""
    if method == "HEAD":
        return 0
    if response.prepared:
        return response.body_length
    return response.content_length or 0


class _Collector:
    """Reads the figures at scrape time (a ``prometheus_client`` custom collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._store()
        yield from self._streams()
        yield from self._usage()

    def _requests(self) -> Iterator[Metric]:
        every = sorted(self.metrics.requests.series.items())
        counts = CounterMetricFamily(
            "ooo_http_requests", "HTTP requests answered, by route, method and status "
            "(websocket upgrades: 101 once the stream ended)", labels=["route", "method", "status"])
        latency = HistogramMetricFamily(
            "ooo_http_request_duration_seconds", "Time from a request's head to its answer (a "
            "websocket: its whole life), by route and method", labels=["route", "method"])
        for (route, method), series in every:
            for status, count in enumerate(series.statuses):
                if count:
                    counts.add_metric([route, method, str(status)], count)
            latency.add_metric([route, method], series.cumulative(), series.total)
        notices = self.metrics.notices
        if notices is not None:
            for kind, status in _REFUSALS.items():
                if count := notices.totals.get(kind, 0):
                    counts.add_metric(["refused", "other", str(status)], count)
        yield counts
        yield latency
        yield from self._storage_errors()

    def _storage_errors(self) -> Iterator[Metric]:
        failures = self.metrics.failures
        if failures is None:
            return
        errors = CounterMetricFamily(
            "ooo_storage_errors", "Requests failed by the persistent layer (503: a full disk, an I/O "
            "error, the store not open), by operation (write, delete, read) and error",
            labels=["operation", "error"])
        for kind, count in sorted(failures.totals.items()):
            word, _, rest = kind.partition(" ")
            if word == STORAGE:
                errors.add_metric(rest.split(" ", 1), count)
        yield errors

    def _store(self) -> Iterator[Metric]:
        metrics = self.metrics
        store = metrics.ctx.store
        writes = CounterMetricFamily(
            "ooo_store_writes", "Committed writes (events), by operation: set, or del (a glob "
            "delete counts once)", labels=["operation"])
        writes.add_metric(["set"], metrics.sets)
        writes.add_metric(["del"], metrics.deletes)
        yield writes
        yield GaugeMetricFamily("ooo_store_active", "1 while the store is open", int(store.active))
        yield GaugeMetricFamily("ooo_store_revision", "Revision of the last committed write",
                                store.revision)
        if store.memory is not None:
            yield GaugeMetricFamily("ooo_store_keys", "Keys stored (the memory mirror's count)",
                                    len(store.memory))
        yield GaugeMetricFamily("ooo_store_queued_events", "Events waiting for the library "
                                "watchers (the event queue's depth)", store.queued)
        yield CounterMetricFamily(
            "ooo_store_dropped_events", "Events dropped because library watchers did not keep up "
            "(the server's streams are fed by a commit observer and lose none)", store.dropped)
        embedded = store.embedded
        if isinstance(embedded, LevelDBLayer):
            yield from _leveldb(embedded)
        erasure = _erasure_stats(embedded)
        if erasure is not None:
            yield from _erasure(erasure)

    def _streams(self) -> Iterator[Metric]:
        ctx = self.metrics.ctx
        pools = ctx.pools
        yield GaugeMetricFamily("ooo_stream_pools", "Subscribed keys and globs (one pool each)",
                                len(pools.pools))
        yield GaugeMetricFamily("ooo_stream_subscribers", "Open websocket subscriptions to a key "
                                "or a glob", len(pools.connections()))
        yield GaugeMetricFamily("ooo_clock_subscribers", "Open clock streams (websockets on /)",
                                len(ctx.clocks))
        yield CounterMetricFamily("ooo_stream_conflations", "Times a subscriber that did not keep "
                                  "up had its queued frames replaced by one snapshot",
                                  pools.conflations)
        yield CounterMetricFamily("ooo_stream_slow_disconnects", "Subscribers closed for not "
                                  "reading (write timeout)", pools.slow_disconnects)
        yield CounterMetricFamily("ooo_stream_frames_sent", "Websocket frames (snapshots, "
                                  "patches, pings) handed whole to subscribers' sockets",
                                  ctx.flusher.frames_sent)
        yield CounterMetricFamily("ooo_stream_bytes_sent", "Bytes of those frames handed to "
                                  "subscribers' sockets", ctx.flusher.bytes_sent)

    def _usage(self) -> Iterator[Metric]:
        usage = self.metrics.ctx.guard.usage
        if usage is None:
            return
        objects = GaugeMetricFamily("ooo_namespace_objects", "Objects stored per namespace of the "
                                    "access policy", labels=["namespace"])
        size = GaugeMetricFamily("ooo_namespace_bytes", "Bytes of data stored per namespace of "
                                 "the access policy", labels=["namespace"])
        for ns in usage.snapshot()["namespaces"]:
            objects.add_metric([ns["name"]], ns["objects"])
            size.add_metric([ns["name"]], ns["bytes"])
        yield objects
        yield size


def _leveldb(layer: LevelDBLayer) -> Iterator[Metric]:
    yield GaugeMetricFamily("ooo_leveldb_refusing_writes", "1 while LevelDB refuses writes: after a "
                            "failed write (a full disk) until it reopened, or those that add data "
                            "while its free-space reserve is spent", int(layer.write_refusal() is not None))
    yield GaugeMetricFamily("ooo_leveldb_low_space", "1 while the free-space reserve is spent: "
                            "writes that add data are refused, deletes accepted", int(layer.low_space))
    yield CounterMetricFamily("ooo_leveldb_reopens", "Reopens after a failed write", layer.reopens)
    yield CounterMetricFamily("ooo_leveldb_commits", "Durable group commits (--sync): writes / "
                              "commits is the mean group size", layer.commits)
    yield _group_sizes(layer)
    yield CounterMetricFamily("ooo_leveldb_batches", "Write batches without --sync: the writes "
                              "that arrived in one event-loop iteration after its first (which is "
                              "written alone, at once)", layer.batches)
    data, reserve = layer.disk_bytes()
    yield GaugeMetricFamily("ooo_leveldb_disk_bytes", "Size of the LevelDB directory's files, "
                            "the free-space reserve excluded", data)
    yield GaugeMetricFamily("ooo_leveldb_reserve_bytes", "Size of the free-space reserve file "
                            "(--reserve-bytes; 0 while spent)", reserve)


def _group_sizes(layer: LevelDBLayer) -> Metric:
    """The group commits' sizes (writes per durable batch, --sync) as a histogram."""
    family = HistogramMetricFamily("ooo_leveldb_group_commit_writes", "Writes per durable group "
                                   "commit (--sync): how many writers shared one fsync")
    buckets, running = [], 0
    for le, count in zip((*map(str, layer.GROUP_BOUNDS), "+Inf"), layer.group_sizes, strict=True):
        running += count
        buckets.append((le, float(running)))
    family.add_metric([], buckets, float(layer.group_writes))
    return family


def _erasure_stats(layer: object) -> dict[str, Any] | None:
    """An erasure-coded layer's ``stats()``, None for any other layer. The erasure package (and
    pyeclib) is imported only if something already did: a server without one never loads it."""
    if "ooo_storage.layers.erasure" not in sys.modules:
        return None
    from ..layers import ErasureLayer

    return layer.store.stats() if isinstance(layer, ErasureLayer) else None


def _erasure(stats: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("ooo_erasure_degraded_objects", "Keys known to miss shards",
                            stats["degraded"])
    yield GaugeMetricFamily("ooo_erasure_repair_queue", "Shard repairs waiting", stats["queued_repairs"])
    yield CounterMetricFamily("ooo_erasure_repaired_shards", "Shards repaired", stats["repaired"])
    yield GaugeMetricFamily("ooo_erasure_offline_drives", "Drives unreachable or failing",
                            len(stats["offline_drives"]))
    yield GaugeMetricFamily("ooo_erasure_full_drives", "Drives whose last write failed for lack of "
                            "space", len(stats["full_drives"]))
