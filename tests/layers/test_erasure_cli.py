"""``ooo-storage scrub`` / ``repair`` through argparse, and as a real process."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ooo_storage.cli.erasure import ProgressBar, add_parsers
from ooo_storage.layers.erasure.store import ErasureStore

REPO = str(Path(__file__).resolve().parents[2])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ooo-storage")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
async def drives(tmp_path: Path) -> list[str]:
    paths = [str(tmp_path / f"d{i}") for i in range(6)]
    async with ErasureStore(paths, ec_backend="isa_l_rs_vand") as ec:
        for i in range(25):
            await ec.store(f"cli/{i}", os.urandom(20_000 if i % 2 else 50))
    return paths


def test_scrub_then_repair_a_replaced_drive(drives: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("scrub", "--drives", *drives, "--progress")
    assert args.func(args) == 0  # the backend is taken from the drive markers
    out, err = capsys.readouterr()
    assert "checked: 25" in out and "degraded: 0" in out
    assert "100% 25/25 keys" in err and err.endswith("\n")

    shutil.rmtree(drives[4])
    os.mkdir(drives[4])
    args = parse("scrub", "--drives", *drives, "--json")
    assert args.func(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert 12 <= report["degraded"] < 25  # every coded object, the replicas that had a copy there

    args = parse("repair", "--drives", *drives, "-k", "4", "-m", "2")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"replaced_drives: ['{drives[4]}']" in out and "degraded: 0" in out

    args = parse("scrub", "--drives", *drives, "--json")
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["degraded"] == 0


def test_wrong_geometry_exits_2(drives: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("scrub", "--drives", *drives, "-k", "3", "-m", "3")
    assert args.func(args) == 2
    assert "another format" in capsys.readouterr().err


def test_progress_bar_draws_and_throttles() -> None:
    class Out:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    out, now = Out(), [0.0]
    bar = ProgressBar("scrub", out, width=10, clock=lambda: now[0])  # type: ignore[arg-type]
    bar(1, 4)
    bar(2, 4)  # within 0.1 s: skipped
    now[0] = 1.0
    bar(4, 4)
    bar.finish()
    assert out.text == "\rscrub [##--------]  25% 1/4 keys\rscrub [##########] 100% 4/4 keys\n"
    silent = Out()
    ProgressBar("x", silent, enabled=False)(1, 1)  # type: ignore[arg-type]
    assert silent.text == ""


def test_runs_as_a_process(drives: list[str]) -> None:
    code = (
        "import argparse, sys; from ooo_storage.cli.erasure import add_parsers; "
        "p = argparse.ArgumentParser(); add_parsers(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    done = subprocess.run([sys.executable, "-c", code, "repair", "--drives", *drives],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "checked: 25" in done.stdout and "repaired: 0" in done.stdout
    assert done.stderr == ""  # no terminal, no --progress: no bar
