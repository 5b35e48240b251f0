"""Shared fixtures. ``store`` runs every storage test against every backend combination."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ooo_storage import Layered, LevelDBLayer, MemoryLayer, Options
from ooo_storage.layers import ErasureLayer, Layer, SOSLayer


def _sos(path: Path) -> Layer:
    return SOSLayer(str(path / "sos"))


def _erasure(path: Path) -> Layer:
    return ErasureLayer([str(path / f"drive{i}") for i in range(6)], k=4, m=2)


def _sos_shared(path: Path) -> Layer:
    return SOSLayer(str(path / "sos"), shared=True)


def _erasure_shared(path: Path) -> Layer:
    return ErasureLayer([str(path / f"drive{i}") for i in range(6)], k=4, m=2, shared=True)


def _leveldb(path: Path) -> Layer:
    return LevelDBLayer(str(path / "db"))


# name -> (has memory layer, persistent layer factory or None)
BACKENDS: dict[str, tuple[bool, Callable[[Path], Layer] | None]] = {
    "memory": (True, None),
    "leveldb": (False, _leveldb),
    "memory+leveldb": (True, _leveldb),
    "memory+leveldb-sync": (True, lambda p: LevelDBLayer(str(p / "db"), sync=True)),
    "sos": (False, _sos),
    "memory+sos": (True, _sos),
    "erasure": (False, _erasure),
    "memory+erasure": (True, _erasure),
    # Sharing on (layers/shared.py): every write also goes to this process's journal, tailed by others.
    "memory+sos-shared": (True, _sos_shared),
    "memory+erasure-shared": (True, _erasure_shared),
}


class StoreFactory:
    """Builds (and rebuilds, for restart tests) a Layered store of one backend in one directory."""

    def __init__(self, backend: str, path: Path) -> None:
        self.backend = backend
        self.path = path
        self.has_memory, self.persistent = BACKENDS[backend]
        self.opened: list[Layered] = []

    async def open(self, options: Options | None = None) -> Layered:
        memory = MemoryLayer() if self.has_memory else None
        embedded = self.persistent(self.path) if self.persistent else None
        store = Layered(memory=memory, embedded=embedded)
        await store.start(options)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


PERSISTENT = [name for name, (_, layer) in BACKENDS.items() if layer is not None]
MIRRORED = [name for name in PERSISTENT if BACKENDS[name][0]]


async def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    f = StoreFactory(request.param, tmp_path)
    yield f
    await f.close_all()


@pytest.fixture(params=list(BACKENDS))
async def factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Every backend."""
    async for f in _factory(request, tmp_path):
        yield f


@pytest.fixture(params=PERSISTENT)
async def persistent_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Backends with a persistent layer (restart tests)."""
    async for f in _factory(request, tmp_path):
        yield f


@pytest.fixture(params=MIRRORED)
async def mirrored_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Backends with both a memory mirror and a persistent layer."""
    async for f in _factory(request, tmp_path):
        yield f


@pytest.fixture
async def store(factory: StoreFactory) -> Layered:
    return await factory.open()


class Tmpfs:
    """Mounts real, small tmpfs filesystems (to fill up) and unmounts them at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def __call__(self, size: str = "2m", name: str = "fs") -> Path:
        """A fresh tmpfs of ``size`` (mount's syntax: ``2m``, ``512k``) at ``base/name``."""
        import subprocess

        point = self.base / name
        point.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            pytest.fail(
                f"this test needs a real small filesystem: `mount -t tmpfs` failed "
                f"({done.stderr.strip() or done.returncode}); run the tests as root (CI does)"
            )
        self.mounted.append(point)
        return point

    def unmount_all(self) -> None:
        import subprocess

        for point in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
        self.mounted.clear()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """``tmpfs(size)`` mounts a real tmpfs of that size and returns its path (FAILS, never skips,
    where mounting is not allowed)."""
    mounts = Tmpfs(tmp_path / "mnt")
    try:
        yield mounts
    finally:
        mounts.unmount_all()
