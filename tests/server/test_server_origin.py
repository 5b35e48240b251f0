"""Origin and Host checks (origins.py): cross-origin pages and DNS rebinding cannot use the server
unless the operator allows them; clients without ``Origin`` work as before."""

from __future__ import annotations

import aiohttp
import pytest
from server_live import Live, LiveFactory, next_frame

from ooo_storage.protocol.origins import OriginPolicy, normalize_origin, split_host
from ooo_storage.server import Server

EVIL = "http://evil.example"
LOOPBACK = ("127.0.0.1", 8800)


# The rules, without a server


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("http://good.example", "http://good.example"),
        ("HTTP://Good.Example:80", "http://good.example"),
        ("https://good.example:443/", "https://good.example"),
        ("http://good.example:8080", "http://good.example:8080"),
        ("http://[::1]:8800", "http://[::1]:8800"),
        ("null", "null"),
    ],
)
def test_origins_are_normalised_as_browsers_send_them(text: str, normal: str) -> None:
    assert normalize_origin(text) == normal


@pytest.mark.parametrize(
    "text", ["good.example", "http://good.example/path", "http://a@good.example", "http://x:99999", "http://"]
)
def test_malformed_origins_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        normalize_origin(text)
    with pytest.raises(ValueError):
        Server(None, allowed_origins=[text])  # type: ignore[arg-type]  # refused before any store is needed


def test_hosts_split_into_name_and_port() -> None:
    assert split_host("LocalHost:8800") == ("localhost", 8800)
    assert split_host("[::1]:8800") == ("::1", 8800)
    assert split_host("example.org") == ("example.org", None)
    for bad in ["a/b", "a:b", "user@host", ""]:
        with pytest.raises(ValueError):
            split_host(bad)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8800", "localhost:8800", "LOCALHOST:8800", "[::1]:8800", "127.0.0.2:8800", "localhost"]
)
def test_loopback_server_answers_loopback_names(host: str) -> None:
    assert OriginPolicy.of().host_refusal(host, LOOPBACK) is None


@pytest.mark.parametrize(
    "host", ["evil.example:8800", "evil.example", "localhost:9999", "127.0.0.1.evil.example:8800", "a:b"]
)
def test_loopback_server_refuses_other_names(host: str) -> None:
    refusal = OriginPolicy.of().host_refusal(host, LOOPBACK)
    assert refusal is not None and refusal.startswith("ooo: ")


def test_server_on_another_address_answers_that_address_and_allowed_hosts() -> None:
    local = ("192.0.2.5", 8800)
    assert OriginPolicy.of().host_refusal("192.0.2.5:8800", local) is None
    assert OriginPolicy.of().host_refusal("192.0.2.5:8800", ("::ffff:192.0.2.5", 8800)) is None
    for host in ["localhost:8800", "db.lan:8800", "192.0.2.6:8800"]:
        assert OriginPolicy.of().host_refusal(host, local) is not None
    policy = OriginPolicy.of(hosts=["db.lan", "proxy.lan:443"])
    assert policy.host_refusal("db.lan:8800", local) is None
    assert policy.host_refusal("DB.lan", local) is None
    assert policy.host_refusal("proxy.lan:443", local) is None
    assert policy.host_refusal("proxy.lan:80", local) is not None
    assert OriginPolicy.of(hosts=["*"]).host_refusal("anything:1", local) is None


def test_origin_rules() -> None:
    default = OriginPolicy.of()
    assert default.origin_refusal(None, "127.0.0.1:8800") is None  # not a browser page
    assert default.origin_refusal("http://127.0.0.1:8800", "127.0.0.1:8800") is None  # same origin
    assert default.origin_refusal("https://db.lan", "db.lan") is None  # behind a TLS proxy
    assert default.origin_refusal("http://localhost:8800", "127.0.0.1:8800") is not None
    assert default.origin_refusal(EVIL, "127.0.0.1:8800") == (
        "ooo: origin not allowed: http://evil.example (start the server with --allowed-origin "
        "http://evil.example to let pages from it use this server)"
    )
    assert default.origin_refusal("null", "127.0.0.1:8800") is not None
    listed = OriginPolicy.of(origins=["http://Good.Example:80"])
    assert listed.origin_refusal("http://good.example", "127.0.0.1:8800") is None
    assert listed.cors_origin("http://good.example") == "http://good.example"
    assert listed.cors_origin(EVIL) is None and listed.cors_origin(None) is None
    anyone = OriginPolicy.of(origins=["*"])
    assert anyone.origin_refusal(EVIL, "127.0.0.1:8800") is None and anyone.cors_origin(EVIL) == "*"


