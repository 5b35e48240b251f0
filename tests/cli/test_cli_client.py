"""The client subcommands, run as ``ooo-storage`` runs them, against a real server.

The commands call ``asyncio.run`` themselves, so these tests are synchronous and the server runs on
its own event loop in a background thread (which a test may stop and start again).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_served import Background, Lines

from ooo_storage.cli.client import add_parsers

ROOT = Path(__file__).resolve().parents[1]


WATCH = (  # SIGINT as a terminal gives it, whatever the test runner inherited (run in the
    # background of a shell without job control, it ignores SIGINT, and so would the child)
    "import argparse, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from ooo_storage.cli.client import add_parsers\n"
    "p = argparse.ArgumentParser(); add_parsers(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


@contextlib.contextmanager
def watching(url: str, key: str) -> Iterator[subprocess.Popen[str]]:
    """``ooo-storage watch URL KEY`` as a process; killed if the test fails before it exits."""
    with subprocess.Popen([sys.executable, "-c", WATCH, "watch", "--full", url, key], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = Background()
    yield server.start()
    server.close()


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ooo-storage")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_set_get_push_del(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("set", url, "cli/a", '{"x": 1}') == 0
    assert capsys.readouterr().out == "a\n"
    assert run("get", url, "cli/a") == 0
    obj = orjson.loads(capsys.readouterr().out)
    assert obj["data"] == {"x": 1} and obj["index"] == "a"
    assert run("push", url, "cli/*", '"pushed"') == 0
    index = capsys.readouterr().out.strip()
    assert len(index) == 16
    assert run("get", url, "cli/*") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON line
    assert [e["data"] for e in orjson.loads(out)] == ["pushed", {"x": 1}]
    assert run("del", url, "cli/*") == 0
    assert capsys.readouterr().out == ""
    assert run("get", url, "cli/*") == 0
    assert capsys.readouterr().out == "[]\n"


def test_value_from_stdin(url: str, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b'{"from": "stdin"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run("set", url, "cli/stdin", "-") == 0
    capsys.readouterr()
    run("get", url, "cli/stdin")
    assert orjson.loads(capsys.readouterr().out)["data"] == {"from": "stdin"}


def test_watch_prints_states_as_json_lines(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("set", url, "cli/w", "[1,2]") == 0
    capsys.readouterr()
    assert run("watch", "--full", url, "cli/w", "--count", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["data"] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("get", "{url}", "cli/missing"), 1, "ooo-storage: no such key: cli/missing"),
        (("set", "{url}", "cli/bad", "{not json"), 1, "ooo-storage: 400: "),
        (("set", "{url}", "cli/*", "1"), 2, "use push"),
        (("get", "{url}", "a//b"), 2, "invalid key"),
        (("watch", "{url}", "k", "--count", "0"), 2, "--count must be positive"),
        (("get", "http://127.0.0.1:9", "k"), 1, "connection failed"),
        (("watch", "http://127.0.0.1:9", "k", "--no-reconnect"), 1, "connection failed"),
    ],
)
def test_failures(url: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int,
                  message: str) -> None:
    assert run(*(url if a == "{url}" else a for a in argv)) == code
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


def test_watch_until_interrupted(url: str) -> None:
    """Run as a real process: states stream out line by line until the process is interrupted."""
    with watching(url, "cli/live") as process:
        assert process.stdout is not None and process.stderr is not None
        # A missing key prints no state: the note on stderr says the subscription is live.
        assert "no such key: cli/live (yet: watching for it)" in process.stderr.readline()
        assert run("set", url, "cli/live", '"hello"') == 0
        assert orjson.loads(process.stdout.readline())["data"] == "hello"
        process.send_signal(2)  # SIGINT
        assert process.wait(10) == 130


def test_watch_reports_disconnects_and_reconnects_on_stderr() -> None:
    """The server restarts under a running `watch`: stderr says so, stdout carries only states."""
    server = Background()
    url = server.start()
    try:
        with watching(url, "cli/flaky") as process:
            assert process.stdout is not None and process.stderr is not None
            out, err = Lines(process.stdout), Lines(process.stderr)
            # connected to a key that does not exist yet: a note on stderr, no state on stdout
            assert err.next() == "ooo-storage: no such key: cli/flaky (yet: watching for it)\n"
            server.stop()
            assert err.next().startswith(
                "ooo-storage: cli/flaky: disconnected (close 1001: server shutdown); retry 1 in ")
            assert err.next().startswith(
                f"ooo-storage: cli/flaky: cannot connect (Cannot connect to host 127.0.0.1:{server.port}")
            server.start()
            attempts = 2
            while "cannot connect" in (line := err.next()):
                attempts += 1
                assert f"; retry {attempts} in " in line
            assert line == f"ooo-storage: cli/flaky: reconnected (resumed, attempt {attempts})\n"
            assert run("set", url, "cli/flaky", '"back"') == 0
            assert orjson.loads(out.next())["data"] == "back"
            process.send_signal(2)  # SIGINT
            assert process.wait(10) == 130
    finally:
        server.close()


def test_watch_stops_when_the_server_refuses_the_subscription(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Background()
    url = server.start()
    try:
        server.runner.server.on_subscribe = lambda key: False  # type: ignore[union-attr]
        assert run("watch", url, "cli/secret") == 1
    finally:
        server.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "ooo-storage: 400: subscription refused: Bad Request\n"
