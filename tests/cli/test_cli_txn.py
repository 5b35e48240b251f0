"""``ooo-storage txn URL FILE|-`` (issue 12), run as ``ooo-storage`` runs it, against a real server
on its own loop (``cli_served.Background``): the answer on stdout, a conflict as exit status 5
with the keys on stderr, a bad file as 2, a refused transaction as 1 with the server's reason."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_served import Background

from ooo_storage.cli import build_parser
from ooo_storage.cli.txn import CONFLICT


@pytest.fixture(scope="module")
def served() -> Iterator[Background]:
    server = Background()
    server.start()
    yield server
    server.close()


def url(served: Background) -> str:
    assert served.runner is not None
    return served.runner.url


def run(*argv: str) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_txn_from_a_file_prints_revision_and_indexes(
    served: Background, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served.call(served.store.set("cli/b", {"n": 1}))
    file = tmp_path / "txn.json"
    file.write_bytes(orjson.dumps({"ops": [
        {"op": "set", "key": "cli/a", "data": {"n": 2}},
        {"op": "patch", "key": "cli/b", "data": {"m": 3}},
    ]}))
    assert run("txn", url(served), str(file)) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer == {"revision": f"{served.store.revision:x}", "indexes": ["a", "b"]}
    assert served.call(served.store.get("cli/b")).value == {"m": 3, "n": 1}


def test_txn_from_stdin_and_a_conflict_exits_5_naming_the_keys(
    served: Background, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served.call(served.store.set("cli/c", 1))
    body = {"expect": {"cli/c": None}, "ops": [{"op": "del", "key": "cli/c"}]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(orjson.dumps(body))))
    assert run("txn", url(served), "-") == CONFLICT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ooo-storage: conflict: storage: conflict: cli/c"), err
    assert served.call(served.store.get("cli/c")).value == 1


@pytest.mark.parametrize(("text", "code", "said"), [
    (b"{", 2, "the transaction is not JSON"),
    (b"[]", 2, 'must be a JSON object {"ops": [...]'),
    (b'{"ops": [], "x": 1}', 2, 'must be a JSON object {"ops": [...]'),
    (b'{"ops": [{"op": "set", "key": "a*", "data": 1}]}', 1, "400: storage: invalid transaction: op 0"),
])
def test_bad_transactions_exit_with_the_reason(
    served: Background, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes, code: int,
    said: str,
) -> None:
    file = tmp_path / "txn.json"
    file.write_bytes(text)
    assert run("txn", url(served), str(file)) == code
    assert said in capsys.readouterr().err


def test_a_missing_file_exits_2(served: Background, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("txn", url(served), str(tmp_path / "none.json")) == 2
    assert "cannot read" in capsys.readouterr().err
