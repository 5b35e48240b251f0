"""Servers under test for the benchmarks, each run in its own process by bench/_load.py.

``python -m bench._load_targets MODE [--data DIR]`` (from the repository root) listens on
127.0.0.1, an OS-chosen port, prints ``READY <port>`` and serves until SIGTERM. Modes:

- ``ws-baseline``: bare aiohttp websocket broadcast. Every connection gets one pre-encoded 150 B
  binary frame on connect; ``POST /<anything>`` sends that frame to every connection.
- ``http-baseline``: bare aiohttp ``POST /<key>`` handler doing the same plyvel put as our LevelDB
  layer (no validation, no metadata, no events) and answering ``{"index": ...}``.
- ``ooo``: ooo-storage's own server (``create_app``) over a memory layer, plus a LevelDB layer when
  ``--data`` is given (the configuration of ``ooo-storage serve --data DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiohttp import web

# A frame shaped like a real list patch, padded to exactly 150 bytes.
_FRAME_HEAD = b'{"snapshot":false,"version":"1f","data":[{"op":"replace","path":"/0","value":{"n":"'
FRAME = _FRAME_HEAD + b"x" * (150 - len(_FRAME_HEAD) - len(b'"}}]}')) + b'"}}]}'
assert len(FRAME) == 150


async def ws_baseline(stack: AsyncExitStack, data: str | None) -> web.Application:
    clients: set[web.WebSocketResponse] = set()

    async def subscribe(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        clients.add(ws)
        try:
            await ws.send_bytes(FRAME)
            async for _ in ws:
                pass
        finally:
            clients.discard(ws)
        return ws

    async def broadcast(request: web.Request) -> web.Response:
        await request.read()
        for ws in list(clients):
            await ws.send_bytes(FRAME)
        return web.json_response({"index": "1"})

    app = web.Application()
    app.router.add_get("/{key:.*}", subscribe)
    app.router.add_post("/{key:.*}", broadcast)
    return app


async def http_baseline(stack: AsyncExitStack, data: str | None) -> web.Application:
    import plyvel

    if data is None:
        raise SystemExit("http-baseline needs --data")
    db = plyvel.DB(data, create_if_missing=True)
    stack.callback(db.close)

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        db.put(key.encode(), await request.read())
        return web.Response(body=b'{"index":"%s"}' % key.rpartition("/")[2].encode(),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/{key:.*}", put)
    return app


async def ooo(stack: AsyncExitStack, data: str | None) -> web.Application:
    from ooo_storage import Layered, LevelDBLayer, MemoryLayer
    from ooo_storage.server import create_app

    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(data) if data else None)
    await stack.enter_async_context(store)
    return create_app(store)


MODES: dict[str, Callable[[AsyncExitStack, str | None], Awaitable[web.Application]]] = {
    "ws-baseline": ws_baseline,
    "http-baseline": http_baseline,
    "ooo": ooo,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--data", help="LevelDB directory")
    args = parser.parse_args()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    async with AsyncExitStack() as stack:
        app = await MODES[args.mode](stack, args.data)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"READY {port}", flush=True)
        await stopping.wait()


if __name__ == "__main__":
    asyncio.run(main())
