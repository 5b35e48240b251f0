"""Servers for the CLI tests.

:class:`Served` is ``ooo-storage serve`` as a real process: started, read, signalled, stopped. Its
log (stderr) is read line by line, so a test waits for what the server says it did (serving, a
reload) instead of sleeping. :class:`Background` is a server on its own event loop in a thread, for
the client commands, which call ``asyncio.run`` themselves.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from ooo_storage import Layered, MemoryLayer
from ooo_storage.server import ServerRunner

T = TypeVar("T")

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


class Background:
    """A server on its own event loop in a thread, which a test can stop and start again;
    ``options`` are the server's (``auth=policy`` ...)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = self.call(self._open_store())
        self.runner: ServerRunner | None = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @staticmethod
    async def _open_store() -> Layered:
        store = Layered(memory=MemoryLayer())
        await store.start()
        return store

    def start(self) -> str:
        """Serve (again, on the same port once it has one) and return the URL."""
        self.runner = ServerRunner(self.store, port=self.port, **self.options)
        self.port = self.call(self.runner.start())
        return self.runner.url

    def stop(self) -> None:
        if self.runner is not None:
            self.call(self.runner.stop())
            self.runner = None

    def close(self) -> None:
        self.stop()
        self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Lines:
    """The lines of a child's pipe, read by a thread so that a test waits with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)

    def next(self) -> str:
        try:
            return self.queue.get(timeout=10)
        except queue.Empty:
            raise AssertionError("no line within 10 s") from None
