"""A durable event history in LevelDB's own group commit (issue 11): with ``LevelDBLayer(sync=True)``
each write's event goes into the write's ``WriteBatch(sync=True)`` under a reserved key, the journal
is written without an fsync of its own and trimmed of LevelDB's copies once it has fsynced them; a
start appends the copies it lacks. Real LevelDB, real journals, real child processes killed -9."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, StorageUnavailable
from ooo_storage.layered import _BATCH_MAGIC, HistoryOptions, _decode_item, _frames_above
from ooo_storage.protocol.txn import TxnOp


def _store(base: Path, memory: bool = True) -> Layered:
    return Layered(
        memory=MemoryLayer() if memory else None,
        embedded=LevelDBLayer(base / "db", sync=True),
        history=HistoryOptions(base / "history"),
    )


def _layer(store: Layered) -> LevelDBLayer:
    assert isinstance(store.embedded, LevelDBLayer)
    return store.embedded


def _decoded(kept: list[tuple[int, bytes]]) -> list[Event]:
    """The events of LevelDB's copies (``kept_events``), decoded as journal items."""
    return [e for _, frames in kept for e in _decode_item(_BATCH_MAGIC + frames)]


def _shape(events: list[Event]) -> list[tuple[int, str, str, object, int, bool]]:
    return [(e.revision, e.operation, e.key, e.object, e.txn, e.more) for e in events]


async def _writes(store: Layered) -> None:
    """Sets (16 at once: one group commit), a delete, a glob delete and a transaction."""
    await asyncio.gather(*(store.set(f"a/{i}", {"i": i}) for i in range(16)))
    await store.set("top", 1)
    await store.delete("a/0")
    await store.delete("a/1*")
    await store.commit([TxnOp("set", "t/x", 1), TxnOp("del", "a/2"), TxnOp("set", "t/y", 2)])


