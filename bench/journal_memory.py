"""Bounded memory and bounded files of ``ooo_storage.journal`` at 1 GiB (issue 11, "How it is checked").

    .venv/bin/python bench/journal_memory.py [--gib 1.75] [--dir /tmp]

1. Writes ``--gib`` GiB of items (4 KiB to 2 MiB, mixed) into a journal bounded at 12 segments of
   128 MiB (``when_full="evict"``, ``max_chunk`` = 8 MiB), measuring the directory after every
   batch: it must never exceed ``max_files * max_file_size`` (1.5 GiB), so the oldest segments are
   evicted and about 1.4 GiB stay.
2. Reads all of it in a fresh child process each, three ways: ``SegmentLog.scan()``,
   ``Journal.follow()`` from the oldest item to the newest, and only opening it. Each child reports
   its RSS after the imports and its peak RSS (``VmHWM``), both from /proc/self/status, and checks
   the CRC-32C of everything it read against the writer's. The target: the read adds about
   ``max_chunk`` (8 MiB) to the process, not the journal's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import google_crc32c

sys.path[0] = str(Path(__file__).resolve().parents[1])

from ooo_storage.journal import Journal, JournalOptions, SegmentLog  # noqa: E402

MiB = 1 << 20
OPTIONS = JournalOptions(max_files=12, max_file_size=128 * MiB, max_chunk=8 * MiB, when_full="evict")
SIZES = [4 << 10, 64 << 10, 256 << 10, 2 * MiB, 16 << 10, 1 * MiB]


def item(n: int) -> bytes:
    return bytes([n % 251]) * SIZES[n % len(SIZES)]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.suffix in (".dat", ".idx"))


def write(directory: Path, total: int) -> dict[str, float]:
    """Append ``total`` bytes of items in batches of 8; the largest directory size seen."""
    largest = 0
    written = 0
    n = 0
    started = time.perf_counter()
    with SegmentLog(directory, OPTIONS) as log:
        while written < total:
            batch = [item(n + k) for k in range(8)]
            log.append(*batch)
            n += len(batch)
            written += sum(map(len, batch))
            largest = max(largest, on_disk(directory))
        oldest, newest, length = log.oldest, log.newest, log.length
        crc = 0
        for index in range(oldest or 0, (newest or -1) + 1):
            crc = google_crc32c.extend(crc, item(index))
    return {
        "written_mib": written / MiB,
        "seconds": time.perf_counter() - started,
        "largest_mib": largest / MiB,
        "bound_mib": OPTIONS.max_files * OPTIONS.max_file_size / MiB,
        "kept_mib": on_disk(directory) / MiB,
        "items": length,
        "oldest": oldest or 0,
        "newest": newest or 0,
        "crc": crc,
    }


def child(mode: str, directory: Path) -> None:
    """One read in this fresh process; prints a JSON line."""
    base_rss = _status("VmRSS")
    crc = 0
    read = 0
    started = time.perf_counter()
    if mode == "scan":
        with SegmentLog(directory, OPTIONS) as log:
            for _, data in log.scan():
                crc = google_crc32c.extend(crc, data)
                read += len(data)
    elif mode == "follow":

        async def follow() -> None:
            nonlocal crc, read
            async with Journal(directory, OPTIONS) as journal:
                newest = journal.newest
                async for index, data in journal.follow(journal.oldest):
                    crc = google_crc32c.extend(crc, data)
                    read += len(data)
                    if index == newest:
                        return

        asyncio.run(follow())
    else:
        SegmentLog(directory, OPTIONS).close()
    print(json.dumps({
        "mode": mode, "rss_base_mib": base_rss / 1024, "rss_peak_mib": _status("VmHWM") / 1024,
        "read_mib": read / MiB, "seconds": time.perf_counter() - started, "crc": crc,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.75)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", choices=["scan", "follow", "open"])
    parser.add_argument("--journal", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.journal)
        return
    directory = Path(tempfile.mkdtemp(prefix="ooo-bench-journal-", dir=args.dir))
    try:
        written = write(directory, int(args.gib * (1 << 30)))
        print(json.dumps(written), flush=True)
        assert written["largest_mib"] <= written["bound_mib"], "the journal outgrew its bound"
        for mode in ("open", "scan", "follow", "scan", "follow"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--journal", str(directory)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            result = json.loads(out)
            if mode != "open":
                assert result["crc"] == written["crc"], f"{mode}: the items read back differ"
            result["added_mib"] = result["rss_peak_mib"] - result["rss_base_mib"]
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
