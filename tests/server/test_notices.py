"""``errors.Notices``: what repeats is logged once per interval, then one line counting the others."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ooo_storage.server.errors import Notices

INTERVAL = 0.05


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ooo_storage.server"]


async def until_lines(caplog: pytest.LogCaptureFixture, count: int) -> None:
    async with asyncio.timeout(5):
        while len(lines(caplog)) < count:
            await asyncio.sleep(INTERVAL / 5)


async def test_the_first_is_said_at_once_the_others_counted_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    notices = Notices(INTERVAL)
    for n in range(5):
        notices(logging.ERROR, "disk", f"write {n} failed")
    notices(logging.WARNING, "other", "another kind is said at once")
    assert lines(caplog) == ["write 0 failed", "another kind is said at once"]
    await until_lines(caplog, 3)
    assert lines(caplog)[2] == "write 4 failed (4 more times in the last 0.05 s)"
    assert caplog.records[2].levelno == logging.ERROR
    notices(logging.ERROR, "disk", "write 5 failed")  # counted in the next interval
    await until_lines(caplog, 4)
    assert lines(caplog)[3] == "write 5 failed (1 more time in the last 0.05 s)"
    await asyncio.sleep(3 * INTERVAL)  # a quiet interval: nothing more is said, the window closes
    assert len(lines(caplog)) == 4
    notices(logging.ERROR, "disk", "write 6 failed")  # a new episode is said at once
    assert lines(caplog)[4] == "write 6 failed"


def test_outside_a_running_loop_every_line_is_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    notices = Notices(INTERVAL)
    notices(logging.WARNING, "k", "one")
    notices(logging.WARNING, "k", "two")
    assert lines(caplog) == ["one", "two"]


def test_a_window_left_by_a_stopped_loop_does_not_silence_its_kind(caplog: pytest.LogCaptureFixture) -> None:
    """A server started again in a new loop (its Notices kept): the old loop's timer never fires."""
    caplog.set_level(logging.INFO)
    notices = Notices(60.0)

    async def hit(*messages: str) -> None:
        for message in messages:
            notices(logging.WARNING, "k", message)

    asyncio.run(hit("first", "counted"))
    asyncio.run(hit("in a new loop"))
    assert lines(caplog) == ["first", "counted (1 more time in the last 60 s)"]
    quiet = Notices(60.0)
    asyncio.run(_call(quiet, "alone"))
    asyncio.run(_call(quiet, "said again"))
    assert lines(caplog)[2:] == ["alone", "said again"]


async def _call(notices: Notices, message: str) -> None:
    notices(logging.WARNING, "k", message)
