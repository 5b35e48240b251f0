"""``ooo-storage serve --redis --namespace NAME`` (issue 14, outside attack F4): a namespace outside
the grammar is a usage error, said on one line (exit 2), before anything connects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["t1:lock", "", "a b", "x*"])
def test_serve_refuses_a_namespace_outside_the_grammar(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "ooo_storage", "serve", "--port", "0", "--insecure-no-auth",
         "--redis", "redis://127.0.0.1:1/0", "--namespace", name],
        capture_output=True, text=True, timeout=20, cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"--namespace: redis: invalid namespace {name!r}" in lines[0]
    assert "no ':'" in lines[0]