# A real server


async def test_cross_origin_writes_are_refused_before_they_happen(live: Live) -> None:
    """A page on any site could POST (a "simple" request, no preflight) or DELETE on a localhost
    server: every answer said ``Access-Control-Allow-Origin: *``."""
    await live.store.set("k", {"keep": True})
    headers = {"Origin": EVIL, "Content-Type": "text/plain"}
    status, body = await live.request("POST", "k", {"evil": True}, headers=headers)
    assert status == 403 and body.startswith(b"ooo: origin not allowed: http://evil.example")
    assert (await live.request("DELETE", "k", headers=headers))[0] == 403
    assert (await live.request("PATCH", "k", {"evil": True}, headers=headers))[0] == 403
    async with live.http.get(live.url("k"), headers=headers) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert (await live.store.get("k")).value == {"keep": True}


async def test_cross_origin_websocket_refused_by_default(live: Live) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("k", origin=EVIL)
    assert err.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await live.http.ws_connect(live.ws_base + "/", origin=EVIL)  # the clock stream too
    ws = await live.ws("k", origin=live.base)  # the server's own pages may subscribe
    assert (await next_frame(ws))["snapshot"] is True
    await ws.close()


async def test_no_cors_headers_without_an_allowed_origin(live: Live) -> None:
    async with live.http.get(live.url("missing")) as resp:
        assert resp.status == 404 and "Access-Control-Allow-Origin" not in resp.headers
    async with live.http.options(live.url("k")) as resp:
        assert resp.status == 204 and "Access-Control-Allow-Origin" not in resp.headers
    async with live.http.options(live.url("k"), headers={"Origin": EVIL}) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


async def test_allowed_origin_gets_cors_on_http_and_websockets(make_live: LiveFactory) -> None:
    live = await make_live(allowed_origins=["http://good.example"])
    good = {"Origin": "http://good.example"}
    preflight = {**good, "Access-Control-Request-Method": "DELETE"}
    async with live.http.options(live.url("k"), headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
        assert "DELETE" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Vary"] == "Origin"
    async with live.http.post(live.url("k"), data=b"1", headers=good) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
    async with live.http.get(live.url("missing"), headers=good) as resp:  # errors are readable too
        assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
    await (await live.ws("k", origin="http://good.example")).close()
    assert (await live.request("POST", "k", b"2", headers={"Origin": EVIL}))[0] == 403


async def test_star_allows_any_origin(make_live: LiveFactory) -> None:
    live = await make_live(allowed_origins=["*"])
    async with live.http.post(live.url("k"), data=b"1", headers={"Origin": EVIL}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    await (await live.ws("k", origin=EVIL)).close()


async def test_dns_rebinding_is_refused(live: Live) -> None:
    """A page of evil.example re-pointed at 127.0.0.1 is same-origin with itself: its requests
    name the attacker's host, and only that gives them away."""
    port = live.runner.port
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    await live.store.set("k", {"secret": 1})
    status, body = await live.request("DELETE", "k", headers=rebound)
    assert status == 403 and body.startswith(b"ooo: host not allowed: evil.example")
    assert b"--allowed-host evil.example" in body
    assert (await live.request("GET", "k", headers={"Host": f"evil.example:{port}"}))[0] == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await live.ws("k", headers=rebound)
    assert err.value.status == 403
    assert (await live.store.get("k")).value == {"secret": 1}
    assert (await live.request("GET", "k", headers={"Host": f"localhost:{port}"}))[0] == 200


async def test_allowed_host_is_answered(make_live: LiveFactory) -> None:
    live = await make_live(allowed_hosts=["db.lan"])
    port = live.runner.port
    named = {"Host": f"db.lan:{port}", "Origin": f"http://db.lan:{port}"}
    assert (await live.request("POST", "k", b"1", headers=named))[0] == 200
    await (await live.ws("k", headers=named)).close()
