"""Frames on the wire (PROTOCOL.md §5.2): exact payload bytes and RFC 6455 framing, no socket."""

from __future__ import annotations

import struct

import orjson
import pytest

from ooo_storage.protocol.frames import PING_FRAME, encode_frame, parse_version, pong_frame, ws_binary


def unframe(frame: bytes) -> tuple[int, bytes]:
    """Decode one unmasked, final websocket frame (RFC 6455 §5.2): its opcode and payload."""
    first, second = frame[0], frame[1]
    assert first & 0x80, "FIN must be set: frames are never fragmented"
    assert first & 0x70 == 0, "no extension bits"
    assert not second & 0x80, "server frames are never masked"
    size, offset = second & 0x7F, 2
    if size == 126:
        (size,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif size == 127:
        (size,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:]
    assert len(payload) == size
    return first & 0x0F, payload


def test_data_frame_payload_is_exact() -> None:
    assert encode_frame(True, 0xAB, b'{"a":1}') == b'{"snapshot":true,"version":"ab","data":{"a":1}}'
    assert encode_frame(False, 10, b'[{"op":"remove","path":"/0"}]') == (
        b'{"snapshot":false,"version":"a","data":[{"op":"remove","path":"/0"}]}'
    )
    payload = encode_frame(True, 2**70, b"[]")
    assert orjson.loads(payload) == {"snapshot": True, "version": format(2**70, "x"), "data": []}


@pytest.mark.parametrize(
    ("size", "header_bytes"),
    [
        (0, 2),
        (125, 2),  # the largest 7-bit length
        (126, 4),  # 16-bit length from here
        (65535, 4),
        (65536, 10),  # 64-bit length from here
        (300_000, 10),
    ],
)
def test_binary_frame_length_classes(size: int, header_bytes: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = ws_binary(payload)
    assert len(frame) == header_bytes + size
    assert unframe(frame) == (0x2, payload)


def test_pong_echoes_the_ping_payload_up_to_the_control_frame_limit() -> None:
    assert unframe(pong_frame(b"hello")) == (0xA, b"hello")
    assert unframe(pong_frame(b"")) == (0xA, b"")
    assert unframe(pong_frame(b"x" * 200)) == (0xA, b"x" * 125)  # control frames carry 125 at most


def test_ping_frame_is_empty() -> None:
    assert unframe(PING_FRAME) == (0x9, b"")


@pytest.mark.parametrize(
    ("text", "version"),
    [(None, None), ("", None), ("zz", None), ("1g", None), ("a", 10), ("ff", 255), ("FF", 255), ("0", 0)],
)
def test_parse_version(text: str | None, version: int | None) -> None:
    assert parse_version(text) == version


def test_parse_version_reads_what_encode_frame_writes() -> None:
    for version in (1, 0xDEADBEEF, 2**64 + 1):
        sent = orjson.loads(encode_frame(False, version, b"[]"))["version"]
        assert parse_version(sent) == version
