"""``GET /?api=folders&prefix=P`` (issue 13): the folders right under a prefix, as S3's delimiter
listing, so that the explorer's tree reaches every folder however many keys lie in the first ones
(before, it found folders in the first 500 keys of ``?api=keys`` only)."""

from __future__ import annotations

import random

import orjson
from server_live import Live, LiveFactory

from ooo_storage.protocol.access import Policy, token_digest

TOKEN = "folders-token-" + "f" * 30


def _folders(keys: list[str], prefix: str) -> list[str]:
    """What the listing must hold: ``prefix + S`` for every key ``prefix + S/...``."""
    return sorted({k[: k.index("/", len(prefix))] for k in keys
                   if k.startswith(prefix) and "/" in k[len(prefix):]})


async def _all_pages(live: Live, prefix: str, limit: int, **kw: object) -> list[str]:
    found: list[str] = []
    cursor = ""
    for _ in range(1000):
        status, body = await live.request("GET", f"?api=folders&prefix={prefix}&limit={limit}&cursor={cursor}", **kw)
        assert status == 200, body
        page = orjson.loads(body)
        assert page["prefix"] == prefix and len(page["folders"]) <= limit
        found += page["folders"]
        if page["cursor"] is None:
            assert len(found) == len(set(found))  # no folder twice across pages
            return sorted(found)  # key order: a-b/... (so a-b) comes before a/...
        cursor = page["cursor"]
    raise AssertionError("the cursor never ended")


async def test_folders_under_10008_keys_are_all_listed(make_live: LiveFactory) -> None:
    """The issue's case: 10 000 keys in ``many/g0..g9`` and 8 under ``x/``: the top level lists
    ``many`` and ``x``, ``many/`` lists g0..g9, a level of keys only lists nothing, with and
    without a memory mirror."""
    keys = [f"many/g{g}/k{i:05d}" for g in range(10) for i in range(1000)] + [f"x/k{i}" for i in range(8)]
    for backend in ("memory", "leveldb"):
        live = await make_live(backend)
        for key in keys:
            await live.store.set(key, 1)
        await live.store.set("many", 1)  # a key that is a folder too
        assert await live.get("?api=folders") == {"folders": ["many", "x"], "cursor": None, "prefix": ""}
        assert (await live.get("?api=folders&prefix=many/"))["folders"] == [f"many/g{g}" for g in range(10)]
        assert await live.get("?api=folders&prefix=many/g3/") == {"folders": [], "cursor": None, "prefix": "many/g3/"}
        assert await _all_pages(live, "many/", 3) == [f"many/g{g}" for g in range(10)]
        assert (await live.get("?api=folders&prefix=ma"))["folders"] == ["many"]  # not at a / : S3's too


async def test_folders_pages_equal_the_brute_force_listing_and_a_policy_shows_readable_ones(
        make_live: LiveFactory) -> None:
    """Random trees: every prefix's pages (any limit) join into the folders of a listing of every
    key, the same with and without a mirror; under a policy only folders holding a readable key."""
    rng = random.Random(15)
    segments = ["a", "ab", "b", "a-b", "a.b", "a_b", "z9", "0"]
    names = sorted({"/".join(rng.choice(segments) for _ in range(rng.randrange(1, 5))) for _ in range(600)})
    policy = Policy.from_dict({"tokens": [{"name": "ops", "sha256": token_digest(TOKEN), "rules": [
        {"paths": ["a/*/b", "ab/*"], "rights": ["read"]}, {"paths": ["*"], "rights": ["admin"]}]}]})
    servers = [await make_live(backend) for backend in ("memory", "leveldb")]
    guarded = [await make_live(backend, auth=policy) for backend in ("memory", "leveldb")]
    for name in names:
        for live in servers + guarded:
            await live.store.set(name, 1)
    readable = [k for k in names if k.startswith("ab/") and k.count("/") == 1
                or k.startswith("a/") and k.count("/") == 2 and k.endswith("/b")]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for prefix in ["", "a", "a/", "ab/", "a/a-b/", "a/ab/a", "b/0/", "nothing/"]:
        for limit in (500, 1, 2, 7):
            for live in servers:
                assert await _all_pages(live, prefix, limit) == _folders(names, prefix), (prefix, limit)
            for live in guarded:
                shown = await _all_pages(live, prefix, limit, headers=headers)
                assert shown == _folders(readable, prefix), (prefix, limit)


async def test_bad_folder_queries_are_a_400_with_the_reason(make_live: LiveFactory) -> None:
    live = await make_live()
    await live.store.set("a/b/c", 1)
    for query, reason in [("prefix=a*", b"literal key prefix"), ("prefix=a/&cursor=b", b"not a folder under"),
                          ("cursor=a/b", b"not a folder under"), ("limit=0", b"limit"),
                          ("limit=501", b"limit")]:
        status, body = await live.request("GET", f"?api=folders&{query}")
        assert (status, reason in body) == (400, True), (query, body)
    status, body = await live.request("GET", "?api=folders&prefix=a/&cursor=a/b")
    assert (status, orjson.loads(body)) == (200, {"folders": [], "cursor": None, "prefix": "a/"})


async def test_folders_need_admin_under_a_policy(make_live: LiveFactory) -> None:
    policy = Policy.from_dict({"tokens": [{"name": "reader", "sha256": token_digest(TOKEN), "rules": [
        {"paths": ["*", "*/*"], "rights": ["read"]}]}]})
    live = await make_live(auth=policy)
    await live.store.set("a/b", 1)
    status, _ = await live.request("GET", "?api=folders", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 403


async def test_the_openapi_document_describes_api_folders(make_live: LiveFactory) -> None:
    live = await make_live()
    root = (await live.get("?api=openapi"))["paths"]["/"]["get"]
    params = {p["name"]: p for p in root["parameters"]}
    assert "folders" in params["api"]["schema"]["enum"]
    assert {"prefix", "cursor", "limit"} <= set(params)
    assert "?api=folders" in params["prefix"]["description"]
