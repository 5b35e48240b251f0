"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_library_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    script = blocks[0]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("{'name': 'ana'}")
    assert out[1] == "[{'name': 'bob'}, {'name': 'ana'}]"
    assert out[2] == "{'msg': 'hello'}"
    assert "storage: not found" in out
    assert any(line.startswith("event set logs/") for line in out)
    assert out[-1] == "True"
    assert (tmp_path / "example-data" / "db").is_dir()
