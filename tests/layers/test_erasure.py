"""ErasureStore and ErasureLayer on real drive folders (ADAPTERS §5.6 items 8–11, 12 (outage), 14)."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ooo_storage.errors import StorageError, StorageUnavailable
from ooo_storage.layers import CorruptObject, ErasureLayer, ErasureStore, QuorumNotReached
from ooo_storage.layers.erasure.drives import REPAIR_LOG
from ooo_storage.layers.erasure.format import HEADER_SIZE, key_dir, parse_shard_name
from ooo_storage.layers.fs import FormatMismatch
from ooo_storage.protocol.objects import Object

K, M, N = 4, 2, 6
BIG = 300_000  # coded (above inline_threshold), one stripe
SMALL = 100  # replicated m + 1 times


def drive_paths(tmp_path: Path) -> list[str]:
    return [str(tmp_path / f"drive{i}") for i in range(N)]


def value(tag: int, size: int) -> bytes:
    return (tag.to_bytes(4, "little") * (size // 4 + 1))[:size]


@pytest.fixture
def drives(tmp_path: Path) -> list[str]:
    return drive_paths(tmp_path)


@pytest.fixture
async def ec(drives: list[str]) -> AsyncIterator[ErasureStore]:
    store = ErasureStore(drives, k=K, m=M, repair="off")
    await store.start()
    yield store
    await store.close()


def shard_files(store: ErasureStore, key: str) -> dict[int, Path]:
    """shard index -> file of the key's newest generation (from the file names)."""
    loc = store._io.locate(key)
    found: dict[int, dict[int, Path]] = {}
    for drive in store.drives:
        kdir = Path(key_dir(drive, loc.fanout))
        for f in kdir.iterdir() if kdir.is_dir() else []:
            parsed = parse_shard_name(f.name)
            if parsed:
                found.setdefault(parsed[0], {})[parsed[1]] = f
    return found[max(found)] if found else {}


def all_shards(drives: list[str]) -> list[Path]:
    return sorted(
        p for d in drives for p in Path(d, "objects").rglob("*") if parse_shard_name(p.name)
    )


def corrupt(path: Path, where: str) -> None:
    raw = bytearray(path.read_bytes())
    if where == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
        return
    pos = {"header": 12, "key": HEADER_SIZE, "payload": len(raw) - 7}[where]
    raw[pos] ^= 0x5A
    path.write_bytes(bytes(raw))


def take_away(drive: str) -> str:
    """Unmount-like: the drive folder disappears (renamed away)."""
    away = drive + ".away"
    os.rename(drive, away)
    return away


# -- basics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, K - 1, K, K + 1, SMALL, 8191, 8192, BIG, (1 << 20) + 1, 3 << 20])
async def test_roundtrip_and_restart(drives: list[str], size: int) -> None:
    data = os.urandom(size)
    async with ErasureStore(drives, repair="off") as ec:
        await ec.store("a/key", data)
        assert await ec.get("a/key") == data
        assert await ec.get("a/missing") is None
        shards = shard_files(ec, "a/key")
        assert len(shards) == (M + 1 if size < ec.config.inline_threshold else N)
        # Each shard of a key is on a different drive.
        assert len({p.parents[3] for p in shards.values()}) == len(shards)
    async with ErasureStore(drives) as again:
        assert await again.get("a/key") == data
        assert await again.keys() == ["a/key"]


async def test_overwrite_collects_old_generations(ec: ErasureStore) -> None:
    for i in range(5):
        await ec.store("k", value(i, BIG if i % 2 else SMALL))
    await ec.flush()
    assert await ec.get("k") == value(4, SMALL)
    assert len(all_shards(ec.drives)) == M + 1  # only the newest generation is left


async def test_keys_list_and_delete(ec: ErasureStore) -> None:
    for key in ("b/1", "a/2", "a/1", "a/1/x", "c"):
        await ec.store(key, b"v")
    assert await ec.keys() == ["a/1", "a/1/x", "a/2", "b/1", "c"]
    assert await ec.keys("a/1") == ["a/1", "a/1/x"]
    assert await ec.list("a/*") == ["a/1", "a/2"]
    assert await ec.delete("a/1") is True
    assert await ec.delete("a/1") is False
    assert await ec.delete("never") is False
    assert await ec.get("a/1") is None
    await ec.flush()
    assert not Path(key_dir(ec.drives[0], ec._io.locate("a/1").fanout)).exists()
    assert await ec.keys() == ["a/1/x", "a/2", "b/1", "c"]


