"""The explorer at ``GET /`` (issue 13) in a real headless Chromium driven by Playwright, against a
real server on 127.0.0.1: it loads without console errors, follows writes made over HTTP live (tree
and value view within 1 s), edits, merges, creates and deletes, searches and pages 10 000 keys with
glob pages (never the whole listing), and asks for a token when the server wants one.

Chromium is Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it; Playwright cannot download its
own here): when it is missing the tests fail and say so. Screenshots go to a temporary directory.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Route,
    WebSocketRoute,
    async_playwright,
    expect,
)
from server_live import Live, LiveFactory

from ooo_storage.errors import NotFound
from ooo_storage.protocol.access import Policy, token_digest
from ooo_storage.protocol.jsonpatch import diff

CHROMIUM = os.environ.get("OOO_CHROMIUM", "/usr/bin/chromium")
LIVE = 1000  # ms: how soon a write made elsewhere must show in the page
SETUP = 20_000
"""ms: how long any other wait may take (a page load, a stream's first snapshot, a request the page
makes): on a loaded 2-core machine Chromium alone can take seconds, and Playwright's 5 s default
made these tests fail now and then. What must be fast says so with ``timeout=LIVE``."""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"the explorer tests need Chromium at {CHROMIUM} (apt-get install chromium, or set "
                    "OOO_CHROMIUM to its path)")
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        expect.set_options(timeout=SETUP)
        yield launched
        await launched.close()


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explorer-screenshots")


class Watched:
    """A page with what it logs as errors and the requests it makes."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[Request] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("request", lambda request: self.requests.append(request))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")


async def open_page(browser: Browser, live: Live, **context: Any) -> Watched:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 860}, **context)
    ctx.set_default_timeout(SETUP)
    watched = Watched(await ctx.new_page())
    return watched


def entry(page: Page, key: str) -> Any:
    return page.locator(f'#tree li[data-key="{key}"] > .key')


async def test_the_page_loads_clean_and_follows_writes_live(browser: Browser, make_live: LiveFactory,
                                                           shots: Path) -> None:
    live = await make_live()
    await live.store.set("greeting", {"hello": "world"})
    await live.store.set("users/1", {"name": "ana"})
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    await expect(entry(page, "greeting")).to_be_visible()
    await expect(entry(page, "users")).to_have_class("key folder")  # a folder: users/1 lies below
    await entry(page, "greeting").click()
    await expect(page.locator("#value")).to_contain_text('"hello": "world"')
    await expect(page.locator("#conn")).to_have_text("2/2 streams live")  # the tree's and the value's

    status, _ = await live.request("POST", "fresh", {"new": True})  # another client writes
    assert status == 200
    await expect(entry(page, "fresh")).to_be_visible(timeout=LIVE)
    status, _ = await live.request("POST", "greeting", {"hello": "again", "n": [1, 2]})
    assert status == 200
    await expect(page.locator("#value")).to_contain_text('"hello": "again"', timeout=LIVE)
    await expect(page.locator("#log")).to_contain_text("set fresh", timeout=LIVE)
    await expect(page.locator("#log")).to_contain_text("set greeting", timeout=LIVE)
    status, _ = await live.request("DELETE", "fresh")
    assert status == 204
    await expect(entry(page, "fresh")).to_have_count(0, timeout=LIVE)
    await expect(page.locator("#log")).to_contain_text("del fresh", timeout=LIVE)

    await entry(page, "users").click()  # opens the folder: its own glob page, live too
    await expect(entry(page, "users/1")).to_be_visible()
    await expect(page.locator("#log")).to_contain_text("snapshot users/* (")  # its stream is live
    await live.request("POST", "users/2", {"name": "bob"})
    await expect(entry(page, "users/2")).to_be_visible(timeout=LIVE)
    await expect(page.locator("#state")).to_contain_text("revision")
    await expect(page.locator("#metrics table")).to_contain_text("store_writes_total")  # GET /metrics, parsed
    await page.screenshot(path=shots / "live.png")
    assert (shots / "live.png").stat().st_size > 0
    assert watched.errors == []


