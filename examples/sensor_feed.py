"""A live sensor feed: an ooo-storage server, sensors writing to it, and a dashboard following it.

    python examples/sensor_feed.py                       # embedded server, 20 readings per sensor
    python examples/sensor_feed.py --readings 100 --interval 0.2
    python examples/sensor_feed.py --url http://127.0.0.1:8800   # use a running `ooo-storage serve`

Each sensor, once per interval, overwrites its latest reading at ``sensors/<name>`` and appends it
to its history with a push to ``history/<name>/*``. The dashboard subscribes to ``sensors/*`` (one
websocket; the server sends a JSON patch per change and the client keeps the full list) and prints a
line per update; when every sensor has sent its last reading it reads each history over REST and
exits. With ``--data DIR`` the embedded server also persists to LevelDB, so a second run starts
with the previous run's history.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.client import Client, Entry
from ooo_storage.server import create_app

SENSORS = {"attic": 24.0, "cellar": 12.0, "greenhouse": 21.0}  # name -> starting temperature


@asynccontextmanager
async def embedded_server(data: str | None) -> AsyncIterator[str]:
    """Run the server in this process on a free 127.0.0.1 port; yield its base URL."""
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(data) if data else None)
    async with store:
        runner = web.AppRunner(create_app(store), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()


async def sensor(client: Client, name: str, readings: int, interval: float) -> None:
    """Publish ``readings`` temperatures as a random walk from the sensor's starting value."""
    rng = random.Random(name)
    temperature = SENSORS[name]
    for seq in range(1, readings + 1):
        temperature = round(temperature + rng.uniform(-0.5, 0.5), 2)
        reading = {"seq": seq, "celsius": temperature}
        await client.set(f"sensors/{name}", reading)
        await client.push(f"history/{name}/*", reading)
        await asyncio.sleep(interval)


def render(state: list[Entry]) -> str:
    by_name = {entry["index"]: entry["data"] for entry in state}
    return "  ".join(
        f"{name}={by_name[name]['celsius']:.2f}C(#{by_name[name]['seq']})" if name in by_name
        else f"{name}=?" for name in sorted(SENSORS)
    )


async def dashboard(client: Client, readings: int, ready: asyncio.Event) -> None:
    """Print the latest readings after every change, until every sensor has sent its last one."""
    async with client.subscribe("sensors/*") as feed:
        async for state in feed:
            ready.set()  # the subscription is live: nothing written from now on can be missed
            print("dashboard:", render(state), flush=True)
            if len(state) == len(SENSORS) and all(e["data"]["seq"] == readings for e in state):
                return


@asynccontextmanager
async def server_url(args: argparse.Namespace) -> AsyncIterator[str]:
    if args.url:
        yield args.url
    else:
        async with embedded_server(args.data) as url:
            yield url


async def main(args: argparse.Namespace) -> None:
    async with server_url(args) as url, Client(url) as client:
        print(f"server: {url}", flush=True)
        await client.delete("sensors/*")  # start the dashboard from a clean slate
        ready = asyncio.Event()
        watcher = asyncio.create_task(dashboard(client, args.readings, ready))
        await asyncio.wait_for(ready.wait(), args.timeout)
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(
                watcher, *(sensor(client, name, args.readings, args.interval) for name in SENSORS)
            )
        for name in sorted(SENSORS):
            history = await client.get(f"history/{name}/*")
            assert isinstance(history, list)
            print(f"history: {name} has {len(history)} readings, newest #{history[0]['data']['seq']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="use this server instead of an embedded one")
    parser.add_argument("--data", help="LevelDB directory for the embedded server (default: memory)")
    parser.add_argument("--readings", type=int, default=20, help="readings per sensor")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between readings")
    parser.add_argument("--timeout", type=float, default=60, help="give up after this many seconds")
    asyncio.run(main(parser.parse_args()))