async def test_one_executor_hop_per_operation(ec: ErasureStore) -> None:
    """A read is one submission; a write one per shard (in parallel) plus one for GC."""
    submits: list[str] = []
    pool = ec._pool
    assert pool is not None
    real = pool.submit

    def counting(fn: Any, *args: Any) -> Any:
        submits.append(getattr(fn, "__name__", "?"))
        return real(fn, *args)

    pool.submit = counting  # type: ignore[method-assign]
    await ec.store("hop", value(1, BIG))
    await ec.flush()
    assert submits.count("write_shard") == N and len(submits) == N + 1
    submits.clear()
    assert await ec.get("hop") == value(1, BIG)
    assert submits == ["read"]
    submits.clear()
    await ec.mget([f"x{i}" for i in range(10)])
    assert submits == ["read_many"]


# -- §5.6.11: erasure patterns through the real read path ---------------------------------------
def _hide(files: dict[int, Path], indexes: tuple[int, ...]) -> list[tuple[Path, Path]]:
    moved = []
    for i in indexes:
        hidden = files[i].with_name("hidden-" + files[i].name)
        files[i].rename(hidden)
        moved.append((hidden, files[i]))
    return moved


async def test_every_k_subset_of_files_decodes(ec: ErasureStore) -> None:
    data = os.urandom((1 << 20) + 333)  # two stripes
    await ec.store("subset", data)
    files = shard_files(ec, "subset")
    for keep in itertools.combinations(range(N), K):
        moved = _hide(files, tuple(i for i in range(N) if i not in keep))
        assert await ec.get("subset") == data, keep
        for hidden, back in moved:
            hidden.rename(back)


async def test_every_pattern_of_missing_and_corrupt_shards(ec: ErasureStore) -> None:
    """All 73 ways of losing or corrupting <= m of the 6 shards still read the exact value."""
    data = os.urandom(BIG)
    await ec.store("pat", data)
    files = shard_files(ec, "pat")
    pristine = {i: p.read_bytes() for i, p in files.items()}
    regions = itertools.cycle(["payload", "header", "key", "truncate"])
    patterns = 0
    for j in range(M + 1):
        for hit in itertools.combinations(range(N), j):
            for kinds in itertools.product(("missing", "corrupt"), repeat=j):
                for i, kind in zip(hit, kinds, strict=True):
                    if kind == "missing":
                        files[i].unlink()
                    else:
                        corrupt(files[i], next(regions))
                assert await ec.get("pat") == data, (hit, kinds)
                patterns += 1
                for i in hit:
                    files[i].write_bytes(pristine[i])
    assert patterns == 73
    for i in (0, 3, 5):  # m + 1 bad shards: never other bytes, never None
        corrupt(files[i], "payload")
    with pytest.raises(CorruptObject):
        await ec.get("pat")
    assert await ec.check("pat") == "corrupted"
    report = await ec.scrub()
    assert report["lost"] == 1 and report["corrupt_shards"] == 3


# -- §5.6.10: bad shards are found by CRC and repaired --------------------------------------------
@pytest.mark.parametrize("damage", ["payload", "header", "key", "truncate", "delete", "stale"])
@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_bad_shard_read_scrubbed_and_repaired(ec: ErasureStore, damage: str, size: int) -> None:
    old, new = value(1, size), value(2, size)
    await ec.store("s", old)
    stale = {i: p.read_bytes() for i, p in shard_files(ec, "s").items()}
    await ec.store("s", new)
    await ec.flush()
    files = shard_files(ec, "s")
    victim = files[1]
    pristine = victim.read_bytes()
    if damage == "delete":
        victim.unlink()
    elif damage == "stale":
        victim.write_bytes(stale[1])  # a valid shard of the previous generation in the new slot
    else:
        corrupt(victim, damage)
    assert await ec.get("s") == new
    assert await ec.check("s") == "ok"
    report = await ec.scrub()
    assert report["degraded"] == 1
    if damage == "delete":
        assert report["missing_shards"] == 1 and report["corrupt_files"] == []
    else:  # found by its own CRC and header, not by decoding: exactly this file is named
        assert report["corrupt_shards"] == 1 and report["corrupt_files"] == [str(victim)]
    assert ec.stats()["degraded"] == 1
    fixed = await ec.repair()
    assert fixed["repaired"] == 1 and fixed["degraded"] == 0
    assert (await ec.scrub())["degraded"] == 0
    assert victim.read_bytes() == pristine  # rebuilt byte for byte
    assert ec.stats()["queued_repairs"] == 0
    # The rebuilt shard alone is good: lose two others and read through it.
    for i in (0, 2):
        files[i].unlink()
    assert await ec.get("s") == new


