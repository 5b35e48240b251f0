"""Journal benchmark: append throughput beside raw sequential writes on the same disk.

    .venv/bin/python bench/journal.py [--rounds 5] [--seconds 0.5] [--dir DIR]
    .venv/bin/python bench/journal.py --history [--rounds 5] [--sets 2000] [--events 50000]

For items of 100 B and 4 KiB, in one process, on one filesystem (``--dir``, default the system
temp directory):

* ``raw write`` — ``os.write`` of each item to one file (no index, no CRC): the floor of any log;
* ``journal`` — ``await Journal.append(item)``, one item per call, no fsync (lock on, as shipped);
* ``journal no lock`` — the same with ``lock=False`` (one process owns the directory);
* ``journal x64`` — ``append(*64 items)``: one write of data and one of entries per 64 items;
* ``raw write+fsync`` — write then ``fsync`` per item, one writer;
* ``journal sync`` — ``sync=True``, one append in flight: each one waits for its own fsync;
* ``raw write+fsync /64`` — 64 writes, then one ``fsync``: the group commit bound;
* ``journal sync x64`` — ``sync=True``, 64 appends in flight (64 tasks): they share fsyncs
  through the group commit (the printed group size is appends per fsync round).

Each figure is the median of ``--rounds`` rounds, the cases interleaved within each round (the
machine is shared: medians of interleaved rounds resist one-off stalls). Every case appends for
about ``--seconds`` into a fresh directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not sys.flags.safe_path:  # a script: the checkout before site-packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.journal import Journal, JournalOptions
from ooo_storage.layered import HistoryOptions

SIZES = {"100 B": 100, "4 KiB": 4096}
GROUP = 64
Case = Callable[[Path, bytes, float], Awaitable[tuple[int, str]]]


async def raw_write(directory: Path, item: bytes, seconds: float) -> tuple[int, str]:
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    count, deadline = 0, time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            for _ in range(256):
                os.write(fd, item)
            count += 256
    finally:
        os.close(fd)
    return count, ""


def _raw_fsync(batch: int) -> Case:
    async def case(directory: Path, item: bytes, seconds: float) -> tuple[int, str]:
        fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        count, deadline = 0, time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                for _ in range(batch):
                    os.write(fd, item)
                os.fsync(fd)
                count += batch
        finally:
            os.close(fd)
        return count, ""

    return case


def _journal(sync: bool, batch: int = 1, tasks: int = 1, lock: bool = True) -> Case:
    async def case(directory: Path, item: bytes, seconds: float) -> tuple[int, str]:
        options = JournalOptions(sync=sync, max_file_size=256 << 20, max_files=64, lock=lock)
        async with Journal(directory, options) as journal:
            deadline = time.perf_counter() + seconds
            items = (item,) * batch

            async def writer() -> int:
                done = 0
                while time.perf_counter() < deadline:
                    for _ in range(1 if sync else 64):
                        await journal.append(*items)
                    done += batch * (1 if sync else 64)
                return done

            count = sum(await asyncio.gather(*(writer() for _ in range(tasks))))
            note = f"group {count / max(journal.commits, 1):.0f}" if sync else ""
        return count, note

    return case


CASES: dict[str, Case] = {
    "raw write": raw_write,
    "journal": _journal(sync=False),
    "journal no lock": _journal(sync=False, lock=False),
    f"journal x{GROUP}": _journal(sync=False, batch=GROUP),
    "raw write+fsync": _raw_fsync(1),
    "journal sync": _journal(sync=True),
    f"raw write+fsync /{GROUP}": _raw_fsync(GROUP),
    f"journal sync x{GROUP}": _journal(sync=True, tasks=GROUP),
}

BASELINE = {  # the raw case each journal case is compared with
    "journal": "raw write",
    "journal no lock": "raw write",
    f"journal x{GROUP}": "raw write",
    "journal sync": "raw write+fsync",
    f"journal sync x{GROUP}": f"raw write+fsync /{GROUP}",
}


async def measure(base: Path, rounds: int, seconds: float) -> dict[tuple[str, str], list[tuple[float, str]]]:
    results: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for _ in range(rounds):
        for size_name, size in SIZES.items():
            item = os.urandom(size)
            for name, case in CASES.items():
                directory = Path(tempfile.mkdtemp(dir=base))
                try:
                    start = time.perf_counter()
                    count, note = await case(directory, item, seconds)
                    elapsed = time.perf_counter() - start
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
                results.setdefault((size_name, name), []).append((count / elapsed, note))
    return results


def report(results: dict[tuple[str, str], list[tuple[float, str]]]) -> None:
    print("| item | case | appends/s | MB/s | vs raw | note |\n|---|---|---:|---:|---:|---|")
    for size_name, size in SIZES.items():
        medians = {name: statistics.median(r for r, _ in results[size_name, name]) for name in CASES}
        for name in CASES:
            rate = medians[name]
            ratio = f"{rate / medians[BASELINE[name]]:.2f}x" if name in BASELINE else ""
            notes = sorted(note for _, note in results[size_name, name] if note)
            note = notes[len(notes) // 2] if notes else ""
            print(f"| {size_name} | {name} | {rate:,.0f} | {rate * size / 1e6:,.1f} | {ratio} | {note} |")


# -- event history (issue 11): durable writes with and without it, and replay speed ----------------
# ``--history``: ``durable`` is LevelDBLayer(sync=True) with 64 tasks awaiting Layered.set, without
# and with a (durable) history; ``replay`` is list(store.replay(start)) (``_replay`` on older
# stores) over ``--events`` events. ``PYTHONPATH=<checkout> python -P bench/journal.py --history``
# measures another checkout's store.

TASKS = 64
PAYLOAD = b'{"name":"ana","age":30,"tags":["a","b"]}'


def _store(base: Path, sync: bool, history: bool) -> Layered:
    options = HistoryOptions(base / "history", max_bytes=256 << 20) if history else None
    return Layered(MemoryLayer(), LevelDBLayer(base / "db", sync=sync), history=options)


async def durable(base: Path, sets: int, history: bool) -> float:
    """Durable writes/s with ``TASKS`` writers."""
    store = _store(base, True, history)
    await store.start()
    per = sets // TASKS

    async def writer(n: int) -> None:
        for i in range(per):
            await store.set(f"w/{n}/{i}", PAYLOAD)

    start = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(TASKS)))
    elapsed = time.perf_counter() - start
    await store.close()
    return per * TASKS / elapsed


async def replay(base: Path, events: int) -> float:
    """Events read back from the history per second."""
    store = _store(base, False, True)
    await store.start()
    first = store.revision
    for i in range(events):
        await store.set(f"r/{i % 1000}", PAYLOAD)
    read: Any = getattr(store, "replay", None) or (lambda since: store._replay(since, store.revision))
    start = time.perf_counter()
    got = sum(1 for _ in read(first))
    elapsed = time.perf_counter() - start
    await store.close()
    assert got == events, (got, events)
    return got / elapsed


async def measure_history(base: Path, rounds: int, sets: int, events: int) -> dict[str, list[float]]:
    cases = {
        "durable set, no history (writes/s)": lambda d: durable(d, sets, False),
        "durable set, durable history (writes/s)": lambda d: durable(d, sets, True),
        "replay (events/s)": lambda d: replay(d, events),
    }
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, case in cases.items():
            directory = Path(tempfile.mkdtemp(dir=base))
            try:
                results.setdefault(name, []).append(await case(directory))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return results



def report_history(results: dict[str, list[float]]) -> None:
    print("| case | median | min | max |\n|---|---:|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {min(values):,.0f} | {max(values):,.0f} |")
    plain, kept = (results[f"durable set, {what} (writes/s)"] for what in ("no history", "durable history"))
    # Each round's two cases ran back to back: their ratio is steadier than the medians' on a
    # loaded machine.
    ratios = [a / b for a, b in zip(plain, kept, strict=True)]
    print(f"\ncost of a durable history on durable sets: {statistics.median(ratios):.2f}x slower "
          f"(median of the rounds' ratios; {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--history", action="store_true", help="the event history cases instead")
    parser.add_argument("--sets", type=int, default=2000, help="--history: durable sets per case")
    parser.add_argument("--events", type=int, default=50000, help="--history: events replayed")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir))
    try:
        if args.history:
            import ooo_storage

            print(f"store from {Path(ooo_storage.__file__).parent}\n")
            report_history(asyncio.run(measure_history(base, args.rounds, args.sets, args.events)))
        else:
            report(asyncio.run(measure(base, args.rounds, args.seconds)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    per_case = f"{args.sets} sets, {args.events} events" if args.history else f"{args.seconds} s per case"
    print(f"\n{os.cpu_count()} CPUs, {args.rounds} interleaved rounds (medians), {per_case}, in {args.dir}")


if __name__ == "__main__":
    main()
