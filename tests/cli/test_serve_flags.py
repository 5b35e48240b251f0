"""``serve``'s storage options that exclude each other are refused (exit 2, saying why) instead of the
server silently picking one; the event history of a server on a shared store (``--sos``,
``--redis``) needs a ``--history-dir`` of its own, since the default ``./data/history`` would be
one lock-free journal for every server started in the same directory."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_served import ROOT

from ooo_storage.cli import build_parser, config

REDIS = "redis://127.0.0.1:1/0"  # never reached: every case here stops before connecting


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sos", "r", "--redis", REDIS],
         "argument --redis: not allowed with argument --sos: a server stores in one place"),
        (["--redis", REDIS, "--sos", "r"],
         "argument --sos: not allowed with argument --redis: a server stores in one place"),
        (["--sos", "r", "--data", "d"],
         "argument --data: not allowed with argument --sos: --data is the LevelDB directory, which "
         "--sos replaces (the event history goes in --history-dir)"),
        (["--data", "d", "--redis", REDIS],
         "argument --redis: not allowed with argument --data: --data is the LevelDB directory"),
        (["--redis", REDIS, "--sync"],
         "argument --sync: not allowed with argument --redis: with --redis, durability is Redis's "
         "own appendfsync setting"),
        (["--sos", "r", "--memory-only"],
         "argument --memory-only: not allowed with argument --sos: --memory-only keeps nothing"),
        (["--memory-only", "--redis", REDIS],
         "argument --redis: not allowed with argument --memory-only: --memory-only keeps nothing"),
    ],
)
def test_storage_options_that_exclude_each_other_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_options_that_go_together_still_parse() -> None:
    args = build_parser().parse_args(["serve", "--sos", "r", "--sync", "--history-dir", "h"])
    assert (args.sos, args.sync, args.redis, args.history_dir) == ("r", True, None, "h")
    args = build_parser().parse_args(["serve", "--redis", REDIS, "--namespace", "n"])
    assert (args.redis, args.namespace, args.sos, args.data) == (REDIS, "n", None, "./data")


def test_a_conflict_from_the_environment_names_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    argv = config.expand(parser, ["serve", "--redis", REDIS], environ={"OOO_SOS": "/srv/sos"})
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --redis: not allowed with argument --sos" in err
    assert "(not on the command line: --sos from env OOO_SOS)" in err


def test_config_show_takes_the_history_dir_from_every_source(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('sos = "/srv/sos"\n')
    found = config.settings(build_parser(), ["--config", str(file)],
                            environ={"OOO_HISTORY_DIR": "/srv/history-a"})
    by_key = {s.key: (s.value, s.source) for s in found}
    assert by_key["sos"] == ("/srv/sos", f"file {file}")
    assert by_key["history-dir"] == ("/srv/history-a", "env OOO_HISTORY_DIR")


def test_serve_help_says_the_history_dir_is_required_on_a_shared_store(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--history-dir DIR" in help_text
    assert "Required with --sos and --redis" in help_text


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "ooo_storage", "serve", "--port", "0", *argv]


ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def serving(process: subprocess.Popen[str]) -> str:
    """Read ``process``'s log until it says it serves (or exits): the log so far."""
    assert process.stderr is not None
    log = []
    for line in process.stderr:
        log.append(line)
        if "serving on" in line:
            break
    return "".join(log)


def test_history_on_sos_without_a_history_dir_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    argv = ["--sos", str(tmp_path / "sos"), "--history-bytes", "1048576"]
    with subprocess.Popen(command(argv), cwd=tmp_path, env=ENV, stderr=subprocess.PIPE,
                          text=True) as process:
        log = serving(process)
        if "serving on" in log:  # the old behaviour: served, with the history in ./data/history
            process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    assert status == 2, log
    assert ("serve: the event history with --sos needs --history-dir DIR, a directory of this "
            "server alone") in log
    assert not (tmp_path / "data").exists()  # the shared default was never created
    assert "Traceback" not in log


def test_two_servers_on_one_sos_root_each_keep_their_own_history(tmp_path: Path) -> None:
    root, processes = tmp_path / "sos", []
    try:
        for name in ("a", "b"):  # started in the same directory, running together
            argv = ["--sos", str(root), "--history-dir", str(tmp_path / f"history-{name}"),
                    "--history-bytes", "1048576"]
            process = subprocess.Popen(command(argv), cwd=tmp_path, env=ENV, stderr=subprocess.PIPE,
                                       text=True)
            processes.append(process)
            log = serving(process)
            assert "serving on" in log, log
            assert (tmp_path / f"history-{name}").is_dir(), log
        assert not (tmp_path / "data").exists()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        statuses = [process.wait(30) for process in processes]
        for process in processes:
            assert process.stderr is not None
            process.stderr.close()
    assert statuses == [0, 0]
