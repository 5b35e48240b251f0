"""SimpleObjectStore and SOSLayer: API contract, record format, layout, executor use (ADAPTERS §5.2)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from ooo_storage.errors import StorageError, StorageUnavailable
from ooo_storage.layers import CorruptObject, SimpleObjectStore, SOSLayer
from ooo_storage.layers.fs import FormatMismatch
from ooo_storage.protocol.objects import Object

# -- golden layout and record (§5.6 item 7) ---------------------------------------------------------

GOLDEN_PATHS = {
    "": "e3/b0/c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "a": "ca/97/8112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
    "users/1": "63/4d/aebdf44a64bde436cbb145ebe4a961f8c0a8bf50d92de0f6989688487fdf",
    "été": "bd/01/0c64132bf5cae8aea89f6762515727dcf68a5dd1de813c87f50a16c4513c",
}
GOLDEN_RECORD = bytes.fromhex("534f5331010007000200000000000000e456a7a475736572732f317b7d")


@pytest.mark.parametrize("key", list(GOLDEN_PATHS))
async def test_golden_layout(sos: SimpleObjectStore, key: str) -> None:
    await sos.store(key, b"v")
    rel = os.path.relpath(sos.path(key), sos.root)
    assert rel == GOLDEN_PATHS[key]
    assert os.path.isfile(os.path.join(sos.root, GOLDEN_PATHS[key]))


async def test_golden_record_bytes(sos: SimpleObjectStore) -> None:
    await sos.store("users/1", b"{}")
    raw = Path(sos.path("users/1")).read_bytes()
    assert raw == GOLDEN_RECORD
    fields = struct.pack("<4sBBHQ", b"SOS1", 1, 0, 7, 2)
    crc = google_crc32c.value(fields + b"users/1" + b"{}")
    assert raw == fields + struct.pack("<I", crc) + b"users/1{}"


async def test_compat_raw_mode_reads_a_go_sos_tree(tmp_path: Path) -> None:
    """``record="raw"`` reads and writes bare values at the same paths as Go SOS."""
    root = tmp_path / "gosos"
    for key, value in (("a", b"alpha"), ("users/1", b"one")):
        path = root / GOLDEN_PATHS[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
    store = SimpleObjectStore(root, record="raw")
    await store.start()
    assert await store.get("a") == b"alpha"
    assert await store.get("users/1") == b"one"
    await store.store("", b"empty-key")
    assert (root / GOLDEN_PATHS[""]).read_bytes() == b"empty-key"
    with pytest.raises(StorageError):
        await store.keys()
    await store.close()


# -- format marker, permissions, lifecycle ----------------------------------------------------------


async def test_format_marker_written_and_enforced(tmp_path: Path) -> None:
    store = SimpleObjectStore(tmp_path / "s")
    await store.start()
    await store.close()
    marker = json.loads((tmp_path / "s" / ".format.json").read_bytes())
    assert marker["record"] == "SOS1" and marker["checksum"] == "crc32c"
    other = SimpleObjectStore(tmp_path / "s", record="raw")
    with pytest.raises(FormatMismatch):
        await other.start()
    assert isinstance(FormatMismatch(), StorageUnavailable)


async def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SimpleObjectStore(tmp_path / "s")
        await store.start()
        await store.store("a/b", b"x")
    finally:
        os.umask(old)
    path = Path(store.path("a/b"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in (path.parent, path.parent.parent, tmp_path / "s" / ".tmp"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    await store.close()


async def test_closed_store_raises_unavailable(tmp_path: Path) -> None:
    store = SimpleObjectStore(tmp_path / "s")
    with pytest.raises(StorageUnavailable):
        await store.get("a")
    await store.start()
    await store.close()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.store("a", b"x")


async def test_destroy_removes_the_tree(tmp_path: Path) -> None:
    store = SimpleObjectStore(tmp_path / "s")
    await store.start()
    await store.store("a", b"x")
    await store.destroy()
    assert os.listdir(tmp_path) == []
    again = SimpleObjectStore(tmp_path / "s")
    await again.start()
    assert await again.get("a") is None and await again.keys() == []
    await again.close()


# -- byte-store API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["full", "data", "none"])
@pytest.mark.parametrize("read_mode", ["link", "direct"])
async def test_round_trip_every_mode(tmp_path: Path, durability: Any, read_mode: Any) -> None:
    store = SimpleObjectStore(tmp_path / "s", durability=durability, read_mode=read_mode)
    await store.start()
    for size in (0, 1, 70_000, 1 << 20):
        value = os.urandom(size)
        await store.store("k", value)
        assert await store.get("k") == value
    assert await store.get("missing") is None
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None
    assert os.listdir(tmp_path / "s" / ".tmp") == []
    await store.close()


async def test_str_reader_and_writer_variants(sos: SimpleObjectStore) -> None:
    await sos.store_str("t", "héllo")
    assert await sos.get_str("t") == "héllo"
    assert await sos.get_str("none") is None

    big = os.urandom(3 * 1024 * 1024 + 7)
    await sos.store_from("sync", io.BytesIO(big))
    assert await sos.get("sync") == big
    await sos.store_from("empty", io.BytesIO(b""))
    assert await sos.get("empty") == b""

    reader = asyncio.StreamReader()
    reader.feed_data(b"async ")
    reader.feed_data(b"reader")
    reader.feed_eof()
    await sos.store_from("async", reader)
    assert await sos.get("async") == b"async reader"

    sink = io.BytesIO()
    assert await sos.get_into("sync", sink) is True
    assert sink.getvalue() == big
    assert await sos.get_into("none", sink) is False

    class AsyncSink:
        def __init__(self) -> None:
            self.data = b""
            self.drained = False

        async def write(self, data: bytes) -> None:
            self.data += data

        async def drain(self) -> None:
            self.drained = True

    asink = AsyncSink()
    assert await sos.get_into("async", asink) is True
    assert asink.data == b"async reader" and asink.drained


async def test_metadata_rename_clone(sos: SimpleObjectStore) -> None:
    await sos.store("a", b"12345")
    meta = await sos.metadata("a")
    assert meta is not None and meta["size"] == 5 and meta["mtime"] > 0
    assert await sos.metadata("nope") is None

    assert await sos.clone("a", "b") is True
    assert await sos.get("b") == b"12345"
    assert await sos.clone("nope", "c") is False

    assert await sos.rename("a", "c") is True
    assert await sos.get("a") is None
    assert await sos.get("c") == b"12345"
    assert await sos.rename("a", "d") is False
    assert await sos.rename("c", "c") is True
    assert await sos.rename("c", "b") is True  # replaces b
    assert await sos.keys() == ["b"]


async def test_get_and_delete_and_store_if_absent(sos: SimpleObjectStore) -> None:
    assert await sos.store_if_absent("x", b"first") is True
    assert await sos.store_if_absent("x", b"second") is False
    assert await sos.get("x") == b"first"
    assert await sos.get_and_delete("x") == b"first"
    assert await sos.get_and_delete("x") is None
    assert await sos.get("x") is None
    assert await sos.store_if_absent("x", b"third") is True
    assert os.listdir(os.path.join(sos.root, ".tmp")) == []


async def test_keys_list_check_scrub(sos: SimpleObjectStore) -> None:
    for key in ("b/1", "a/2", "a/1", "a/1/x"):
        await sos.store(key, key.encode())
    assert await sos.keys() == ["a/1", "a/1/x", "a/2", "b/1"]
    assert await sos.keys("a/1") == ["a/1", "a/1/x"]
    assert await sos.list("a/*") == ["a/1", "a/2"]
    assert await sos.check("a/1") == "ok"
    assert await sos.check("zz") == "missing"
    report = await sos.scrub()
    assert report["checked"] == 4 and report["ok"] == 4 and report["corrupted"] == 0
    assert await sos.mget(["a/1", "zz", "b/1"]) == [b"a/1", None, b"b/1"]
    assert await sos.mdelete(["a/1", "zz", "b/1"]) == 2
    assert await sos.clear() == 2
    assert await sos.keys() == []


async def test_non_utf8_and_bytes_keys_round_trip(sos: SimpleObjectStore) -> None:
    weird = b"\xff\xfe/k"
    await sos.store(weird, b"v")
    as_str = weird.decode("utf-8", "surrogateescape")
    assert await sos.get(as_str) == b"v"
    assert await sos.keys() == [as_str]
    assert await sos.list("*/k") == [as_str]


async def test_each_operation_is_one_executor_submission(sos: SimpleObjectStore) -> None:
    """One thread hop per logical operation (a hop costs more than a whole small get)."""
    pool = sos._pool
    assert pool is not None
    calls = 0
    real_run = pool.run

    def counting_run(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_run(*args, **kw)

    pool.run = counting_run  # type: ignore[method-assign]
    ops = [
        sos.store("a", b"1"), sos.get("a"), sos.metadata("a"), sos.check("a"), sos.clone("a", "b"),
        sos.rename("b", "c"), sos.get_and_delete("c"), sos.store_if_absent("d", b"2"),
        sos.delete("d"), sos.keys(), sos.list("*"), sos.mget(["a", "b"]), sos.scrub(),
        sos.store_from("e", io.BytesIO(b"x" * 3_000_000)), sos.store_str("f", "text"),
        sos.get_str("f"), sos.get_into("f", io.BytesIO()), sos.mdelete(["e", "f"]), sos.clear(),
    ]  # fmt: skip
    for op in ops:
        before = calls
        await op
        assert calls == before + 1


async def test_writes_of_one_key_complete_in_call_order(sos: SimpleObjectStore) -> None:
    """Per-key serialisation: concurrent stores of one key land in the order they were issued."""
    done: list[int] = []

    async def write(i: int) -> None:
        await sos.store("hot", str(i).encode())
        done.append(i)

    await asyncio.gather(*(write(i) for i in range(40)))
    assert done == list(range(40))
    assert await sos.get("hot") == b"39"


@pytest.mark.parametrize("read_mode", ["link", "direct"])
async def test_key_being_overwritten_is_never_missing_in_one_process(
    tmp_path: Path, read_mode: Any
) -> None:
    """Two tasks overwrite a key that always exists for 1 s while one task ``get``s it and one
    ``mget``s it (the batched read behind ``SOSLayer.get_list``): no read says "missing". In link
    mode ``link(2)`` fails with ENOENT when the name it looked up is renamed over before the link
    is made; that used to be reported as a missing key."""
    store = SimpleObjectStore(tmp_path / "sos", durability="none", read_mode=read_mode)
    await store.start()
    await store.store("hot", b"0")
    deadline = time.monotonic() + 1.0

    async def write() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await store.store("hot", str(n).encode())

    async def read(batch: int) -> tuple[int, int]:
        missing = reads = 0
        while time.monotonic() < deadline:
            values = await store.mget(["hot"] * batch) if batch else [await store.get("hot")]
            missing += values.count(None)
            reads += len(values)
        return missing, reads

    _, _, single, batched = await asyncio.gather(write(), write(), read(0), read(100))
    await store.close()
    assert (single[0], batched[0]) == (0, 0), (single, batched)
    assert single[1] > 100 and batched[1] > 1000


# -- SOSLayer ---------------------------------------------------------------------------------------


def _obj(key: str, data: bytes, created: int = 1) -> Object:
    return Object(created, 0, key.rpartition("/")[2], key, data)


async def test_layer_protocol(tmp_path: Path) -> None:
    layer = SOSLayer(str(tmp_path / "sos"))
    await layer.start()
    assert await layer.keys() == []
    for i in (3, 1, 2):
        await layer.set(f"x/{i}", _obj(f"x/{i}", str(i).encode(), i))
    await layer.set("y", _obj("y", b'"why"'))
    assert await layer.keys() == ["x/1", "x/2", "x/3", "y"]
    assert await layer.get("x/1") == _obj("x/1", b"1", 1)
    assert await layer.get("nope") is None
    assert sorted(o.path for o in await layer.get_list("x/*")) == ["x/1", "x/2", "x/3"]
    assert await layer.delete("x/2") == 1
    assert await layer.delete("x/2") == 0
    assert await layer.delete("x/*") == 2
    assert await layer.keys() == ["y"]
    await layer.close()

    again = SOSLayer(str(tmp_path / "sos"))
    await again.start()
    assert await again.keys() == ["y"]
    assert await again.load() == {"y": _obj("y", b'"why"')}
    assert await again.load_raw() == {"y": _obj("y", b'"why"').to_json()}
    await again.clear()
    assert await again.keys() == [] and await again.load() == {}
    await again.close()


async def test_layer_index_and_other_processes_writes(tmp_path: Path) -> None:
    """Another instance's writes are visible to ``get`` at once, to the index after a restart."""
    a = SOSLayer(str(tmp_path / "sos"))
    b = SOSLayer(str(tmp_path / "sos"))
    await a.start()
    await b.start()
    assert await a.keys() == []  # builds a's index
    await b.set("k/1", _obj("k/1", b"1"))
    assert await a.get("k/1") == _obj("k/1", b"1")
    assert await a.keys() == []  # documented: the index follows this instance's writes
    assert await a.store.keys() == ["k/1"]  # the byte store walks the tree
    await a.set("k/2", _obj("k/2", b"2"))
    await b.delete("k/2")
    assert await a.get_list("k/*") == []  # k/1 unknown to a's index, k/2 gone: dropped
    assert await a.keys() == []
    await a.close()
    await b.close()
    c = SOSLayer(str(tmp_path / "sos"))
    await c.start()
    assert await c.keys() == ["k/1"]
    await c.close()


