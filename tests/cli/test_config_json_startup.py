"""With ``--log-format json`` the reasons ``serve`` does not start are JSON lines too, like every
other line of its log: a log collector parsing JSON must not meet a stray text line."""

from __future__ import annotations

import socket

import orjson
from cli_served import refused


def test_startup_refusals_are_json_lines_with_log_format_json() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = refused("--log-format", "json", "--port", str(port))  # refused() adds --port 0 first
    unreadable = refused("--log-format", "json", "--tls-cert", "/nonexistent", "--tls-key", "/nonexistent")
    for done, reason in [(busy, f"serve: cannot listen on --host 127.0.0.1 --port {port}: "),
                         (unreadable, "serve: --tls-cert /nonexistent: can't read it: No such file or directory")]:
        assert done.returncode == 1
        last = orjson.loads(done.stderr.splitlines()[-1])
        assert last["level"] == "ERROR" and last["message"].startswith(reason), done.stderr
        for line in done.stderr.splitlines():
            orjson.loads(line)  # every line is JSON
