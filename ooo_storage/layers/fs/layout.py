"""Where things live in a store directory: SHA-256 fan-out paths, and the format marker that a
directory must match to be opened."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ...errors import StorageUnavailable
from .atomic import write_file_atomic
from .temp import TempNamer

__all__ = [
    "MARKER_NAME",
    "FormatMismatch",
    "hash_hex",
    "fanout_path",
    "is_fanout_name",
    "iter_fanout",
    "read_marker",
    "write_marker",
    "ensure_marker",
]

MARKER_NAME = ".format.json"

_HEX = frozenset("0123456789abcdef")


class FormatMismatch(StorageUnavailable):
    """The directory holds a store of another format (or another store): refuse to open it."""

    message = "storage: format marker mismatch"


def hash_hex(key: bytes) -> str:
    """Lowercase hex SHA-256 of ``key`` (the SOS object name)."""
    return hashlib.sha256(key).hexdigest()


def fanout_path(key: bytes) -> str:
    """The SOS relative path ``xx/yy/<60 hex>`` of ``key`` (``/`` separated)."""
    h = hashlib.sha256(key).hexdigest()
    return f"{h[:2]}/{h[2:4]}/{h[4:]}"


def is_fanout_name(name: str, length: int) -> bool:
    """True if ``name`` is ``length`` lowercase hex characters (a fan-out level or object name)."""
    return len(name) == length and _HEX.issuperset(name)


def iter_fanout(root: str) -> Iterator[tuple[str, str]]:
    """Yield ``(path, "xxyy<60 hex>")`` for every object file under ``root/xx/yy/``, unordered.

    Skips ``.tmp``, ``.corrupt``, the marker and anything that is not exactly the fan-out shape;
    directories that vanish during the walk are skipped. (``listdir`` and plain string joins:
    a sparse store has a leaf directory per object, so the walk is mostly directory reads.)
    """
    for top in _listdir(root):
        if not is_fanout_name(top, 2):
            continue
        top_path = f"{root}/{top}"
        for mid in _listdir(top_path):
            if not is_fanout_name(mid, 2):
                continue
            mid_path = f"{top_path}/{mid}"
            prefix = top + mid
            for name in _listdir(mid_path):
                if is_fanout_name(name, 60):
                    yield f"{mid_path}/{name}", prefix + name


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        if exc.errno == errno.ESTALE:
            return []
        raise


def read_marker(root: str, name: str = MARKER_NAME) -> dict[str, Any] | None:
    """The JSON document of ``root/<name>``, or None if absent. A garbled marker raises."""
    try:
        with open(os.path.join(root, name), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatMismatch(f"storage: unreadable format marker in {root}") from exc
    if not isinstance(doc, dict):
        raise FormatMismatch(f"storage: unreadable format marker in {root}")
    return doc


def write_marker(
    root: str, doc: Mapping[str, Any], namer: TempNamer, name: str = MARKER_NAME
) -> None:
    """Write ``root/<name>`` atomically and durably (temp, fsync, rename, fsync root)."""
    raw = json.dumps(dict(doc), sort_keys=True, indent=1).encode() + b"\n"
    write_file_atomic(os.path.join(root, name), [raw], root, namer, "full")


def ensure_marker(
    root: str,
    required: Mapping[str, Any],
    namer: TempNamer,
    extra: Mapping[str, Any] | None = None,
    name: str = MARKER_NAME,
) -> dict[str, Any]:
    """Validate ``root/<name>`` against ``required`` or create it (``required`` + ``extra``).

    Every field of ``required`` must be equal in an existing marker; ``extra`` fields (a store
    UUID, a creation time) are written only when the marker is new. Concurrent creators are safe:
    the first exclusive link wins and the others validate what it wrote. Returns the marker.
    """
    doc = read_marker(root, name)
    if doc is None:
        new = {**(extra or {}), **required}
        raw = json.dumps(new, sort_keys=True, indent=1).encode() + b"\n"
        if write_file_atomic(os.path.join(root, name), [raw], root, namer, "full", exclusive=True):
            return new
        doc = read_marker(root, name)
        if doc is None:  # pragma: no cover - deleted between our link attempt and the read
            raise FormatMismatch(f"storage: format marker of {root} vanished")
    for field, want in required.items():
        if doc.get(field) != want:
            raise FormatMismatch(
                f"storage: {root} holds another format ({field}={doc.get(field)!r}, "
                f"expected {want!r})"
            )
    return doc
