"""Event history (issue 11): ``Layered(history=HistoryOptions(dir))`` records every committed event in
a journal, and ``events(pattern, since=revision)`` replays what came after ``revision`` (also after
a restart), then goes on live with no gap and no duplicate; HistoryTrimmed when the history no longer
reaches back that far. Real LevelDB and a real journal in tmp dirs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, NoSpace, NotActive, StorageError
from ooo_storage.errors import HistoryTrimmed
from ooo_storage.layered import HistoryOptions


def _store(tmp: Path, sync: bool = False, **history: object) -> Layered:
    return Layered(
        memory=MemoryLayer(),
        embedded=LevelDBLayer(tmp / "db", sync=sync),
        history=HistoryOptions(tmp / "history", **history),  # type: ignore[arg-type]
    )


async def _take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    out = []
    async with asyncio.timeout(10):
        async for event in stream:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_since_replays_then_continues_live_with_no_gap_or_duplicate_while_writers_race(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    await store.start()
    committed: list[Event] = []
    store.on_commit(committed.append)  # every event, in revision order: what the reader must get
    for i in range(50):
        await store.set(f"a/{i}", {"i": i})
    since = store.revision
    for i in range(50, 300):
        await store.set(f"a/{i}", {"i": i})
    await store.set("other/x", 1)  # not matched by the pattern
    got: list[Event] = []
    target: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        async for event in store.events("a/*", since=since):
            got.append(event)
            if target and len(got) >= target[0]:
                done.set()
                return

    async def writer(w: int) -> None:  # writes keep landing while the reader crosses the seam
        for n in range(120):
            await store.set(f"a/w{w}-{n}", {"w": w, "n": n})
            if n % 3 == 0:
                await store.delete(f"a/w{w}-{n}")
            await asyncio.sleep(0)

    writers = [asyncio.create_task(writer(w)) for w in range(16)]
    await asyncio.sleep(0)
    reading = asyncio.create_task(reader())
    await asyncio.gather(*writers)
    expected = [(e.revision, e.operation, e.key) for e in committed
                if e.revision > since and e.key.startswith("a/")]
    target.append(len(expected))
    if len(got) >= target[0]:
        done.set()
    async with asyncio.timeout(10):
        await done.wait()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    assert len({e.revision for e in got}) == len(got), "a duplicate at the seam"
    assert sorted((e.revision, e.operation, e.key) for e in got) == expected, "a gap"
    assert [e.key for e in got[:250]] == [f"a/{i}" for i in range(50, 300)]  # replayed in order
    assert got[0].object is not None and got[0].object.value == {"i": 50}
    per_key: dict[str, list[int]] = {}
    for e in got:
        per_key.setdefault(e.key, []).append(e.revision)
    assert all(revs == sorted(revs) for revs in per_key.values())  # each key in order
    await store.close()


async def _until(stream: AsyncIterator[Event], last: int) -> AsyncIterator[Event]:
    async with asyncio.timeout(10):
        async for event in stream:
            yield event
            if event.revision >= last:
                return


async def test_since_replays_sets_and_deletes_after_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    await store.set("k/1", {"v": 1})
    since = store.revision
    await store.set("k/2", {"v": 2})
    await store.set("k/1", {"v": 3})
    await store.delete("k/2")
    await store.set("k/3", 3)
    await store.delete("k/*")
    await store.close()

    store = _store(tmp_path)
    await store.start()
    stream = store.events(since=since)
    got = await _take(stream, 5)
    assert [(e.operation, e.key) for e in got] == [
        ("set", "k/2"), ("set", "k/1"), ("del", "k/2"), ("set", "k/3"), ("del", "k/*"),
    ]
    assert got[1].object is not None and got[1].object.value == {"v": 3}
    assert got[1].object.path == "k/1" and got[1].object.index == "1"
    assert got[1].object.created < got[1].object.updated  # the stored object, not a new one
    assert got[2].object is not None and got[2].object.value == {"v": 2}  # the deleted object
    assert got[4].object is None
    await store.set("k/4", 4)  # then live
    assert [e.key for e in await _take(stream, 1)] == ["k/4"]
    await stream.aclose()
    await store.close()


async def test_since_older_than_the_kept_history_raises_history_trimmed(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=8 * 4096, files=8)  # 4 KiB segments
    await store.start()
    first = store.revision
    with pytest.raises(HistoryTrimmed):  # before the history started
        await anext(store.events(since=first - 1))
    for i in range(400):
        await store.set(f"big/{i}", {"pad": "x" * 200, "i": i})
    assert isinstance(HistoryTrimmed(), StorageError)
    with pytest.raises(HistoryTrimmed, match="snapshot"):
        await anext(store.events(since=first))  # its events were evicted
    # The journal stays within its bound; what is kept still replays.
    size = sum(f.stat().st_size for f in (tmp_path / "history").iterdir() if f.suffix in (".dat", ".idx"))
    assert size <= 8 * 4096
    recent = store.revision - 5
    got = await _take(store.events(since=recent), 5)
    assert [e.key for e in got] == [f"big/{i}" for i in range(395, 400)]
    await store.close()


async def test_a_run_without_history_in_between_trims_the_history(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    await store.set("a", 1)
    since = store.revision
    await store.set("b", 2)
    await store.close()
    plain = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(tmp_path / "db"))
    await plain.start()
    await plain.set("c", 3)  # recorded nowhere
    await plain.close()
    store = _store(tmp_path)
    await store.start()
    with pytest.raises(HistoryTrimmed):
        await anext(store.events(since=since))
    await store.close()


async def test_without_a_history_since_is_a_clear_error_and_events_are_unchanged(tmp_path: Path) -> None:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(tmp_path / "db"))
    await store.start()
    with pytest.raises(StorageError, match="history"):
        await anext(store.events(since=0))
    stream = store.events("x/*")
    task = asyncio.ensure_future(_take(stream, 1))
    await asyncio.sleep(0)
    await store.set("x/1", 1)
    assert [e.key for e in await task] == ["x/1"]
    await store.close()
    assert not (tmp_path / "history").exists()


async def test_durable_history_is_durable_before_the_write_returns(tmp_path: Path) -> None:
    """LevelDB sync: every acknowledged write's event is in LevelDB (its group commit) or in the
    fsynced journal; the journal itself is not fsynced per write (issue 11)."""
    store = _store(tmp_path, sync=True)
    await store.start()
    assert store._history is not None
    journal = store._history.journal
    told: list[Event] = []
    store.on_commit(told.append)
    before = journal.commits
    await asyncio.gather(*(store.set(f"d/{i}", i) for i in range(32)))
    await store.delete("d/0")
    layer = store.embedded
    assert isinstance(layer, LevelDBLayer)
    from ooo_storage.layered import _BATCH_MAGIC, _decode_item

    kept = {e.revision for _, frames in layer.kept_events() for e in _decode_item(_BATCH_MAGIC + frames)}
    assert {e.revision for e in told} == kept
    assert journal.commits == before  # no fsync of its own: LevelDB's group commit made them durable
    await store.close()


async def test_a_durable_history_on_another_awaited_layer_fsyncs_the_journal(tmp_path: Path) -> None:
    """SOS (an awaited layer without a group commit to share): the journal is fsynced after the
    write, before it returns, as before."""
    from ooo_storage.layers import SOSLayer

    store = Layered(MemoryLayer(), SOSLayer(str(tmp_path / "sos")), HistoryOptions(tmp_path / "history"))
    await store.start()
    assert store._history is not None
    journal = store._history.journal
    before = journal.commits
    await asyncio.gather(*(store.set(f"d/{i}", i) for i in range(8)))
    assert journal.commits > before  # the event's fsync, shared by the writers
    assert not journal.log._dirty  # nothing written is waiting for the disk
    await store.delete("d/0")
    assert not journal.log._dirty
    await store.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer
    from ooo_storage.layered import HistoryOptions

    async def main(base, round_, sync):
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(base + "/db", sync=sync),
                        history=HistoryOptions(base + "/history"))
        await store.start()
        print("ready", store.revision, flush=True)

        async def writer(w):
            seq = 0
            while True:
                key = f"r{round_}/w{w}/{seq}"
                await store.set(key, {"w": w, "seq": seq})
                sys.stdout.write(f"{key}\\n")
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(16)))

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "sync"))
    """
)


