"""``ooo-storage export`` and ``ooo-storage import``: a store as JSON lines, and back.

::

    ooo-storage export [--glob G] [--data DIR | --url URL [--token T]] > dump.jsonl
    ooo-storage import [--data DIR] [--merge] dump.jsonl      (or - for stdin)

A dump holds one object per line, exactly as the store keeps it (docs/protocol.md §2.1):
``{"created":…,"updated":…,"index":…,"path":<key>,"data":…}``, so ``created`` and ``updated``
survive the round trip (``Layered.set_with_meta``). Both stream: neither holds the store nor the
dump in memory. A progress line goes to stderr only when stderr is a terminal.

``export --data`` reads a LevelDB directory that no server has open (LevelDB allows one process),
byte for byte; ``export --url`` reads a running server page by page over HTTP (a key written
meanwhile may or may not be in it; ``POST /?api=backup`` takes a consistent snapshot instead).
``import`` writes into a LevelDB directory no server has open, and refuses one that already holds keys unless
``--merge`` (then a key in the dump replaces the stored one). Exit status: 0 done, 1 a source or
target that cannot be used or a bad line (named by its number; the lines before it are imported),
2 a bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import IO, TYPE_CHECKING, Any

from ..errors import StorageError
from ..protocol import jsontext, keys

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["add_parsers", "Progress"]

_IMPORT_BATCH = 1000  # writes in flight at once: they share LevelDB batches


class _Failed(Exception):
    """A reason to stop, said on one line (exit status 1)."""


class Progress:
    """``\\r``-rewritten progress on ``stream`` when it is a terminal, at most 10 times a second;
    silent otherwise (a log, a pipe)."""

    def __init__(self, verb: str, stream: IO[str] | None = None, total: int | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.shown = self.stream.isatty()
        self.verb, self.total = verb, total
        self.count, self.done = 0, 0
        self._next = 0.0

    def step(self, done: int = 0) -> None:
        self.count += 1
        self.done = done
        if self.shown and (now := time.monotonic()) >= self._next:
            self._next = now + 0.1
            self._draw()

    def _draw(self) -> None:
        text = f"{self.verb} {self.count} objects"
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"[{bar:<30}] {share:4.0%} {text}"
        self.stream.write(f"\r{text}")
        self.stream.flush()

    def finish(self) -> None:
        if self.shown:
            self.done = self.total or 0
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``export`` and ``import``; each sets ``func(args) -> exit status``."""
    summary = "write every object (or a glob's) as JSON lines with created/updated, to stdout"
    export = subparsers.add_parser("export", help=summary, description=summary, epilog=_EPILOG)
    export.add_argument("--glob", metavar="G", help="only the keys matching the glob G, e.g. 'users/*'")
    source = export.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="LevelDB directory no server has open (default ./data)")
    source.add_argument("--url", metavar="URL", help="a running server, e.g. http://127.0.0.1:8800")
    export.add_argument("--token", help="bearer token for --url (default: $OOO_TOKEN); needs admin "
                        "without --glob (the key listing)")
    export.set_defaults(func=_export)
    summary = "store the objects of an export dump (created/updated kept) in a LevelDB directory"
    load = subparsers.add_parser("import", help=summary, description=summary)
    load.add_argument("dump", metavar="FILE", help="the dump (JSON lines), or - for stdin")
    load.add_argument("--data", metavar="DIR", default="./data",
                      help="LevelDB directory no server has open (default ./data; created if missing)")
    load.add_argument("--merge", action="store_true",
                      help="import into a store that already holds keys (a key in the dump replaces it)")
    load.set_defaults(func=_import)


_EPILOG = (
    "A line is one object as the store keeps it: {created, updated, index, path (the key), data}. "
    "--data reads a directory no server has open; --url reads a running server page by page (not a "
    "consistent snapshot: POST /?api=backup takes one). A progress line goes to stderr on a terminal. "
    "Exit status: 0 done; 1 the source cannot be read; 2 bad argument."
)