async def test_edit_merge_create_and_delete_from_the_page(browser: Browser, make_live: LiveFactory,
                                                         shots: Path) -> None:
    live = await make_live("leveldb")
    await live.store.set("doc", {"a": 1, "big": 12345678901234567890})
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    await entry(page, "doc").click()
    await expect(page.locator("#value")).to_contain_text('"a": 1')

    await page.click("#edit")  # the exact stored text: the 20-digit integer survives the round trip
    await expect(page.locator("#editor")).to_be_visible()  # once the editor's read of it came back
    assert orjson.loads(await page.input_value("#edit-value")) == {"a": 1, "big": 12345678901234567890}
    await page.fill("#edit-value", '{"a": 2, "big": 12345678901234567890, "list": [1]}')
    await page.click("#save")
    await expect(page.locator("#status")).to_have_text("stored doc")
    assert (await live.store.get("doc")).value == {"a": 2, "big": 12345678901234567890, "list": [1]}
    await expect(page.locator("#value")).to_contain_text('"list"', timeout=LIVE)

    await page.click("#edit")
    await page.fill("#edit-value", '{"b": {"c": true}}')
    await page.click("#merge")
    await expect(page.locator("#status")).to_have_text("merged doc")
    assert (await live.store.get("doc")).value["b"] == {"c": True}

    await page.click("#edit")
    await page.fill("#edit-value", "{not json")
    await page.click("#save")
    await expect(page.locator("#status")).to_contain_text("not JSON")
    await page.click("#cancel")

    await page.click("#create summary")
    await page.fill("#create-key", "made/here")
    await page.fill("#create-value", '{"by": "page"}')
    await page.click("#create-submit")
    await expect(page.locator("#status")).to_have_text("stored made/here")
    assert (await live.store.get("made/here")).value == {"by": "page"}
    await expect(page.locator("#value-key")).to_have_text("made/here")  # now shown, live
    await expect(page.locator("#value")).to_contain_text('"by": "page"')

    await page.fill("#create-key", "bad//key")
    await page.click("#create-submit")  # the server's own reason, shown as it is
    await expect(page.locator("#status")).to_have_text("POST bad//key: ooo: key is not valid")

    await page.click("#delete")
    await expect(page.locator("#delete")).to_have_text("Confirm delete")
    await page.click("#delete")
    await expect(page.locator("#status")).to_have_text("deleted made/here")
    with pytest.raises(NotFound):
        await live.store.get("made/here")
    await expect(page.locator("#meta")).to_contain_text("no such key", timeout=LIVE)
    await page.screenshot(path=shots / "edited.png")
    # the invalid key's 400 is the one error the browser logs (a failed request); nothing else
    assert [e for e in watched.errors if "status of 400" not in e] == []


async def test_no_edit_before_the_value_arrived(browser: Browser, make_live: LiveFactory) -> None:
    """Edit and Delete wait for the value's snapshot: before it the editor offered ``{}`` for a key
    holding data, and Save replaced the data with it (a slow stream on a loaded machine)."""
    live = await make_live()
    await live.store.set("doc", {"keep": "me"})
    watched = await open_page(browser, live)
    page = watched.page
    held: list[str | bytes] = []
    route: list[WebSocketRoute] = []
    snapshot = asyncio.Event()

    def hold(message: str | bytes) -> None:
        held.append(message)
        snapshot.set()

    def hold_frames(ws: WebSocketRoute) -> None:  # the value's stream: connected, its frames held
        route.append(ws)
        ws.connect_to_server().on_message(hold)

    await page.route_web_socket(live.ws_base + "/doc", hold_frames)
    await page.goto(live.base + "/")
    await entry(page, "doc").click()
    await expect(page.locator("#value")).to_have_text("…")
    await expect(page.locator("#edit")).to_be_disabled()
    await expect(page.locator("#delete")).to_be_disabled()
    await page.locator("#edit").click(force=True)  # a click that gets through does nothing
    await expect(page.locator("#editor")).to_be_hidden()

    await snapshot.wait()  # the server sent it: the page gets it now
    route[0].send(held[0])
    await expect(page.locator("#value")).to_contain_text('"keep": "me"')
    await expect(page.locator("#edit")).to_be_enabled()
    await page.click("#edit")
    await expect(page.locator("#editor")).to_be_visible()
    assert orjson.loads(await page.input_value("#edit-value")) == {"keep": "me"}
    assert (await live.store.get("doc")).value == {"keep": "me"}
    assert watched.errors == []