# -- the event in the write's durable step ---------------------------------------------------------
async def test_each_event_is_in_leveldb_with_its_write_and_the_journal_is_not_fsynced(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    await store.start()
    assert store._history is not None
    journal = store._history.journal
    told: list[Event] = []
    store.on_commit(told.append)
    before = journal.commits
    await _writes(store)
    kept = _layer(store).kept_events()
    assert journal.commits == before  # no fsync of the journal on the write path
    # The copies decode as the journal's items do: the same events, in revision order, one
    # reserved key per group commit (the 16 sets share one) under its last revision.
    assert _shape(_decoded(kept)) == _shape(told)
    assert [revision for revision, _ in kept] == sorted({e.revision for e in told})[15:]
    assert _shape(list(store.replay(told[0].revision - 1))) == _shape(told)
    await store.close()


async def test_the_journal_is_trimmed_of_leveldb_copies_once_fsynced_and_replays_the_same(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    await store.start()
    assert store._history is not None
    told: list[Event] = []
    store.on_commit(told.append)
    since = store.revision
    await _writes(store)
    before = store._history.journal.commits
    await store._history.trim()  # what the store does every second
    assert store._history.journal.commits > before
    assert _layer(store).kept_events() == []
    assert _shape(list(store.replay(since))) == _shape(told)
    await store.set("after", 1)  # copies again until the next trim
    assert [r for r, _ in _layer(store).kept_events()] == [store.revision]
    await store.close()
    # A clean close fsyncs the journal and drops the copies; a restart replays everything.
    store = _store(tmp_path)
    await store.start()
    assert _layer(store).kept_events() == []
    assert told[-1].key == "after"
    assert _shape(list(store.replay(since))) == _shape(told)
    await store.close()


async def test_a_start_appends_the_copies_the_journal_lacks_in_order(tmp_path: Path) -> None:
    """The events of acknowledged writes whose journal never reached the disk (the process died)
    come back from LevelDB: here the journal's files are put back as they were before the writes."""
    store = _store(tmp_path)
    await store.start()
    await store.set("before", 0)
    await store.close()
    history = tmp_path / "history"
    saved = {p.name: p.read_bytes() for p in history.iterdir() if p.name.startswith("events")}
    store = _store(tmp_path)
    await store.start()
    since = store.revision
    told: list[Event] = []
    store.on_commit(told.append)
    await _writes(store)
    copies = _layer(store).kept_events()
    await store.close()
    for name in os.listdir(history):  # the journal as a kill -9 before its fsync may leave it
        if name.startswith("events"):
            os.remove(history / name)
    for name, raw in saved.items():
        (history / name).write_bytes(raw)
    db = LevelDBLayer(tmp_path / "db")  # and LevelDB still holding the copies
    db.start()
    with db.db.write_batch(sync=True) as batch:
        for revision, frames in copies:
            batch.put(b"\xff\xffev" + revision.to_bytes(8, "big"), frames)
    db.close()
    store = _store(tmp_path)
    await store.start()
    assert _layer(store).kept_events() == []  # in the journal (fsynced) now
    assert _shape(list(store.replay(since))) == _shape(told)
    assert store.revision >= told[-1].revision
    await store.close()


async def test_copies_the_journal_has_already_are_not_appended_twice(tmp_path: Path) -> None:
    """A kill -9 between the journal's fsync and the drop of LevelDB's copies: the start skips the
    events the journal holds, also inside a group commit whose copy straddles its last tag."""
    store = _store(tmp_path)
    await store.start()
    since = store.revision
    told: list[Event] = []
    store.on_commit(told.append)
    await _writes(store)
    copies = _layer(store).kept_events()
    group = next(frames for _, frames in copies if len(_decoded([(0, frames)])) == 16)
    middle = _decoded([(0, group)])[7].revision
    assert [e.revision for e in _decoded([(0, _frames_above(group, middle))])] == [
        e.revision for e in _decoded([(0, group)])[8:]
    ]
    await store.close()
    db = LevelDBLayer(tmp_path / "db")  # the copies back, as if never dropped
    db.start()
    with db.db.write_batch(sync=True) as batch:
        for revision, frames in copies:
            batch.put(b"\xff\xffev" + revision.to_bytes(8, "big"), frames)
    db.close()
    store = _store(tmp_path)
    await store.start()
    assert _layer(store).kept_events() == []
    assert _shape(list(store.replay(since))) == _shape(told)  # each event once
    await store.close()


async def test_a_failed_group_skips_its_revision_and_records_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    told: list[Event] = []
    store.on_commit(told.append)
    await store.set("a", 1)
    layer = _layer(store)
    real = layer._write_group

    def broken(group: object) -> None:
        raise OSError(5, "Input/output error")

    layer._write_group = broken  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailable):
        await store.set("b", 2)
    layer._write_group = real  # type: ignore[method-assign]
    assert store.peek("b") is None
    await store.set("c", 3)  # after the layer's reopen
    assert [e.key for e in told] == ["a", "c"]
    assert [e.key for e in store.replay(told[0].revision - 1)] == ["a", "c"]
    assert [e.key for e in _decoded(layer.kept_events())] == ["a", "c"]
    await store.close()


async def test_a_cancelled_writer_still_publishes_in_revision_order(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.start()
    told: list[Event] = []
    store.on_commit(told.append)
    first = asyncio.create_task(store.set("x", 1))
    second = asyncio.create_task(store.set("y", 2))
    await asyncio.sleep(0)  # both joined the group commit: their revisions are given
    first.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled()
    assert [e.key for e in told] == ["x", "y"]
    assert told[0].revision < told[1].revision
    assert store.peek("x") is not None
    assert [e.key for e in store.replay(told[0].revision - 1)] == ["x", "y"]
    await store.close()


# -- user keys never see the reserved ones ------------------------------------------------------------
async def test_listings_export_and_backup_never_show_the_reserved_keys(tmp_path: Path) -> None:
    from ooo_storage.cli.backup import _export_data

    store = _store(tmp_path)
    await store.start()
    await _writes(store)
    layer = _layer(store)
    assert layer.kept_events()  # the copies are there (not trimmed yet)
    expected = sorted(await store.keys())
    assert expected == [*(f"a/{i}" for i in range(3, 10)), "t/x", "t/y", "top"]
    assert sorted(layer.keys()) == expected
    assert sorted(layer.load_raw()) == expected
    assert sorted(layer.load()) == expected
    assert [o.path for o in layer.get_list("*")] == ["top"]
    assert sorted(o.path for o in layer.get_list("a/*")) == expected[:7]
    assert sorted(o.path for o in layer.get_list("*/*")) == expected[:-1]  # an empty literal prefix
    assert sorted(o.path for o in await store.get_list("*/*")) == expected[:-1]
    assert [o.path for o in await store.get_list("*")] == ["top"]
    copied = await layer.backup(tmp_path / "copy")
    assert copied == len(expected)
    # The store without memory reads (and lists) from LevelDB itself.
    await store.close()
    store = _store(tmp_path, memory=False)
    await store.start()
    await store.set("more", 2)
    assert _layer(store).kept_events()
    assert sorted(await store.keys()) == sorted([*expected, "more"])
    assert sorted(o.path for o in await store.get_list("*")) == ["more", "top"]
    await store.delete("*")  # a glob delete over every top-level key
    assert sorted(await store.keys()) == expected[:-1]
    await store.clear()  # clear removes the user keys, and only them
    assert await store.keys() == []
    await store.close()
    backup = LevelDBLayer(tmp_path / "copy")
    backup.start()
    assert sorted(backup.keys()) == expected
    assert not list(backup.db.iterator(start=b"\xff"))  # no reserved key copied
    backup.close()
    # export --data: the user keys only (a reserved key is not UTF-8: it would fail)
    store = _store(tmp_path)
    await store.start()
    await _writes(store)
    await store.close()
    db = LevelDBLayer(tmp_path / "db")
    db.start()
    with db.db.write_batch(sync=True) as batch:  # a copy left behind, as after a kill -9
        batch.put(b"\xff\xffev" + (1).to_bytes(8, "big"), b"x")
    db.close()
    lines: list[bytes] = []
    import ooo_storage.cli.backup as backup_cli

    original = backup_cli._write
    backup_cli._write = lines.append  # type: ignore[assignment]
    try:
        _export_data(str(tmp_path / "db"), None, backup_cli.Progress(0))  # type: ignore[arg-type]
    finally:
        backup_cli._write = original
    assert len(lines) == len(expected)


# -- one process per history directory -----------------------------------------------------------------
async def test_a_second_store_on_the_same_history_directory_is_refused(tmp_path: Path) -> None:
    first = _store(tmp_path)
    await first.start()
    second = Layered(MemoryLayer(), LevelDBLayer(tmp_path / "db2", sync=True),
                     HistoryOptions(tmp_path / "history"))
    with pytest.raises(StorageUnavailable, match="history directory .* is in use by another process"):
        await second.start()
    await first.close()
    await second.start()  # released at close (and the failed start released its database)
    await second.close()


def test_serve_on_a_history_directory_in_use_exits_with_the_reason(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--history-dir",
               str(tmp_path / "history")]
    first = subprocess.Popen([*command, "--data", str(tmp_path / "a")], stderr=subprocess.PIPE,
                             text=True)
    try:
        assert first.stderr is not None
        for line in first.stderr:  # wait until it serves (it holds the directory then)
            if "http://" in line or "listening" in line.lower() or "serving" in line.lower():
                break
        second = subprocess.run([*command, "--data", str(tmp_path / "b")], capture_output=True,
                                text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert second.returncode != 0
    assert "is in use by another process" in second.stderr
    assert "Traceback" not in second.stderr


# -- kill -9 -------------------------------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer, NotFound
    from ooo_storage.layered import HistoryOptions
    from ooo_storage.protocol.txn import TxnOp

    async def main(base, round_):
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(base + "/db", sync=True),
                        history=HistoryOptions(base + "/history"))
        await store.start()
        last = {}
        store.on_commit(lambda e: last.__setitem__(e.key, e.revision))
        print("ready", store.revision, flush=True)

        async def writer(w):
            n = 0
            while True:
                n += 1
                key = f"k/{w}/{n % 7}"
                if n % 5 == 0:
                    done = await store.commit([TxnOp("set", f"t/{w}/a", [round_, n]),
                                               TxnOp("set", f"t/{w}/b", [round_, n])])
                    sys.stdout.write(f"txn t/{w}/a {done.revision} {round_},{n}\\n")
                elif n % 4 == 0:
                    try:
                        await store.delete(key)
                    except NotFound:
                        continue
                    sys.stdout.write(f"del {key} {last[key]} -\\n")
                else:
                    await store.set(key, [round_, n])
                    sys.stdout.write(f"set {key} {last[key]} {round_},{n}\\n")

        await asyncio.gather(*(writer(w) for w in range(8)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def _kill_after(base: Path, round_: int, acks: int, delay: float) -> tuple[int, list[list[str]]]:
    """Run the writer until it acknowledged ``acks`` writes, kill -9 it ``delay`` seconds later
    (a random moment of the writes in flight); returns its start revision and its acknowledgements
    (op, key, revision, value)."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(base), str(round_)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    ready = child.stdout.readline().split()
    assert ready and ready[0] == "ready", f"the writer did not start: {ready}"
    lines = []
    for line in child.stdout:
        lines.append(line)
        if len(lines) >= acks:
            break
    time.sleep(delay)  # not a synchronisation: the moment of the kill, chosen at random
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate()
    lines += rest.splitlines(keepends=True)
    return int(ready[1]), [ln.split() for ln in lines if ln.endswith("\n")]


def _check_order(events: list[Event]) -> None:
    """Revision order, no duplicate, every transaction whole (its events together, in order)."""
    by_revision: dict[int, list[Event]] = defaultdict(list)
    for before, after in zip(events, events[1:], strict=False):
        assert before.revision <= after.revision, (before, after)
        if before.revision == after.revision:
            assert before.txn and before.more, (before, after)
    for event in events:
        by_revision[event.revision].append(event)
    for revision, group in by_revision.items():
        if group[0].txn:
            assert [(e.txn, e.more) for e in group] == [(2, True), (2, False)], (revision, group)
            assert group[0].object is not None and group[1].object is not None
            assert group[0].object.data == group[1].object.data, group
        else:
            assert len(group) == 1, (revision, group)


async def test_kill_9_history_and_data_agree_and_every_acknowledged_event_is_replayed(
    tmp_path: Path,
) -> None:
    """20 rounds of 8 writers (sets, deletes, transactions) killed with SIGKILL at random moments:
    after each, the history replayed from the first start is in revision order, without duplicates,
    with transactions whole, holds every acknowledged write's event with its revision, and
    rebuilds exactly the data (no write in the data without its event, no event without its
    write: the part a journal fsynced after LevelDB's group commit could not give)."""
    rng = random.Random(11)
    first: int | None = None
    acked: list[list[str]] = []
    for round_ in range(20):
        started, got = _kill_after(tmp_path, round_, rng.randint(1, 40), rng.uniform(0, 0.03))
        first = started if first is None else first
        acked += got
        store = _store(tmp_path)
        await store.start()
        try:
            events = list(store.replay(first))
            _check_order(events)
            rebuilt: dict[str, bytes] = {}
            for event in events:
                if event.operation == "set":
                    assert event.object is not None
                    rebuilt[event.key] = event.object.data
                else:
                    rebuilt.pop(event.key, None)
            data = {key: obj.data for key in await store.keys() if (obj := store.peek(key))}
            assert rebuilt == data, f"round {round_}: history and data differ"
            replayed: dict[tuple[str, str, int], Event] = {
                (e.operation, e.key, e.revision): e for e in events
            }
            for op, key, revision, value in acked:
                found = replayed.get((op if op != "txn" else "set", key, int(revision)))
                assert found is not None, f"round {round_}: acknowledged {op} {key} @{revision} lost"
                if op != "del":
                    assert found.object is not None
                    assert orjson.loads(found.object.data) == [int(v) for v in value.split(",")]
        finally:
            await store.close()
    assert len(acked) >= 100
