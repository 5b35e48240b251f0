"""SOSLayer and ErasureLayer through ``Layered``: behaviour both file-backed adapters must share."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import temp_entries

from ooo_storage import Layered, MemoryLayer
from ooo_storage.errors import CorruptObject, NoSpace, NotFound, QuorumNotReached, StorageUnavailable
from ooo_storage.layers import ErasureLayer, SOSLayer
from ooo_storage.layers.erasure.format import parse_shard_name
from ooo_storage.server import Server, ServerRunner

LayerFactory = Callable[[Path], Any]

LAYERS: dict[str, LayerFactory] = {
    "sos": lambda base: SOSLayer(base / "sos"),
    "erasure": lambda base: ErasureLayer([str(base / f"drive{i}") for i in range(6)], k=4, m=2),
}


@pytest.fixture(params=list(LAYERS))
async def bare(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Layered]:
    """A Layered store over one file layer and no memory layer: every read reaches the files."""
    store = Layered(memory=None, embedded=LAYERS[request.param](tmp_path))
    await store.start()
    yield store
    await store.close()


# -- stored bytes that are not an object --------------------------------------------------------

NOT_OBJECTS = [b"not json", b"[1, 2]", b'"text"']


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=["garbage", "array", "string"])
async def test_value_that_is_not_object_json_is_a_typed_corrupt_object(
    bare: Layered, raw: bytes
) -> None:
    """Bytes that pass the layer's own checksum but are not object JSON (written by another
    program, or an older format) raise CorruptObject naming the key, on a single read and a glob
    read alike; a ValueError here used to become a 500."""
    await bare.set("bad/good", {"ok": True})
    await bare.embedded.store.store("bad/key", raw)  # type: ignore[union-attr]
    with pytest.raises(CorruptObject, match="bad/key"):
        await bare.get("bad/key")
    with pytest.raises(CorruptObject, match="bad/key"):
        await bare.get_list("bad/*")
    assert (await bare.get("bad/good")).value == {"ok": True}


async def test_value_that_is_not_object_json_is_a_503_naming_the_key(bare: Layered) -> None:
    await bare.embedded.store.store("bad/key", b"not json")  # type: ignore[union-attr]
    runner = ServerRunner(bare, "127.0.0.1", 0, server=Server(bare, shutdown_timeout=1.0))
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("bad/key", "bad/*"):
                async with http.get(f"{runner.url}/{path}") as resp:
                    body = await resp.text()
                assert (resp.status, "bad/key" in body) == (503, True), (path, resp.status, body)
    finally:
        await runner.stop()


# -- a disk-full episode on a real small filesystem ------------------------------------------------
#
# The persistent layer's filesystem fills up in the middle of a run. What must hold: a failed
# write is a clean StorageUnavailable with nothing half-published (no temp file eating space, no
# torn object, the previous value still readable from the files), and once space is freed every
# acknowledged write and delete survives a restart, exactly, and nothing else changed.

BIG = 40_000  # characters of padding in a "big" value
BIG_EC = 200_000  # coded over k + m shards (replicas below the 8 KiB inline threshold)


def fill_file(where: Path, name: str = "filler", size: int | None = None) -> Path:
    """Grow ``where/name`` to ``size`` bytes, or until its filesystem is full; delete it to free."""
    path = where / name
    with open(path, "ab", buffering=0) as f:
        if size is not None:
            f.write(bytes(size))
            return path
        for chunk in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    f.write(bytes(chunk))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return path


def use_inodes(where: Path) -> list[Path]:
    """Create empty files in ``where`` until its filesystem has no inode left; return them."""
    made = []
    while len(made) < 100_000:
        path = where / f"inode{len(made)}"
        try:
            path.touch(exist_ok=False)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return made
        made.append(path)
    raise AssertionError(f"{where} never ran out of inodes")


class Episode:
    """A Layered store over one file layer, and the model of what it acknowledged."""

    def __init__(self, make_layer: Callable[[], Any], mirror: bool) -> None:
        self.make_layer = make_layer
        self.mirror = mirror
        self.model: dict[str, Any] = {}
        self.store: Layered | None = None
        self.last_error: StorageUnavailable | None = None

    @property
    def layer(self) -> Any:
        assert self.store is not None
        return self.store.embedded

    async def open(self) -> Layered:
        self.store = Layered(memory=MemoryLayer() if self.mirror else None, embedded=self.make_layer())
        await self.store.start()
        return self.store

    async def reopen(self) -> None:
        assert self.store is not None
        await self.store.close()
        await self.open()
        await self.check_all()

    async def set(self, key: str, value: Any) -> bool:
        """Write; True if acknowledged. A refused write must leave the old value on disk."""
        assert self.store is not None
        try:
            await self.store.set(key, value)
        except StorageUnavailable as exc:
            await self.check(key)
            self.last_error = exc
            return False
        self.model[key] = value
        return True

    async def delete(self, key: str) -> bool:
        assert self.store is not None
        try:
            await self.store.delete(key)
        except StorageUnavailable as exc:
            await self.check(key)
            self.last_error = exc
            return False
        self.model.pop(key, None)
        return True

    async def fill(self, tag: str, sizes: tuple[int, ...]) -> int:
        """Write ever more keys, big then small, until even the smallest is refused."""
        written = 0
        for size in sizes:
            while written < 2000 and await self.set(f"fill/{tag}{written}", {"pad": "x" * size}):
                written += 1
        return written

    async def check(self, key: str) -> None:
        """The store and its persistent layer itself (not just the memory mirror) hold the
        model's value of ``key``."""
        assert self.store is not None
        try:
            seen = (await self.store.get(key)).value
        except NotFound:
            seen = None
        obj = await self.layer.get(key)
        assert (seen, None if obj is None else obj.value) == (self.model.get(key),) * 2, key

    async def check_all(self) -> None:
        assert sorted(await self.layer.keys()) == sorted(self.model)
        for key in self.model:
            await self.check(key)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


