"""Processes sharing a journal directory: two writers append (with the file lock) while this
process follows; it sees every item exactly once, in each writer's order."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from ooo_storage.journal import Journal, SegmentLog

CHILD = Path(__file__).with_name("journal_child.py")
COUNT = 400


@pytest.mark.parametrize("indexer", ["auto", "poll"])
async def test_two_writers_and_a_tailer(tmp_path: Path, indexer: str) -> None:
    async with Journal(
        tmp_path, max_file_size=64 << 10, max_files=1000, indexer=indexer, indexer_rate=0.02
    ) as journal:
        writers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                "append",
                str(tmp_path),
                str(writer),
                str(COUNT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            for writer in (1, 2)
        ]
        for writer in writers:
            assert writer.stdout is not None
            assert await writer.stdout.readline() == b"READY\n"
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write(b"go\n")
        seen: dict[int, list[int]] = {1: [], 2: []}
        indexes = []
        order = []

        async def tail() -> None:
            async for index, item in journal.follow(0):
                writer, seq = item[1:].split(b":")
                seen[int(writer)].append(int(seq))
                order.append(int(writer))
                indexes.append(index)
                if len(indexes) == 2 * COUNT:
                    return

        await asyncio.wait_for(tail(), 30)
        for writer in writers:
            out, _ = await writer.communicate()
            assert out == b"DONE\n" and writer.returncode == 0
        assert seen == {1: list(range(COUNT)), 2: list(range(COUNT))}
        assert indexes == list(range(2 * COUNT))
        assert len(journal.log.segments) > 1  # they rotated segments under each other
        assert sum(a != b for a, b in zip(order, order[1:], strict=False)) > 2  # they did interleave
    with SegmentLog(tmp_path) as log:
        assert log.length == 2 * COUNT
