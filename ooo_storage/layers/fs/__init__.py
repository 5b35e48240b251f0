"""Crash-safe file primitives shared by the file-backed layers (SOS, erasure-coded).

Everything but :mod:`.workers` is blocking with no asyncio: it runs inside a store's worker threads,
and callers batch a whole logical operation into one submission, so these helpers do plain
syscalls and never hop threads themselves.

* :mod:`.temp`: temp file names, exclusive creation, clean-up of abandoned temp files;
* :mod:`.atomic`: the crash-safe write (temp, write, fsync, publish, fsync directory);
* :mod:`.reads`: reads pinned against concurrent replacement (``read_with``);
* :mod:`.layout`: SHA-256 fan-out paths and the format marker;
* :mod:`.checksum`: CRC-32C;
* :mod:`.workers`: :class:`WorkerPool`, the threads a store awaits its file work in.
"""

from __future__ import annotations

from .atomic import (
    DURABILITY_LEVELS,
    Durability,
    fsync_dir,
    makedirs_durable,
    publish,
    write_all,
    write_file_atomic,
    write_file_with,
)
from .checksum import crc32c
from .layout import (
    MARKER_NAME,
    FormatMismatch,
    ensure_marker,
    fanout_path,
    hash_hex,
    is_fanout_name,
    iter_fanout,
    read_marker,
    write_marker,
)
from .reads import read_exact, read_with
from .temp import TMP_DIR, TempNamer, clean_temp, create_temp, pid_alive, unlink_quiet
from .workers import WorkerPool, finish

__all__ = [
    "Durability",
    "DURABILITY_LEVELS",
    "TMP_DIR",
    "MARKER_NAME",
    "FormatMismatch",
    "TempNamer",
    "create_temp",
    "write_all",
    "fsync_dir",
    "makedirs_durable",
    "publish",
    "write_file_atomic",
    "write_file_with",
    "unlink_quiet",
    "read_exact",
    "read_with",
    "pid_alive",
    "clean_temp",
    "hash_hex",
    "fanout_path",
    "is_fanout_name",
    "iter_fanout",
    "crc32c",
    "read_marker",
    "write_marker",
    "ensure_marker",
    "WorkerPool",
    "finish",
]
