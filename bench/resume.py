"""Resume from the event history (issue 11): a subscriber disconnected for 5 s while 500 writes happen
to 10 keys, live and across a server restart; what it gets when it reconnects with ``?v=``.

    .venv/bin/python bench/resume.py [--rounds 3] [--offline 5] [--writes 500]

Each round runs ``python -m ooo_storage serve --data DIR --history-bytes 16777216`` (LevelDB, event
history on), subscribes to a glob, records the last version, disconnects, then writes ``--writes``
times to 10 keys of the glob spread over ``--offline`` seconds (100 writes/s by default), and
reconnects with ``?v=<last version>``. Cases:

- ``10 keys``: the glob holds exactly the 10 keys written (bench/peers W5's shape);
- ``10 of 100``: the glob holds 100 keys, 10 of which are written;
- ``restart``: as ``10 of 100``, with the server stopped (SIGTERM) and started again on the same data
  halfway through the writes; the subscriber reconnects to the new process.

Recorded per case: the frames of the catch-up (must be one, a patch: ``snapshot`` false), the
websocket payload bytes of that frame, the bytes of a full snapshot of the same glob at that moment
(what a reconnect costs without history), the catch-up time (connect to frame) and whether the state
after the frame equals ``GET``. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._load import ROOT  # noqa: E402
from ooo_storage.protocol.jsonpatch import apply_patch  # noqa: E402

CASES = ("10 keys", "10 of 100", "restart")


async def serve(data: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--data", str(data),
        "--history-bytes", str(16 << 20), stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while line := await process.stderr.readline():
            if found := re.search(rb"serving on (http://[\d.]+:\d+)", line):
                asyncio.get_running_loop().create_task(_drain(process.stderr))
                return process, found.group(1).decode()
    raise RuntimeError("serve exited before serving")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    if await process.wait() != 0:
        raise RuntimeError(f"serve exited with {process.returncode}")


async def first_frame(http: aiohttp.ClientSession, url: str) -> tuple[dict[str, Any], int, float]:
    """Connect, take the first frame: (frame, payload bytes, ms from connect to frame); closes."""
    started = time.perf_counter()
    async with http.ws_connect(url) as ws:
        msg = await ws.receive(timeout=10)
        elapsed = (time.perf_counter() - started) * 1000
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        return orjson.loads(msg.data), len(msg.data), elapsed


async def one_case(case: str, offline: float, writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ooo-bench-resume-") as tmp:
        data = Path(tmp) / "data"
        process, base = await serve(data)
        try:
            async with aiohttp.ClientSession() as http:
                keys = [f"r/{i:02}" for i in range(0, 100, 10)]
                extra = [] if case == "10 keys" else [f"r/{i:02}" for i in range(100) if i % 10]
                for key in keys + extra:
                    async with http.post(f"{base}/{key}", data=orjson.dumps({"n": -1, "pad": "x" * 50})) as r:
                        assert r.status == 200
                frame, _, _ = await first_frame(http, base.replace("http", "ws") + "/r/*")
                state, version = frame["data"], frame["version"]  # then offline
                pause = offline / writes
                for n in range(writes):
                    if case == "restart" and n == writes // 2:
                        await stop(process)
                        process, base = await serve(data)
                    body = orjson.dumps({"n": n, "pad": "x" * 50})
                    async with http.post(f"{base}/{keys[n % 10]}", data=body) as r:
                        assert r.status == 200
                    await asyncio.sleep(pause)  # the writes spread over the offline time
                ws_base = base.replace("http", "ws")
                frame, size, ms = await first_frame(http, f"{ws_base}/r/*?v={version}")
                state = frame["data"] if frame["snapshot"] else apply_patch(state, frame["data"])
                async with http.get(f"{base}/r/*") as r:
                    correct = state == orjson.loads(await r.read())
                _, snapshot_size, _ = await first_frame(http, f"{ws_base}/r/*")
                return {
                    "case": case,
                    "patch": not frame["snapshot"],
                    "ops": len(frame["data"]) if not frame["snapshot"] else None,
                    "bytes": size,
                    "snapshot_bytes": snapshot_size,
                    "catch_up_ms": ms,
                    "correct": correct,
                }
        finally:
            await stop(process)


async def main_async(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for case in CASES:
            result = await one_case(case, args.offline, args.writes)
            print(result, flush=True)
            results.append(result)
    print(f"\n{args.writes} writes to 10 keys over {args.offline} s offline, {args.rounds} rounds (medians):")
    print("| case | catch-up frame | delta frame bytes | full snapshot bytes | catch-up ms | state == GET |")
    print("|---|---|---:|---:|---:|---|")
    for case in CASES:
        rows = [r for r in results if r["case"] == case]
        kinds = {f"1 patch of {r['ops']} ops" if r["patch"] else "a snapshot" for r in rows}
        print(
            f"| {case} | {' / '.join(sorted(kinds))} | {statistics.median(r['bytes'] for r in rows):.0f} "
            f"| {statistics.median(r['snapshot_bytes'] for r in rows):.0f} "
            f"| {statistics.median(r['catch_up_ms'] for r in rows):.1f} "
            f"| {sum(r['correct'] for r in rows)}/{len(rows)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--offline", type=float, default=5.0)
    parser.add_argument("--writes", type=int, default=500)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
