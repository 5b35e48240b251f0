"""Child processes of the journal tests (run as ``python journal_child.py ROLE DIR ...``).

- ``crash DIR ROUND``: appends self-checking items with ``sync=True`` (single appends, batches and
  concurrent appends that share an fsync) until killed, printing ``ACK <index> <seq>`` for each
  item once its append has returned.
- ``append DIR WRITER COUNT``: prints ``READY``, waits for a line on stdin, appends
  ``W<writer>:<seq>`` items (with the file lock) in small paced batches, then prints ``DONE``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, before site-packages

from ooo_storage.journal import Journal  # noqa: E402


def crash_item(round_: int, seq: int) -> bytes:
    """An item that proves itself whole: a header, then ``seq % 700`` copies of one byte."""
    return b"R%d:S%d:" % (round_, seq) + bytes([seq * 7 % 256]) * (seq % 700)


def parse_crash_item(item: bytes) -> tuple[int, int]:
    """``(round, seq)`` of an item made by :func:`crash_item`; AssertionError if it is not whole."""
    round_part, seq_part, pad = item.split(b":", 2)
    round_, seq = int(round_part[1:]), int(seq_part[1:])
    assert pad == bytes([seq * 7 % 256]) * (seq % 700), (round_, seq, len(pad))
    return round_, seq


async def crash(directory: str, round_: int) -> None:
    async with Journal(directory, sync=True, max_file_size=256 << 10, max_files=64) as journal:
        seq = 0
        while True:
            items = [crash_item(round_, seq + k) for k in range(seq % 4 + 1)]
            if seq % 3 == 0:  # concurrent appends: one fsync for the group
                firsts = await asyncio.gather(*(journal.append(item) for item in items))
            else:
                first = await journal.append(*items)
                firsts = [first + k for k in range(len(items))]
            print("\n".join(f"ACK {index} {seq + k}" for k, index in enumerate(firsts)), flush=True)
            seq += len(items)


async def append(directory: str, writer: int, count: int) -> None:
    async with Journal(directory, max_file_size=8 << 10, max_files=1000) as journal:
        print("READY", flush=True)
        sys.stdin.readline()  # both writers start together
        for seq in range(0, count, 5):
            await journal.append(*(b"W%d:%d" % (writer, s) for s in range(seq, min(count, seq + 5))))
            await asyncio.sleep(0.001)  # pacing, so that the two writers interleave
    print("DONE", flush=True)


if __name__ == "__main__":
    role, directory, *args = sys.argv[1:]
    if role == "crash":
        asyncio.run(crash(directory, int(args[0])))
    else:
        asyncio.run(append(directory, int(args[0]), int(args[1])))
