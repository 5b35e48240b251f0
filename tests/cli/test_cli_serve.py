"""``python -m ooo_storage serve``: serves, persists to LevelDB, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from ooo_storage.cli import build_parser
from ooo_storage.cli.serve import _LIMITS, _limits
from ooo_storage.server import ServerConfig


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.data, args.memory_only) == ("127.0.0.1", 8800, "./data", False)
    assert args.loop == "auto" and args.sync is False
    assert args.max_body_bytes == 10 * 1024 * 1024 and args.allowed_origins == []
    assert args.allowed_hosts == [] and _limits(args) == {}  # ServerConfig's defaults apply
    args = build_parser().parse_args(
        ["serve", "--allowed-origin", "http://a", "--allowed-origin", "http://b", "--static"]
    )
    assert args.allowed_origins == ["http://a", "http://b"] and args.static


def test_parser_passes_limits_as_config_fields() -> None:
    args = build_parser().parse_args(
        ["serve", "--port", "0", "--max-connections", "50", "--header-timeout", "2.5", "--body-timeout", "7",
         "--keepalive-timeout", "30", "--max-head-bytes", "16384", "--max-line-size", "4096",
         "--max-field-size", "4096", "--max-headers", "20", "--allowed-host", "db.lan:8800",
         "--allowed-host", "*", "--allowed-origin", "*"]
    )
    limits = _limits(args)
    assert limits == {"max_connections": 50, "header_timeout": 2.5, "body_timeout": 7.0,
                      "keepalive_timeout": 30.0, "max_head_bytes": 16384, "max_line_size": 4096,
                      "max_field_size": 4096, "max_headers": 20}
    assert ServerConfig(**limits).max_headers == 20
    assert args.port == 0 and args.allowed_hosts == ["db.lan:8800", "*"] and args.allowed_origins == ["*"]


def test_help_states_the_config_defaults() -> None:
    config = ServerConfig()
    for flag, _, _, text in _LIMITS:
        value = getattr(config, flag[2:].replace("-", "_"))
        if value is not None:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert f"(default {shown})" in text, flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "99999 is not a TCP port: 0..65535"),
        (["--port", "-1"], "-1 is not a TCP port"),
        (["--port", "http"], "'http' is not an integer"),
        (["--max-body-bytes", "0"], "0 must be a positive integer"),
        (["--max-connections", "-5"], "-5 must be a positive integer"),
        (["--max-head-bytes", "1.5"], "'1.5' is not an integer"),
        (["--header-timeout", "0"], "0 must be a positive, finite number of seconds"),
        (["--body-timeout", "-1"], "must be a positive, finite number of seconds"),
        (["--keepalive-timeout", "inf"], "must be a positive, finite number of seconds"),
        (["--header-timeout", "nan"], "must be a positive, finite number of seconds"),
        (["--body-timeout", "soon"], "'soon' is not a number of seconds"),
        (["--max-headers", "0"], "must be a positive integer"),
        (["--allowed-origin", "evil.example"], "an origin is scheme://host[:port]"),
        (["--allowed-origin", "http://a.example/app"], "without a path"),
        (["--allowed-host", "http://db.lan"], "not a host[:port]"),
    ],
)
def test_bad_serve_options_are_argparse_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_with_a_bad_port_exits_2_without_serving() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ooo_storage", "serve", "--port", "99999", "--memory-only"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "argument --port: 99999 is not a TCP port: 0..65535 (0 picks a free one)" in done.stderr
    assert "serving on" not in done.stderr


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
            while not (found := re.search(rb"serving on http://[\d.]+:(\d+)", line := await proc.stderr.readline())):
                assert line, f"serve exited before serving (exit code {await proc.wait()})"
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


async def test_serve_passes_origin_and_limit_options_to_the_server(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--memory-only",
        "--max-connections", "7", "--allowed-host", "db.lan", "--allowed-origin", "http://app.example",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        log = b""
        async with asyncio.timeout(20):
            while not (found := re.search(rb"serving on http://[\d.]+:(\d+)", log)):
                line = await proc.stderr.readline()
                assert line, log
                log += line
        assert b"accepting at most 7 connections (--max-connections)" in log
        port = int(found.group(1))
        url = f"http://127.0.0.1:{port}/k"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=b"1", headers={"Host": f"db.lan:{port}"}) as resp:
                assert resp.status == 200
            async with http.post(url, data=b"2", headers={"Host": f"other.lan:{port}"}) as resp:
                assert resp.status == 403
            async with http.get(url, headers={"Origin": "http://app.example"}) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            async with http.get(url, headers={"Origin": "http://evil.example"}) as resp:
                assert resp.status == 403
    finally:
        proc.terminate()
        await proc.wait()
