"""``serve``'s configuration: flag > ``OOO_*`` environment > ``--config`` TOML file > default, for
every option of the parser (one added later included), bad values refused naming their source
(exit 2), and ``ooo-storage config show`` printing TOML that a ``--config`` file accepts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_served import ROOT, SERVING, Lines

from ooo_storage.cli import build_parser, main
from ooo_storage.cli.config import ConfigError, Setting, expand, lines, resolve, serve_parser, settings


def values(argv: list[str], environ: dict[str, str]) -> dict[str, Setting]:
    return {s.key: s for s in settings(build_parser(), argv, environ)}


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", 'port = 7001\nhost = "127.0.0.3"\nlist-limit = 50\n'
                                            'log_level = "debug"\n')
    found = values(["--config", config, "--port", "7003"],
                   {"OOO_PORT": "7002", "OOO_HOST": "127.0.0.2", "OOO_TOKEN": "client's, ignored"})
    assert (found["port"].value, found["port"].source) == (7003, "flag")
    assert (found["host"].value, found["host"].source) == ("127.0.0.2", "env OOO_HOST")
    assert (found["list-limit"].value, found["list-limit"].source) == (50, f"file {config}")
    assert (found["log-level"].value, found["log-level"].source) == ("debug", f"file {config}")
    assert (found["data"].value, found["data"].source) == ("./data", "default")


def test_the_file_may_come_from_OOO_CONFIG_and_abbreviated_flags_count_as_given(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", "max-body-bytes = 1000\nport = 1\n")
    found = values(["--max-body=2000"], {"OOO_CONFIG": config})
    assert (found["max-body-bytes"].value, found["max-body-bytes"].source) == (2000, "flag")
    assert (found["port"].value, found["port"].source) == (1, f"file {config}")


def test_switches_and_lists_from_env_and_file(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml",
                   'sync = true\nstatic = false\nallowed-origin = ["https://a.example", "https://b.example"]\n')
    found = values(["--config", config], {"OOO_NO_PATCH": "yes", "OOO_ALLOWED_HOST": "a.example, b.example:8"})
    assert found["sync"].value is True and found["static"].value is False
    assert found["no-patch"].value is True
    assert found["allowed-origin"].value == ["https://a.example", "https://b.example"]
    assert found["allowed-host"].value == ["a.example", "b.example:8"]
    # a higher source replaces a list whole, it does not add to it
    found = values(["--config", config, "--allowed-origin", "https://c.example"], {"OOO_SYNC": "0"})
    assert found["allowed-origin"].value == ["https://c.example"]
    assert found["sync"].value is False and found["sync"].source == "env OOO_SYNC"


def test_a_flag_added_to_serve_later_is_configurable_with_no_change_to_config() -> None:
    parser = build_parser()
    serve = serve_parser(parser)
    serve.add_argument("--brand-new-limit", type=int, default=3)
    serve.add_argument("--brand-new-switch", action="store_true")
    resolved = resolve(serve, [], {"OOO_BRAND_NEW_LIMIT": "9", "OOO_BRAND_NEW_SWITCH": "on"})
    args = serve.parse_args(resolved.argv)
    assert (args.brand_new_limit, args.brand_new_switch) == (9, True)
    assert resolved.sources["brand_new_limit"] == "env OOO_BRAND_NEW_LIMIT"
    with pytest.raises(ConfigError, match="^OOO_BRAND_NEW_LIMIT=x: invalid int value: 'x'$"):
        resolve(serve, [], {"OOO_BRAND_NEW_LIMIT": "x"})


def test_every_serve_option_has_an_env_name_and_a_file_key(tmp_path: Path) -> None:
    found = values([], {})
    flags = {flag[2:] for action in serve_parser(build_parser())._actions for flag in action.option_strings
             if flag.startswith("--") and flag not in ("--help", "--config")}
    assert set(found) == flags


@pytest.mark.parametrize(("environ", "text", "message"), [
    ({"OOO_PORT": "99999"}, "", "OOO_PORT=99999: 99999 is not a TCP port: 0..65535 (0 picks a free one)"),
    ({"OOO_WRITE_TIMEOUT": "0"}, "", "OOO_WRITE_TIMEOUT=0: 0 must be a positive, finite number of seconds"),
    ({"OOO_SYNC": "maybe"}, "", "OOO_SYNC=maybe: --sync is on or off: give 1/true/yes/on or 0/false/no/off"),
    ({"OOO_LOOP": "tokio"}, "", "OOO_LOOP=tokio: invalid choice: 'tokio' (choose from 'auto', 'asyncio', 'uvloop')"),
    ({}, "port = 99999\n", "{path}: port = 99999: 99999 is not a TCP port: 0..65535 (0 picks a free one)"),
    ({}, "port = true\n", "{path}: port: expected a string, a number, not True"),
    ({}, 'sync = "yes"\n', "{path}: sync: --sync is on or off: give true or false, not 'yes'"),
    ({}, "allowed-origin = ['https://a/path']\n", "{path}: allowed-origin = https://a/path: an origin is scheme://host[:port], without a path"),
    ({}, "prot = 1\n", "{path}: prot: no such serve option (known: "),
    ({}, "port = \n", "--config {path}: not valid TOML: "),
])
def test_a_bad_value_names_its_source_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], environ: dict[str, str], text: str, message: str
) -> None:
    path = write(tmp_path / "serve.toml", text)
    with pytest.raises(SystemExit) as exit_:
        expand(build_parser(), ["serve", "--config", path], environ)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("ooo-storage serve: " + message.format(path=path))


def test_a_missing_file_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        expand(build_parser(), ["serve"], {"OOO_CONFIG": "/nonexistent/serve.toml"})
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        "ooo-storage serve: OOO_CONFIG /nonexistent/serve.toml: can't read it: No such file or directory\n"


def test_other_commands_are_left_alone() -> None:
    assert expand(build_parser(), ["get", "http://x", "k"], {"OOO_PORT": "bad"}) == ["get", "http://x", "k"]


def test_config_show_prints_toml_that_a_config_file_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "serve.toml", 'allowed-origin = ["https://a.example"]\nsync = true\n')
    monkeypatch.setenv("OOO_LIST_LIMIT", "77")
    assert main(["config", "show", "--config", config, "--port", "9009"]) == 0
    out = capsys.readouterr().out
    assert "port = 9009" in out and "# flag" in out.splitlines()[2]
    assert any(line.startswith("list-limit = 77 ") and line.endswith("# env OOO_LIST_LIMIT")
               for line in out.splitlines())
    assert any(line.startswith("# max-connections = (unset)") for line in out.splitlines())
    shown = tomllib.loads(out)
    assert shown["allowed-origin"] == ["https://a.example"] and shown["sync"] is True
    monkeypatch.delenv("OOO_LIST_LIMIT")
    again = values(["--config", write(tmp_path / "shown.toml", out)], {})
    assert {k: s.value for k, s in again.items()} == {k: s.value for k, s in values(
        ["--config", config, "--port", "9009", "--list-limit", "77"], {}).items()}


def test_config_show_hides_a_password_in_a_url() -> None:
    shown = "\n".join(lines([Setting("redis", "redis://user:s3cret@127.0.0.1:6379/0", "flag")]))
    assert "s3cret" not in shown and "redis://user:***@127.0.0.1:6379/0" in shown
    shown = "\n".join(lines([Setting("redis", "redis://h/0?db=1&Password=qs3cret&x=1", "flag")]))
    assert "qs3cret" not in shown and "redis://h/0?db=1&Password=***&x=1" in shown


def test_serve_runs_with_its_configuration_from_env_and_file(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", "memory-only = true\nport = 0\nlog-level = \"debug\"\n")
    env = {**os.environ, "OOO_CONFIG": config, "OOO_HOST": "127.0.0.1", "OOO_MAX_BODY_BYTES": "10"}
    server = subprocess.Popen([sys.executable, "-m", "ooo_storage", "serve"], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        log = Lines(server.stderr)  # type: ignore[arg-type]
        while not (found := SERVING.search(line := log.next())):
            assert "Traceback" not in line
        assert "memory only" in line
        port = int(found.group(3))
        import urllib.error
        import urllib.request
        request = urllib.request.Request(f"http://127.0.0.1:{port}/k", data=b'"more than ten bytes"')
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413  # OOO_MAX_BODY_BYTES=10 is in force
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0


def test_options_that_exclude_each_other_say_which_came_from_env_or_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    argv = expand(parser, ["serve", "--data", "/tmp/x"], {"OOO_MEMORY_ONLY": "1"})
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (  # one line: the usage would not show what the file or env set
        "ooo-storage serve: error: argument --data: not allowed with argument --memory-only: --memory-only "
        "keeps nothing on disk (not on the command line: --memory-only from env OOO_MEMORY_ONLY)\n")


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", "max-body-bytes = 1000\nsync = true\n")
    found = values(["--config", config], {"OOO_MAX_BODY_BYTES": "", "OOO_SYNC": " ", "OOO_PORT": ""})
    assert (found["max-body-bytes"].value, found["max-body-bytes"].source) == (1000, f"file {config}")
    assert (found["sync"].value, found["sync"].source) == (True, f"file {config}")
    assert (found["port"].value, found["port"].source) == (8800, "default")


def test_lower_case_choices_are_read_in_any_case(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", 'log-format = "JSON"\n')
    found = values(["--config", config], {"OOO_LOG_LEVEL": "DEBUG", "OOO_HTTP_ENGINE": "AioHTTP"})
    assert [found[k].value for k in ("log-level", "log-format", "http-engine")] == ["debug", "json", "aiohttp"]
    with pytest.raises(ConfigError, match="OOO_LOG_LEVEL=LOUD: invalid choice: 'LOUD'"):
        values([], {"OOO_LOG_LEVEL": "LOUD"})


def test_one_option_twice_in_the_file_is_an_error_naming_both(tmp_path: Path) -> None:
    config = write(tmp_path / "serve.toml", "max-body-bytes = 1000\nmax_body_bytes = 2000\n")
    with pytest.raises(ConfigError) as error:
        values(["--config", config], {})
    assert str(error.value) == f"{config}: max-body-bytes and max_body_bytes are the same option: keep one"