@pytest.mark.parametrize("mode", ["read", "background"])
async def test_automatic_repair_after_a_degraded_read(drives: list[str], mode: str) -> None:
    async with ErasureStore(drives, repair=mode) as ec:
        await ec.store("auto", value(3, BIG))
        files = shard_files(ec, "auto")
        corrupt(files[0], "payload")
        files[4].unlink()
        assert await ec.get("auto") == value(3, BIG)
        await ec.flush()
        assert ec.stats()["queued_repairs"] == 0 and ec.stats()["repaired"] == 2
        assert (await ec.scrub())["degraded"] == 0


# -- §5.6.8: drives going away ---------------------------------------------------------------------
@pytest.mark.parametrize("lost", [1, 2])
async def test_up_to_m_drives_removed_keep_working(drives: list[str], lost: int) -> None:
    async with ErasureStore(drives, repair="off") as ec:
        await ec.store("old/big", value(1, BIG))
        await ec.store("old/small", value(1, SMALL))
        gone = [take_away(drives[i]) for i in range(lost)]
        assert await ec.get("old/big") == value(1, BIG)
        assert await ec.get("old/small") == value(1, SMALL)
        for i in range(10):
            await ec.store(f"new/{i}", value(i, BIG if i % 2 else SMALL))
        await ec.store("old/big", value(2, BIG))
        await ec.flush()
        for i in range(10):
            assert await ec.get(f"new/{i}") == value(i, BIG if i % 2 else SMALL)
        assert await ec.get("old/big") == value(2, BIG)
        stats = ec.stats()
        assert stats["offline_drives"] == drives[:lost]
        assert stats["queued_repairs"] > 0 and stats["degraded"] > 0
        lines = Path(drives[-1], REPAIR_LOG).read_text().splitlines()
        logged = {json.loads(line)["key"] for line in lines if line}  # blank lines separate batches
        assert "old/big" in logged and "new/1" in logged
        # Nothing can be rebuilt while the drives are absent, and nothing is declared done.
        report = await ec.repair()
        assert report["degraded"] > 0 and report["offline_drives"] == drives[:lost]
        for away, drive in zip(gone, drives, strict=False):
            os.rename(away, drive)
        report = await ec.repair()
        assert report["degraded"] == 0 and report["repaired"] > 0
        assert ec.stats()["queued_repairs"] == 0 and ec.stats()["offline_drives"] == []
        assert not any(Path(d, REPAIR_LOG).exists() for d in drives)  # forgotten once repaired
        assert (await ec.scrub())["degraded"] == 0
        for i in range(10):
            assert await ec.get(f"new/{i}") == value(i, BIG if i % 2 else SMALL)
            assert len(shard_files(ec, f"new/{i}")) == (N if i % 2 else M + 1)


async def test_more_than_m_drives_removed_refuses_writes(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="off") as ec:
        await ec.store("big", value(1, BIG))
        await ec.store("small", value(1, SMALL))
        before = all_shards(drives)
        gone = [take_away(drives[i]) for i in (0, 2, 4)]
        for key, size in (("big", BIG), ("small", SMALL), ("fresh", SMALL)):
            with pytest.raises(QuorumNotReached, match="quorum"):
                await ec.store(key, value(2, size))
        with pytest.raises(QuorumNotReached):
            await ec.delete("big")
        with pytest.raises(StorageUnavailable):  # 3 shards left of 4 needed: never None
            await ec.get("big")
        with pytest.raises(StorageUnavailable, match="more than 2 drives"):
            await ec.get("never-written")  # absence can't be proven with half the drives gone
        for away, drive in zip(gone, (drives[0], drives[2], drives[4]), strict=True):
            os.rename(away, drive)
        await ec.flush()
        assert await ec.get("big") == value(1, BIG)  # the failed write was rolled back
        assert await ec.get("small") == value(1, SMALL)
        assert await ec.get("fresh") is None
        assert all_shards(drives) == before