async def test_search_and_paging_over_10000_keys(browser: Browser, make_live: LiveFactory, shots: Path) -> None:
    live = await make_live()
    for i in range(10_000):
        await live.store.set(f"items/{i:05}", b"1")
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    await expect(entry(page, "items")).to_be_visible()  # a folder found by ?api=folders

    await page.fill("#search-input", "items/0999")  # a prefix: the glob items/0999*
    await page.click("#search button")
    found = page.locator("#tree li[data-key] > .key")
    await expect(found).to_have_count(10)
    assert sorted(await found.all_text_contents()) == [f"items/{i:05}" for i in range(9990, 10_000)]

    await page.fill("#search-input", "items/*")
    await page.press("#search-input", "Enter")
    await expect(found).to_have_count(100)
    await expect(page.locator("button.next")).to_have_text("more (100 shown)")
    await page.click("button.next")
    await expect(found).to_have_count(200)
    await page.click("button.next")
    await expect(found).to_have_count(300)
    shown = await found.all_text_contents()
    assert shown == [f"items/{i:05}" for i in range(9999, 9699, -1)]  # newest first, no repeat
    await found.nth(250).click()
    await expect(page.locator("#value-key")).to_have_text("items/09749")
    status, _ = await live.request("POST", "items/10000", 1)  # too many items to follow live: reload
    assert status == 200
    await page.click("button.reload")
    await expect(found).to_have_count(100)
    await expect(found.first).to_have_text("items/10000")
    await page.screenshot(path=shots / "paged.png")

    asked = [r.url.removeprefix(live.base) for r in watched.requests]
    lists = [u for u in asked if "*" in u.partition("?")[0]]
    assert lists and all("limit=100" in u for u in lists), lists  # pages, never a whole glob
    whole = [r for r in watched.requests if r.url.rstrip("/") == live.base and r.resource_type != "document"]
    assert whole == []  # nor the full key listing
    assert watched.errors == []


async def test_the_tree_reaches_every_folder_past_the_first_keys(browser: Browser, make_live: LiveFactory,
                                                                shots: Path) -> None:
    """Issue 13's case: 10 000 keys ``many/g0..g9/k...`` and 8 under ``x/``. Before, folders came
    from the first 500 keys of ``?api=keys``: the top showed ``many`` only and ``many`` showed
    ``g0`` only. Now ``?api=folders`` lists them all, and a level of more than a page of folders
    has a "more folders" button."""
    live = await make_live()
    for g in range(10):
        for i in range(1000):
            await live.store.set(f"many/g{g}/k{i:05}", b"1")
    for i in range(8):
        await live.store.set(f"x/k{i}", b"1")
    for i in range(502):
        await live.store.set(f"wide/d{i:03}/k", b"1")
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    for folder in ("many", "x", "wide"):
        await expect(entry(page, folder)).to_have_class("key folder")
    await entry(page, "many").click()
    under = page.locator('#tree ul[data-glob="many/*"] > li[data-key] > .key')
    await expect(under).to_have_count(10)
    assert await under.all_text_contents() == [f"g{g}" for g in range(10)]
    await page.screenshot(path=shots / "folders.png")
    await entry(page, "x").click()
    await expect(page.locator('#tree ul[data-glob="x/*"] > li[data-key]')).to_have_count(8)

    await entry(page, "wide").click()
    wide = page.locator('#tree ul[data-glob="wide/*"] > li[data-key]')
    await expect(wide).to_have_count(500)
    await page.click("button.folders")
    await expect(wide).to_have_count(502)
    await expect(page.locator("button.folders")).to_have_count(0)
    assert watched.errors == []


