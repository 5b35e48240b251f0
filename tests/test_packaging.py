"""What ships beside the code: LICENSE, py.typed (installed), the Dockerfile and the systemd unit.

Docker cannot run here, so the Dockerfile is parsed for its essentials instead of built: a slim
Python base, a non-root user, a volume for the data, a healthcheck on ``/healthz``, the server as
the command. The unit is read as systemd reads it (an INI file) and its command line is parsed by
our own parser, so a flag renamed in ``cli/serve.py`` breaks this test, not a production host.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from ooo_storage.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (NAME, arguments), continuation lines joined."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [(name.upper(), rest.strip()) for name, _, rest in
            (line.partition(" ") for line in lines if line and not line.startswith("#"))]


def test_license_is_mit_as_pyproject_says() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the ooo-storage authors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}


def test_py_typed_is_installed_with_the_package(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "ooo_storage", tmp_path / "ooo_storage",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "out" / "ooo_storage" / "py.typed").is_file()
    assert (tmp_path / "out" / "ooo_storage" / "cli" / "config.py").is_file()


def test_dockerfile_essentials() -> None:
    steps = _instructions()
    names = [name for name, _ in steps]
    base = dict(steps)["FROM"]
    assert base.startswith("python:3.") and base.endswith("-slim"), base
    users = [arg for name, arg in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    assert names.index("USER") < names.index("ENTRYPOINT")
    assert any(name == "RUN" and "useradd" in arg for name, arg in steps)
    assert json.loads(dict(steps)["VOLUME"]) == ["/data"]
    health = dict(steps)["HEALTHCHECK"]
    assert json.loads(health.partition("CMD")[2]) == ["ooo-storage", "health"]  # follows OOO_PORT, TLS
    assert dict(steps)["EXPOSE"] == "8800"
    env = " ".join(arg for name, arg in steps if name == "ENV")
    assert "OOO_HOST=0.0.0.0" in env and "OOO_DATA=/data/" in env
    command = json.loads(dict(steps)["ENTRYPOINT"]) + json.loads(dict(steps)["CMD"])
    assert command == ["ooo-storage", "serve"]
    copied = [arg.split()[0] for name, arg in steps if name == "COPY"]
    assert all((ROOT / path).exists() for path in copied), copied


def test_dockerignore_keeps_data_and_venv_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)


def test_systemd_unit_runs_serve_with_flags_that_exist() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(ROOT / "deploy" / "ooo-storage.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] not in ("root", "0")
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert "2" in service["RestartPreventExitStatus"].split()
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/ooo-storage") and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])  # an unknown flag exits 2 here
    assert args.config == "/etc/ooo-storage/config.toml"
    assert "--sync" not in argv  # a flag there could not be turned off from the env or the file
    env = dict(word.split("=", 1) for word in shlex.split(service["Environment"]))
    assert env["OOO_SYNC"] == "1"  # on by default, OOO_SYNC=0 in the EnvironmentFile turns it off
    writable = service["ReadWritePaths"].split()
    backups = env["OOO_BACKUP_DIR"]
    assert any(backups == path or backups.startswith(path + "/") for path in writable), (backups, writable)
    assert "ooo-storage/backups" in service["StateDirectory"].split()  # it must exist: serve checks
    assert "Documentation" not in unit["Unit"] or not unit["Unit"]["Documentation"].startswith("file:")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _image_env() -> dict[str, str]:
    """The ENV the Dockerfile gives the server."""
    words = [word for name, arg in _instructions() if name == "ENV" for word in shlex.split(arg)]
    return dict(word.split("=", 1) for word in words if word.startswith("OOO_"))


def test_the_image_answers_localhost_from_the_host_and_still_refuses_other_names() -> None:
    from ooo_storage.cli.config import resolve, serve_parser
    from ooo_storage.protocol.origins import OriginPolicy

    serve = serve_parser(build_parser())
    args = serve.parse_args(resolve(serve, [], _image_env()).argv)  # as serve reads the image's env
    policy = OriginPolicy.of(hosts=args.allowed_hosts)
    inside = ("172.17.0.2", 8800)  # `docker run -p 9000:8800`: the container's own address
    for host in ("localhost:9000", "127.0.0.1:9000", "[::1]:8800", "localhost"):
        assert policy.host_refusal(host, inside) is None, host
    assert policy.host_refusal("evil.example:9000", inside) is not None  # DNS rebinding still refused