async def test_delete_during_outage_does_not_resurrect(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="off") as ec:
        await ec.store("gone", value(1, BIG))
        await ec.store("tiny", value(1, SMALL))
        away = [take_away(drives[i]) for i in (1, 3)]
        assert await ec.delete("gone") and await ec.delete("tiny")
        for a, i in zip(away, (1, 3), strict=True):
            os.rename(a, drives[i])  # the drives come back holding the old shards
        assert await ec.get("gone") is None and await ec.get("tiny") is None
    async with ErasureStore(drives, repair="off") as again:
        assert await again.keys() == []
        assert await again.get("gone") is None
        report = await again.repair()
        assert report["degraded"] == 0
        assert all_shards(drives) == []  # tombstones collected once every drive holds them
        assert await again.get("gone") is None


# -- §5.6.9: drive identity -------------------------------------------------------------------------
async def test_replaced_drive_is_rebuilt(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="off") as ec:
        for i in range(12):
            await ec.store(f"r/{i}", value(i, BIG if i % 3 else SMALL))
        await ec.delete("r/0")
    shutil.rmtree(drives[2])
    os.mkdir(drives[2])  # a new, empty disk mounted in place of the dead one
    async with ErasureStore(drives, repair="off") as ec:
        marker = Path(drives[2], ".ecdrive.json")
        assert json.loads(marker.read_text())["rebuild_pending"] is True
        assert ec.stats()["queued_repairs"] >= 11 and ec.stats()["rebuilding_drives"] == [drives[2]]
        for i in range(1, 12):
            assert await ec.get(f"r/{i}") == value(i, BIG if i % 3 else SMALL)
        report = await ec.repair()
        assert report["degraded"] == 0 and report["lost"] == 0 and report["repaired"] > 0
        assert report["replaced_drives"] == [drives[2]]
        assert "rebuild_pending" not in json.loads(marker.read_text())
        assert ec.stats()["rebuilding_drives"] == []
        scrub = await ec.scrub()
        assert scrub["degraded"] == 0 and scrub["missing_shards"] == 0 and scrub["checked"] == 11
        assert ec.stats()["last_scrub"]["degraded"] == 0
        # The rebuilt drive alone can stand in for two others.
        for d in (drives[0], drives[1]):
            take_away(d)
        for i in range(1, 12):
            assert await ec.get(f"r/{i}") == value(i, BIG if i % 3 else SMALL)


async def test_drive_replaced_while_running_is_rebuilt(ec: ErasureStore) -> None:
    await ec.store("live", value(1, BIG))
    shutil.rmtree(ec.drives[5])
    os.mkdir(ec.drives[5])
    await ec.store("live", value(2, BIG))  # the empty drive takes no shard (no .tmp, no marker)
    assert ec.stats()["offline_drives"] == [ec.drives[5]]
    report = await ec.repair()
    assert report["replaced_drives"] == [ec.drives[5]] and report["degraded"] == 0
    assert len(shard_files(ec, "live")) == N


async def test_swapped_drives_refuse_start(drives: list[str]) -> None:
    async with ErasureStore(drives) as ec:
        await ec.store("x", b"1")
    swapped = [drives[1], drives[0], *drives[2:]]
    with pytest.raises(FormatMismatch, match="index"):
        await ErasureStore(swapped).start()
    other = [d + "-other" for d in drives]
    async with ErasureStore(other):
        pass
    mixed = [other[0], *drives[1:]]
    with pytest.raises(FormatMismatch, match="different stores"):
        await ErasureStore(mixed).start()


async def test_unknown_non_empty_folder_refused(drives: list[str]) -> None:
    async with ErasureStore(drives):
        pass
    shutil.rmtree(drives[3])
    os.makedirs(Path(drives[3], "someone-elses-data"))
    with pytest.raises(FormatMismatch, match="no .ecdrive.json"):
        await ErasureStore(drives).start()


@pytest.mark.parametrize(
    "options",
    [{"k": 3, "m": 3}, {"k": 5, "m": 1}, {"ec_backend": "isa_l_rs_vand"}, {"ec_backend": "liberasurecode_rs_vand"}],
)
async def test_backend_and_geometry_are_pinned(drives: list[str], options: dict[str, Any]) -> None:
    async with ErasureStore(drives) as ec:
        await ec.store("pinned", value(1, BIG))
    with pytest.raises(FormatMismatch, match="another format"):
        await ErasureStore(drives, **options).start()
    async with ErasureStore(drives) as ec:  # the refused attempt changed nothing
        assert await ec.get("pinned") == value(1, BIG)


