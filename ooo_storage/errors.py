"""Typed storage errors carrying the exact messages of docs/protocol.md §3

Every exception derives from :class:`StorageError`; ``str(exc)`` is the protocol message, so the
server can map exceptions to HTTP responses in one place without string matching.
"""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base class of every error raised by ooo-storage."""

    message = "storage: error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(StorageError):
    message = "storage: not found"


class InvalidPath(StorageError):
    message = "storage: invalid path"


class InvalidData(StorageError):
    message = "storage: invalid data (empty)"


class GlobNotAllowed(StorageError):
    message = "storage: glob pattern not allowed for this operation"


class GlobRequired(StorageError):
    message = "storage: glob pattern required for this operation"


class InvalidPattern(StorageError):
    message = "storage: invalid pattern, glob required"


class InvalidLimit(StorageError):
    message = "storage: invalid limit"


class InvalidRange(StorageError):
    message = "storage: invalid range"


class CantLockGlob(StorageError):
    message = "storage: can't lock a glob pattern path"


class LockNotFound(StorageError):
    message = "storage: lock not found, can't unlock"


class AllLayersNil(StorageError):
    message = "storage: all storage layers are nil"


class NotActive(StorageError):
    message = "storage: storage is not active"


class InvalidTransaction(StorageError):
    """A transaction that cannot be run as given (no ops, a key written twice, a write on a glob,
    a glob delete overlapping another op's key, bad data, a bad ``expect``): a 400, nothing
    applied. ``str(exc)`` names the op and says what to change."""

    message = "storage: invalid transaction"


class Conflict(StorageError):
    """A transaction's ``expect`` no longer holds: a key changed (or appeared, or went) since the
    caller read it. Nothing was applied; read the ``keys`` again and retry (HTTP 409)."""

    message = "storage: conflict"

    def __init__(self, keys: list[str], message: str | None = None) -> None:
        self.keys = list(keys)
        super().__init__(
            message
            or f"storage: conflict: {', '.join(self.keys)} changed since read; read again and retry"
        )


class TransactionTimeout(Conflict):
    """A transaction's deadline passed while it waited for the locks of ``keys`` (held by
    ``get_and_lock`` holders, other transactions or a glob delete). Nothing was applied. A
    Conflict (HTTP 409, not a 503: the store is fine, those keys are contended): retry later."""

    message = "storage: transaction timeout"

    def __init__(self, keys: list[str], timeout: float, message: str | None = None) -> None:
        waited = ", ".join(keys) or "the store gate"
        super().__init__(
            keys,
            message
            or f"storage: transaction timeout: {waited} still locked after {timeout:g} s; "
            "nothing applied, retry later",
        )


class NotSupported(StorageError):
    """The persistent layer cannot do what was asked atomically (transactions on the SOS and
    erasure-coded layers, which have no all-or-nothing multi-key write): nothing was applied."""

    message = "storage: not supported by this persistent layer"


class InvalidGlob(StorageError):
    """Raised by :func:`ooo_storage.protocol.keys.validate_glob` (messages start with ``key:``)."""

    message = "key: invalid glob pattern"


class StorageUnavailable(StorageError):
    """A real storage failure (I/O error, locked database, lost quorum): a 5xx, not a 4xx."""

    message = "storage: unavailable"


class NoSpace(StorageUnavailable):
    """The persistent layer's filesystem is full (or over quota): writes fail until space is freed."""

    message = "storage: no space left on device"


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded")


def no_space(exc: BaseException) -> bool:
    """True for a full filesystem or quota (ENOSPC/EDQUOT), as an OSError or in a storage
    library's message (LevelDB's are text): the cure is freeing space, not retrying."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    return any(sign in text for sign in _NO_SPACE_TEXTS)


class CorruptObject(StorageUnavailable):
    """A stored object failed its checksum; it is never returned as data."""

    message = "storage: corrupt object"


class QuorumNotReached(StorageUnavailable):
    """Too few drives accepted a write; the previous value stays readable."""

    message = "storage: write quorum not reached"


class JournalError(StorageError):
    """A journal (``ooo_storage.journal``) refused an operation; ``str(exc)`` says what to do."""

    message = "journal: error"


class JournalFull(JournalError):
    """An append needs a new segment and ``max_files`` are in use with live items (``when_full``
    is ``"error"``): consume and delete items, then prune, or allow eviction."""

    message = "journal: full"


class HistoryTrimmed(JournalError):
    """Entries from the requested position on were pruned before anyone read them: the caller
    must start again from a snapshot."""

    message = "journal: history trimmed, start from a snapshot"


class MergeError(ValueError):
    """A PATCH body that cannot be merged into the stored data (docs/protocol.md §4.4); ``str(exc)`` is
    the protocol message (a 400, data unchanged)."""


class HTTPFailure(Exception):
    """A request refused with an explicit HTTP status and protocol message; ``close`` drops the
    connection after the answer (the rest of the request is not worth reading)."""

    def __init__(
        self, status: int, message: str, close: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}


class FilterRejected(HTTPFailure):
    """A filter or hook refused the operation (always 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Unauthorized(HTTPFailure):
    """Missing or bad credentials (401, with ``WWW-Authenticate: Bearer``)."""

    def __init__(self, message: str) -> None:
        challenge = 'Bearer realm="ooo-storage"'
        if "a token is required" not in message:
            challenge += ', error="invalid_token"'
        super().__init__(401, message, headers={"WWW-Authenticate": challenge})


class Forbidden(HTTPFailure):
    """Known credentials without the right for this path (403, naming the right and the path)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class PolicyError(ValueError):
    """An access policy that cannot be used (bad TOML, unknown keys, bad rules, unreadable key
    file); ``str(exc)`` says where and what. A policy is applied whole or not at all."""

