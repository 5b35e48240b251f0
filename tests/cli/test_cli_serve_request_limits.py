"""``serve --max-connections-per-client N`` and ``--max-buffered-body-bytes N``: accepted, applied by
the real server process, and anything but a positive integer is an argparse error (exit 2)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from cli_served import Served

from ooo_storage.cli import build_parser

FLAGS = ["--max-connections-per-client", "--max-buffered-body-bytes"]


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize(("value", "reason"), [("0", "0 must be a positive integer"),
                                               ("-1", "-1 must be a positive integer"),
                                               ("many", "'many' is not an integer")])
def test_anything_but_a_positive_integer_is_an_argparse_error(
    flag: str, value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", f"{flag}={value}"])
    assert exit_.value.code == 2
    assert f"argument {flag}: {reason}" in capsys.readouterr().err


def test_the_flags_parse() -> None:
    args = build_parser().parse_args(["serve", *FLAGS[:1], "3", *FLAGS[1:], "2000000"])
    assert (args.max_connections_per_client, args.max_buffered_body_bytes) == (3, 2000000)
    args = build_parser().parse_args(["serve"])
    assert (args.max_connections_per_client, args.max_buffered_body_bytes) == (None, None)


def upload(path: str, body: bytes, sent: int) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))
    return head + body[:sent]


async def test_the_served_process_applies_them() -> None:
    """A large upload in progress holds its client's only slot and most of the body budget: the
    same client's next request and another client's large upload get 503."""
    argv = ["--max-connections-per-client", "1", "--max-body-bytes", "600000",
            "--max-buffered-body-bytes", "1000000"]
    body = b'{"v":"' + b"u" * 599_990 + b'"}'
    async with Served(*argv) as served, aiohttp.ClientSession() as http:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(upload("/a", body, 599_000))  # held as it arrives
            async with asyncio.timeout(10):
                while True:  # until the upload is in progress (nothing tells it from outside)
                    async with http.get(f"{served.url}/k") as resp:
                        text = await resp.text()
                    if resp.status == 503:
                        break
                    assert resp.status == 404, text
                    await asyncio.sleep(0.02)
            assert text.endswith("(limit 1 per client), retry later"), text
            other = await asyncio.open_connection("127.0.0.1", served.port, local_addr=("127.0.0.2", 0))
            # 599 000 + 401 001 > 1 000 000: /b goes over the budget with its last byte, so
            # nothing of it is left unread when the refusal closes the connection
            other[1].write(upload("/b", body, 401_001))
            refusal = await asyncio.wait_for(other[0].read(), 10)
            other[1].close()
            assert refusal.startswith(b"HTTP/1.1 503 "), refusal
            assert b"does not fit in the 1000000-byte budget now" in refusal
            writer.write(body[599_000:])
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()
