"""Websocket subscribers of bench/redis_nodes.py in a process of their own (uvloop): several of
these share the 1 000 subscribers so that the instrument is not one Python core that the nodes
wait for.

    python bench/_redis_subs.py PATH PORT:COUNT[:far] ...

Each ``PORT:COUNT`` opens COUNT subscribers of PATH on that node; ``far`` marks the nodes whose
frames count for the cross-node latency. Once every subscriber has its first frame (the snapshot)
it prints ``ready``. Then it reads commands on stdin, one a line:

- ``reach N``: print ``reached <time>`` once every subscriber has N frames, ``<time>`` then by
  ``time.perf_counter()`` (CLOCK_MONOTONIC: the same clock as the parent's);
- ``dump``: print, as one JSON line, ``{"far": [[arrival times of each far subscriber's frames]],
  "frames": the frames of all subscribers, "cpu": this process's CPU seconds}``, then exit.

bench/ws_sink.c is the same instrument in C (a few microseconds per delivery instead of 10-13).
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from pathlib import Path

import orjson
import uvloop

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import HOST, FrameCounter, Subscriber  # noqa: E402


class Arrivals(FrameCounter):
    """Counts frames over all subscribers and keeps the arrival times of one subscriber's."""

    def __init__(self, total: FrameCounter, keep: bool) -> None:
        super().__init__()
        self.total = total
        self.times: list[float] | None = [] if keep else None

    def add(self, size: int) -> None:
        if self.times is not None:
            self.times.append(time.perf_counter())
        self.total.add(size)


class Sub(Subscriber):
    """bench/_load.py's Subscriber on uvloop (whose transports are not asyncio.Transport)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]


async def main(path: str, nodes: list[str]) -> None:
    total = FrameCounter()
    loop = asyncio.get_running_loop()
    subscribers: list[Arrivals] = []
    for spec in nodes:
        port, count, *far = spec.split(":")
        for first in range(0, int(count), 100):  # a listen backlog is finite
            batch = [Arrivals(total, bool(far)) for _ in range(min(100, int(count) - first))]
            await asyncio.gather(*(
                loop.create_connection(partial(Sub, HOST, int(port), path, a), HOST, int(port))
                for a in batch
            ))
            subscribers += batch
    await total.wait_for(len(subscribers), 60)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "reach":
            await total.wait_for(len(subscribers) * int(line[1]), 120)
            print(f"reached {time.perf_counter()!r}", flush=True)
        elif line[0] == "dump":
            times = [a.times for a in subscribers if a.times is not None]
            dumped = {"far": times, "frames": total.frames, "cpu": time.process_time()}
            print(orjson.dumps(dumped).decode(), flush=True)
            return


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2:]))