async def _after_the_disk_is_freed(episode: Episode) -> None:
    """Writes and deletes are acknowledged again, and everything acknowledged survives restarts."""
    for i in range(20):
        assert await episode.set(f"after/{i}", {"i": i}), episode.last_error
    assert await episode.set("keep/old", {"v": "new"}), episode.last_error
    assert await episode.delete("after/7"), episode.last_error
    await episode.reopen()
    await episode.reopen()


@pytest.mark.parametrize("mirror", [True, False], ids=["memory+sos", "sos"])
@pytest.mark.parametrize("limit", ["blocks", "inodes"])
async def test_sos_disk_full_episode(tmpfs: Any, mirror: bool, limit: str) -> None:
    """SOS fills its filesystem (out of blocks, or out of inodes): writes fail with NoSpace while
    reads, deletes and restarts keep working; freeing space brings writes back, nothing lost.
    With no inode left, reads used to fail too: the read hard link needs one."""
    fs = tmpfs("4m" if limit == "blocks" else "8m,nr_inodes=400", "sos")
    root = fs / "sos"
    episode = Episode(lambda: SOSLayer(root), mirror)
    await episode.open()
    try:
        assert await episode.set("keep/old", {"v": "old"})
        assert await episode.set("keep/doomed", {"v": 1})
        assert await episode.fill("a", (BIG, 10)) > 10
        # The last bytes (or inodes) the store could not use: now nothing at all is left.
        slack = use_inodes(fs) if limit == "inodes" else [fill_file(fs)]
        # Full: refused cleanly, the old value readable, nothing left behind.
        assert not await episode.set("keep/old", {"pad": "y" * BIG})
        assert not await episode.set("fresh", {"pad": "y" * BIG})
        assert isinstance(episode.last_error, NoSpace), episode.last_error
        assert "free space" in str(episode.last_error)
        assert temp_entries(root) == []
        report = await episode.layer.store.scrub()
        assert report["corrupted"] == 0 and report["checked"] == len(episode.model)
        assert await episode.delete("keep/doomed"), episode.last_error  # unlink needs no room
        await episode.reopen()  # starting on a full disk works
        for path in slack:
            path.unlink()
        for key in [k for k in episode.model if k.startswith("fill/")][3:]:
            assert await episode.delete(key), episode.last_error
        await _after_the_disk_is_freed(episode)
        assert temp_entries(root) == []
    finally:
        await episode.close()


def _erasure_files(drives: list[str]) -> tuple[list[str], dict[str, set[int]]]:
    """Temp files left on the drives, and the generations present per key directory."""
    temps = [name for d in drives for name in os.listdir(Path(d, ".tmp"))]
    generations: dict[str, set[int]] = {}
    for d in drives:
        for shard in Path(d, "objects").rglob("*"):
            parsed = parse_shard_name(shard.name)
            if parsed is not None:
                generations.setdefault(shard.parent.name, set()).add(parsed[0])
    return temps, generations


async def _check_erasure_clean(episode: Episode, drives: list[str]) -> None:
    """No temp file, one generation per key (failed writes rolled back, older ones collected),
    and every object readable from k valid shards."""
    ec = episode.layer.store
    await ec.flush()
    temps, generations = _erasure_files(drives)
    assert temps == []
    assert {key: gens for key, gens in generations.items() if len(gens) > 1} == {}
    report = await ec.scrub()
    assert (report["lost"], report["corrupt_shards"]) == (0, 0), report


