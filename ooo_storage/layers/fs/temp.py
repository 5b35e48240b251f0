"""Temp files: unique names, exclusive creation, and clean-up of the ones their owner abandoned.

A temp file lives in the same filesystem as its target (``<root>/.tmp``) and is created with
``O_EXCL`` under a name ``<host>.<pid>.<8 random hex>.<counter>.<w|r>`` (``w``: a write being
prepared, ``r``: a read's private hard link): host and pid let :func:`clean_temp` decide safely
whether its owner is dead, the random part guards pid reuse and ``O_EXCL`` turns any collision
into an error instead of two writers sharing one file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import socket
import time
from typing import Literal

__all__ = ["TMP_DIR", "TempNamer", "create_temp", "unlink_quiet", "pid_alive", "clean_temp"]

TMP_DIR = ".tmp"


class TempNamer:
    """Unique temp names ``<host>.<pid>.<token>.<counter>.<kind>`` for one store instance.

    The token is random per instance, so two instances in one process (or a process whose pid was
    reused) never produce the same name; the counter makes names unique within an instance.
    ``itertools.count`` is atomic under the GIL, so executor threads share one namer safely.
    """

    __slots__ = ("host", "token", "_counter")

    def __init__(self) -> None:
        self.host = socket.gethostname().replace("/", "_") or "localhost"
        self.token = secrets.token_hex(4)
        self._counter = itertools.count()

    def name(self, kind: Literal["w", "r"]) -> str:
        return f"{self.host}.{os.getpid()}.{self.token}.{next(self._counter)}.{kind}"


def create_temp(tmp_dir: str, namer: TempNamer, kind: Literal["w", "r"] = "w") -> tuple[int, str]:
    """Create a new empty temp file (``O_EXCL``, mode 0600); return ``(fd, path)``."""
    path = os.path.join(tmp_dir, namer.name(kind))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, path


def unlink_quiet(path: str) -> None:
    """Best-effort ``unlink`` for clean-up paths, where a second error must not hide the first."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(tmp_dir: str, grace: float = 3600.0, host: str | None = None) -> int:
    """Remove abandoned temp files (write temps and read hard links) from ``tmp_dir``; return count.

    A name of this host whose pid is dead is removed at once; this process's own names are kept
    (another store instance may be writing); anything else (other hosts, live pids, names we do
    not recognise) is removed only when older than ``grace`` seconds. NFS ``.nfs*`` silly-rename
    files are never touched: the NFS client removes them when their last user closes them.
    """
    host = host if host is not None else TempNamer().host
    me = os.getpid()
    now = time.time()
    removed = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if name.startswith(".nfs"):
            continue
        parts = name.rsplit(".", 4)
        owner_dead = False
        if len(parts) == 5 and parts[0] == host and parts[1].isdigit():
            pid = int(parts[1])
            if pid == me:
                continue
            owner_dead = not pid_alive(pid)
        if not owner_dead:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime <= grace:
                    continue
            except FileNotFoundError:
                continue
        try:
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed
