"""``POST /?api=txn`` (issue 12, ``server/txn.py``): several writes all or nothing over HTTP, with
the limits, filters and access policy of the single-key routes; a real server on 127.0.0.1 over a
real store, on both HTTP engines (the lean front hands ``/`` to aiohttp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from server_live import ENGINES, Live, LiveFactory

from ooo_storage import Layered, MemoryLayer
from ooo_storage.layers import SOSLayer
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.protocol.txn import MAX_KEY_BYTES
from ooo_storage.protocol.txn_body import MAX_OPS
from ooo_storage.server import ServerRunner

TXN = "?api=txn"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both engines."""
    return str(request.param)


async def txn(live: Live, body: Any, **kw: Any) -> tuple[int, str, bytes]:
    """POST ``body`` (a value, sent as JSON, or bytes as they are) to ``/?api=txn``."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with live.http.post(f"{live.base}/{TXN}", data=data, **kw) as resp:
        return resp.status, resp.content_type, await resp.read()


async def contents(live: Live) -> dict[str, Any]:
    return {k: (await live.store.get(k)).value for k in await live.store.keys()}


def version(entry: dict[str, Any]) -> int:
    """What ``expect`` compares: ``updated``, or ``created`` for a never-updated object."""
    return int(entry["updated"] or entry["created"])


@pytest.mark.parametrize("backend", ["memory", "leveldb", "memory+leveldb"])
async def test_commit_sets_patches_and_deletes_in_one_revision(make_live: LiveFactory, backend: str) -> None:
    live = await make_live(backend)
    await live.store.set("acc/b", {"balance": 10, "owner": "bo"})
    await live.store.set("holds/1", 1)
    await live.store.set("holds/2", 2)
    body = {"ops": [
        {"op": "set", "key": "acc/a", "data": {"balance": 5}},
        {"op": "patch", "key": "acc/b", "data": {"balance": 15}},
        {"op": "del", "key": "holds/*"},
        {"op": "set", "key": "n", "data": None},
    ]}
    status, kind, raw = await txn(live, body)
    assert (status, kind) == (200, "application/json"), raw
    answer = orjson.loads(raw)
    assert answer["indexes"] == ["a", "b", "", "n"]
    assert answer["revision"] == f"{live.store.revision:x}"
    assert await contents(live) == {"acc/a": {"balance": 5}, "acc/b": {"balance": 15, "owner": "bo"}, "n": None}


async def test_expect_holds_then_conflicts_with_the_keys_and_applies_nothing(live: Live) -> None:
    await live.store.set("acc/a", {"balance": 100})
    await live.store.set("acc/b", {"balance": 0})
    a, b = await live.get("acc/a"), await live.get("acc/b")
    move = {
        "expect": {"acc/a": version(a), "acc/b": version(b), "acc/c": None},
        "ops": [{"op": "set", "key": "acc/a", "data": {"balance": 90}},
                {"op": "set", "key": "acc/b", "data": {"balance": 10}}],
    }
    status, _, raw = await txn(live, move)
    assert status == 200, raw
    status, kind, raw = await txn(live, move)  # the same versions again: both changed since
    assert (status, kind) == (409, "application/json")
    answer = orjson.loads(raw)
    assert answer["keys"] == ["acc/a", "acc/b"]
    assert answer["error"].startswith("storage: conflict")
    await live.store.set("acc/c", 1)
    status, _, raw = await txn(live, {"expect": {"acc/c": None}, "ops": [{"op": "del", "key": "acc/a"}]})
    assert (status, orjson.loads(raw)["keys"]) == (409, ["acc/c"])
    assert await contents(live) == {"acc/a": {"balance": 90}, "acc/b": {"balance": 10}, "acc/c": 1}


async def test_strings_and_null_are_values_not_json_text(live: Live) -> None:
    """The store reads a str as JSON text: a string in the body must still be stored as a string."""
    await live.store.set("p", {"a": 1})
    seen: list[Any] = []
    live.server.write_filter("f/*", lambda key, data: seen.append(data) or {"v": data})
    body = {"ops": [{"op": "set", "key": "s", "data": "text"}, {"op": "set", "key": "j", "data": '{"x":1}'},
                    {"op": "set", "key": "n", "data": None}, {"op": "set", "key": "f/1", "data": "via filter"},
                    {"op": "patch", "key": "p", "data": "not an object: no effect"}]}
    status, _, raw = await txn(live, body)
    assert status == 200, raw
    assert seen == ["via filter"]
    assert await contents(live) == {"f/1": {"v": "via filter"}, "j": '{"x":1}', "n": None, "p": {"a": 1}, "s": "text"}


def _op(i: int) -> dict[str, Any]:
    return {"op": "set", "key": f"k/{i}", "data": i}


MALFORMED: list[tuple[bytes | Any, str]] = [
    (b"", "empty body"),
    (b"{", "the body is not JSON"),
    (b"1e999", "the body is not JSON"),
    ([], "the body must be a JSON object"),
    ({}, '"ops" must be a non-empty array'),
    ({"ops": []}, '"ops" must be a non-empty array'),
    ({"ops": {"op": "set"}}, '"ops" must be a non-empty array'),
    ({"ops": [_op(1)], "other": 1}, 'unknown member "other"'),
    ({"ops": [1]}, "ops[0] must be an object"),
    ({"ops": [{"key": "a", "data": 1}]}, 'ops[0]: "op" is missing'),
    ({"ops": [_op(1), {"op": "put", "key": "a", "data": 1}]}, 'ops[1]: "op" is "put"'),
    ({"ops": [{"op": 3, "key": "a"}]}, 'ops[0]: "op" is not a string'),
    ({"ops": [{"op": "set", "data": 1}]}, 'ops[0]: "key" must be a string'),
    ({"ops": [{"op": "set", "key": 7, "data": 1}]}, 'ops[0]: "key" must be a string'),
    ({"ops": [{"op": "set", "key": "a"}]}, 'ops[0]: set of "a" needs "data"'),
    ({"ops": [{"op": "patch", "key": "a"}]}, 'ops[0]: patch of "a" needs "data"'),
    ({"ops": [{"op": "del", "key": "a", "data": 1}]}, 'ops[0]: del of "a" takes no "data"'),
    ({"ops": [{"op": "set", "key": "a", "data": 1, "x": 2}]}, 'ops[0]: unknown member "x"'),
    ({"ops": [{"op": "set", "key": "a//b", "data": 1}]}, "invalid path"),
    ({"ops": [{"op": "set", "key": "", "data": 1}]}, "invalid path"),
    ({"ops": [{"op": "set", "key": "logs/*", "data": 1}]}, "only del takes a glob"),
    ({"ops": [{"op": "patch", "key": "a*", "data": {}}]}, "only del takes a glob"),
    ({"ops": [_op(1), _op(1)]}, "appears twice"),
    ({"ops": [_op(1), {"op": "del", "key": "k/*"}]}, 'also matches "k/1"'),
    ({"ops": [_op(i) for i in range(MAX_OPS + 1)]}, f"{MAX_OPS + 1} ops, over the limit of {MAX_OPS}"),
    ({"ops": [_op(1)], "expect": []}, '"expect" must be an object'),
    ({"ops": [_op(1)], "expect": {f"e/{i}": None for i in range(MAX_OPS + 1)}},
     f"{MAX_OPS + 1} keys in expect, over the limit of {MAX_OPS}"),
    ({"ops": [_op(1)], "expect": {"a": "12"}}, 'expect["a"] must be a whole number'),
    ({"ops": [_op(1)], "expect": {"a": 1.5}}, 'expect["a"] must be a whole number'),
    ({"ops": [_op(1)], "expect": {"a": True}}, 'expect["a"] must be a whole number'),
    ({"ops": [_op(1)], "expect": {"a/*": None}}, "a key, not a glob"),
    ({"ops": [_op(1)], "expect": {"a": 0}}, "is not a version"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED, ids=[r for _, r in MALFORMED])
async def test_a_malformed_body_is_a_400_with_its_reason_and_applies_nothing(
    live: Live, body: Any, reason: str
) -> None:
    await live.store.set("k/1", {"v": 0})
    status, kind, raw = await txn(live, body)
    assert (status, kind) == (400, "text/plain"), raw
    text = raw.decode()
    assert text.startswith("storage: invalid transaction: "), text
    assert reason in text, text
    assert await contents(live) == {"k/1": {"v": 0}}


async def test_a_key_no_url_can_carry_is_refused_and_the_longest_one_is_reachable(live: Live) -> None:
    """A 150 000-character key was committed (200), then GET and DELETE of it failed on the request
    line (over 8 190 bytes): a transaction now takes no key a single-key route cannot reach."""
    for body in ({"ops": [{"op": "set", "key": "a_" + "k" * 150_000, "data": 1}]},
                 {"ops": [_op(1)], "expect": {"e/" + "k" * 150_000: None}}):
        status, kind, raw = await txn(live, body)
        assert (status, kind) == (400, "text/plain"), raw[:200]
        assert f"key longer than {MAX_KEY_BYTES} bytes: " in raw.decode() and len(raw) < 250, raw[:200]
    assert await live.store.keys() == []
    longest = "k/" + "a" * (MAX_KEY_BYTES - 2)
    status, _, raw = await txn(live, {"ops": [{"op": "set", "key": longest, "data": 7}]})
    assert status == 200, raw
    async with live.http.get(f"{live.base}/{longest}") as resp:
        assert (resp.status, orjson.loads(await resp.read())["data"]) == (200, 7)
    async with live.http.delete(f"{live.base}/{longest}") as resp:
        assert resp.status == 204, await resp.read()
    assert await live.store.keys() == []


async def test_the_most_ops_commit_in_one_revision(live: Live) -> None:
    status, _, raw = await txn(live, {"ops": [_op(i) for i in range(MAX_OPS)]})
    assert status == 200, raw
    assert orjson.loads(raw)["revision"] == f"{live.store.revision:x}"
    assert len(await live.store.keys()) == MAX_OPS


async def test_the_body_limit_of_a_post_applies(make_live: LiveFactory) -> None:
    live = await make_live(max_body_bytes=1000)
    status, _, raw = await txn(live, {"ops": [{"op": "set", "key": "a", "data": "x" * 1000}]})
    assert (status, raw) == (413, b"ooo: request body too large (limit 1000 bytes)")
    assert await live.store.keys() == []


async def test_a_patch_over_the_merged_document_limit_is_refused_as_patch_refuses_it(
    make_live: LiveFactory,
) -> None:
    """A transaction's patch grew a document past ``--max-body-bytes`` (7 patches: 9 759 bytes,
    all 200) where ``PATCH`` answers 413: now the same 413, and nothing of the transaction applied."""
    live = await make_live(max_body_bytes=2000)
    await live.store.set("big/a", {"a": "x" * 1200})
    patch = {"b0": "y" * 1200}
    async with live.http.patch(f"{live.base}/big/a", data=orjson.dumps(patch)) as resp:
        single = (resp.status, await resp.read())
    assert single == (413, b"ooo: merged document too large (2416 bytes, limit 2000 bytes)")
    status, _, raw = await txn(live, {"ops": [_op(1), {"op": "patch", "key": "big/a", "data": patch}]})
    assert (status, raw) == single
    assert await contents(live) == {"big/a": {"a": "x" * 1200}}
    status, _, raw = await txn(live, {"ops": [{"op": "patch", "key": "big/a", "data": {"b": "y" * 700}}]})
    assert status == 200, raw  # 1 918 bytes: within the limit
    assert await contents(live) == {"big/a": {"a": "x" * 1200, "b": "y" * 700}}


async def test_other_methods_and_apis_on_the_root_are_refused(live: Live) -> None:
    body = orjson.dumps({"ops": [_op(1)]})
    for method, path in (("POST", ""), ("POST", "?api=info"), ("PATCH", TXN), ("DELETE", TXN)):
        async with live.http.request(method, f"{live.base}/{path}", data=body) as resp:
            assert (resp.status, await resp.read()) == (405, b"ooo: method not allowed"), (method, path)
    assert await live.store.keys() == []


async def test_a_patch_of_a_missing_key_fails_the_whole_transaction(live: Live) -> None:
    status, _, raw = await txn(live, {"ops": [_op(1), {"op": "patch", "key": "none", "data": {"a": 1}}]})
    assert status == 404, raw
    assert await live.store.keys() == []


async def test_a_merge_error_is_a_400(live: Live) -> None:
    await live.store.set("doc", {"a": {"b": 1}})
    status, _, raw = await txn(live, {"ops": [_op(1), {"op": "patch", "key": "doc", "data": {"a": 5}}]})
    assert (status, raw) == (
        400, b'storage: invalid transaction: op 1 (doc): merge: patch value must be object for key "a"')
    assert await contents(live) == {"doc": {"a": {"b": 1}}}


# -- filters --------------------------------------------------------------------------------------


async def test_write_filters_transform_sets_and_see_the_merged_patch(live: Live) -> None:
    seen: list[tuple[str, Any]] = []

    def stamp(key: str, data: Any) -> Any:
        seen.append((key, data))
        return {**data, "by": "filter"}

    live.server.write_filter("w/*", stamp)
    await live.store.set("w/p", {"a": 1, "b": 1})
    body = {"ops": [{"op": "set", "key": "w/s", "data": {"x": 1}}, {"op": "patch", "key": "w/p", "data": {"b": 2}},
                    {"op": "set", "key": "plain", "data": 3}]}
    status, _, raw = await txn(live, body)
    assert status == 200, raw
    assert seen == [("w/s", {"x": 1}), ("w/p", {"a": 1, "b": 2})]
    assert await contents(live) == {"plain": 3, "w/p": {"a": 1, "b": 2, "by": "filter"}, "w/s": {"by": "filter", "x": 1}}


async def test_a_patch_through_a_filter_conflicts_if_its_key_changes_meanwhile(live: Live) -> None:
    """The filtered patch is committed as a set of the merged document: a write landing between
    the merge and the commit must make it a 409, not be overwritten."""
    await live.store.set("w/p", {"n": 1})

    async def slow(key: str, data: Any) -> Any:
        await live.store.set("w/p", {"n": 100, "other": "writer"})  # lands after the merge
        return data

    live.server.write_filter("w/*", slow)
    status, _, raw = await txn(live, {"ops": [{"op": "patch", "key": "w/p", "data": {"m": 2}}]})
    assert (status, orjson.loads(raw)["keys"]) == (409, ["w/p"])
    assert await contents(live) == {"w/p": {"n": 100, "other": "writer"}}


async def test_one_refused_write_or_delete_refuses_the_whole_transaction(live: Live) -> None:
    def refuse(key: str, data: Any) -> Any:
        raise ValueError(f"no writes to {key}")

    def keep(key: str) -> None:
        raise ValueError("kept")

    live.server.write_filter("ro/*", refuse)
    live.server.delete_filter("keep/*", keep)
    await live.store.set("keep/1", 1)
    status, _, raw = await txn(live, {"ops": [_op(1), {"op": "set", "key": "ro/1", "data": 1}]})
    assert (status, raw) == (400, b"no writes to ro/1")
    status, _, raw = await txn(live, {"ops": [_op(2), {"op": "del", "key": "keep/1"}]})
    assert (status, raw) == (400, b"kept")
    assert await contents(live) == {"keep/1": 1}


async def test_static_mode_needs_a_route_for_every_op_and_expect_key(make_live: LiveFactory) -> None:
    live = await make_live(static=True)
    live.server.open_filter("open/*")
    ok = {"ops": [{"op": "set", "key": "open/1", "data": 1}], "expect": {"open/2": None}}
    assert (await txn(live, ok))[0] == 200
    for body, key in (
        ({"ops": [*ok["ops"], {"op": "set", "key": "closed", "data": 1}]}, "closed"),
        ({"ops": [{"op": "del", "key": "shut/*"}]}, "shut/*"),
        ({**ok, "expect": {"secret": None}}, "secret"),
    ):
        status, _, raw = await txn(live, body)
        assert (status, raw.decode()) == (400, f"filters: route not defined, key:{key}")
    assert await contents(live) == {"open/1": 1}


async def test_after_write_filters_run_for_the_keys_set(live: Live) -> None:
    live.server.limit_filter("logs/*", limit=2)
    ops = [{"op": "set", "key": f"logs/{i}", "data": i} for i in range(4)]
    assert (await txn(live, {"ops": ops}))[0] == 200
    assert len(await live.store.keys()) == 2


# -- access policy --------------------------------------------------------------------------------


def policy() -> Policy:
    """``w`` may write and read ``a/*``, delete ``d/*``; anonymous may read ``a/*``."""
    rules = [{"paths": ["a/*"], "rights": ["write", "read"]}, {"paths": ["d/*"], "rights": ["delete"]}]
    return Policy.from_dict({
        "tokens": [{"name": "w", "sha256": token_digest("tok"), "rules": rules}],
        "anonymous": {"rules": [{"paths": ["a/*"], "rights": ["read"]}]},
        "namespaces": [{"name": "a", "prefix": "a/"}],
    })


AUTH = {"Authorization": "Bearer tok"}


@pytest.mark.parametrize(("body", "token", "answer"), [
    ({"ops": [{"op": "set", "key": "a/1", "data": 1}, {"op": "set", "key": "b/1", "data": 1}]}, True,
     (403, b"ooo: forbidden: w may not write b/1")),
    ({"ops": [{"op": "set", "key": "a/1", "data": 1}, {"op": "del", "key": "a/2"}]}, True,
     (403, b"ooo: forbidden: w may not delete a/2")),
    ({"ops": [{"op": "set", "key": "a/1", "data": 1}, {"op": "del", "key": "d/*/x"}]}, True,
     (403, b"ooo: forbidden: w may not delete d/*/x")),
    ({"ops": [{"op": "set", "key": "a/1", "data": 1}], "expect": {"d/1": None}}, True,
     (403, b"ooo: forbidden: w may not read d/1")),
    ({"ops": [{"op": "set", "key": "a/1", "data": 1}]}, False,
     (401, b"ooo: unauthorized: a token is required to write a/1")),
], ids=["write", "delete", "glob-delete", "expect-read", "anonymous"])
async def test_the_policy_decides_every_op_and_refuses_the_whole_transaction(
    make_live: LiveFactory, body: Any, token: bool, answer: tuple[int, bytes]
) -> None:
    live = await make_live(auth=policy())
    await live.store.set("a/2", 2)
    status, _, raw = await txn(live, body, headers=AUTH if token else {})
    assert (status, raw) == answer
    assert await contents(live) == {"a/2": 2}


