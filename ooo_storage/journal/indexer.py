"""The indexer: notices that other processes appended to a journal directory.

It calls ``on_change`` every ``rate`` seconds (polling works on every filesystem, NFS included)
and, where Linux inotify is available, also as soon as a file of the directory is written or
created. inotify is used through two libc calls (``inotify_init1``, ``inotify_add_watch``) and the
event loop's ``add_reader``; the events themselves are only drained, never parsed: the journal
re-reads its own index files to see what changed, which is what makes polling and inotify agree.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ooo_storage.journal")

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
_MASK = 0x002 | 0x008 | 0x080 | 0x100 | 0x200


def inotify_watch(directory: Path) -> int | None:
    """A non-blocking inotify descriptor watching ``directory``, or None where inotify is missing
    (not Linux, no libc symbol, or the per-user watch limit is reached)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        init, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add_watch.argtypes, add_watch.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    fd: int = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        log.warning("journal: inotify unavailable (%s), polling only", os.strerror(ctypes.get_errno()))
        return None
    if add_watch(fd, os.fsencode(directory), _MASK) < 0:
        log.warning("journal: cannot watch %s (%s), polling only", directory, os.strerror(ctypes.get_errno()))
        os.close(fd)
        return None
    return fd


class Indexer:
    """Calls ``on_change`` on the running loop when the directory may have changed."""

    def __init__(self, directory: Path, rate: float, on_change: Callable[[], None], inotify: bool) -> None:
        self.directory = directory
        self.rate = rate
        self.on_change = on_change
        self.inotify = inotify
        self._fd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watching(self) -> bool:
        """True when inotify events arrive (besides polling)."""
        return self._fd is not None

    def start(self) -> None:
        if self._poller is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        if self.inotify:
            self._fd = inotify_watch(self.directory)
            if self._fd is not None:
                loop.add_reader(self._fd, self._drain)
        self._poller = loop.create_task(self._poll())

    def _drain(self) -> None:
        assert self._fd is not None
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        self.on_change()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.rate)
            self.on_change()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
