"""The README runs as written: every ``python`` block (the library, the journal, the client against a
real server started here), the example's command line, and shell lines that zsh would not mangle."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
SERVING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")
README_URL = "http://127.0.0.1:8800"


def block(marker: str) -> str:
    """The one python block holding ``marker``."""
    found = [text for text in BLOCKS if marker in text]
    assert len(found) == 1, f"{len(found)} python blocks hold {marker!r}"
    return found[0]


def run_python(script: str, cwd: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_every_python_block_is_checked_here() -> None:
    checked = ("store = Layered(", "Journal(", "Client(")
    assert len(BLOCKS) == len(checked) and all(block(marker) for marker in checked)


def test_readme_library_example_runs(tmp_path: Path) -> None:
    out = run_python(block("store = Layered("), tmp_path)
    assert out[0].startswith("{'name': 'ana'}")
    assert out[1] == "[{'name': 'bob'}, {'name': 'ana'}]"
    assert out[2] == "{'msg': 'hello'}"
    assert "storage: not found" in out
    assert any(line.startswith("event set logs/") for line in out)
    assert out[-1] == "True"
    assert (tmp_path / "example-data" / "db").is_dir()


def test_readme_journal_example_runs(tmp_path: Path) -> None:
    out = run_python(block("Journal("), tmp_path)
    assert out == ["0 [b'one', b'two']", "3", "3 1 3", "3 b'rev 42'"]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``ooo-storage serve`` on a free port: the README's client talks to it."""
    process = subprocess.Popen([sys.executable, "-m", "ooo_storage", "serve", "--memory-only", "--port", "0"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if found := SERVING.search(line):
                break
        else:
            raise AssertionError(f"serve exited with {process.wait()}")
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        process.wait(20)


def test_readme_client_example_runs_against_a_server(server: str, tmp_path: Path) -> None:
    script = block("Client(")
    assert README_URL in script
    out = run_python(script.replace(README_URL, server), tmp_path)  # the only change: the port
    assert out[0] == "{'name': 'ada'} True True None"
    assert out[1] == "logs/*: connected"
    assert out[2] == "True {'msg': 'hi'}"


def test_readme_example_command_runs(tmp_path: Path) -> None:
    command = re.search(r"`(\.venv/bin/python examples/\S+\.py)`", README)
    assert command, "the README names the example with the virtual environment's python"
    argv = shlex.split(command.group(1))
    assert (ROOT / argv[0]).parent.name == "bin"  # .venv/bin/python: the interpreter running this test
    result = subprocess.run([sys.executable, *argv[1:], "--readings", "2", "--interval", "0.01"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "history: greenhouse has 2 readings, newest #2"


def shell_lines() -> list[str]:
    """The commands of the README's indented shell blocks (curl, make, ooo-storage...)."""
    return [line.strip() for line in README.splitlines()
            if re.match(r"    (curl|make|\.venv/|ooo-storage|python)\b", line)]


def test_shell_lines_quote_their_globs() -> None:
    lines = shell_lines()
    assert any("logs/*" in line for line in lines)
    for line in lines:
        bare = re.sub(r"'[^']*'", "", line.partition(" #")[0])
        assert "*" not in bare, f"unquoted glob (zsh expands it): {line}"


def test_make_run_variables_are_documented() -> None:
    assert "make run PORT=9000 DATA=/var/lib/ooo HOST=127.0.0.1" in README
    makefile = (ROOT / "Makefile").read_text()
    assert all(re.search(rf"^{name}\s*\?=", makefile, re.M) for name in ("PORT", "DATA", "HOST"))
