"""A real ``ooo-storage serve`` process for tests that need one (crash, restart, shared
directories): started on a free port, its port read from its log."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path


async def serve_process(*argv: str, cwd: Path | None = None) -> tuple[asyncio.subprocess.Process, int]:
    """``python -m ooo_storage serve --port 0 ARGV`` as a real process (its stderr piped: the log),
    run in ``cwd``, and the port it serves on once it says so."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ooo_storage", "serve", "--port", "0", *argv,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await proc.stderr.readline()
            assert line, "serve exited before serving"
            if found := re.search(rb"serving on http://[\d.]+:(\d+)", line):
                return proc, int(found.group(1))
