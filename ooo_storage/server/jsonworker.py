"""The JSON worker process of ``offload.py``: ``python -m ooo_storage.server.jsonworker``.

Reads request frames on stdin and answers each on stdout, until stdin ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import signal
import sys
from collections.abc import Callable

from ..errors import InvalidData
from ..protocol import jsontext
from ..protocol.filters import parse_json
from ..protocol.merge import MergeError, merge_json
from .offload import COMPACT, FAILED, INVALID, MERGE, OK, UNMERGEABLE, read_frame, write_frame

_OPS: dict[bytes, Callable[..., bytes]] = {
    COMPACT: lambda body: jsontext.dumps(parse_json(body)),
    MERGE: lambda data, body: merge_json(data, parse_json(body)),
}


def _answer(op: bytes, parts: list[bytes]) -> tuple[bytes, bytes]:
    try:
        return OK, _OPS[op](*parts)
    except InvalidData as exc:
        return INVALID, str(exc).encode()
    except MergeError as exc:
        return UNMERGEABLE, str(exc).encode()
    except Exception as exc:  # a defect: the server answers 500 and logs it
        return FAILED, repr(exc).encode()


def _trim() -> Callable[[int], object]:
    """glibc's ``malloc_trim``: hands freed memory back to the system between requests (glibc
    keeps it otherwise: ~100 MB after one 9 MB document, ~50 MB with it); a no-op elsewhere."""
    try:
        trim: Callable[[int], object] = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError):
        return lambda pad: None
    return trim


def main() -> None:
    # Ctrl-C reaches the whole process group; this process ends when the server closes stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    src, out = sys.stdin.buffer, sys.stdout.buffer
    trim = _trim()
    while (frame := read_frame(src)) is not None:
        write_frame(out, *_answer(*frame))
        del frame
        gc.collect()
        trim(0)


if __name__ == "__main__":
    main()
