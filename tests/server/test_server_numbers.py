"""Numbers keep every digit through REST, PATCH merge and websocket patches."""

from __future__ import annotations

import json

import jsonpatch
from server_live import Live, next_frame

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
