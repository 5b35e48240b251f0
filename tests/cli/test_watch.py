"""``ooo-storage watch`` prints what changed, not the whole state: the first state as a
``snapshot``, then ``set`` (objects written) and ``del`` (keys gone) per change, so a one-item change
to a large glob is a short line (it used to print the whole list every time); ``--full`` keeps the
old output. A missing key says ``no such key`` (``get``, ``del``, and ``watch`` on stderr) instead
of the protocol's ``404: ooo: empty key``; ``del --force`` of a missing key exits 0."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
from cli_served import ROOT, Background, Lines

from ooo_storage.cli.client import add_parsers


@pytest.fixture(scope="module")
def server() -> Iterator[Background]:
    server = Background()
    server.start()
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


@contextlib.contextmanager
def watching(*argv: str) -> Iterator[tuple[Lines, Lines]]:
    """``ooo-storage watch ARGV`` as a real process: its stdout and stderr lines."""
    with subprocess.Popen([sys.executable, "-m", "ooo_storage", "watch", *argv], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            yield Lines(process.stdout), Lines(process.stderr)
        finally:
            process.kill()


def test_a_glob_prints_each_change_not_the_whole_list(server: Background) -> None:
    for i in range(50):
        server.call(server.store.set(f"g/{i:02}", {"pad": "x" * 100, "i": i}))
    with watching(url(server), "g/*") as (out, _):
        first = orjson.loads(out.next())
        assert set(first) == {"version", "snapshot"} and len(first["snapshot"]) == 50
        server.call(server.store.set("g/new", {"i": "new"}))
        line = out.next()
        change = orjson.loads(line)
        assert set(change) == {"version", "set"} and [o["path"] for o in change["set"]] == ["g/new"]
        assert change["set"][0]["data"] == {"i": "new"} and len(line) < 300
        assert int(change["version"], 16) > int(first["version"], 16)
        server.call(server.store.set("g/07", {"i": 7, "again": True}))
        assert [o["data"] for o in orjson.loads(out.next())["set"]] == [{"i": 7, "again": True}]
        server.call(server.store.delete("g/03"))
        assert orjson.loads(out.next())["del"] == ["g/03"]
        server.call(server.store.delete("g/*"))
        assert len(orjson.loads(out.next())["del"]) == 50


def test_a_single_key_missing_then_set_then_deleted(server: Background) -> None:
    with watching("--count", "2", url(server), "one/k") as (out, err):
        assert err.next() == "ooo-storage: no such key: one/k (yet: watching for it)\n"
        server.call(server.store.set("one/k", [1, 2]))
        written = orjson.loads(out.next())  # the first line: no stand-in snapshot of a missing key
        assert set(written) == {"version", "set"} and written["set"]["data"] == [1, 2]
        server.call(server.store.delete("one/k"))
        gone = orjson.loads(out.next())  # --count 2 reaches it: the missing key was not counted
        assert set(gone) == {"version", "del"} and gone["del"] == "one/k"


def test_full_prints_the_whole_state_every_time(server: Background, capsys: pytest.CaptureFixture[str]) -> None:
    server.call(server.store.set("f/1", 1))
    assert run("watch", "--full", "--count", "1", url(server), "f/*") == 0
    (state,) = map(orjson.loads, capsys.readouterr().out.splitlines())
    assert [o["data"] for o in state] == [1]


def test_a_reconnect_that_changed_nothing_prints_nothing() -> None:
    server = Background()
    try:
        address = server.start()
        server.call(server.store.set("r/1", 1))
        with watching(address, "r/*") as (out, err):
            assert len(orjson.loads(out.next())["snapshot"]) == 1
            server.stop()
            assert "disconnected (close 1001: server shutdown)" in err.next()
            server.start()
            while "reconnected" not in (line := err.next()):
                assert "cannot connect" in line
            server.call(server.store.set("r/2", 2))
            assert [o["path"] for o in orjson.loads(out.next())["set"]] == ["r/2"]  # nothing before it
    finally:
        server.close()


def test_get_of_a_missing_key_says_no_such_key(server: Background, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("get", url(server), "nothing/here") == 1
    assert capsys.readouterr().err == "ooo-storage: no such key: nothing/here\n"
    assert run("get", url(server), "nothing/*") == 0  # a glob matching nothing is an empty list
    assert capsys.readouterr().out == "[]\n"


def test_del_of_a_missing_key_exits_1_or_0_with_force(
    server: Background, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("del", url(server), "gone") == 1
    assert capsys.readouterr().err == \
        "ooo-storage: no such key: gone (nothing deleted; --force exits 0 for it)\n"
    assert run("del", "--force", url(server), "gone") == 0
    assert capsys.readouterr().err == ""
    server.call(server.store.set("there", 1))
    assert run("del", url(server), "there") == 0
    assert run("del", url(server), "none/*") == 0  # a glob delete never fails for lack of matches


def test_help_documents_the_exit_status_of_a_missing_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("del", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "A missing key is `no such key: KEY` (exit 1); `del` of a key that is already gone exits 1 too, " \
           "or 0 with --force." in text
