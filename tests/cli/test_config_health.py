"""``ooo-storage health``: the container's HEALTHCHECK asks ``/healthz`` of the server its
configuration describes (port and TLS read as ``serve`` reads them: flags, ``OOO_*``, ``--config``),
so that a port or TLS given to the server is followed by its health check."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from cli_served import ROOT, Served
from test_cli_tls import make_certificate


def health(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ooo_storage", "health", *argv], cwd=ROOT, text=True,
                          capture_output=True, timeout=30, env={**os.environ, **env})


async def test_health_follows_the_configured_port_and_tls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    async with Served("--host", "0.0.0.0", "--insecure-no-auth", "--tls-cert", str(cert),
                      "--tls-key", str(key)) as served:
        config = tmp_path / "serve.toml"
        config.write_text(f'tls-cert = "{cert}"\ntls-key = "{key}"\n')
        ok = await asyncio.to_thread(health, OOO_PORT=str(served.port), OOO_HOST="0.0.0.0", OOO_CONFIG=str(config))
        plain = await asyncio.to_thread(health, "--port", str(served.port))  # http to an https server
    assert (ok.returncode, ok.stderr) == (0, "")
    assert plain.returncode == 1 and plain.stderr.startswith(
        f"ooo-storage health: http://127.0.0.1:{served.port}/healthz: "), plain.stderr
    gone = health("--port", str(served.port))
    assert gone.returncode == 1 and "Connection refused" in gone.stderr


def test_health_says_when_it_cannot_ask() -> None:
    for argv, reason in [(["--port", "0"], "serve picks a free port (--port 0): give the port it logged"),
                         (["--no-health"], "serve runs with --no-health: it has no /healthz to ask")]:
        done = health(*argv)
        assert (done.returncode, done.stderr) == (2, f"ooo-storage health: {reason}\n")
