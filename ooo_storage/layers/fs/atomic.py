"""Crash-safe writes: a complete temp file, fsynced, then published by ``rename`` or ``link``.

The rules (docs/layers.md):

* data is written completely (short writes are looped), fsynced, then published by ``rename`` (or
  ``link`` for create-if-absent) and the directory entry is fsynced; new parent directories are
  fsynced up to the root, otherwise a power failure may lose the directory holding the new file;
* a published file is never rewritten in place;
* a failed ``fsync`` fails the operation: the kernel may already have dropped the dirty pages, so
  retrying the same descriptor could report a success that is not true.

``durability`` says how much of this a store pays for: ``"full"`` all of it, ``"data"`` no
directory fsync (never a torn file, but a rename may be lost on power failure), ``"none"`` no fsync.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import Literal

from .temp import TMP_DIR, TempNamer, create_temp, unlink_quiet

__all__ = [
    "Durability",
    "DURABILITY_LEVELS",
    "write_all",
    "fsync_dir",
    "makedirs_durable",
    "publish",
    "write_file_atomic",
    "write_file_with",
]

Durability = Literal["none", "data", "full"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("none", "data", "full")

_IOV_MAX = 1024  # POSIX minimum is 16, Linux allows 1024 buffers per writev
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def write_all(fd: int, chunks: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write every byte of ``chunks`` with ``os.writev``, looping on short writes; return the total.

    ``writev`` avoids concatenating a header with a large value (a copy of the whole value).
    """
    views = [memoryview(c).cast("B") for c in chunks if len(c)]
    total = 0
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        if n <= 0:  # pragma: no cover - regular files never return 0 for a non-empty write
            raise OSError(errno.EIO, "writev wrote nothing")
        total += n
        while n and views:
            head = views[0]
            if n >= len(head):
                n -= len(head)
                views.pop(0)
            else:
                views[0] = head[n:]
                n = 0
    return total


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str, root: str, mode: int = 0o700, durable: bool = True) -> list[str]:
    """Create ``path`` and its missing parents below ``root`` with ``mode``; return the new ones.

    Each level is made by ``os.mkdir`` (``os.makedirs`` gives intermediate levels the umask mode,
    not 0700). With ``durable`` the parent of every new directory is fsynced, so the new directory
    entries survive a power failure. Directories created concurrently by another process count as
    existing.
    """
    missing: list[str] = []
    cur = path
    while cur != root and not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created: list[str] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        created.append(d)
    if durable:
        for d in reversed(created):  # deepest first: its parent is fsynced before the root
            fsync_dir(os.path.dirname(d))
    return created


def publish(tmp: str, final: str, root: str, durability: Durability, exclusive: bool = False) -> bool:
    """Move a complete temp file to ``final``: ``rename`` (replace), or ``link`` when ``exclusive``.

    Creates the missing directories of ``final`` on ``FileNotFoundError`` and retries once. With
    ``exclusive`` returns False if ``final`` already exists (the temp file is left for the caller).
    With ``durability == "full"`` the leaf directory is fsynced. Returns True once published.
    """
    leaf = os.path.dirname(final)
    for attempt in (0, 1):
        try:
            if exclusive:
                os.link(tmp, final)
            else:
                os.rename(tmp, final)
            break
        except FileNotFoundError:
            if attempt or not os.path.exists(tmp):
                raise
            makedirs_durable(leaf, root, durable=durability == "full")
        except FileExistsError:
            if not exclusive:
                raise
            # On NFS a retransmitted LINK of our own succeeds then reports EEXIST: same inode = ours.
            if not _same_inode(tmp, final):
                return False
            break
    if durability == "full":
        fsync_dir(leaf)
    return True


def _same_inode(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def write_file_atomic(
    final: str,
    chunks: Sequence[bytes | bytearray | memoryview],
    root: str,
    namer: TempNamer,
    durability: Durability = "full",
    exclusive: bool = False,
    tmp_dir: str | None = None,
) -> bool:
    """The whole crash-safe write of ADAPTERS §5.2 in one call: temp, write, fsync, publish, fsync dir.

    The temp file is removed on every path (after a rename it no longer exists; after a link or
    any error it is unlinked), so no temp file leaks while the process lives. Returns False only
    for ``exclusive`` when ``final`` already existed (nothing was changed).
    """
    return write_file_with(
        final, lambda fd: write_all(fd, chunks), root, namer, durability, exclusive, tmp_dir
    )


def write_file_with(
    final: str,
    fill: Callable[[int], object],
    root: str,
    namer: TempNamer,
    durability: Durability = "full",
    exclusive: bool = False,
    tmp_dir: str | None = None,
) -> bool:
    """:func:`write_file_atomic` where ``fill(fd)`` writes the content (streamed values, or a header
    patched with ``os.pwrite`` once a checksum over the streamed bytes is known)."""
    fd, tmp = create_temp(tmp_dir or os.path.join(root, TMP_DIR), namer, "w")
    try:
        try:
            fill(fd)
            if durability != "none":
                os.fsync(fd)
        finally:
            os.close(fd)
        done = publish(tmp, final, root, durability, exclusive)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if exclusive:
        unlink_quiet(tmp)
    return done
