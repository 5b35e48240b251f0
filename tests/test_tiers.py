"""The tiers hold at import time: the pure core and the client load nothing of the store or the server.

Each check imports in a fresh interpreter (this one has loaded everything already) running the
same source tree, and reports what ``sys.modules`` then holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ooo_storage

ROOT = Path(ooo_storage.__file__).resolve().parents[1]

PROTOCOL = """
import importlib, pkgutil
import ooo_storage.protocol
for info in pkgutil.iter_modules(ooo_storage.protocol.__path__):
    importlib.import_module(f"ooo_storage.protocol.{info.name}")
"""

STORE_AND_SERVER = (
    "plyvel",
    "aiohttp.web",  # aiohttp.web and every aiohttp.web_* module: the server side
    "aiohttp.worker",
    "aiohttp.test_utils",
    "ooo_storage.layered",
    "ooo_storage.layers",
    "ooo_storage.sharded",
    "ooo_storage.locks",
    "ooo_storage.server",
    "ooo_storage.cli",
)


def loaded_by(code: str) -> list[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    report = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code + report],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout)
    assert "ooo_storage" in modules
    return modules


def under(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith((f"{p}.", f"{p}_")) for p in prefixes)]


def test_the_protocol_is_pure() -> None:
    modules = loaded_by(PROTOCOL)
    assert "ooo_storage.protocol.views" in modules  # the submodules were found and imported
    assert under(modules, ("asyncio", "aiohttp", *STORE_AND_SERVER)) == []


def test_the_client_loads_neither_the_store_nor_the_server() -> None:
    modules = loaded_by(PROTOCOL + "from ooo_storage.client import Client\n")
    assert "aiohttp.client" in modules  # it may use aiohttp's client side
    assert under(modules, STORE_AND_SERVER) == []


def test_the_key_grammar_loads_no_asyncio() -> None:
    modules = loaded_by("from ooo_storage import keys\nassert keys.match('users/*', 'users/1')\n")
    assert "ooo_storage.protocol.keys" in modules
    assert under(modules, ("asyncio", "aiohttp", *STORE_AND_SERVER)) == []
