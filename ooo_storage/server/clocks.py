"""The clock streams on ``/`` (docs/protocol.md §5): their connections and the ticker that sends each
one the clock value every ``tick`` seconds."""

from __future__ import annotations

import asyncio

from ..protocol.clock import now
from ..protocol.frames import clock_frame
from .connection import Connection


class Clocks:
    """The connections of the clock stream; :meth:`start` and :meth:`stop` run its ticker."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.members: set[Connection] = set()
        self._ticker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def join(self, conn: Connection) -> None:
        """Add ``conn`` and queue its first frame at once (the ticker sends the next ones)."""
        self.members.add(conn)
        conn.send(clock_frame(now()))

    def leave(self, conn: Connection) -> None:
        self.members.discard(conn)

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if self.members:
                frame = clock_frame(now())
                for conn in list(self.members):
                    conn.send(frame)
