"""``python -m ooo_storage serve``: serves, persists to LevelDB, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp

from ooo_storage.cli import build_parser


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.data, args.memory_only) == ("127.0.0.1", 8800, "./data", False)
    assert args.loop == "auto" and args.sync is False
    assert args.max_body_bytes == 10 * 1024 * 1024 and args.allowed_origins == []
    args = build_parser().parse_args(
        ["serve", "--allowed-origin", "http://a", "--allowed-origin", "http://b", "--static"]
    )
    assert args.allowed_origins == ["http://a", "http://b"] and args.static


async def _serve_once(data: Path, body: bytes | None) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ooo_storage",
        "serve",
        "--port",
        "0",
        "--data",
        str(data),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while not (found := re.search(rb"serving on http://[\d.]+:(\d+)", await proc.stderr.readline())):
                pass
        url = f"http://127.0.0.1:{int(found.group(1))}/cli/key"
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url.replace("http", "ws"))
            await ws.receive(timeout=5)
            if body is not None:
                async with http.post(url, data=body) as resp:
                    assert resp.status == 200
                await ws.receive(timeout=5)
            async with http.get(url) as resp:
                got = await resp.read()
            proc.send_signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        return got
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_persists_and_stops_cleanly(tmp_path: Path) -> None:
    first = await _serve_once(tmp_path / "db", b'{"kept":true}')
    assert b'"kept":true' in first
    # the database was closed cleanly: a second server opens it and still has the key
    assert await _serve_once(tmp_path / "db", None) == first