async def test_the_csp_allows_the_page_by_hash_not_unsafe_inline(browser: Browser, make_live: LiveFactory) -> None:
    """The page's inline script and style run by their SHA-256 in the Content-Security-Policy; an
    injected inline script does not (``'unsafe-inline'`` let it run)."""
    live = await make_live()
    await live.store.set("greeting", {"hello": "world"})
    async with live.http.get(live.base + "/") as response:
        csp, html = response.headers["Content-Security-Policy"], await response.read()
    assert "unsafe-inline" not in csp
    for tag in ("script", "style"):
        text = html.split(f"<{tag}>".encode(), 1)[1].split(f"</{tag}>".encode(), 1)[0]
        digest = base64.b64encode(hashlib.sha256(text).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}';" in csp
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    await entry(page, "greeting").click()
    await expect(page.locator("#value")).to_contain_text('"hello": "world"')
    assert await page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"
    assert watched.errors == []
    ran = await page.evaluate("""() => { const s = document.createElement("script");
        s.textContent = "window.injected = 1"; document.body.append(s); return window.injected === 1; }""")
    assert ran is False
    assert any("Content Security Policy" in e for e in watched.errors), watched.errors


BIG = "123456789012345678901234567890"


async def test_the_value_view_shows_every_digit_the_server_keeps(browser: Browser, make_live: LiveFactory) -> None:
    """A 30-digit integer and 2^53 + 1 show as stored (JS numbers made them 1.2345678901234568e+29
    and 9007199254740992), and still after a live patch of a sibling field and in the editor."""
    live = await make_live()
    status, _ = await live.request("POST", "nums", f'{{"big": {BIG}, "near": 9007199254740993, "name": "a"}}'.encode())
    assert status == 200
    watched = await open_page(browser, live)
    page = watched.page
    await page.goto(live.base + "/")
    await entry(page, "nums").click()
    value = page.locator("#value")
    await expect(value).to_contain_text(f'"big": {BIG}')
    await expect(value).to_contain_text('"near": 9007199254740993')
    status, _ = await live.request("PATCH", "nums", {"name": "b"})  # a patch frame, not a snapshot
    assert status == 200
    await expect(value).to_contain_text('"name": "b"', timeout=LIVE)
    await expect(value).to_contain_text(f'"big": {BIG}')
    await expect(value).to_contain_text('"near": 9007199254740993')
    await page.click("#edit")
    stored = json.loads((await live.request("GET", "nums"))[1])["data"]  # the stdlib keeps every digit
    assert stored["big"] == int(BIG)
    await expect(page.locator("#edit-value")).to_have_value(json.dumps(stored, indent=2))
    assert watched.errors == []


async def test_the_exact_printer_writes_what_json_stringify_writes(browser: Browser, make_live: LiveFactory) -> None:
    """``pretty(parseExact(t))`` is ``JSON.stringify(JSON.parse(t), null, 2)`` wherever JS numbers are
    exact, and keeps the text of numbers that are not; bad JSON is refused as JSON.parse refuses it."""
    live = await make_live()
    watched = await open_page(browser, live)
    await watched.page.goto(live.base + "/")
    rng = random.Random(17)
    texts = [orjson.dumps(_documents(rng)).decode() for _ in range(300)] + [' { "a" : [ 1 , {} , [] ] } ']
    same = await watched.page.evaluate(
        "ts => ts.filter(t => pretty(parseExact(t)) !== JSON.stringify(JSON.parse(t), null, 2))", texts)
    assert same == []
    kept = await watched.page.evaluate(
        "ts => ts.map(t => pretty(parseExact(t)))", [f"[{BIG},-0,1.0,1e400,9007199254740993,2.5E-3]"])
    assert kept == [f"[\n  {BIG},\n  -0,\n  1.0,\n  1e400,\n  9007199254740993,\n  2.5E-3\n]"]
    refused = await watched.page.evaluate(
        "ts => ts.map(t => { try { parseExact(t); return 'parsed'; } catch (e) { return 'refused'; } })",
        ["", "{", "[1,]", '{"a":1,}', "01", "1.", "tru", '"\x01"', "[1] 2", "{'a':1}"])
    assert refused == ["refused"] * 10
    proto = await watched.page.evaluate("() => { const o = parseExact('{\"__proto__\": {\"x\": 1}}');"
                                        " return [Object.keys(o), o.x === undefined]; }")
    assert proto == [["__proto__"], True]
    assert watched.errors == []


