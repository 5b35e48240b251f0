"""Large JSON work (parse, merge, encode) in a worker process, off the event loop.

Parsing, merging and re-encoding a 9 MB document takes ~0.7 s of CPU (more when the garbage
collector walks the millions of objects it creates). On the loop, every other request waits that
long. A thread does not help: orjson never releases the GIL, so each of its calls on the document
(tens to hundreds of ms) would still stop the loop. The work therefore runs in a worker process
(``python -m ooo_storage.server.jsonworker``, from the same source tree) that gets JSON text
through a pipe and gives JSON text back; a thread of its own does the blocking pipe I/O, which
releases the GIL. Work on at most :data:`INLINE_BYTES` of JSON stays inline: almost every request is
small, and a round trip to the worker costs more than parsing a few KB.

One worker for the whole process, started on first use and again if it dies; requests take turns
(one thread talks to it), so at most one large document is parsed at a time and large requests
use at most one more core. The worker exits when its stdin closes, i.e. with this process, however it ends.
This is a plain subprocess, not :mod:`multiprocessing`: nothing of the embedding program (its
``__main__``) is imported or run again there.

Frames, both ways: a one-byte tag, a count, then each part as an 8-byte length and its bytes.
Requests are tagged with the operation (:data:`COMPACT`, :data:`MERGE`); replies with
:data:`OK` (one part: the JSON text) or an error kind (one part: its message).
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from ..errors import HTTPFailure, InvalidData
from ..protocol.merge import MergeError

INLINE_BYTES = 256 * 1024
"""JSON work on at most this many bytes of text runs inline, on the loop."""

COMPACT = b"c"
"""One body → the same JSON value, compact (InvalidData if it is not exactly one JSON value)."""
MERGE = b"m"
"""Stored text, body → the PATCH merge, compact with sorted keys (InvalidData, MergeError)."""
OK, INVALID, UNMERGEABLE, FAILED = b"0", b"1", b"2", b"3"

_HEAD = struct.Struct("<cI")
_SIZE = struct.Struct("<Q")


def write_frame(out: IO[bytes], tag: bytes, *parts: bytes) -> None:
    out.write(_HEAD.pack(tag, len(parts)))
    for part in parts:
        out.write(_SIZE.pack(len(part)))
        out.write(part)
    out.flush()


def read_frame(src: IO[bytes]) -> tuple[bytes, list[bytes]] | None:
    """The next frame, or None at the end of the stream."""
    head = src.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    tag, count = _HEAD.unpack(head)
    parts = []
    for _ in range(count):
        (size,) = _SIZE.unpack(src.read(_SIZE.size))
        part = src.read(size)
        if len(part) < size:
            return None
        parts.append(part)
    return tag, parts


class WorkerDied(Exception):
    """The worker process ended in the middle of a request."""


class _Worker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="ooo-json-worker")

    def _started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            # The worker imports the very package this process runs, wherever it came from.
            source = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-m", "ooo_storage.server.jsonworker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )
        return proc

    def call(self, op: bytes, *parts: bytes) -> bytes:
        with self._lock:
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                write_frame(proc.stdin, op, *parts)
                reply = read_frame(proc.stdout)
            except (BrokenPipeError, struct.error):
                reply = None
            if reply is None:
                proc.kill()
                proc.wait()
                raise WorkerDied()
        tag, (text,) = reply
        if tag == OK:
            return text
        message = text.decode()
        if tag == INVALID:
            raise InvalidData(message)
        if tag == UNMERGEABLE:
            raise MergeError(message)
        raise RuntimeError(f"JSON worker: {message}")


_worker = _Worker()


async def run(op: bytes, *parts: bytes) -> bytes:
    """The JSON text ``op`` makes of ``parts``, computed in the worker process (503 if it died
    meanwhile; the next call starts a new one)."""
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_worker.thread, _worker.call, op, *parts)
    except WorkerDied:
        raise HTTPFailure(503, "ooo: the JSON worker process died; retry the request") from None
