"""SOS listing: glob edge cases and listing while other processes churn (ADAPTERS.md §5.6 item 6)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import ForkServer

from ooo_storage.layers import SimpleObjectStore
from ooo_storage.layers.fs import TMP_DIR

KEYS = ["a", "ab", "a/b", "a/bc", "a/b/c", "[ab]", "a?c", "x*y", "x/y.z", "x/y-z", "é/k"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["[ab]", "a", "a?c", "ab", "x*y"]),
        ("a/*", ["a/b", "a/bc"]),
        ("a/b*", ["a/b", "a/bc"]),
        ("*/b", ["a/b"]),
        ("*/*/*", ["a/b/c"]),
        ("[ab]", ["[ab]"]),  # brackets are literal, not a character class
        ("a?c", ["a?c"]),  # so is ?
        ("a?", []),
        ("x/y*", ["x/y-z", "x/y.z"]),
        ("x*y", ["x*y"]),
        ("x/*.z", ["x/y.z"]),
        ("é/*", ["é/k"]),
        ("nothing/*", []),
    ],
)
async def test_glob_edge_cases(sos: SimpleObjectStore, pattern: str, expected: list[str]) -> None:
    for key in KEYS:
        await sos.store(key, key.encode())
    assert await sos.list(pattern) == expected


async def test_prefix_listing_and_foreign_files(sos: SimpleObjectStore) -> None:
    """Prefix listing is a plain ``startswith``; files that are not SOS objects are ignored."""
    for key in KEYS:
        await sos.store(key, key.encode())
    assert await sos.keys("a/b") == ["a/b", "a/b/c", "a/bc"]
    assert await sos.keys("") == sorted(KEYS)
    root = Path(sos.root)
    (root / "zz").mkdir()
    (root / "ab" / "cd").mkdir(parents=True)
    (root / "ab" / "cd" / "not-sixty-hex").write_bytes(b"x")
    (root / "ab" / "cd" / ("0" * 60 + ".tmp")).write_bytes(b"x")
    (root / TMP_DIR / "stray").write_bytes(b"x")
    (root / "README").write_bytes(b"x")
    assert await sos.keys() == sorted(KEYS)
    assert (await sos.scrub())["checked"] == len(KEYS)


async def test_listing_while_processes_churn(forkserver: ForkServer, tmp_path: Path) -> None:
    """Two processes create and delete keys while this one lists: no error, only keys that can
    have existed, and every key that exists throughout is always listed."""
    root = tmp_path / "sos"
    store = SimpleObjectStore(root, durability="none")
    await store.start()
    stable = [f"stable/{i}" for i in range(20)]
    for key in stable:
        await store.store(key, b"s")
    universe = set(stable) | {f"churn{p}/{i}" for p in range(2) for i in range(30)}
    pids = [
        forkserver.spawn("churn", root=str(root), prefix=f"churn{p}", n=30, seconds=1.5)
        for p in range(2)
    ]
    for pid in pids:
        await asyncio.to_thread(forkserver.next, pid, "ready")
    rounds = 0
    seen_churn = 0
    while rounds < 200:
        listed = await store.keys()
        globbed = await store.list("churn0/*")
        assert set(listed) <= universe
        assert set(stable) <= set(listed)
        assert all(k.startswith("churn0/") for k in globbed)
        seen_churn += len(listed) - len(stable)
        rounds += 1
        if not _alive(pids):
            break
    done = [await asyncio.to_thread(forkserver.next, pid, "done", 20) for pid in pids]
    assert all(d["ops"] > 0 for d in done)
    assert rounds >= 3 and seen_churn > 0
    assert (await store.scrub())["corrupted"] == 0
    await store.close()


def _alive(pids: list[int]) -> bool:
    try:
        for pid in pids:
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
