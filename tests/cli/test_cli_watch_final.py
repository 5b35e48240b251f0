"""``ooo-storage watch`` stops, saying why and what to do, where reconnecting cannot help: a frame
above ``--max-frame-bytes``, a glob the server refuses to hold. It used to reconnect forever with
an empty stdout, making the server build the glob again on every attempt."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_served import Background

from ooo_storage.cli.client import add_parsers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[Background]:
    server = Background(max_subscription_items=5)
    server.start()
    for i in range(6):
        server.call(server.store.set(f"six/{i}", i))
    server.call(server.store.set("big", {"pad": "x" * 2000}))
    yield server
    server.close()


def url(server: Background) -> str:
    assert server.runner is not None
    return server.runner.url


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ooo-storage")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_a_frame_above_max_frame_bytes_exits_1_naming_the_flag(
    server: Background, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("watch", "--max-frame-bytes", "1000", url(server), "big") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lost, error = captured.err.splitlines()
    size = int(lost.split("Message size ")[1].split()[0])
    assert size > 2000
    assert lost == f"ooo-storage: big: disconnected (close 1009: Message size {size} exceeds limit 1000); "\
                  "not reconnecting"
    assert error == (f"ooo-storage: frame too large: big: the server sent a frame of {size} bytes, over "
                     "the limit of 1000 bytes: give --max-frame-bytes N above it (0 = no limit)")


@pytest.mark.parametrize("limit", ["100000", "0"])
def test_max_frame_bytes_raises_the_limit(
    server: Background, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    assert run("watch", "--full", "--max-frame-bytes", limit, "--count", "1", url(server), "big") == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["data"] == {"pad": "x" * 2000} and captured.err == ""


@pytest.mark.parametrize(("limit", "message"), [("-1", "-1 is not a number of bytes (0 = no limit)"),
                                                ("lots", "'lots' is not an integer")])
def test_a_bad_max_frame_bytes_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], limit: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run("watch", "--max-frame-bytes", limit, "http://127.0.0.1:9", "k")
    assert exit_.value.code == 2
    assert f"argument --max-frame-bytes: {message}" in capsys.readouterr().err


def test_a_glob_the_server_refuses_to_hold_exits_1_with_its_reason(server: Background) -> None:
    """Run as a real process, which must end by itself (it used to retry forever)."""
    done = subprocess.run([sys.executable, "-m", "ooo_storage", "watch", url(server), "six/*"],
                          cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stdout) == (1, "")
    lost, error = done.stderr.splitlines()
    assert lost.startswith("ooo-storage: six/*: disconnected (close ")
    assert lost.endswith("; not reconnecting")
    assert error.startswith("ooo-storage: 413: subscription refused: ")
    assert "six/* matches more than 5 items" in lost and "six/* matches more than 5 items" in error
