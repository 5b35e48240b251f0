"""``ooo-storage serve`` as a real process, for the CLI tests: started, read, signalled, stopped.

Its log (stderr) is read line by line, so a test waits for what the server says it did (serving,
a reload) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving on (https?)://(\S+):(\d+)")


def serve_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "ooo_storage", "serve", "--memory-only", *argv]


def refused(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` expecting it to stop before serving; its exit status and output."""
    done = subprocess.run(serve_command("--port", "0", *argv), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "serving on" not in done.stderr, done.stderr
    return done


class Served:
    """``async with Served("--auth", path) as served:`` a server on a free port."""

    def __init__(self, *argv: str, port: int = 0) -> None:
        self.argv = serve_command("--port", str(port), *argv)
        self.log: list[str] = []
        self.scheme = "http"
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Served:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        found = await self.wait_for(SERVING.pattern)
        self.scheme, self.port = found.group(1), int(found.group(3))
        return self

    async def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The next log line matching ``pattern``; fails if the server exits or stays silent."""
        assert self.process is not None and self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.process.stderr.readline()
                assert raw, f"the server exited ({await self.process.wait()}): {self.log}"
                line = raw.decode()
                self.log.append(line)
                if found := re.search(pattern, line):
                    return found

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def stop(self) -> int:
        """SIGTERM, then the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest = await self.process.stderr.read() if self.process.stderr else b""
            self.log.extend(rest.decode().splitlines(keepends=True))
            return await self.process.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.stop()
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
