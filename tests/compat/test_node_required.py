"""Without Node the npm client checks fail, saying why: a skip would let CI go green without ever
running the JS client against the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_missing_node_fails_with_the_reason(tmp_path: Path) -> None:
    # A PATH without node or npm; the interpreter is called by its full path.
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
         str(HERE / "test_ooo_client.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=HERE.parents[1],
    )
    assert done.returncode == 1, done.stdout
    assert "skipped" not in done.stdout
    assert "node is not on PATH: tests/compat runs the npm ooo-client package in Node" in done.stdout
    assert "3 errors" in done.stdout
