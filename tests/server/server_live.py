"""Helpers of the server tests: a running server with an HTTP session, frame readers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest

from ooo_storage import Layered
from ooo_storage.server import Server, ServerRunner

ENGINES = ("lean", "aiohttp")
"""The HTTP engines a server test runs on (here, not in conftest: ``from conftest import`` picks
whichever directory's conftest was imported first)."""


class Live:
    """A running server plus an HTTP session pointed at it."""

    def __init__(
        self, store: Layered, server: Server, runner: ServerRunner, session: aiohttp.ClientSession
    ) -> None:
        self.store = store
        self.server = server
        self.runner = runner
        self.http = session
        self.base = runner.url
        self.ws_base = runner.url.replace("http://", "ws://")

    def url(self, key: str) -> str:
        return f"{self.base}/{key}"

    async def request(self, method: str, key: str, body: Any = None, **kw: Any) -> tuple[int, bytes]:
        data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        async with self.http.request(method, self.url(key), data=data, **kw) as resp:
            return resp.status, await resp.read()

    async def get(self, key: str) -> Any:
        status, body = await self.request("GET", key)
        assert status == 200, body
        return orjson.loads(body)

    async def ws(self, key: str, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.http.ws_connect(f"{self.ws_base}/{key}", **kw)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    return orjson.loads(msg.data)


async def no_frame(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=wait)
        raise AssertionError(f"unexpected frame {msg}")


class Follower:
    """Keeps a subscriber's state the way a client does: snapshots replace, patches apply."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.state: Any = None
        self.version = ""
        self.frames: list[dict[str, Any]] = []
        self.raw: list[bytes] = []

    async def step(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        self.raw.append(msg.data)
        frame = orjson.loads(msg.data)
        self.frames.append(orjson.loads(msg.data))
        if frame["snapshot"]:
            self.state = frame["data"]
        else:
            self.state = jsonpatch.JsonPatch(frame["data"]).apply(self.state, in_place=True)
        self.version = frame["version"]
        return frame

    async def until(self, expected: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.state != expected:
                await self.step(timeout)


LiveFactory = Callable[..., Awaitable[Live]]

