"""Client.stats() against the real server with an access policy that declares namespaces
(GET /?api=stats, admin only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.client import Client, ClientError
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.server import ServerRunner

EVERYWHERE = ["*", "*/*", "*/*/*"]


def policy(namespaces: list[dict[str, str]]) -> Policy:
    def token(name: str, rights: list[str]) -> dict[str, object]:
        return {"name": name, "sha256": token_digest(f"{name}-token"),
                "rules": [{"paths": EVERYWHERE, "rights": rights}]}

    return Policy.from_dict({
        "tokens": [token("admin", ["admin", "read", "write", "delete"]), token("writer", ["read", "write"])],
        "namespaces": namespaces,
    })


NAMESPACES = [{"name": "acme", "prefix": "acme/"}, {"name": "acme-logs", "prefix": "acme/logs/"}]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Layered]:
    async with Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db"))) as store:
        yield store


async def serving(store: Layered, namespaces: list[dict[str, str]]) -> ServerRunner:
    runner = ServerRunner(store, "127.0.0.1", 0, auth=policy(namespaces), shutdown_timeout=1.0)
    await runner.start()
    return runner


async def test_stats_reports_objects_bytes_and_requests_per_namespace(store: Layered) -> None:
    await store.set("acme/1", {"a": 1})  # stored before the server starts: counted from the store
    runner = await serving(store, NAMESPACES)
    try:
        async with Client(runner.url, token="admin-token") as admin, \
                Client(runner.url, token="writer-token") as writer:
            await writer.set("acme/2", [1, 2, 3])
            await writer.push("acme/logs/*", "hi")
            await writer.set("other/1", 1)  # outside every namespace
            await writer.get("acme/*")
            stats = await admin.stats()
    finally:
        await runner.stop()
    assert stats["since"] <= stats["at"]
    by_name = {ns["name"]: ns for ns in stats["namespaces"]}
    assert list(by_name) == ["acme", "acme-logs"]
    acme, logs = by_name["acme"], by_name["acme-logs"]
    assert (acme["prefix"], acme["objects"], acme["bytes"]) == ("acme/", 2, len(b'{"a":1}') + len(b"[1,2,3]"))
    assert (logs["objects"], logs["bytes"]) == (1, len(b'"hi"'))
    assert acme["requests"]["lastHour"] == acme["requests"]["last24h"] == 2  # the set and the GET
    assert logs["requests"]["last24h"] == 1
    assert len(acme["requests"]["perHour"]) == 24 and acme["requests"]["perHour"][-1] == 2


async def test_stats_needs_an_admin_token(store: Layered) -> None:
    runner = await serving(store, NAMESPACES)
    try:
        for token, status in ((None, 401), ("nobody-token", 401), ("writer-token", 403)):
            async with Client(runner.url, token=token) as client:
                with pytest.raises(ClientError) as caught:
                    await client.stats()
                assert caught.value.status == status, caught.value
    finally:
        await runner.stop()


async def test_stats_without_namespaces_is_an_error_that_says_so(store: Layered) -> None:
    runner = await serving(store, [])
    try:
        async with Client(runner.url, token="admin-token") as client:
            with pytest.raises(ClientError) as caught:
                await client.stats()
    finally:
        await runner.stop()
    assert caught.value.status == 404 and "namespaces" in caught.value.message
