"""``Client.txn`` (issue 12) against the real server: ops as tuples, ``TxnOp`` or dicts, the
answer, a 409 as :class:`TxnConflict` with its keys, a 400 with the server's reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ooo_storage import Layered, MemoryLayer
from ooo_storage.client import Client, ClientError, RequestUncertain, TxnConflict
from ooo_storage.protocol.txn import TxnOp
from ooo_storage.server import ServerRunner


@pytest.fixture
async def store() -> AsyncIterator[Layered]:
    async with Layered(memory=MemoryLayer()) as store:
        yield store


@pytest.fixture
async def client(store: Layered) -> AsyncIterator[Client]:
    async with ServerRunner(store, port=0) as runner, Client(runner.url) as client:
        yield client


async def contents(store: Layered) -> dict[str, Any]:
    return {k: (await store.get(k)).value for k in await store.keys()}


async def test_txn_applies_every_op_and_returns_revision_and_indexes(store: Layered, client: Client) -> None:
    await store.set("acc/b", {"balance": 1, "owner": "bo"})
    await store.set("holds/1", True)
    answer = await client.txn([
        TxnOp("set", "acc/a", {"balance": 9}),
        ("patch", "acc/b", b'{"balance": 2}'),  # bytes: JSON text, sent as it is
        {"op": "set", "key": "raw", "data": None},
        ("del", "holds/*"),
    ])
    assert answer == {"revision": f"{store.revision:x}", "indexes": ["a", "b", "raw", ""]}
    assert await contents(store) == {"acc/a": {"balance": 9}, "acc/b": {"balance": 2, "owner": "bo"}, "raw": None}


async def test_expect_that_no_longer_holds_raises_txn_conflict_with_the_keys(store: Layered, client: Client) -> None:
    await store.set("acc/a", 1)
    entry = await client.get("acc/a")
    assert isinstance(entry, dict)
    seen = entry["updated"] or entry["created"]
    await client.txn([("set", "acc/a", 2)], expect={"acc/a": seen, "acc/new": None})
    with pytest.raises(TxnConflict) as caught:
        await client.txn([("set", "acc/a", 3), ("set", "acc/new", 1)], expect={"acc/a": seen, "acc/new": None})
    assert caught.value.status == 409
    assert caught.value.keys == ["acc/a"]
    assert caught.value.message.startswith("storage: conflict")
    assert isinstance(caught.value, ClientError)
    assert await contents(store) == {"acc/a": 2}


async def test_a_malformed_transaction_is_a_client_error_with_the_reason(store: Layered, client: Client) -> None:
    with pytest.raises(ClientError) as caught:
        await client.txn([("set", "a", 1), ("set", "logs/*", 2)])
    assert caught.value.status == 400
    assert not isinstance(caught.value, TxnConflict)
    assert "only del takes a glob" in caught.value.message
    with pytest.raises(ClientError) as caught:
        await client.txn([])
    assert (caught.value.status, caught.value.message) == (
        400, 'storage: invalid transaction: "ops" must be a non-empty array of ops (the body is '
        '{"ops": [{"op": "set", "key": "...", "data": ...}, ...], "expect": {"<key>": <version> | null}})')
    assert await store.keys() == []


async def test_a_transaction_whose_reply_is_lost_is_uncertain_and_sent_once() -> None:
    """A server that reads the request whole, then hangs up: the transaction may have been applied,
    so it is not sent again, and the error names the route."""
    received: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        received.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    async with server, Client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}") as client:
        with pytest.raises(RequestUncertain) as caught:
            await client.txn([("set", "a", 1)])
    assert received == [b'POST /?api=txn HTTP/1.1 {"ops":[{"op":"set","key":"a","data":1}]}']
    assert (caught.value.method, caught.value.key) == ("POST", "/?api=txn")
    assert str(caught.value).startswith("outcome unknown: POST /?api=txn: the connection was lost")
