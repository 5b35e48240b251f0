"""``serve`` options that cannot work together or cannot be served are refused with a reason that
names the option, before anything is served, and a server that never listened never says "stopped"."""

from __future__ import annotations

import socket

import pytest
from cli_served import refused

from ooo_storage.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory-only", "--sync", "--data", "/nonexistent/x"],
         "argument --sync: not allowed with argument --memory-only"),
        (["--memory-only", "--data", "/nonexistent/x"], "argument --data: not allowed with argument --memory-only"),
        (["--data", "d", "--memory-only"], "argument --memory-only: not allowed with argument --data"),
        (["--sync", "--memory-only"], "argument --memory-only: not allowed with argument --sync"),
    ],
)
def test_memory_only_with_a_disk_option_is_an_argparse_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", *argv])
    assert exit_.value.code == 2
    assert f"{message}: --memory-only keeps nothing on disk" in capsys.readouterr().err


def test_disk_options_alone_still_parse() -> None:
    args = build_parser().parse_args(["serve", "--data", "d", "--sync"])
    assert (args.data, args.sync, args.memory_only) == ("d", True, False)
    args = build_parser().parse_args(["serve", "--memory-only"])
    assert (args.data, args.sync, args.memory_only) == ("./data", False, True)


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3", "::zz", "[::1]"])
def test_a_host_that_is_no_ip_address_is_an_argparse_error(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--host", host])
    assert exit_.value.code == 2
    assert f"argument --host: {host!r} is not an IP address" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost", "db.lan"])
def test_ip_addresses_and_host_names_parse(host: str) -> None:
    assert build_parser().parse_args(["serve", "--host", host]).host == host


def test_a_host_name_that_does_not_resolve_names_host_and_never_says_stopped() -> None:
    done = refused("--host", "nosuch.invalid", "--insecure-no-auth")  # .invalid never resolves
    assert done.returncode == 1, done.stderr
    assert "ooo-storage: serve: --host nosuch.invalid: no such host or address (" in done.stderr
    assert "stopped" not in done.stderr and "Traceback" not in done.stderr


def test_a_port_in_use_names_host_and_port_and_never_says_stopped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = refused("--port", str(port))  # the later --port wins over refused's --port 0
    assert done.returncode == 1, done.stderr
    assert f"ooo-storage: serve: cannot listen on --host 127.0.0.1 --port {port}: " in done.stderr
    assert "address already in use" in done.stderr
    assert "stopped" not in done.stderr and "Traceback" not in done.stderr