def _glob(text: str | None) -> str | None:
    if text is not None and not keys.is_valid(text):
        raise _Failed(f"export: --glob {text!r} is not a valid key or glob")
    return text


def _write(line: bytes) -> None:
    sys.stdout.buffer.write(line + b"\n")


def _quiet_stdout() -> None:
    """Point file descriptor 1 at /dev/null after a failed write, so that the interpreter's last
    flush of what is still buffered does not print a traceback after our one-line reason."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _export(args: argparse.Namespace) -> int:
    try:
        pattern = _glob(args.glob)
        progress = Progress("exported")
        if args.url is not None:
            asyncio.run(_export_url(args.url, args.token, pattern, progress))
        else:
            _export_data(args.data or "./data", pattern, progress)
        sys.stdout.flush()
        progress.finish()
    except _Failed as exc:
        print(f"ooo-storage: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `ooo-storage export | head`
        sys.stderr.close()
    except OSError as exc:  # `> /dev/full`, a disk that fills, a dead NFS mount...
        _quiet_stdout()
        print(f"ooo-storage: export: can't write the dump to stdout: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _open_layer(path: str, create: bool) -> Any:
    from ..layers import LevelDBLayer

    if not create and not os.path.isdir(path):
        raise _Failed(f"{path}: no such database directory")
    if not create and not os.listdir(path):  # LevelDB would make an empty database there
        raise _Failed(f"no database in {path} (an empty directory): give the --data of a store")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, "CURRENT")):
        raise _Failed(f"{path}: not a LevelDB directory (no CURRENT file): give the --data of a store")
    layer = LevelDBLayer(path)
    try:
        layer.start()
    except StorageError as exc:
        raise _Failed(f"{path}: can't open the database ({exc}); a server running on it has it "
                      "locked: stop it, or use --url / POST /?api=backup") from None
    return layer


def _export_data(path: str, pattern: str | None, progress: Progress) -> None:
    from ..layers.leveldb import user_iterator
    from ..protocol.objects import load_object

    layer = _open_layer(path, create=False)
    try:
        prefix = keys.glob_prefix(pattern).encode() if pattern else b""
        for raw_key, raw in user_iterator(layer.db, prefix):
            key = raw_key.decode()
            if pattern is not None and not keys.match(pattern, key):
                continue
            obj = load_object(key, raw)
            _write((obj if obj.path == key else obj._replace(path=key)).to_json())
            progress.step()
    finally:
        layer.close()


def _parents(all_keys: list[str]) -> Iterator[str]:
    """The globs that together match every key exactly once: ``a/b/*`` for ``a/b/c``, ``*`` for a
    top-level key (a ``*`` never crosses a ``/``)."""
    seen: set[str] = set()
    for key in all_keys:
        head, slash, _ = key.rpartition("/")
        glob = f"{head}/*" if slash else "*"
        if glob not in seen:
            seen.add(glob)
            yield glob


async def _export_url(url: str, token: str | None, pattern: str | None, progress: Progress) -> None:
    import aiohttp

    from ..client import Client, ClientError
    from .client import TOKEN_ENV

    token = token if token is not None else os.environ.get(TOKEN_ENV)
    try:
        async with Client(url, token=token or None) as client:
            globs = [pattern] if pattern is not None else list(_parents(await client.keys()))
            for glob in globs:
                async for entry in _pages(client, glob):
                    _write(jsontext.dumps(entry))
                    progress.step()
    except ClientError as exc:
        raise _Failed(f"export: {exc}") from None
    except aiohttp.ClientError as exc:
        raise _Failed(f"export: {url}: {type(exc).__name__}: {exc}") from None


async def _pages(client: Client, glob: str) -> AsyncIterator[Any]:
    """The items of ``glob``, page by page, read with :mod:`~ooo_storage.protocol.jsontext` so that
    every number stays exact (``Client.get_page`` decodes with orjson: an integer beyond 64 bits
    would come back as a float)."""
    from yarl import URL

    from ..client import ClientError

    url = client.base_url.join(URL(glob))
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    cursor: str | None = None
    while True:
        query = {} if cursor is None else {"cursor": cursor}
        async with client.session().get(url, params=query, headers=headers) as reply:
            body = await reply.read()
            if reply.status != 200:
                raise ClientError(reply.status, body.decode(errors="replace"))
            cursor = reply.headers.get("X-Next-Cursor")
        for entry in jsontext.loads(body):
            yield entry
        if cursor is None:
            return


def _import(args: argparse.Namespace) -> int:
    try:
        stream = sys.stdin.buffer if args.dump == "-" else open(args.dump, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"ooo-storage: import: {args.dump}: {exc.strerror}", file=sys.stderr)
        return 1
    total = None if args.dump == "-" else os.fstat(stream.fileno()).st_size
    progress = Progress("imported", total=total)
    name = "stdin" if args.dump == "-" else args.dump
    try:
        asyncio.run(_import_into(args.data, stream, args.merge, progress, name))
    except _Failed as exc:
        progress.finish()
        print(f"ooo-storage: import: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # reading the dump failed midway (a device error, a dead mount)
        progress.finish()
        print(f"ooo-storage: import: {name}: can't read it: {exc.strerror or exc}; the lines before "
              "the failure are imported", file=sys.stderr)
        return 1
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    progress.finish()
    return 0


def parse_line(line: bytes) -> tuple[str, bytes, int, int]:
    """A dump line's key, data (compact JSON text, numbers exact), created and updated; ValueError
    saying what is wrong. The store derives ``index`` from the key, so a line whose ``index`` says
    otherwise was damaged or hand-edited: refused rather than half believed (a line without
    ``index`` is fine). ``created`` is positive: 0 is what the store shows for a key never written."""
    try:
        obj = jsontext.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    key = obj.get("path")
    if not isinstance(key, str) or not keys.is_valid(key) or keys.has_glob(key):
        raise ValueError(f"'path' must be a key without a glob, not {key!r}")
    created, updated = obj.get("created"), obj.get("updated")
    if not (type(created) is int and type(updated) is int and created > 0 and updated >= 0):
        raise ValueError("'created' must be a positive whole number and 'updated' a whole number "
                         "(microseconds; updated 0: never updated)")
    index = obj.get("index", key.rpartition("/")[2])
    if index != key.rpartition("/")[2]:
        raise ValueError(f"'index' {index!r} is not the last part of 'path' {key!r}: the line is damaged")
    if "data" not in obj:
        raise ValueError("no 'data'")
    return key, jsontext.dumps(obj["data"]), created, updated


async def _import_into(path: str, stream: IO[bytes], merge: bool, progress: Progress, name: str) -> None:
    from ..layered import Layered
    from ..layers.leveldb import user_iterator

    layer = _open_layer(path, create=True)
    if not merge and next(user_iterator(layer.db, include_value=False), None) is not None:
        layer.close()
        raise _Failed(f"{path} already holds keys: give an empty or new --data DIR, or --merge to "
                      "replace the keys the dump holds")
    store = Layered(embedded=layer)
    await store.start()
    try:
        pending: list[Any] = []
        done = 0
        for number, line in enumerate(stream, 1):
            done += len(line)
            if not line.strip():
                continue
            try:
                key, data, created, updated = parse_line(line)
            except ValueError as exc:
                await asyncio.gather(*pending)
                raise _Failed(f"{name}:{number}: {exc}; the lines before it are imported") from None
            pending.append(store.set_with_meta(key, data, created, updated))
            progress.step(done)
            if len(pending) >= _IMPORT_BATCH:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    except StorageError as exc:
        raise _Failed(f"{path}: {exc}") from None
    finally:
        await store.close()