async def test_a_permitted_transaction_commits_and_counts_in_its_namespace(make_live: LiveFactory) -> None:
    """Every key counts once, the keys of ``expect`` too (reads, §9.2: they were not counted)."""
    live = await make_live(auth=policy_with_admin())
    await live.store.set("d/1", 1)
    body = {"ops": [{"op": "set", "key": "a/1", "data": 1}, {"op": "del", "key": "d/*"}], "expect": {"a/2": None}}
    status, _, raw = await txn(live, body, headers=AUTH)
    assert status == 200, raw
    assert await contents(live) == {"a/1": 1}
    # a/1 written, a/2 read (expect); d/* is outside the namespace
    assert await stats_of_a(live) == (1, 2)
    body = {"ops": [{"op": "set", "key": "a/1", "data": 2}], "expect": {"a/1": None, "a/3": None}}
    status, _, raw = await txn(live, body, headers=AUTH)
    assert status == 409, raw
    assert await stats_of_a(live) == (1, 4)  # a/1 once (written and expected), a/3


def policy_with_admin() -> Policy:
    """:func:`policy` and an ``adm`` token that may read ``?api=stats``."""
    rules = [{"paths": ["a/*"], "rights": ["write", "read"]}, {"paths": ["d/*"], "rights": ["delete"]}]
    return Policy.from_dict({
        "tokens": [{"name": "w", "sha256": token_digest("tok"), "rules": rules},
                   {"name": "adm", "sha256": token_digest("adm"), "rules": [{"paths": ["*"], "rights": ["admin"]}]}],
        "anonymous": {"rules": [{"paths": ["a/*"], "rights": ["read"]}]},
        "namespaces": [{"name": "a", "prefix": "a/"}],
    })