async def test_layer_load_refuses_corrupt_objects(tmp_path: Path) -> None:
    layer = SOSLayer(str(tmp_path / "sos"))
    await layer.start()
    await layer.set("k", _obj("k", b"1"))
    path = Path(layer.store.path("k"))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject):
        await layer.load_raw()
    with pytest.raises(CorruptObject):
        await layer.get("k")
    await layer.close()


# -- worker pool ------------------------------------------------------------------------------------


async def test_worker_pool_cancel_waits_for_the_running_work() -> None:
    """A cancelled caller resumes only after its thread work ended (its key lock stays held)."""
    import threading

    from ooo_storage.layers.fs import WorkerPool

    pool = WorkerPool(2, "test")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def work() -> int:
        started.set()
        release.wait(10)
        finished.append(True)
        return 1

    task = asyncio.create_task(pool.run(work))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0)  # let the cancellation be delivered (not a synchronisation)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]
    assert await pool.run(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        await pool.run(divmod, 1, 0)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        await pool.run(int)


async def test_unusable_root_raises_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    store = SimpleObjectStore(tmp_path / "file" / "sos")
    with pytest.raises(StorageUnavailable):
        await store.start()


async def test_rename_keeps_a_source_replaced_meanwhile(
    sos: SimpleObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another writer replaces ``old`` while it is being copied, rename keeps that newer value."""
    from ooo_storage.layers.sos.record import encode_key

    other = SimpleObjectStore(sos.root)
    await other.start()
    await sos.store("old", b"original")
    real = sos._store_sync

    def racing(key: bytes, value: bytes, exclusive: bool = False) -> bool:
        done = real(key, value, exclusive)
        other._store_sync(encode_key("old"), b"newer")  # lands between the copy and the removal
        return done

    monkeypatch.setattr(sos, "_store_sync", racing)
    assert await sos.rename("old", "new") is True
    assert await sos.get("new") == b"original"
    assert await sos.get("old") == b"newer"
    await other.close()


async def test_layer_index_journals_writes_during_its_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that complete after the index walk read the tree, but before the index is in place,
    are applied on top of it: neither lost nor resurrected."""
    layer = SOSLayer(str(tmp_path / "sos"))
    await layer.start()
    for i in range(5):
        await layer.set(f"k/{i}", _obj(f"k/{i}", b"1"))
    await layer.close()
    await layer.start()
    walked, release = asyncio.Event(), asyncio.Event()
    real_keys = layer.store.keys

    async def slow_keys(prefix: str = "") -> list[str]:
        found = await real_keys(prefix)
        walked.set()
        await release.wait()
        return found

    monkeypatch.setattr(layer.store, "keys", slow_keys)
    listing = asyncio.create_task(layer.keys())
    await walked.wait()
    await layer.set("k/new", _obj("k/new", b"2"))
    await layer.delete("k/0")
    release.set()
    expected = ["k/1", "k/2", "k/3", "k/4", "k/new"]
    assert await listing == expected
    assert await layer.keys() == expected
    await layer.close()


async def test_keys_longer_than_the_u16_length_field_are_refused(sos: SimpleObjectStore) -> None:
    long_key = "k" * 70_000
    with pytest.raises(ValueError):
        await sos.store(long_key, b"v")
    with pytest.raises(ValueError):
        await sos.store_from(long_key, io.BytesIO(b"v"))
    await sos.store("k" * 0xFFFF, b"max")
    assert await sos.get("k" * 0xFFFF) == b"max"
    assert await sos.keys() == ["k" * 0xFFFF]  # longer than the header peek of a walk
    assert os.listdir(os.path.join(sos.root, ".tmp")) == []


@pytest.mark.parametrize(("durability", "syncs"), [("full", 2), ("data", 1), ("none", 0)])
async def test_fsync_policy_per_durability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Any, syncs: int
) -> None:
    """An overwrite fsyncs file and directory ("full"), the file only ("data"), nothing ("none");
    a delete fsyncs the directory only in "full"."""
    store = SimpleObjectStore(tmp_path / "s", durability=durability)
    await store.start()
    await store.store("k", b"1")
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    await store.store("k", b"2")
    assert len(calls) == syncs
    await store.delete("k")
    assert len(calls) == syncs + (durability == "full")
    await store.close()


async def test_full_durability_fsyncs_new_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in a new ``xx/yy``: file, root (new xx), xx (new yy) and the leaf are fsynced."""
    store = SimpleObjectStore(tmp_path / "s")
    await store.start()
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    await store.store("k", b"1")
    leaf = os.path.dirname(store.path("k"))
    top = os.path.dirname(leaf)
    assert sorted(synced[1:]) == sorted([store.root, top, leaf])
    assert synced[0].startswith(os.path.join(store.root, ".tmp"))
    await store.close()


async def test_worker_pool_dropped_without_shutdown_stops_its_threads() -> None:
    import gc

    from ooo_storage.layers.fs import WorkerPool

    pool = WorkerPool(2, "dropped")
    assert await pool.run(abs, -1) == 1
    threads = list(pool._threads)
    del pool
    gc.collect()
    for thread in threads:
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