def test_bad_configuration_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k \\+ m"):
        ErasureStore(drive_paths(tmp_path)[:5])
    with pytest.raises(ValueError, match="write_quorum"):
        ErasureStore(drive_paths(tmp_path), write_quorum=7)
    with pytest.raises(ValueError, match="distinct"):
        ErasureStore([str(tmp_path / "same")] * 6)


# -- §5.6.12: failed and in-flight writes ----------------------------------------------------------
async def test_incomplete_generation_falls_back_and_is_collected_after_grace(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="off", grace=3600) as ec:
        await ec.store("f", value(1, BIG))
        # A writer that died after 3 of 6 shards (fewer than k): simulate it shard by shard.
        loc = ec._io.locate("f")
        gen = ec._gens.next()
        payloads = ec.codec.encode(value(2, BIG))
        for i in range(3):
            ec._io.write_shard(loc, i, 0, BIG, gen, 0, payloads[i])
        assert await ec.get("f") == value(1, BIG)
        assert (await ec.repair())["removed"] == 0  # may still be in flight: kept
        assert len(all_shards(drives)) == N + 3
    async with ErasureStore(drives, repair="off", grace=0) as ec:
        assert await ec.get("f") == value(1, BIG)
        assert (await ec.repair())["removed"] == 3
        assert len(all_shards(drives)) == N


async def test_too_few_visible_shards_with_absent_drives_is_not_a_fallback(ec: ErasureStore) -> None:
    """3 of 4 needed shards visible and a drive absent: the version may be committed, so the
    read fails instead of falling back to an older generation (here: to "missing")."""
    await ec.store("amb", value(1, BIG))
    await ec.store("amb", value(2, BIG))
    await ec.flush()
    files = shard_files(ec, "amb")
    missing = ec._io.drive_of(ec._io.locate("amb"), 0)
    files[1].unlink()
    files[2].unlink()
    take_away(ec.drives[missing])
    with pytest.raises(StorageUnavailable, match="too few drives"):
        await ec.get("amb")


async def test_quorum_k_plus_one(drives: list[str]) -> None:
    async with ErasureStore(drives, write_quorum=K + 1, repair="off") as ec:
        take_away(drives[0])
        await ec.store("q", value(1, BIG))
        take_away(drives[1])
        with pytest.raises(QuorumNotReached):
            await ec.store("q", value(2, BIG))
        assert await ec.get("q") == value(1, BIG)


# -- the Layer adapter -----------------------------------------------------------------------------
def obj(n: int) -> Object:
    return Object(n, n, f"i{n}", "", str(n).encode())


async def test_layer_adapter(drives: list[str]) -> None:
    layer = ErasureLayer(drives, repair="off")
    await layer.start()
    try:
        for n in range(5):
            await layer.set(f"users/{n}", obj(n))
        await layer.set("other", obj(9))
        assert await layer.get("users/3") == obj(3)
        assert await layer.get("users/none") is None
        assert sorted(o.created for o in await layer.get_list("users/*")) == [0, 1, 2, 3, 4]
        assert await layer.keys() == ["other", *(f"users/{n}" for n in range(5))]
        assert await layer.delete("users/4") == 1
        assert await layer.delete("users/4") == 0
        assert await layer.delete("users/*") == 4
        assert await layer.keys() == ["other"]
    finally:
        await layer.close()
    again = ErasureLayer(drives)
    await again.start()
    try:
        assert await again.load() == {"other": obj(9)}
        assert await again.load_raw() == {"other": obj(9).to_json()}
        await again.clear()
        assert await again.keys() == [] and await again.load() == {}
    finally:
        await again.close()


async def test_errors_are_typed(ec: ErasureStore) -> None:
    assert issubclass(CorruptObject, StorageError) and issubclass(QuorumNotReached, StorageError)
    await ec.close()
    with pytest.raises(StorageUnavailable, match="not open"):
        await ec.get("x")
    with pytest.raises(StorageUnavailable, match="not open"):
        await ec.store("x", b"1")
    await ec.start()


async def test_concurrent_sets_of_one_key_apply_in_call_order(ec: ErasureStore) -> None:
    """Per-key serialisation: the last set issued is the value left, whatever the thread timing."""
    await asyncio.gather(*(ec.store("order", value(i, BIG if i % 2 else SMALL)) for i in range(12)))
    assert await ec.get("order") == value(11, BIG)


