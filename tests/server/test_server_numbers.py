"""Numbers keep every digit through REST, PATCH merge and websocket patches."""

from __future__ import annotations

import json

import jsonpatch
from server_live import Live, next_frame, no_frame

BIG = 123456789012345678901234567890


async def test_big_integer_round_trip_and_stream(live: Live) -> None:
    ws = await live.ws("nums/1")
    assert (await next_frame(ws))["snapshot"] is True
    status, _ = await live.request("POST", "nums/1", b'{"n": 123456789012345678901234567890}')
    assert status == 200
    msg = await ws.receive(timeout=5)
    frame = json.loads(msg.data)  # the stdlib keeps big ints exact, so this checks the bytes sent
    assert frame["data"]["data"] == {"n": BIG}
    state = frame["data"]

    status, body = await live.request("GET", "nums/1")
    assert status == 200 and json.loads(body)["data"] == {"n": BIG}

    status, _ = await live.request("PATCH", "nums/1", b'{"m": -99999999999999999999}')
    assert status == 200
    frame = json.loads((await ws.receive(timeout=5)).data)
    assert frame["snapshot"] is False
    state = jsonpatch.apply_patch(state, frame["data"])
    assert state["data"] == {"n": BIG, "m": -99999999999999999999}
    status, body = await live.request("GET", "nums/1")
    assert json.loads(body)["data"] == state["data"]
    await ws.close()


HUGE = int("7" * 400)  # beyond a 64-bit float as well as a 64-bit integer


async def test_integer_of_400_digits_round_trip_and_stream(live: Live) -> None:
    ws = await live.ws("nums/2")
    assert (await next_frame(ws))["snapshot"] is True
    assert (await live.request("POST", "nums/2", b'{"n": %d}' % HUGE))[0] == 200
    frame = json.loads((await ws.receive(timeout=5)).data)
    state = frame["data"]
    assert state["data"] == {"n": HUGE}
    status, body = await live.request("GET", "nums/2")
    assert status == 200 and json.loads(body)["data"] == {"n": HUGE}

    assert (await live.request("PATCH", "nums/2", b'{"m": -%d}' % HUGE))[0] == 200
    frame = json.loads((await ws.receive(timeout=5)).data)
    state = jsonpatch.apply_patch(state, frame["data"])
    assert state["data"] == {"n": HUGE, "m": -HUGE}
    status, body = await live.request("GET", "nums/2")
    assert json.loads(body)["data"] == state["data"]
    await ws.close()


async def test_number_that_would_become_zero_is_refused_everywhere(live: Live) -> None:
    status, body = await live.request("POST", "nums/3", b'{"x": 1e-400}')
    assert status == 400 and b"1e-400 is too small for a 64-bit float" in body
    assert (await live.request("GET", "nums/3"))[0] == 404

    assert (await live.request("POST", "nums/3", b'{"x": 1e-310}'))[0] == 200
    ws = await live.ws("nums/3")
    assert (await next_frame(ws))["data"]["data"] == {"x": 1e-310}
    status, body = await live.request("PATCH", "nums/3", b'{"x": 1e-400}')
    assert status == 400 and b"too small for a 64-bit float" in body
    assert (await live.get("nums/3"))["data"] == {"x": 1e-310}
    await no_frame(ws)
    await ws.close()