async def test_every_acknowledged_durable_write_is_in_the_history_after_kill_9(tmp_path: Path) -> None:
    """16 writers in a --sync store killed with SIGKILL, three times: after each, a restarted store
    replays (from the revision the killed one started at) an event for every acknowledged write."""
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(round_), "sync"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[0] == "ready"
        started = int(ready[1])
        acked = []
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= 300:
                break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acked.extend(rest.splitlines()[:-1])  # the last line may be torn
        store = _store(tmp_path, sync=True)
        await store.start()
        last = store.revision
        recorded = {
            e.key async for e in _until_revision(store, started, last)
        }
        missing = [key for key in acked if key not in recorded]
        assert not missing, missing[:5]
        await store.close()


JOURNAL_FSYNC_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer
    from ooo_storage.layered import HistoryOptions

    async def main(base):
        store = Layered(MemoryLayer(), LevelDBLayer(base + "/db"),
                        HistoryOptions(base + "/history", durable=True))
        await store.start()
        for i in range(5):
            await store.set(f"s/{i}", i)
        print(store.revision, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_history_fsynced_after_the_write_starts_afresh_after_a_kill_9(tmp_path: Path) -> None:
    """A durable history whose journal is fsynced after the layer's write (not in the layer's own
    durable step: here ``durable=True`` over a non-sync LevelDB; SOS, erasure and Redis nodes work
    the same way) may lose, at a kill -9, the event of a write the layer kept, or keep the event of
    a write the layer lost: after an unclean stop it does not claim to reach back (a resume from
    before gets a snapshot); after a clean stop it does (before: continuous after a kill -9 too)."""
    child = subprocess.Popen(
        [sys.executable, "-c", JOURNAL_FSYNC_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    written = int(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.communicate()

    def store() -> Layered:
        return Layered(MemoryLayer(), LevelDBLayer(tmp_path / "db"),
                       HistoryOptions(tmp_path / "history", durable=True))

    restarted = store()
    await restarted.start()
    with pytest.raises(HistoryTrimmed):
        list(restarted.replay(written - 2))
    await restarted.set("s/after", 1)
    since = restarted.revision
    await restarted.set("s/after", 2)
    await restarted.close()
    again = store()  # a clean stop: the history reaches back across it
    await again.start()
    assert [(e.key, e.revision) for e in again.replay(since)] == [("s/after", since + 1)]
    await again.close()


async def _until_revision(store: Layered, since: int, last: int) -> AsyncIterator[Event]:
    """The replayed events: everything recorded (``last`` is above it all: a restart's revision)."""
    assert store._history is not None
    newest = store._history.journal.log.last_tag
    if newest <= since:
        return
    async for event in _until(store.events(since=since), newest):
        yield event


async def test_not_active_says_the_disk_was_full(tmp_path: Path) -> None:
    """A store whose start failed for a full disk says so in NotActive (a served 503 carries it)."""

    class FullLayer(LevelDBLayer):
        def start(self) -> None:
            raise NoSpace("storage: no space left on device (free space on the data disk)")

    store = Layered(memory=MemoryLayer(), embedded=FullLayer(tmp_path / "db"))
    with pytest.raises(NoSpace):
        await store.start()
    with pytest.raises(NotActive, match="not active: no space left on device"):
        await store.set("k", 1)
    with pytest.raises(NotActive, match="free space"):
        await store.get("k")


async def test_serve_history_flags_keep_the_history_beside_the_data(tmp_path: Path) -> None:
    """``serve --history-bytes N``: a write made over HTTP is in <data>/history after a clean stop,
    and a restarted store replays it; with --memory-only the flags are refused (status 2)."""
    data = tmp_path / "data"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--data", str(data),
        "--history-bytes", "1048576", "--history-age", "3600", "--loop", "asyncio",
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    async with asyncio.timeout(30):
        line = b""
        while b"serving on" not in line:
            line = await child.stderr.readline()
            assert line, "serve exited before listening"
    port = int(line.rsplit(b":", 1)[1].split()[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"v":1}'
    writer.write(b"POST /h/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    child.send_signal(signal.SIGTERM)
    assert await child.wait() == 0
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(data),
                    history=HistoryOptions(data / "history", max_bytes=1048576))
    await store.start()
    assert store._history is not None
    got = await _take(store.events(since=store._history.oldest_floor()), 1)
    assert [(e.key, e.object.value if e.object else None) for e in got] == [("h/1", {"v": 1})]
    await store.close()
    refused = subprocess.run(
        [sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--memory-only", "--history-bytes",
         "1048576"], capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2 and "--memory-only" in refused.stderr


async def test_without_durability_an_unclean_stop_starts_the_history_afresh(tmp_path: Path) -> None:
    """Without --sync the events of a loop iteration reach the journal at its end: a process killed
    in between may have lost some, so after a kill -9 an older ``since`` is HistoryTrimmed (a
    snapshot), never a replay with a hole."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "0", "fast"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    started = int(child.stdout.readline().split()[1])
    for _ in range(100):
        child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.communicate()
    store = _store(tmp_path)
    await store.start()
    with pytest.raises(HistoryTrimmed):
        await anext(store.events(since=started))
    await store.set("after", 1)  # the new history works
    since = store.revision - 1
    assert [e.key for e in await _take(store.events(since=since), 1)] == ["after"]
    await store.close()