async def test_background_repairer_waits_for_the_drive_then_rebuilds(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="background", retry_interval=3600) as ec:
        away = take_away(drives[3])
        for i in range(6):
            await ec.store(f"bg/{i}", value(i, BIG))
        await ec.flush()  # one pass: nothing can be rebuilt yet, nothing is dropped
        assert ec.stats()["degraded"] == 6 and ec.stats()["repaired"] == 0
        os.rename(away, drives[3])
        await ec.flush()
        assert ec.stats()["degraded"] == 0 and ec.stats()["repaired"] == 6
        assert (await ec.scrub())["degraded"] == 0


async def _degraded_store(drives: list[str], **options: Any) -> ErasureStore:
    """A background-repair store with one drive gone and one key waiting for its repair."""
    async with ErasureStore(drives, k=K, m=M, repair="off"):
        pass  # initialise every drive
    take_away(drives[2])
    ec = ErasureStore(drives, k=K, m=M, repair="background", **options)
    await ec.start()
    await ec.store("degraded", value(1, BIG))
    await ec.flush()
    assert ec.stats()["degraded"] == 1
    return ec


@pytest.mark.parametrize("turns", range(8))
async def test_close_returns_wherever_the_repairer_is_in_its_wake_up(
    drives: list[str], turns: int
) -> None:
    """close() racing a wake-up of the repairer (flush() wakes it) returns, and so does flush(),
    for every number of loop turns between the two. close() used to cancel the repairer: on
    Python 3.11 ``wait_for`` swallows a cancellation landing in the iteration where the wake-up
    event fires, and close() waited forever (turns 0-2); flush() then never returned (turns 3+)."""
    ec = await _degraded_store(drives)
    flushing = asyncio.ensure_future(ec.flush())
    for _ in range(turns):
        await asyncio.sleep(0)
    closing = asyncio.ensure_future(ec.close())
    done, pending = await asyncio.wait({flushing, closing}, timeout=5)
    for task in pending:
        task.cancel()
    assert (closing in done, flushing in done) == (True, True)


