"""LevelDB sync mode: group commit coalesces concurrent writes, fails whole batches, survives kill -9."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import plyvel
import pytest

from ooo_storage import Event, Layered, LevelDBLayer, MemoryLayer, NotFound, Object, StorageUnavailable


async def test_concurrent_writes_share_batches(tmp_path: Path) -> None:
    layer = LevelDBLayer(tmp_path / "db", sync=True)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    await asyncio.gather(*(store.set(f"c/{i}", {"i": i}) for i in range(64)))
    assert 1 <= layer.commits < 64 // 4  # 64 writers, a handful of fsyncs
    await asyncio.gather(*(store.delete(f"c/{i}") for i in range(0, 64, 2)))
    await store.delete("c/*1")
    await store.close()
    db = plyvel.DB(str(tmp_path / "db"))
    survivors = sorted(k.decode() for k in db.iterator(include_value=False))
    db.close()
    assert survivors == sorted(f"c/{i}" for i in range(1, 64, 2) if not str(i).endswith("1"))


class BrokenBatch(LevelDBLayer):
    fail = False

    def _write_group(self, group):  # type: ignore[no-untyped-def]
        if self.fail:
            raise OSError(5, "Input/output error")
        super()._write_group(group)


async def test_failed_batch_fails_every_write_and_changes_nothing(tmp_path: Path) -> None:
    layer = BrokenBatch(tmp_path / "db", sync=True)
    store = Layered(memory=MemoryLayer(), embedded=layer)
    await store.start()
    events: list[Event] = []
    store.watch(events.append)
    await store.set("keep", 1)
    layer.fail = True
    results = await asyncio.gather(*(store.set(f"f/{i}", i) for i in range(16)), store.set("keep", 2),
                                   return_exceptions=True)
    assert all(isinstance(r, StorageUnavailable) and "durable write failed" in str(r) for r in results)
    assert (await store.get("keep")).value == 1
    for i in range(16):
        with pytest.raises(NotFound):
            await store.get(f"f/{i}")
    await store._chan.drain()  # type: ignore[union-attr]
    assert [e.key for e in events] == ["keep"]
    layer.fail = False
    await store.set("keep", 3)
    await store.close()
    again = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(tmp_path / "db"))
    await again.start()
    assert await again.keys() == ["keep"] and (await again.get("keep")).value == 3
    await again.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer

    async def main(path, round_):
        store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(path, sync=True))
        await store.start()
        print("ready", flush=True)

        async def writer(w):
            seq = 0
            while True:
                key = f"r{round_}/w{w}/{seq}"
                await store.set(key, {"w": w, "seq": seq, "pad": "x" * (seq % 50)})
                sys.stdout.write(f"{key}\\n")
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(64)))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """A writer process with 64 concurrent tasks is SIGKILLed at random moments, 20 times; every
    write it acknowledged (printed after ``set`` returned) is then readable with its exact data."""
    path = str(tmp_path / "db")
    rng = random.Random(20261122)
    total_acked = 0
    for round_ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, str(round_)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # Let it write for a random number of acknowledgements, then kill it mid-flight.
        target = rng.randint(1, 400)
        acked: list[str] = []
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= target:
                break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acked.extend(k for k in rest.splitlines()[:-1])  # the last line may be torn
        acked = [k for k in acked if k.count("/") == 2]
        total_acked += len(acked)

        db = plyvel.DB(path)
        try:
            for key in acked:
                raw = db.get(key.encode())
                assert raw is not None, f"acknowledged write {key} lost in round {round_}"
                obj = Object.from_json(raw)
                w, seq = int(key.split("/")[1][1:]), int(key.split("/")[2])
                assert obj.value == {"w": w, "seq": seq, "pad": "x" * (seq % 50)} and obj.path == key
        finally:
            db.close()
    assert total_acked >= 20
