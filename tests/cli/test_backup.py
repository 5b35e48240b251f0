"""Backups: ``ooo-storage export`` / ``import`` round trips (exact objects, ``created`` and
``updated`` kept) and the online snapshot ``POST /?api=backup``, served again by ``serve --data``."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import plyvel  # type: ignore[import-untyped]
import pytest
from cli_served import ROOT, SERVING, Background

from ooo_storage import Layered, LevelDBLayer
from ooo_storage.cli import main
from ooo_storage.cli.backup import Progress, parse_line
from ooo_storage.protocol.access import Policy, token_digest

BIG = 123456789012345678901234567890  # beyond 64 bits: kept exact by LevelDB, export and import


def command(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real command, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "ooo_storage", *argv], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=60)


def cli(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """:func:`ooo_storage.cli.main` in this process (a subprocess costs half a second), its
    standard streams swapped for buffers."""
    streams = (sys.stdin, sys.stdout, sys.stderr)
    out, err = io.BytesIO(), io.StringIO()
    wrappers = io.TextIOWrapper(io.BytesIO(stdin or b"")), io.TextIOWrapper(out, write_through=True)
    sys.stdin, sys.stdout = wrappers
    sys.stderr = err
    try:
        code = main(list(argv))
    finally:
        sys.stdin, sys.stdout, sys.stderr = streams
        for wrapper in wrappers:
            wrapper.detach()  # a collected wrapper would close its buffer
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue().encode())


def fill(path: Path) -> None:
    async def write() -> None:
        async with Layered(embedded=LevelDBLayer(path)) as store:
            await store.set("users/1", {"name": "ana", "big": BIG})
            await store.set("users/2", [1.5, "é\u2028", None, {"deep": {"er": True}}])
            await store.set("top", 1)
            await store.push("logs/*", {"msg": "hi"})
            await store.set_with_meta("a/b/c", b'"old"', 5, 6)
            for i in range(300):
                await store.set(f"many/{i:04}", {"i": i})
    asyncio.run(write())


def raw(path: Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(path))
    try:
        return dict(db.iterator())
    finally:
        db.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "db"
    fill(path)
    return path


def test_export_then_import_into_an_empty_store_gives_identical_objects(source: Path, tmp_path: Path) -> None:
    exported = command("export", "--data", str(source))
    assert exported.returncode == 0 and exported.stderr == b""  # no progress: stderr is not a terminal
    lines = exported.stdout.splitlines()
    assert len(lines) == 305
    assert orjson.loads(next(line for line in lines if b'"path":"a/b/c"' in line)) == \
        {"created": 5, "updated": 6, "index": "c", "path": "a/b/c", "data": "old"}
    assert b'"big":%d' % BIG in exported.stdout
    (tmp_path / "dump.jsonl").write_bytes(exported.stdout)
    imported = command("import", "--data", str(tmp_path / "copy"), str(tmp_path / "dump.jsonl"))
    assert imported.returncode == 0, imported.stderr
    assert raw(tmp_path / "copy") == raw(source)  # every object byte for byte, stamps included
    assert cli("export", "--data", str(tmp_path / "copy")).stdout == exported.stdout


def test_export_glob_and_import_from_stdin(source: Path, tmp_path: Path) -> None:
    exported = cli("export", "--glob", "users/*", "--data", str(source))
    assert [orjson.loads(line)["path"] for line in exported.stdout.splitlines()] == ["users/1", "users/2"]
    assert cli("import", "--data", str(tmp_path / "copy"), "-", stdin=exported.stdout).returncode == 0
    copy = raw(tmp_path / "copy")
    assert copy == {k: v for k, v in raw(source).items() if k.startswith(b"users/")}


def test_import_refuses_a_store_with_keys_unless_merge(source: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(cli("export", "--glob", "users/*", "--data", str(source)).stdout)
    target = tmp_path / "target"
    assert cli("import", "--data", str(target), "-", stdin=b'{"path":"users/1","created":1,"updated":2,'
               b'"data":"mine"}\n').returncode == 0
    refused = cli("import", "--data", str(target), str(dump))
    assert refused.returncode == 1
    assert refused.stderr.decode() == (f"ooo-storage: import: {target} already holds keys: give an empty or "
                                       "new --data DIR, or --merge to replace the keys the dump holds\n")
    assert raw(target)[b"users/1"] == b'{"created":1,"updated":2,"index":"1","path":"users/1","data":"mine"}'
    assert cli("import", "--merge", "--data", str(target), str(dump)).returncode == 0
    assert raw(target) == {k: v for k, v in raw(source).items() if k.startswith(b"users/")}


@pytest.mark.parametrize(("line", "reason"), [
    (b"nope", "not JSON"),
    (b"[1]", "not an object"),
    (b'{"path":"logs/*","created":1,"updated":1,"data":1}', "'path' must be a key without a glob, not 'logs/*'"),
    (b'{"path":"k","created":-1,"updated":1,"data":1}', "'created' must be a positive whole number and 'updated' a whole number"),
    (b'{"path":"k","created":0,"updated":1,"data":1}', "'created' must be a positive whole number and 'updated' a whole number"),
    (b'{"path":"a/b","created":1,"updated":1,"index":"x","data":1}',
     "'index' 'x' is not the last part of 'path' 'a/b': the line is damaged"),
    (b'{"path":"k","created":1,"updated":1}', "no 'data'"),
])
def test_a_bad_line_stops_the_import_naming_its_number(tmp_path: Path, line: bytes, reason: str) -> None:
    good = b'{"path":"k","created":1,"updated":2,"data":{"x":1}}\n'
    done = cli("import", "--data", str(tmp_path / "db"), "-", stdin=good + b"\n" + line + b"\n")
    assert done.returncode == 1
    message = done.stderr.decode()
    assert message.startswith(f"ooo-storage: import: stdin:3: {reason}"), message
    assert message.endswith("; the lines before it are imported\n")
    assert raw(tmp_path / "db") == {b"k": b'{"created":1,"updated":2,"index":"k","path":"k","data":{"x":1}}'}


def test_parse_line_keeps_numbers_exact() -> None:
    assert parse_line(b'{"path":"n","created":1,"updated":2,"data":[%d,1e-5]}' % BIG) == \
        ("n", b"[%d,1e-05]" % BIG, 1, 2)


def test_export_of_a_missing_or_open_database_says_why(tmp_path: Path) -> None:
    missing = cli("export", "--data", str(tmp_path / "none"))
    assert (missing.returncode, missing.stderr.decode()) == (1, f"ooo-storage: {tmp_path}/none: no such database directory\n")
    (tmp_path / "empty").mkdir()
    empty = cli("export", "--data", str(tmp_path / "empty"))
    assert (empty.returncode, empty.stdout, empty.stderr.decode()) == (
        1, b"", f"ooo-storage: no database in {tmp_path}/empty (an empty directory): give the --data of a store\n")
    assert list((tmp_path / "empty").iterdir()) == []  # no database invented
    db = plyvel.DB(str(tmp_path / "open"), create_if_missing=True)  # another process holds the lock
    try:
        busy = command("export", "--data", str(tmp_path / "open"))
    finally:
        db.close()
    assert busy.returncode == 1
    assert "a server running on it has it locked: stop it, or use --url / POST /?api=backup" in busy.stderr.decode()


def test_progress_is_drawn_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        progress = Progress("imported", stream, total=200)
        progress.step(100)
        progress.finish()
    assert hidden.getvalue() == ""
    assert shown.getvalue().startswith("\r[" + "#" * 15 + " " * 15 + "]  50% imported 1 objects")
    assert shown.getvalue().endswith("] 100% imported 1 objects\n")


def test_export_over_http_then_import_keeps_the_objects(tmp_path: Path) -> None:
    server = Background(list_limit=7)  # the 30 items of a/b/* come in 5 pages
    try:
        url = server.start()
        server.call(server.store.set_with_meta("users/1", b'{"name":"ana","big":%d}' % BIG, 7, 8))
        server.call(server.store.set("top", [1, 2]))
        for i in range(30):
            server.call(server.store.set(f"a/b/{i}", i))
        objects = {o.path: o for o in server.call(server.store.get_list("*"))
                   + server.call(server.store.get_list("*/*")) + server.call(server.store.get_list("*/*/*"))}
        exported = cli("export", "--url", url)
        assert exported.returncode == 0, exported.stderr
        globbed = cli("export", "--url", url, "--glob", "a/b/*")
    finally:
        server.close()
    assert len(globbed.stdout.splitlines()) == 30
    assert cli("import", "--data", str(tmp_path / "db"), "-", stdin=exported.stdout).returncode == 0
    copied = {k.decode(): v for k, v in raw(tmp_path / "db").items()}
    assert copied == {key: obj.to_json() for key, obj in objects.items()}
    assert orjson.loads(copied["users/1"])["created"] == 7
    assert b'"big":%d}' % BIG in copied["users/1"]  # exact: not a float through orjson


def test_export_over_http_says_why_it_cannot(tmp_path: Path) -> None:
    done = cli("export", "--url", "http://127.0.0.1:9")
    assert done.returncode == 1 and done.stderr.decode().startswith("ooo-storage: export: ")
    assert done.stdout == b""


# -- POST /?api=backup -----------------------------------------------------------------------------


class Serve:
    """``ooo-storage serve --data DIR [--backup-dir ROOT]`` as a process on a free port."""

    def __init__(self, data: Path, *argv: str) -> None:
        self.data, self.argv = data, argv
        self.url = ""

    async def __aenter__(self) -> Serve:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--data", str(self.data),
            *self.argv, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        async with asyncio.timeout(20):
            while not (found := SERVING.search((line := await self.process.stderr.readline()).decode())):
                assert line, "serve exited"
        self.url = f"http://127.0.0.1:{found.group(3)}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.process.terminate()
        assert await self.process.wait() == 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def snapshot(http: aiohttp.ClientSession, url: str, keys: list[str]) -> dict[str, bytes]:
    found = {}
    for key in keys:
        async with http.get(f"{url}/{key}") as reply:
            found[key] = await reply.read() if reply.status == 200 else b"missing"
    return found


async def test_online_backup_is_consistent_and_serves_again(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    (tmp_path / "backups").mkdir()
    target = tmp_path / "backups" / "one"
    async with Serve(tmp_path / "data", "--backup-dir", str(tmp_path / "backups")) as served:
        before = [f"k/{i}" for i in range(200)]
        await asyncio.gather(*(http.post(f"{served.url}/{key}", data=b'{"n":%d}' % i)
                               for i, key in enumerate(before)))
        await http.post(f"{served.url}/big", data=b"%d" % BIG)
        writes = [http.post(f"{served.url}/after/{i}", data=b"1") for i in range(50)]
        async with http.post(f"{served.url}/?api=backup&target=one") as reply:
            assert reply.status == 200, await reply.text()
            answer = await reply.json()
        await asyncio.gather(*writes)
        assert answer["target"] == str(target) and answer["keys"] >= 201
        expected = await snapshot(http, served.url, [*before, "big"])
        async with http.post(f"{served.url}/?api=backup&target={target}") as again:
            assert (again.status, await again.text()) == (
                409, f"ooo: backup: target '{target}' exists and is not empty: give a new or empty directory")
        async with http.post(f"{served.url}/?api=backup", params={"target": "a\0b"}) as refused:
            assert (refused.status, await refused.text()) == (
                400, "ooo: backup: target 'a\\x00b' holds a control character: give a plain name")
    async with Serve(target) as copy:
        assert await snapshot(http, copy.url, [*before, "big"]) == expected
        async with http.get(f"{copy.url}/", headers={"Accept": "application/json"}) as reply:
            keys = (await reply.json())["keys"]
    assert len(keys) == answer["keys"]  # the writes racing the backup are in it or not, whole
    assert set(keys) - {*before, "big"} <= {f"after/{i}" for i in range(50)}


def test_backup_refused_without_leveldb_or_admin(tmp_path: Path) -> None:
    admin, reader = "a" * 40, "r" * 40
    policy = Policy.from_dict({"tokens": [
        {"name": "admin", "sha256": token_digest(admin), "rules": [{"paths": ["*"], "rights": ["admin"]}]},
        {"name": "reader", "sha256": token_digest(reader), "rules": [{"paths": ["*"], "rights": ["read"]}]},
    ]})
    server = Background(auth=policy)

    async def ask(url: str, token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/?api=backup&target={tmp_path}/b", headers=headers) as reply:
            return reply.status, await reply.text()

    try:
        url = server.start()
        assert asyncio.run(ask(url, reader)) == (403, "ooo: forbidden: reader may not admin /")
        assert asyncio.run(ask(url, None))[0] == 401
        status, text = asyncio.run(ask(url, admin))
    finally:
        server.close()
    assert (status, text) == (501, "ooo: backup: snapshots are of LevelDB, and this is a memory-only store: "
                                   "copy its files while it is stopped instead (docs/operations.md, Backups)")
    assert not (tmp_path / "b").exists()


def test_layer_backup_excludes_writes_after_the_call(tmp_path: Path) -> None:
    async def run() -> tuple[int, list[str]]:
        layer = LevelDBLayer(tmp_path / "db")
        async with Layered(embedded=layer) as store:
            await store.set("one", 1)
            copying = layer.backup(tmp_path / "copy")  # the snapshot is taken here
            await store.set("two", 2)
            count = await copying
        async with Layered(embedded=LevelDBLayer(tmp_path / "copy")) as copy:
            return count, await copy.keys()

    assert asyncio.run(run()) == (1, ["one"])




@pytest.mark.parametrize(("remote", "local"), [("127.0.0.1", True), ("::1", True), (None, True),
                                               ("10.1.2.3", False), ("fe80::1%eth0", False), ("odd", False)])
def test_without_a_policy_only_a_local_client_may_back_up(remote: str | None, local: bool) -> None:
    from ooo_storage.server.backup import _local

    assert _local(remote) is local


def test_a_directory_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for argv in (("export", "--data", str(tmp_path)), ("import", "--data", str(tmp_path), "-")):
        done = cli(*argv, stdin=b"")
        assert done.returncode == 1
        assert done.stderr.decode().endswith(
            f"{tmp_path}: not a LevelDB directory (no CURRENT file): give the --data of a store\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


async def backup_answers(data: Path, targets: list[str], backup_dir: Path | None) -> list[tuple[int, str]]:
    """The answers of a LevelDB server on ``data`` (``backup_dir`` given or not) to one backup per
    target."""
    from ooo_storage.server import ServerRunner

    answers = []
    async with Layered(embedded=LevelDBLayer(data)) as store, ServerRunner(
            store, "127.0.0.1", 0, backup_dir=None if backup_dir is None else str(backup_dir)) as runner, \
            aiohttp.ClientSession() as http:
        await store.set("k", 1)
        for target in targets:
            async with http.post(f"{runner.url}/", params={"api": "backup", "target": target}) as reply:
                answers.append((reply.status, await reply.text()))
    return answers


async def test_without_a_backup_dir_backups_over_http_are_off(tmp_path: Path) -> None:
    answers = await backup_answers(tmp_path / "data", [str(tmp_path / "b"), "/etc/ooo-never"], None)
    assert answers == [(403, "ooo: backup: backups over HTTP are off: start the server with --backup-dir "
                             "DIR (the directory backups may be written to)")] * 2
    assert not (tmp_path / "b").exists()


async def test_a_backup_goes_only_inside_the_backup_dir(tmp_path: Path) -> None:
    root, outside = tmp_path / "backups", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    escapes = ["../elsewhere/x", str(outside / "x"), "link/x", "link", "/tmp/ooo-never", ".", "", "a\0b", "a\nb"]
    targets = [*escapes, "data/in", "ok", str(root / "abs"), "deep/er"]  # the last three are written
    answers = await backup_answers(root / "data", targets, root)  # a data directory in it: not that
    reason = f"is not inside the backup directory {root}: give a name in it, e.g. ?api=backup&target=ooo-2026-12-03"
    for target, (status, text) in zip(escapes[:6], answers, strict=False):
        assert (status, text) == (400, f"ooo: backup: target {target!r} {reason}")
    assert answers[6] == (400, "ooo: backup: give the name of a new directory in the backup directory: "
                               "?api=backup&target=NAME")
    assert answers[7] == (400, "ooo: backup: target 'a\\x00b' holds a control character: give a plain name")
    assert answers[8] == (400, "ooo: backup: target 'a\\nb' holds a control character: give a plain name")
    assert answers[9] == (400, "ooo: backup: target 'data/in' is inside the data directory: give a "
                               "directory elsewhere")
    for (status, text), made in zip(answers[10:], ["ok", "abs", "deep/er"], strict=True):
        assert status == 200, text
        assert orjson.loads(text)["target"] == str(root / made) and (root / made / "CURRENT").is_file()
    assert list(outside.iterdir()) == [] and not Path("/tmp/ooo-never").exists()
    assert sorted(p.name for p in root.iterdir()) == ["abs", "data", "deep", "link", "ok"]


def test_export_to_a_full_device_is_one_line_and_status_1(source: Path) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "ooo_storage", "export", "--data", str(source)],
                              cwd=ROOT, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert (done.returncode, done.stderr.decode()) == (
        1, "ooo-storage: export: can't write the dump to stdout: No space left on device\n")


def test_a_dump_that_fails_to_read_midway_is_one_line_and_status_1(tmp_path: Path) -> None:
    done = cli("import", "--data", str(tmp_path / "db"), "/proc/self/mem")  # open works, read is EIO
    assert (done.returncode, done.stderr.decode()) == (
        1, "ooo-storage: import: /proc/self/mem: can't read it: Input/output error; the lines before "
           "the failure are imported\n")
