"""The process-wide clock (docs/protocol.md §2.2): ``created``/``updated`` stamps and push keys.

Wall-clock nanoseconds at start plus monotonic time elapsed since, forced strictly increasing: a
step of the wall clock while the process runs never reorders stamps. The only module-level mutable
state of the package (STYLE.md §6).
"""

from __future__ import annotations

import time

_wall0 = time.time_ns()
_mono0 = time.monotonic_ns()
_last = 0


def now() -> int:
    """Return the next clock value: epoch ns at start + monotonic elapsed, strictly increasing."""
    global _last
    t = _wall0 + (time.monotonic_ns() - _mono0)
    if t <= _last:
        t = _last + 1
    _last = t
    return t