async def stats_of_a(live: Live) -> tuple[int, int]:
    """Namespace ``a`` in ``?api=stats``: its objects and its requests of the last 24 h."""
    async with live.http.get(f"{live.base}/?api=stats", headers={"Authorization": "Bearer adm"}) as resp:
        assert resp.status == 200, await resp.read()
        namespace = orjson.loads(await resp.read())["namespaces"][0]
    return namespace["objects"], namespace["requests"]["last24h"]


async def test_an_unknown_token_is_refused_before_the_body_is_read(make_live: LiveFactory) -> None:
    live = await make_live(auth=policy())
    status, _, raw = await txn(live, {"ops": [_op(1)]}, headers={"Authorization": "Bearer nope"})
    assert (status, raw) == (401, b"ooo: unauthorized: unknown token")


async def test_a_layer_without_atomic_batches_refuses_with_501_and_applies_nothing(
    tmp_path: Path, engine: str
) -> None:
    store = Layered(memory=MemoryLayer(), embedded=SOSLayer(str(tmp_path / "sos")))
    async with store, ServerRunner(store, "127.0.0.1", 0, http_engine=engine) as runner, \
            aiohttp.ClientSession() as http:
        body = orjson.dumps({"ops": [_op(1), _op(2)]})
        async with http.post(f"{runner.url}/{TXN}", data=body) as resp:
            status, text = resp.status, await resp.text()
        assert status == 501
        assert text.startswith("storage: transactions are not supported by SOSLayer"), text
        assert await store.keys() == []