@pytest.mark.parametrize("mirror", [True, False], ids=["memory+erasure", "erasure"])
async def test_erasure_all_drives_full_episode(tmpfs: Any, mirror: bool) -> None:
    """All six drives share one small filesystem that fills up: writes and deletes fail with
    QuorumNotReached naming the full drives and saying what to do, nothing half-written stays,
    reads and restarts work; once space is freed everything acknowledged survives."""
    fs = tmpfs("3m", "ec")
    reserve = fill_file(fs, "reserve", 640 << 10)  # what the operator frees later
    drives = [str(fs / f"drive{i}") for i in range(6)]
    episode = Episode(lambda: ErasureLayer(drives, k=4, m=2), mirror)
    await episode.open()
    try:
        assert await episode.set("keep/old", {"v": "old"})
        assert await episode.set("keep/big", {"pad": "o" * BIG_EC})
        assert await episode.fill("a", (BIG_EC, BIG, 10)) > 5
        fill_file(fs, "slack")  # the last bytes no shard fitted in
        assert not await episode.set("keep/old", {"pad": "y" * BIG})
        assert not await episode.set("keep/big", {"pad": "y" * BIG_EC})
        assert not await episode.set("fresh", {"v": 1})
        assert isinstance(episode.last_error, QuorumNotReached)
        assert "No space left on device" in str(episode.last_error)
        assert "free space" in str(episode.last_error)
        assert episode.layer.store.stats()["full_drives"] == drives
        assert episode.layer.store.stats()["offline_drives"] == []
        # A delete writes a tombstone on every drive: with no room at all it is refused too.
        assert not await episode.delete("keep/big")
        await _check_erasure_clean(episode, drives)
        await episode.reopen()  # starting with every drive full works
        reserve.unlink()
        (fs / "slack").unlink()
        await _after_the_disk_is_freed(episode)
        await _check_erasure_clean(episode, drives)
    finally:
        await episode.close()


@pytest.mark.parametrize("mirror", [True, False], ids=["memory+erasure", "erasure"])
async def test_erasure_some_drives_full_episode(tmpfs: Any, mirror: bool) -> None:
    """Each drive on its own small filesystem. m full drives: writes still commit (degraded,
    queued for repair), full drives are not called offline. m + 1 full drives: coded writes fail
    with QuorumNotReached and leave the previous generation. Once space is freed, a repair makes
    every object whole and everything acknowledged survives restarts."""
    mounts = [tmpfs("2m", f"d{i}") for i in range(6)]
    drives = [str(m / "drive") for m in mounts]
    episode = Episode(lambda: ErasureLayer(drives, k=4, m=2), mirror)
    await episode.open()
    ec = episode.layer.store
    try:
        assert await episode.set("keep/old", {"pad": "o" * BIG_EC})
        assert await episode.set("keep/doomed", {"v": 1})
        fillers = [fill_file(mounts[0]), fill_file(mounts[1])]
        for i in range(5):
            assert await episode.set(f"degraded/{i}", {"pad": str(i) * BIG_EC}), episode.last_error
        assert await episode.set("keep/old", {"pad": "n" * BIG_EC}), episode.last_error
        assert ec.stats()["full_drives"] == drives[:2] and ec.stats()["offline_drives"] == []
        assert ec.stats()["degraded"] == 6
        # m + 1 full drives (topped up: collecting the overwritten generation freed some room)
        await ec.flush()
        fillers = [fill_file(m) for m in mounts[:3]]
        assert not await episode.set("keep/old", {"pad": "y" * BIG_EC})
        assert not await episode.set("fresh", {"pad": "y" * BIG_EC})
        assert isinstance(episode.last_error, QuorumNotReached)
        assert "No space left on device" in str(episode.last_error)
        await episode.fill("small", (10,))  # replicas land wherever one of their drives has room
        await _check_erasure_clean(episode, drives)
        await episode.reopen()
        ec = episode.layer.store
        for filler in fillers:
            filler.unlink()
        await _after_the_disk_is_freed(episode)
        ec = episode.layer.store
        report = await ec.repair()
        assert (report["degraded"], report["lost"]) == (0, 0), report
        assert ec.stats()["full_drives"] == []
        await _check_erasure_clean(episode, drives)
        assert (await ec.scrub())["degraded"] == 0
        await episode.reopen()
    finally:
        await episode.close()