async def test_under_a_policy_the_page_asks_for_a_token_and_uses_it(browser: Browser, make_live: LiveFactory,
                                                                   shots: Path) -> None:
    token, reader = "explorer-token-" + "x" * 30, "reader-token-" + "y" * 30
    rules = [{"paths": ["*", "*/*"], "rights": ["read", "write", "delete", "admin"]}]
    policy = Policy.from_dict({"tokens": [
        {"name": "ops", "sha256": token_digest(token), "rules": rules},
        {"name": "reader", "sha256": token_digest(reader), "rules": [{"paths": ["*", "*/*"], "rights": ["read"]}]},
    ]})
    live = await make_live(auth=policy)
    await live.store.set("secret", {"v": 1})
    watched = await open_page(browser, live)
    page = watched.page

    async def document_with_token(route: Route) -> None:
        # GET / itself needs admin today (auth.py): the page is fetched with the token, standing
        # for an operator's proxy; everything the page asks afterwards carries no header from here.
        await route.continue_(headers={**route.request.headers, "Authorization": f"Bearer {token}"})

    await page.route(live.base + "/", document_with_token)
    await page.goto(live.base + "/")
    await expect(page.locator("#auth")).to_have_class("open")
    await expect(page.locator("#auth-reason")).to_contain_text("ooo: unauthorized")
    await page.fill("#auth-token", token)
    await page.click("#auth-form button[type=submit]")
    await expect(entry(page, "secret")).to_be_visible()
    await entry(page, "secret").click()  # a websocket with the bearer sub-protocol
    await expect(page.locator("#value")).to_contain_text('"v": 1')
    status, _ = await live.request("POST", "secret", {"v": 2}, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    await expect(page.locator("#value")).to_contain_text('"v": 2', timeout=LIVE)
    await page.screenshot(path=shots / "token.png")
    await expect(page.locator("#log")).to_contain_text("snapshot * (")  # the tree's stream was served too
    assert live.server.pools.state()["totalConnections"] == 2  # tree and value streams admitted
    await expect(page.locator("#metrics table")).to_contain_text("store_writes_total")

    await page.click("#token-button")  # a reader: keys and values, no admin panels, writes refused
    await page.fill("#auth-token", reader)
    await page.click("#auth-form button[type=submit]")
    await expect(page.locator("#state")).to_contain_text("ooo: forbidden: reader may not admin /")
    await expect(entry(page, "secret")).to_be_visible()  # the glob page, without ?api=keys folders
    await expect(page.locator("#value")).to_contain_text('"v": 2')
    await page.click("#delete")
    await page.click("#delete")
    await expect(page.locator("#status")).to_have_text("DELETE secret: ooo: forbidden: reader may not delete secret")
    assert (await live.store.get("secret")).value == {"v": 2}


def _documents(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON document: nested objects and arrays, keys with ``/`` and ``~`` (pointer escapes)."""
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1.5, 2**40])
    if kind == 1:
        return rng.choice(["", "a", "x/y", "t~1", "ü"])
    if kind == 2:
        return rng.randrange(100)
    if kind in (3, 4):
        return {rng.choice(["a", "b", "c/d", "e~f", ""]): _documents(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_documents(rng, depth + 1) for _ in range(rng.randrange(5))]


async def test_the_page_applies_json_patches_as_the_server_and_rfc_6902_mean_them(browser: Browser,
                                                                                 make_live: LiveFactory) -> None:
    """The page's own patch code (no library) against the server's diffs and ``jsonpatch``'s (which
    also makes ``move`` and ``copy``): 400 random pairs, each patch applied in the page gives the new
    document; a patch that does not apply raises (the stream then drops its state for a snapshot)."""
    live = await make_live()
    watched = await open_page(browser, live)
    await watched.page.goto(live.base + "/")
    rng = random.Random(13)
    cases = []
    for i in range(400):
        old, new = _documents(rng), _documents(rng)
        ops = diff(old, new) if i % 2 else jsonpatch.make_patch(old, new).patch
        cases.append({"old": old, "ops": ops, "new": new})
    start = {"a": {"b": 1, "x/y": [1, 2]}, "c": [1, 2], "t~": None}
    for ops in (  # move and copy, which diffs of random pairs rarely make; the reference is jsonpatch's
        [{"op": "move", "from": "/a/b", "path": "/c/0"}, {"op": "copy", "from": "/c", "path": "/d"}],
        [{"op": "move", "from": "/a/x~1y", "path": "/t~0"}, {"op": "copy", "from": "/a", "path": "/c/-"}],
        [{"op": "test", "path": "/c", "value": [1, 2]}, {"op": "move", "from": "/c/1", "path": "/c/0"}],
        [{"op": "replace", "path": "", "value": [3]}, {"op": "add", "path": "/-", "value": {}}],
    ):
        cases.append({"old": copy.deepcopy(start), "ops": ops, "new": jsonpatch.apply_patch(start, ops)})
    results = await watched.page.evaluate(
        "cases => cases.map(c => { try { return {ok: applyPatch(c.old, c.ops)}; } catch (e) { return {error: String(e)}; } })",
        cases,
    )
    wrong = [(c, r) for c, r in zip(cases, results, strict=True) if r != {"ok": c["new"]}]
    assert wrong == []
    refused = await watched.page.evaluate(
        "() => [[{op: 'remove', path: '/x'}], [{op: 'replace', path: '/a/5', value: 1}],"
        " [{op: 'add', path: '/a/01', value: 1}], [{op: 'test', path: '/a/0', value: 2}]]"
        ".map(p => { try { applyPatch({a: [1]}, p); return 'applied'; } catch (e) { return 'refused'; } })"
    )
    assert refused == ["refused"] * 4
    assert watched.errors == []


async def test_api_keys_pages_from_the_memory_index_equal_a_listing_of_every_key(make_live: LiveFactory) -> None:
    """``?api=keys`` (the explorer's folders) reads the memory mirror's prefix range only: its pages
    are those of the whole sorted listing a store without a mirror filters, prefixes, globs,
    empty and past-the-end pages alike, and under a policy the readable keys only."""
    rng = random.Random(7)
    names = {"/".join(rng.choice(["a", "ab", "b", "a-b", "z9"]) for _ in range(rng.randrange(1, 4)))
             for _ in range(400)}
    token = "keys-token-" + "k" * 30
    policy = Policy.from_dict({"tokens": [{"name": "ops", "sha256": token_digest(token), "rules": [
        {"paths": ["a/*", "a/*/*", "ab"], "rights": ["read", "admin"]}]}]})
    servers = [await make_live(backend, **options) for options in ({}, {"auth": policy})
               for backend in ("memory", "leveldb")]
    for name in names:
        for live in servers:
            await live.store.set(name, 1)
    headers = {"Authorization": f"Bearer {token}"}
    expected = sorted(names)
    for text in ["", "a", "a/", "ab/*", "a/*/b", "b/a-b/", "nothing", "z9/z9/z9/"]:
        under = [k for k in expected if k.startswith(text.partition("*")[0])]
        for page, limit in [(1, 500), (1, 3), (2, 3), (4, 7), (1000, 5)]:
            query = f"?api=keys&page={page}&limit={limit}&filter={text}"
            answers = [await live.get(query) for live in servers[:2]]
            start = (page - 1) * limit
            assert answers[0] == answers[1] == {
                "keys": under[start:start + limit], "total": len(under), "page": page, "limit": limit, "filter": text}
            readable = [(await live.request("GET", query, headers=headers))[1] for live in servers[2:]]
            assert readable[0] == readable[1]
    answer = orjson.loads((await servers[2].request("GET", "?api=keys&filter=a", headers=headers))[1])
    shown = [k for k in expected if k == "ab" or k.startswith("a/") and k.count("/") <= 2]
    assert (answer["keys"], answer["total"]) == (shown[:50], len(shown))
