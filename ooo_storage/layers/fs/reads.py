"""Reads that a concurrent replace or delete, by any process and over NFS, cannot cut short."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar

from ...errors import no_space
from .temp import TempNamer, unlink_quiet

__all__ = ["read_exact", "read_with"]

T = TypeVar("T")

_NOT_THERE = (errno.ENOENT, errno.ESTALE)  # ESTALE: NFS file deleted by another client meanwhile
_RESOLVE_ATTEMPTS = 1000  # a name replaced this often in a row while we open it: give up


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes (or fewer only at end of file). One ``read`` for regular files."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.read(fd, n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_with(
    path: str,
    reader: Callable[[int, os.stat_result], T],
    tmp_dir: str | None = None,
    namer: TempNamer | None = None,
) -> T | None:
    """Open ``path`` and return ``reader(fd, fstat)``, or None if it does not exist.

    With ``tmp_dir`` and ``namer`` the file is first hard-linked to a private temp name (SOS "link"
    mode: the content stays readable even if ``path`` is replaced or deleted meanwhile, on any
    filesystem including NFS); the link is closed before it is unlinked, which avoids NFS
    ``.nfsXXXX`` silly renames. Without them the file is opened directly (an open descriptor already
    pins the inode on a local filesystem).

    None means the name does not exist: a path that is being replaced is never reported missing.
    """
    link = None
    target = path
    if tmp_dir is not None and namer is not None:
        link = os.path.join(tmp_dir, namer.name("r"))
        pinned = _pin(path, link)
        if pinned is None:
            return None
        target = pinned
    try:
        fd = _open_existing(target)
        if fd is None:
            return None
        try:
            return reader(fd, os.fstat(fd))
        finally:
            os.close(fd)
    finally:
        if link is not None and target == link:
            unlink_quiet(link)


def _pin(path: str, link: str) -> str | None:
    """Hard-link ``path`` to the private name ``link``; return the name to read, None if missing.

    ``link(2)`` fails with ENOENT both when the name is gone and when the name was found but its
    inode lost that name (a concurrent rename replaced it) before the link was made, and NFS may
    say ESTALE for the latter: only a name that no longer exists is missing, otherwise link the
    name's new inode. A filesystem without room for one more link (ENOSPC/EDQUOT: a full inode
    table, a full directory) must not stop reads: ``path`` itself is returned, to be opened
    directly (the open descriptor pins the inode on a local filesystem; on NFS a concurrent
    replacement can fail the read with ESTALE, and the record checksum still guards the data).
    """
    for _ in range(_RESOLVE_ATTEMPTS):
        try:
            os.link(path, link)
            return link
        except FileExistsError:
            # The name is unique, so this is an NFS retransmission of our own LINK: it did succeed.
            os.lstat(link)
            return link
        except OSError as exc:
            if no_space(exc):
                return path
            if exc.errno not in _NOT_THERE:
                raise
            if not _exists(path):
                return None
    raise _churn(path)


def _open_existing(path: str) -> int | None:
    """``os.open(path)`` for reading, None if ``path`` does not exist (ESTALE re-checked as above)."""
    for _ in range(_RESOLVE_ATTEMPTS):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise
            if exc.errno == errno.ENOENT or not _exists(path):
                return None  # open(2) resolves and opens in one step: ENOENT means missing
    raise _churn(path)


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return False
        raise
    return True


def _churn(path: str) -> OSError:
    return OSError(
        errno.EAGAIN, f"{path} was replaced {_RESOLVE_ATTEMPTS} times in a row while being opened"
    )
