"""docs/operations.md's table of ``serve`` flags names every flag the parser has, and no other: a
flag added to ``cli/serve.py`` without its row (or a row left behind by a removed flag) fails here,
so that the table cannot drift from ``serve --help`` again."""

from __future__ import annotations

import re
from pathlib import Path

from ooo_storage.cli import build_parser
from ooo_storage.cli.config import serve_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def documented_flags() -> set[str]:
    """The flags in the first column of the table headed ``| flag | default | meaning |``."""
    text = DOC.read_text()
    start = text.index("| flag | default | meaning |")
    table = text[start:text.index("\n\n", start)].splitlines()[2:]
    return {flag for row in table for flag in re.findall(r"--[a-z][a-z-]*", row.split("|")[1])}


def test_the_flags_table_lists_exactly_the_parsers_flags() -> None:
    serve = serve_parser(build_parser())
    flags = {f for action in serve._actions for f in action.option_strings if f.startswith("--")} - {"--help"}
    documented = documented_flags()
    assert (sorted(flags - documented), sorted(documented - flags)) == ([], [])


def test_the_documented_http_engine_default_is_the_parsers() -> None:
    serve = serve_parser(build_parser())
    (engine,) = [a for a in serve._actions if "--http-engine" in a.option_strings]
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `--http-engine"))
    assert row.split("|")[2].strip() == f"`{engine.default}`"