async def test_close_cuts_a_rate_limited_repair_pause_short(drives: list[str]) -> None:
    """The repairer's rate-limit pause (hours at 1 byte/s) ends as soon as close() is called."""
    ec = await _degraded_store(drives, repair_rate=1.0, retry_interval=3600)
    os.rename(drives[2] + ".away", drives[2])
    assert await ec.get("degraded") == value(1, BIG)  # a degraded read wakes the repairer
    for _ in range(500):  # no event marks "rebuilt, now pausing": poll the counter, bounded
        if ec.stats()["repaired"]:
            break
        await asyncio.sleep(0.01)
    assert ec.stats()["repaired"] == 1
    closing = asyncio.ensure_future(ec.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert closing in done


async def test_cancelled_store_still_finishes_before_the_next_write_of_its_key(
    ec: ErasureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store() cancelled while its shard writes run (threads: they cannot be stopped) waits
    for them and commits before the cancellation propagates: the next write of the key starts
    only after them, and the key is indexed. The key's lock used to be released at once, under
    the running shard writes, and the commit's bookkeeping was skipped."""
    gate, loop = threading.Event(), asyncio.get_running_loop()
    entered = asyncio.Event()
    log: list[tuple[str, int]] = []
    real = ec._io.write_shard

    def gated(loc: Any, index: int, flags: int, size: int, gen: int, *rest: Any) -> int:
        log.append(("start", gen))
        loop.call_soon_threadsafe(entered.set)
        assert gate.wait(10)
        try:
            return real(loc, index, flags, size, gen, *rest)
        finally:
            log.append(("end", gen))

    monkeypatch.setattr(ec._io, "write_shard", gated)
    first = asyncio.ensure_future(ec.store("k", value(1, BIG)))
    await entered.wait()
    first.cancel()
    for _ in range(50):  # the old code let go within a few loop turns
        await asyncio.sleep(0)
    assert not first.done()
    second = asyncio.ensure_future(ec.store("k", value(2, BIG)))
    gate.set()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    gens = sorted({gen for _, gen in log})
    assert [step for step in log if step[1] == gens[0]] == log[: 2 * N]  # all of the first, first
    assert await ec.get("k") == value(2, BIG) and await ec.keys() == ["k"]


async def test_deleting_a_corrupt_object_clears_it(drives: list[str]) -> None:
    async with ErasureStore(drives, repair="off") as ec:
        await ec.store("bad", value(1, BIG))
        for i, f in shard_files(ec, "bad").items():
            if i < 3:
                corrupt(f, "payload")
    async with ErasureStore(drives, repair="off") as ec:  # also after a restart
        with pytest.raises(CorruptObject):
            await ec.get("bad")
        assert await ec.delete("bad") is True
        assert await ec.get("bad") is None
        await ec.store("bad", value(2, SMALL))
        assert await ec.get("bad") == value(2, SMALL)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.sampled_from([0, 1, K - 1, K, K + 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1])
    | st.integers(0, 20_000),
    lost=st.sets(st.integers(0, N - 1), max_size=M),
    coded=st.booleans(),
)
def test_any_size_survives_any_m_lost_drives(tmp_path: Path, size: int, lost: set[int], coded: bool) -> None:
    """Through the whole store: coded (inline_threshold=0) or replicated, any <= m drives gone."""
    paths = [str(tmp_path / f"h{os.urandom(4).hex()}-{i}") for i in range(N)]
    data = os.urandom(size)

    async def main() -> None:
        async with ErasureStore(paths, repair="off", inline_threshold=0 if coded else 1 << 30) as ec:
            await ec.store("h", data)
            for i in lost:
                take_away(paths[i])
            assert await ec.get("h") == data

    asyncio.run(main())


@pytest.mark.parametrize(("call", "err"), [("fsync", errno.EIO), ("rename", errno.ENOSPC), ("writev", errno.EROFS)])
@pytest.mark.parametrize("failing", [1, M, M + 1])
async def test_io_errors_on_drives_leave_old_state(
    ec: ErasureStore, monkeypatch: pytest.MonkeyPatch, call: str, err: int, failing: int
) -> None:
    """EIO/ENOSPC/EROFS on ``failing`` drives: within m the write commits and is queued for
    repair; beyond m it raises QuorumNotReached and the old value stays; no temp file leaks."""
    await ec.store("io", value(1, BIG))
    await ec.flush()
    bad = tuple(ec.drives[:failing])
    real = getattr(os, call)

    def flaky(*args: Any) -> Any:
        target = args[0] if isinstance(args[0], str) else os.readlink(f"/proc/self/fd/{args[0]}")
        if target.startswith(bad):
            raise OSError(err, os.strerror(err))
        return real(*args)

    monkeypatch.setattr(os, call, flaky)
    if failing <= M:
        await ec.store("io", value(2, BIG))
        assert ec.stats()["queued_repairs"] == failing
    else:
        with pytest.raises(QuorumNotReached):
            await ec.store("io", value(2, BIG))
    monkeypatch.setattr(os, call, real)
    await ec.flush()
    assert await ec.get("io") == value(2 if failing <= M else 1, BIG)
    assert [n for d in ec.drives for n in os.listdir(Path(d, ".tmp"))] == []
    assert (await ec.repair())["degraded"] == 0
    assert len(shard_files(ec, "io")) == N


async def test_repair_log_keeps_records_appended_after_a_torn_one(tmpfs: Any) -> None:
    """On a real full filesystem an append to the repair log is cut short (a torn line); the
    records appended once space is back must still load. They used to be glued onto the torn
    line and lost with it, so the degraded key was repaired only by the next full scrub."""
    fs = tmpfs("1m", "log")
    drives = [str(fs / f"drive{i}") for i in range(N)]
    async with ErasureStore(drives, repair="off") as ec:
        io = ec._io
        io.log_repairs([("first", 1, 0)], [0])
        log = Path(drives[0], REPAIR_LOG)
        with open(log, "ab") as f:  # a blank line, so that 10 bytes are left in the log's last page
            f.write(b" " * (4096 - 10 - log.stat().st_size - 1) + b"\n")
        filler = fs / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError) as full:
            while True:
                f.write(bytes(4096))
        assert full.value.errno == errno.ENOSPC
        io.log_repairs([("torn", 2, 0)], [0])
        assert log.stat().st_size == 4096  # the append was cut short: a torn line
        filler.unlink()
        io.log_repairs([("second", 3, 0)], [0])
        assert io.load_repairs() == {"first", "second"}
