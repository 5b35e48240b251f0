"""SOSLayer and ErasureLayer through ``Layered``: behaviour both file-backed adapters must share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ooo_storage import Layered
from ooo_storage.errors import CorruptObject
from ooo_storage.layers import ErasureLayer, SOSLayer
from ooo_storage.server import Server, ServerRunner

LayerFactory = Callable[[Path], Any]

LAYERS: dict[str, LayerFactory] = {
    "sos": lambda base: SOSLayer(base / "sos"),
    "erasure": lambda base: ErasureLayer([str(base / f"drive{i}") for i in range(6)], k=4, m=2),
}


@pytest.fixture(params=list(LAYERS))
async def bare(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Layered]:
    """A Layered store over one file layer and no memory layer: every read reaches the files."""
    store = Layered(memory=None, embedded=LAYERS[request.param](tmp_path))
    await store.start()
    yield store
    await store.close()


# -- stored bytes that are not an object --------------------------------------------------------

NOT_OBJECTS = [b"not json", b"[1, 2]", b'"text"']


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=["garbage", "array", "string"])
async def test_value_that_is_not_object_json_is_a_typed_corrupt_object(
    bare: Layered, raw: bytes
) -> None:
    """Bytes that pass the layer's own checksum but are not object JSON (written by another
    program, or an older format) raise CorruptObject naming the key, on a single read and a glob
    read alike; a ValueError here used to become a 500."""
    await bare.set("bad/good", {"ok": True})
    await bare.embedded.store.store("bad/key", raw)  # type: ignore[union-attr]
    with pytest.raises(CorruptObject, match="bad/key"):
        await bare.get("bad/key")
    with pytest.raises(CorruptObject, match="bad/key"):
        await bare.get_list("bad/*")
    assert (await bare.get("bad/good")).value == {"ok": True}


async def test_value_that_is_not_object_json_is_a_503_naming_the_key(bare: Layered) -> None:
    await bare.embedded.store.store("bad/key", b"not json")  # type: ignore[union-attr]
    runner = ServerRunner(bare, "127.0.0.1", 0, server=Server(bare, shutdown_timeout=1.0))
    await runner.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("bad/key", "bad/*"):
                async with http.get(f"{runner.url}/{path}") as resp:
                    body = await resp.text()
                assert (resp.status, "bad/key" in body) == (503, True), (path, resp.status, body)
    finally:
        await runner.stop()
