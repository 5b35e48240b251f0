"""The example really runs: examples/sensor_feed.py as a subprocess, briefly and bounded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sensor_feed_runs(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "examples" / "sensor_feed.py"), "--readings", "3",
               "--interval", "0.01", "--timeout", "20"]
    first = subprocess.run([*command, "--data", str(tmp_path / "db")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("server: http://127.0.0.1:")
    dashboard = [line for line in lines if line.startswith("dashboard:")]
    assert dashboard[0] == "dashboard: attic=?  cellar=?  greenhouse=?"
    assert all(f"{name}=" in dashboard[-1] and dashboard[-1].count("(#3)") == 3
               for name in ("attic", "cellar", "greenhouse"))
    assert lines[-3:] == [f"history: {name} has 3 readings, newest #3"
                          for name in ("attic", "cellar", "greenhouse")]
    # The LevelDB directory keeps the history: a second run appends to it.
    second = subprocess.run([*command, "--data", str(tmp_path / "db")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "history: greenhouse has 6 readings, newest #3"
