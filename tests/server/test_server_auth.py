"""Access control in the server (issue 9, ``server/auth.py``): every route needs its right, for REST
and websockets alike, checked before filters run and before a body is read; a real server on
127.0.0.1 over a real store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from server_live import Live, LiveFactory, next_frame
from yarl import URL

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.protocol.access import RIGHTS, Policy, token_digest
from ooo_storage.server import ServerRunner
from ooo_storage.server.auth import PRINCIPAL

EVERYWHERE = ["*", "*/*", "*/*/*", "*/*/*/*"]  # "*" never crosses a "/": one glob per depth
NAMESPACES = [{"name": "a", "prefix": "a/"}]


def token_of(right: str) -> str:
    return f"token-with-{right}-{right}"


def one_right_each() -> dict[str, Any]:
    """A policy with one token per right, each on every key, and a namespace for ``?api=stats``."""
    tokens = [
        {"name": right, "sha256": token_digest(token_of(right)), "rules": [{"paths": EVERYWHERE, "rights": [right]}]}
        for right in RIGHTS
    ]
    return {"tokens": tokens, "namespaces": NAMESPACES}


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


async def call(
    live: Live, method: str, path: str, token: str | None = None, body: bytes | None = None, **kw: Any
) -> tuple[int, aiohttp.typedefs.CIMultiDictProxy[str], bytes]:
    headers = {**bearer(token), **kw.pop("headers", {})}
    async with live.http.request(method, f"{live.base}/{path}", data=body, headers=headers, **kw) as resp:
        return resp.status, resp.headers, await resp.read()


async def subscribe(live: Live, path: str, **kw: Any) -> int | aiohttp.ClientWebSocketResponse:
    """The open websocket (its first frame read), or the status that refused the upgrade."""
    try:
        ws = await live.http.ws_connect(f"{live.ws_base}/{path}", **kw)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await next_frame(ws)
    return ws


async def ws_status(live: Live, path: str, token: str | None = None, **kw: Any) -> int:
    ws = await subscribe(live, path, headers=bearer(token), **kw)
    if isinstance(ws, int):
        return ws
    await ws.close()
    return 101


async def contents(store: Layered) -> dict[str, Any]:
    return {k: (await store.get(k)).value for k in await store.keys()}


# -- every route × every right ---------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    right: str
    ok: int
    body: bytes | None = None
    websocket: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    changes: bool = False
    """A write or delete: the store changes when allowed, and must not when refused."""


ROUTES = {
    "GET key": Route("GET", "a/1", "read", 200),
    "GET glob": Route("GET", "a/*", "read", 200),
    "GET deep glob": Route("GET", "a/*/c", "read", 200),
    "POST key": Route("POST", "a/1", "write", 200, b'{"v":2}', changes=True),
    "POST push": Route("POST", "logs/*", "write", 200, b'{"v":2}', changes=True),
    "PATCH": Route("PATCH", "a/1", "write", 200, b'{"w":3}', changes=True),
    "DELETE key": Route("DELETE", "a/1", "delete", 204, changes=True),
    "DELETE glob": Route("DELETE", "a/*", "delete", 204, changes=True),
    "websocket key": Route("GET", "a/1", "read", 101, websocket=True),
    "websocket glob": Route("GET", "a/*", "read", 101, websocket=True),
    "GET / (JSON)": Route("GET", "", "admin", 200, headers={"Accept": "application/json"}),
    **{f"?api={api}": Route("GET", f"?api={api}", "admin", 200) for api in ("keys", "info", "filters", "state", "stats")},
}


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def attempt(live: Live, route: Route, token: str | None) -> tuple[int, Any, bytes]:
    if route.websocket:
        status = await ws_status(live, route.path, token)
        if status == 101:
            return status, {}, b""
        return await call(live, "GET", route.path, token, headers=UPGRADE)  # the refusal's text
    return await call(live, route.method, route.path, token, route.body, headers=route.headers)


@pytest.mark.parametrize("right", [*RIGHTS, None], ids=[*RIGHTS, "anonymous"])
@pytest.mark.parametrize("name", list(ROUTES))
async def test_every_route_needs_its_right(make_live: LiveFactory, name: str, right: str | None) -> None:
    route = ROUTES[name]
    live = await make_live(auth=Policy.from_dict(one_right_each()))
    await live.store.set("a/1", {"v": 1})
    await live.store.set("a/b/c", {"v": 1})
    before = await contents(live.store)

    status, headers, body = await attempt(live, route, None if right is None else token_of(right))

    after = await contents(live.store)
    shown = route.path.partition("?")[0] or "/"
    if right == route.right:
        assert status == route.ok, body
        assert (after != before) == route.changes
    elif right is None:  # no token: one may let it in
        assert status == 401, body
        assert body.decode() == f"ooo: unauthorized: a token is required to {route.right} {shown}"
        if not route.websocket:
            assert headers["WWW-Authenticate"] == 'Bearer realm="ooo-storage"'
        assert after == before
    else:
        assert status == 403, body
        assert body.decode() == f"ooo: forbidden: {right} may not {route.right} {shown}"
        assert after == before


@pytest.mark.parametrize("token", [*(token_of(r) for r in RIGHTS), None])
async def test_the_clock_stream_is_open_to_anyone_the_policy_knows(make_live: LiveFactory, token: str | None) -> None:
    live = await make_live(auth=Policy.from_dict(one_right_each()))
    assert await ws_status(live, "", token) == 101
    assert await ws_status(live, "", "not-a-known-token") == 401


async def test_refused_websockets_get_the_status_before_the_upgrade(make_live: LiveFactory) -> None:
    live = await make_live(auth=Policy.from_dict(one_right_each()))
    for token, status in [("unknown", 401), (token_of("write"), 403), (None, 401)]:
        async with live.http.get(live.url("a/1"), headers={**bearer(token), **UPGRADE}) as resp:
            assert resp.status == status
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert "Sec-WebSocket-Accept" not in resp.headers
            assert (await resp.text()).startswith("ooo: ")


async def test_invalid_paths_and_methods_keep_their_own_answers(make_live: LiveFactory) -> None:
    """Requests refused whoever sends them say why (400/404/405), as without a policy."""
    live = await make_live(auth=Policy.from_dict(one_right_each()))
    reader = token_of("read")
    assert (await call(live, "GET", "a//b", reader))[0] == 400
    assert (await call(live, "GET", "a/%20", reader))[0] == 404
    assert (await call(live, "PUT", "a/1", reader))[0] == 405
    assert (await call(live, "POST", "", reader))[0] == 405
    assert (await call(live, "GET", "a/1", "unknown"))[0] == 401  # bad credentials first, always


async def test_an_invalid_key_is_400_even_for_those_who_may_not_touch_it_and_counts_nowhere(
    make_live: LiveFactory,
) -> None:
    """The guard validates a key only before refusing it (a valid key needs no check of its own
    there): a principal without the right, or anonymous, still gets the handler's 400 for a key no
    one may use, and such a request is not counted in its namespace's usage."""
    live = await make_live(auth=Policy.from_dict(one_right_each()))

    async def requests_in_a() -> int:
        status, _, body = await call(live, "GET", "?api=stats", token_of("admin"))
        assert status == 200
        return int(orjson.loads(body)["namespaces"][0]["requests"]["lastHour"])

    before = await requests_in_a()
    for token in (token_of("write"), None):  # neither may read
        for key in ("a//b", "a/**", "a/b/", "-a"):
            status, _, body = await call(live, "GET", key, token)
            assert (status, body) == (400, b"ooo: key is not valid"), (key, token)
    assert (await call(live, "POST", "a//b", token_of("read"), b"1"))[0] == 400
    assert (await call(live, "DELETE", "a/b/", token_of("write")))[0] == 400
    assert (await call(live, "GET", "a//b", "unknown"))[0] == 401  # bad credentials first, always
    assert await requests_in_a() == before
    assert (await call(live, "GET", "a/1", token_of("read")))[0] == 404  # a valid key counts
    assert await requests_in_a() == before + 1


@pytest.mark.parametrize(
    ("token", "method", "key", "outcome"),
    [
        (token_of("read"), "GET", "a/1", True),
        (token_of("read"), "GET", "b/1", True),  # usage.count_request finds (here, no) namespace
        (token_of("write"), "POST", "a/1", True),
        (token_of("write"), "PATCH", "a/*", True),
        (token_of("delete"), "DELETE", "a/*", True),
        (token_of("admin"), "GET", "", False),
        (token_of("read"), "POST", "a/1", "ooo: forbidden: read may not write a/1"),
        (token_of("write"), "GET", "", "ooo: forbidden: write may not admin /"),
        (None, "GET", "a/1", "ooo: unauthorized: a token is required to read a/1"),
        ("unknown", "GET", "a/1", "ooo: unauthorized: unknown token"),
        (token_of("write"), "GET", "a//b", False),  # invalid: let through for the handler's 400
        (None, "DELETE", "a/**", False),
        (token_of("read"), "PUT", "a/1", False),  # 405 whoever asks
    ],
)
def test_guard_admit_decides_as_the_middleware_does(token: str | None, method: str, key: str, outcome: Any) -> None:
    """``Guard.admit``, the lean front's whole check in one call: True when the request counts in
    a namespace's usage, or the refusal the middleware would answer."""
    from ooo_storage.errors import HTTPFailure
    from ooo_storage.server.auth import Guard

    guard = Guard(Layered(memory=MemoryLayer()), None)
    assert guard.admit(token, method, key) is False  # no policy: everything passes, nothing counted
    guard.swap(Policy.from_dict(one_right_each()))
    if isinstance(outcome, bool):
        assert guard.admit(token, method, key) is outcome
    else:
        with pytest.raises(HTTPFailure) as refused:
            guard.admit(token, method, key)
        assert refused.value.message == outcome


async def test_refusals_come_before_filters_and_before_the_body(make_live: LiveFactory) -> None:
    live = await make_live(auth=single(["a/*"], ["read"]))
    filtered: list[str] = []
    live.server.write_filter("a/*", lambda key, value: filtered.append(key) or value)
    live.server.on_subscribe = filtered.append
    never = asyncio.Event()

    async def endless() -> Any:
        yield b'{"v":'
        await never.wait()  # the rest never comes: a server reading the body would wait for it
        yield b"1}"

    async with asyncio.timeout(5):
        status, headers, _ = await call(live, "POST", "a/1", "tok", endless())  # type: ignore[arg-type]
    assert status == 403
    assert headers.get("Connection") == "close"  # the unread body is not worth reading
    assert await ws_status(live, "b/1", "tok") == 403
    assert filtered == []
    assert await ws_status(live, "a/1", "tok") == 101
    assert filtered == ["a/1"]


# -- glob coverage through the server --------------------------------------------------------------


def single(rule_paths: list[str], rights: list[str]) -> Policy:
    return Policy.from_dict(
        {"tokens": [{"name": "t", "sha256": token_digest("tok"), "rules": [{"paths": rule_paths, "rights": rights}]}]}
    )


async def test_delete_of_every_key_by_someone_with_delete_on_public_deletes_nothing(make_live: LiveFactory) -> None:
    live = await make_live(auth=single(["public/*"], ["delete", "read"]))
    for key in ("public/1", "public/2", "private", "x"):
        await live.store.set(key, 1)
    status, _, body = await call(live, "DELETE", "*", "tok")
    assert (status, body) == (403, b"ooo: forbidden: t may not delete *")
    assert await live.store.keys() == ["private", "public/1", "public/2", "x"]
    assert (await call(live, "DELETE", "public/*/x", "tok"))[0] == 403  # deeper: not covered either
    assert (await call(live, "DELETE", "public/*", "tok"))[0] == 204
    assert await live.store.keys() == ["private", "x"]


@pytest.mark.parametrize(
    ("rule", "asked", "allowed"),
    [
        ("*", "*", True),
        ("*", "x", True),
        ("*", "x/*", False),
        ("*", "x/y", False),
        ("a/*/c", "a/b/c", True),
        ("a/*/c", "a/*/c", True),
        ("a/*/c", "a/b*/c", True),
        ("a/*/c", "a/b/*", False),
        ("a/*/c", "a/*", False),
        ("a/*/c", "a/*/c/*", False),
        ("users/*/posts/*", "users/*/posts/*", True),
        ("users/*/posts/*", "users/1/posts/*", True),
        ("users/*/posts/*", "users/1/posts/9", True),
        ("users/*/posts/*", "users/*/posts", False),
        ("users/*/posts/*", "users/*/*/*", False),
        ("users/*", "users/a*", True),
        ("users/a*", "users/*", False),
        ("users/a*", "users/ab*", True),
        ("users/1", "users/*", False),
    ],
)
async def test_globs_are_allowed_only_when_a_rule_covers_them(
    make_live: LiveFactory, rule: str, asked: str, allowed: bool
) -> None:
    live = await make_live(auth=single([rule], ["read"]))
    get_status = (await call(live, "GET", asked, "tok"))[0]
    assert get_status == (403 if not allowed else 200 if "*" in asked else 404)  # 404: no such key
    ws = await ws_status(live, asked, "tok")
    assert ws == (101 if allowed else 403)


async def test_a_push_needs_write_covering_the_glob(make_live: LiveFactory) -> None:
    live = await make_live(auth=single(["logs/1", "logs/a*"], ["write"]))  # some keys a push may make
    assert (await call(live, "POST", "logs/*", "tok", b"1"))[0] == 403
    assert await live.store.keys() == []
    live2 = await make_live(auth=single(["logs/*"], ["write"]))
    assert (await call(live2, "POST", "logs/*", "tok", b"1"))[0] == 200
    assert len(await live2.store.keys()) == 1


# -- where the token comes from --------------------------------------------------------------------


async def test_tokens_come_from_the_header_or_the_bearer_sub_protocol(make_live: LiveFactory) -> None:
    live = await make_live(auth=single(["a/*"], ["read"]))
    await live.store.set("a/1", 1)
    by_protocol = await subscribe(live, "a/1", protocols=("bearer", "tok"))
    assert not isinstance(by_protocol, int)
    assert by_protocol.protocol == "bearer"
    await by_protocol.close()
    assert await ws_status(live, "a/1", "tok") == 101  # Authorization on the upgrade
    assert await subscribe(live, "a/1", protocols=("bearer", "wrong")) == 401
    assert await subscribe(live, "a/1", protocols=("bearer",)) == 401  # no token offered: anonymous
    status, _, _ = await call(live, "GET", "a/1", headers={"Authorization": "bearer tok"})  # any case
    assert status == 200
    assert (await call(live, "GET", "a/1", headers={"Authorization": "Basic tok"}))[0] == 401


async def test_middlewares_and_hooks_see_the_principal(make_live: LiveFactory) -> None:
    seen: list[str] = []

    @web.middleware
    async def remember(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request[PRINCIPAL].name)
        return await handler(request)

    live = await make_live(auth=single(["a/*"], ["read"]), middlewares=[remember])
    await call(live, "GET", "a/1", "tok")
    await call(live, "GET", "b/1", "tok")  # refused: never reaches later middlewares
    assert seen == ["t"]


async def test_failures_raised_by_middlewares_keep_their_headers(make_live: LiveFactory) -> None:
    """errors.py, the one place exceptions become responses, sends an HTTPFailure's own headers."""
    from ooo_storage.errors import HTTPFailure, Unauthorized

    @web.middleware
    async def own_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/teapot":
            raise HTTPFailure(418, "ooo: short and stout", headers={"X-Why": "tea"})
        raise Unauthorized("ooo: unauthorized: a token is required by my middleware")

    live = await make_live(middlewares=[own_auth])
    status, headers, body = await call(live, "GET", "a/1")
    assert (status, body) == (401, b"ooo: unauthorized: a token is required by my middleware")
    assert headers["WWW-Authenticate"] == 'Bearer realm="ooo-storage"'
    status, headers, _ = await call(live, "GET", "teapot")
    assert (status, headers["X-Why"]) == (418, "tea")


# -- JWTs ------------------------------------------------------------------------------------------

SECRET = "a-shared-secret-of-at-least-32-bytes!"


def jwt_policy(**jwt_section: Any) -> Policy:
    rules = [{"paths": ["users/{sub}/*"], "rights": ["read", "write"]}, {"paths": ["shared/*"], "rights": ["read"]}]
    return Policy.from_dict({"jwt": {**jwt_section, "rules": rules}})


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 3600, **claims}, secret, algorithm="HS256")


async def test_hs256_jwts_fill_their_claims_into_the_rules(make_live: LiveFactory) -> None:
    live = await make_live(auth=jwt_policy(algorithms=["HS256"], secret=SECRET))
    ana = hs256({"sub": "ana"})
    assert (await call(live, "POST", "users/ana/x", ana, b"1"))[0] == 200
    assert (await call(live, "GET", "users/ana/*", ana))[0] == 200
    status, _, body = await call(live, "POST", "users/bob/x", ana, b"1")
    assert (status, body) == (403, b"ooo: forbidden: jwt:ana may not write users/bob/x")
    assert (await call(live, "GET", "users/*/x", ana))[0] == 403
    assert (await call(live, "GET", "shared/*", ana))[0] == 200
    wild = hs256({"sub": "*"})  # a claim that is not a plain segment widens nothing
    assert (await call(live, "GET", "users/ana/x", wild))[0] == 403
    assert (await call(live, "GET", "users/*/x", wild))[0] == 403
    assert await ws_status(live, "users/ana/x", ana) == 101
    assert await ws_status(live, "users/bob/x", ana) == 403


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs256({"sub": "ana", "exp": int(time.time()) - 60}), "ooo: unauthorized: token expired"),
        (hs256({"sub": "ana"}, secret="another-secret-of-at-least-32-bytes"), "Signature verification failed"),
        (hs256({"sub": "ana"})[:-4] + "AAAA", "Signature verification failed"),
        ("not.a.jwt", "invalid token"),
    ],
    ids=["expired", "wrong key", "tampered signature", "garbage"],
)
async def test_bad_jwts_are_401_with_the_reason(make_live: LiveFactory, token: str, reason: str) -> None:
    live = await make_live(auth=jwt_policy(algorithms=["HS256"], secret=SECRET))
    status, headers, body = await call(live, "GET", "users/ana/x", token)
    assert status == 401
    assert reason in body.decode()
    assert headers["WWW-Authenticate"] == 'Bearer realm="ooo-storage", error="invalid_token"'
    assert await ws_status(live, "users/ana/x", token) == 401
    assert await subscribe(live, "users/ana/x", protocols=("bearer", token)) == 401


async def test_es256_jwts_are_checked_with_the_public_key(make_live: LiveFactory, tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "login.pub").write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other = ec.generate_private_key(ec.SECP256R1())
    rules = [{"paths": ["users/{sub}/*"], "rights": ["read", "write"]}]
    policy = Policy.from_dict(
        {"jwt": {"algorithms": ["ES256"], "public_key_file": "login.pub", "rules": rules}}, base=str(tmp_path)
    )
    live = await make_live(auth=policy)
    claims = {"sub": "42", "exp": int(time.time()) + 300}
    good = jwt.encode(claims, private, algorithm="ES256")
    assert (await call(live, "POST", "users/42/x", good, b"1"))[0] == 200
    assert (await call(live, "POST", "users/43/x", good, b"1"))[0] == 403
    forged = jwt.encode(claims, other, algorithm="ES256")
    assert (await call(live, "GET", "users/42/x", forged))[0] == 401
    expired = jwt.encode({**claims, "exp": int(time.time()) - 60}, private, algorithm="ES256")
    status, _, body = await call(live, "GET", "users/42/x", expired)
    assert (status, body) == (401, b"ooo: unauthorized: token expired")
    hs = hs256({"sub": "42"})  # an HS256 token against an ES256 policy: refused, whatever its secret
    assert (await call(live, "GET", "users/42/x", hs))[0] == 401


async def test_a_jwt_whose_exp_is_a_string_is_401_not_a_token_for_ever(make_live: LiveFactory) -> None:
    """PyJWT accepts ``"exp": "<digits>"`` (it converts with ``int()``); the policy remembered such
    a token as never expiring, so it kept working after its expiry. A NumericDate is a JSON number."""
    live = await make_live(auth=jwt_policy(algorithms=["HS256"], secret=SECRET))
    token = jwt.encode({"sub": "ana", "exp": str(int(time.time()) + 3)}, SECRET, algorithm="HS256")
    status, headers, body = await call(live, "GET", "users/ana/x", token)
    assert (status, body) == (401, b"ooo: unauthorized: invalid token (exp must be a number of seconds, a NumericDate)")
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    assert await ws_status(live, "users/ana/x", token) == 401


async def test_a_sub_with_control_characters_cannot_split_the_log_line_or_the_refusal(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ooo_storage")
    live = await make_live(auth=jwt_policy(algorithms=["HS256"], secret=SECRET))
    forger = hs256({"sub": "ana\ndenied GET /x to admin: 403 forged\r\x1b[2K"})
    status, _, body = await call(live, "POST", "users/bob/x", forger, b"1")
    shown = r"jwt:ana\ndenied GET /x to admin: 403 forged\r\x1b[2K"
    assert (status, body.decode()) == (403, f"ooo: forbidden: {shown} may not write users/bob/x")
    lines = [r.getMessage() for r in caplog.records if r.name == "ooo_storage.server.auth"]
    assert lines == [f"denied POST /users/bob/x to {shown}: 403 ooo: forbidden: {shown} may not write users/bob/x"]
    assert all(line.isprintable() for line in lines)


@pytest.mark.parametrize("sub", ["..", "."])
async def test_a_dot_sub_reaches_no_key_through_its_placeholder(make_live: LiveFactory, sub: str) -> None:
    """``users/{sub}/*`` with ``sub = ".."`` granted ``POST /users/../x`` (a valid key, but "up"
    to whatever maps keys to paths or URLs): a dot claim matches nothing."""
    live = await make_live(auth=jwt_policy(algorithms=["HS256"], secret=SECRET))
    token = hs256({"sub": sub})
    url = URL(f"{live.base}/users/{sub}/x", encoded=True)  # as sent: no client-side ".." folding
    async with live.http.post(url, data=b"1", headers=bearer(token)) as resp:
        assert (resp.status, await resp.read()) == (403, f"ooo: forbidden: jwt:{sub} may not write users/{sub}/x".encode())
    assert await live.store.keys() == []
    assert (await call(live, "GET", "shared/x", token))[0] == 404  # the token's other paths still apply


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> tuple[float, aiohttp.WSMessage]:
    """When (``time.time()``) the server's close frame arrived, and the frame; frames before it are skipped."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.BINARY:
                return time.time(), msg


async def test_open_streams_are_closed_when_their_token_expires(make_live: LiveFactory) -> None:
    """A stream lives no longer than its JWT (``exp`` plus the leeway): key streams and the clock
    stream alike, closed with 1008 and the reason; a stream of an opaque token stays open."""
    doc = {"jwt": {"secret": SECRET, "leeway": 0.5, "rules": [{"paths": ["users/{sub}/*"], "rights": ["read", "write"]}]},
           "tokens": [{"name": "t", "sha256": token_digest("tok"), "rules": [{"paths": ["users/*/*"], "rights": ["read"]}]}]}
    live = await make_live(auth=Policy.from_dict(doc))
    exp = time.time() + 1.2  # a NumericDate may have a fraction
    token = jwt.encode({"sub": "ana", "exp": exp}, SECRET, algorithm="HS256")
    key_stream = await subscribe(live, "users/ana/x", protocols=("bearer", token))
    clock = await subscribe(live, "", headers=bearer(token))
    lasting = await subscribe(live, "users/ana/x", headers=bearer("tok"))
    assert not isinstance(key_stream, int) and not isinstance(clock, int) and not isinstance(lasting, int)
    assert time.time() < exp, "the server took the token's whole lifetime to open the streams"
    assert (await call(live, "POST", "users/ana/x", token, b"1"))[0] == 200
    for ws in (key_stream, lasting):  # open, and receiving, while the token is valid
        assert (await next_frame(ws))["data"]["data"] == 1

    for ws in (key_stream, clock):
        at, msg = await closed_by_server(ws, timeout=exp + 0.5 + 10 - time.time())
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "ooo: unauthorized: token expired")
        assert at >= exp + 0.5  # not before exp + leeway
    assert (await call(live, "POST", "users/ana/x", "tok", b"2"))[0] == 403  # read only
    await live.store.set("users/ana/x", 2)
    patch = (await next_frame(lasting))["data"]  # the opaque token's stream still receives changes
    assert {"op": "replace", "path": "/data", "value": 2} in patch
    await lasting.close()


# -- anonymous ---------------------------------------------------------------------------------------


async def test_anonymous_gets_what_the_policy_says_and_a_401_elsewhere(make_live: LiveFactory) -> None:
    policy = Policy.from_dict({"anonymous": {"rules": [{"paths": ["public/*"], "rights": ["read"]}]}})
    live = await make_live(auth=policy)
    await live.store.set("public/1", 1)
    await live.store.set("private/1", 1)
    assert (await call(live, "GET", "public/1"))[0] == 200
    assert (await call(live, "GET", "public/*"))[0] == 200
    assert await ws_status(live, "public/*") == 101
    status, headers, body = await call(live, "GET", "private/1")
    assert (status, body) == (401, b"ooo: unauthorized: a token is required to read private/1")
    assert headers["WWW-Authenticate"] == 'Bearer realm="ooo-storage"'
    assert (await call(live, "POST", "public/1", None, b"2"))[0] == 401
    assert await ws_status(live, "private/1") == 401


async def test_an_empty_policy_lets_nobody_in(make_live: LiveFactory) -> None:
    live = await make_live(auth=Policy())
    await live.store.set("a", 1)
    assert (await call(live, "GET", "a"))[0] == 401
    assert (await call(live, "GET", "", headers={"Accept": "application/json"}))[0] == 401
    assert await ws_status(live, "a") == 401


async def test_the_explorer_page_needs_no_right_and_holds_no_data(make_live: LiveFactory) -> None:
    """A browser must get the page before it can ask for a token; what the page then reads is
    checked as usual (the key listing, ``?api=``, keys, streams)."""
    live = await make_live(auth=Policy())
    await live.store.set("zq-secret/1", {"v": "zq-value-7731"})
    status, headers, body = await call(live, "GET", "")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="tree"' in body and b"zq-secret" not in body and b"zq-value-7731" not in body
    assert (await call(live, "GET", "", headers={"Accept": "application/json"}))[0] == 401
    assert (await call(live, "GET", "?api=keys"))[0] == 401
    assert (await call(live, "DELETE", ""))[0] in (401, 405)


# -- listings show only readable keys ----------------------------------------------------------------


async def test_listings_show_only_the_keys_the_principal_may_read(make_live: LiveFactory) -> None:
    rules = [{"paths": ["a/*", "c"], "rights": ["read"]}, {"paths": ["*"], "rights": ["admin"]}]
    doc = {"tokens": [
        {"name": "t", "sha256": token_digest("tok"), "rules": rules},
        {"name": "admin-only", "sha256": token_digest("adm"), "rules": [{"paths": ["x"], "rights": ["admin"]}]},
    ]}
    live = await make_live(auth=Policy.from_dict(doc))
    for key in ("a/1", "a/2", "a/2/deep", "b/1", "c", "d"):
        await live.store.set(key, 1)

    status, _, body = await call(live, "GET", "", "tok", headers={"Accept": "application/json"})
    assert (status, orjson.loads(body)) == (200, {"keys": ["a/1", "a/2", "c"]})
    page = orjson.loads((await call(live, "GET", "?api=keys&limit=2", "tok"))[2])
    assert (page["keys"], page["total"]) == (["a/1", "a/2"], 3)
    page = orjson.loads((await call(live, "GET", "?api=keys&page=2&limit=2", "tok"))[2])
    assert (page["keys"], page["total"]) == (["c"], 3)
    page = orjson.loads((await call(live, "GET", "?api=keys&filter=a/", "tok"))[2])
    assert (page["keys"], page["total"]) == (["a/1", "a/2"], 2)
    html = (await call(live, "GET", "", "tok"))[2].decode()
    assert 'id="tree"' in html and "a/1" not in html  # the explorer page lists nothing itself
    admin_only = orjson.loads((await call(live, "GET", "", "adm", headers={"Accept": "application/json"}))[2])
    assert admin_only == {"keys": []}


async def test_without_a_policy_everything_is_listed_and_open(live: Live) -> None:
    for key in ("a/1", "b/1"):
        await live.store.set(key, 1)
    assert orjson.loads((await call(live, "GET", "", headers={"Accept": "application/json"}))[2]) == {
        "keys": ["a/1", "b/1"]
    }
    assert (await call(live, "DELETE", "*", "any-token"))[0] == 204
    status, _, body = await call(live, "GET", "?api=stats")
    assert status == 404 and b"[[namespaces]]" in body


# -- the log of denied requests ----------------------------------------------------------------------


async def test_denied_requests_are_logged_once_per_principal_and_path_never_with_the_token(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ooo_storage")
    secret_token = "s3cret-token-value-0123456789"
    live = await make_live(auth=single(["a/*"], ["read"]))
    for _ in range(5):
        assert (await call(live, "GET", "b/1", "tok"))[0] == 403
        assert (await call(live, "GET", "a/1", secret_token))[0] == 401
        assert (await call(live, "GET", "a/1", None))[0] == 401
    assert (await call(live, "GET", "b/2", "tok"))[0] == 403
    assert await ws_status(live, "b/1", "tok") == 403  # the same principal and path: no new line
    assert (await call(live, "GET", "a/%0Aforged%20line", "tok"))[0] == 404  # no key: not a denial
    assert (await call(live, "GET", "b/%0Aforged", "unknown"))[0] == 401
    assert await subscribe(live, "a/1", protocols=("bearer", secret_token)) == 401

    lines = [r.getMessage() for r in caplog.records if r.name == "ooo_storage.server.auth"]
    assert lines == [
        "denied GET /b/1 to t: 403 ooo: forbidden: t may not read b/1",
        f"denied GET /a/1 to token sha256:{token_digest(secret_token)[:12]}: 401 ooo: unauthorized: unknown token",
        "denied GET /a/1 to anonymous: 401 ooo: unauthorized: a token is required to read a/1",
        "denied GET /b/2 to t: 403 ooo: forbidden: t may not read b/2",
        f"denied GET /b/%0Aforged to token sha256:{token_digest('unknown')[:12]}: 401 ooo: unauthorized: unknown token",
    ]
    assert secret_token not in caplog.text
    assert "refused" not in caplog.text  # not logged a second time, per request, by errors.py
    levels = {r.getMessage().split(" to ")[1].split(":")[0]: r.levelno for r in caplog.records if r.name.endswith("auth")}
    assert levels == {"t": logging.WARNING, "token sha256": logging.WARNING, "anonymous": logging.INFO}


async def test_the_denied_log_stays_bounded_however_many_paths(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Paths are the client's to choose: at most a budget of lines per interval, then a count."""
    from ooo_storage.server.auth import DeniedLog

    now = [0.0]
    denied = DeniedLog(interval=60.0, budget=3, capacity=3, clock=lambda: now[0])
    live = await make_live(auth=single(["a/*"], ["read"]))
    live.server.guard.denied = denied
    caplog.set_level(logging.INFO, logger="ooo_storage")
    for i in range(10):
        assert (await call(live, "GET", f"b/{i}", "tok"))[0] == 403
    auth_lines = [r.getMessage() for r in caplog.records if r.name.endswith("auth")]
    assert [line.split(":")[0] for line in auth_lines] == [f"denied GET /b/{i} to t" for i in range(3)]
    assert len(denied._logged) <= 3

    now[0] = 61.0  # a minute later: the count of what was left out, then lines again
    assert (await call(live, "GET", "b/0", "tok"))[0] == 403
    auth_lines = [r.getMessage() for r in caplog.records if r.name.endswith("auth")][3:]
    assert auth_lines[0].startswith("denied 7 more request(s) in the last 61 s without a log line each")
    assert auth_lines[1].startswith("denied GET /b/0 to t: 403")

    now[0] = 130.0
    denied.flush()  # nothing left out since: no line
    assert len([r for r in caplog.records if r.name.endswith("auth")]) == 5


# -- swapping the policy at run time ---------------------------------------------------------------


async def test_set_policy_swaps_for_new_requests_and_closes_streams_it_no_longer_allows(
    make_live: LiveFactory,
) -> None:
    before = {"tokens": [
        {"name": "ana", "sha256": token_digest("ana"), "rules": [{"paths": ["a/*", "b/*"], "rights": ["read"]}]},
        {"name": "bob", "sha256": token_digest("bob"), "rules": [{"paths": ["a/*"], "rights": ["read"]}]},
    ]}
    after = {"tokens": [
        {"name": "ana", "sha256": token_digest("ana"), "rules": [{"paths": ["b/*"], "rights": ["read"]}]},
    ]}
    live = await make_live(auth=Policy.from_dict(before))
    await live.store.set("a/1", 1)
    await live.store.set("b/1", 1)
    ana_a = await subscribe(live, "a/1", protocols=("bearer", "ana"))
    ana_b = await subscribe(live, "b/*", protocols=("bearer", "ana"))
    bob_a = await subscribe(live, "a/*", headers=bearer("bob"))
    clock = await subscribe(live, "", headers=bearer("bob"))
    anon_clock = await subscribe(live, "")
    for ws in (ana_a, ana_b, bob_a, clock, anon_clock):
        assert not isinstance(ws, int)

    new = Policy.from_dict(after)
    assert live.server.set_policy(new) == 3
    assert live.server.policy is new

    for ws, reason in [
        (ana_a, "ooo: forbidden: ana may not read a/1"),
        (bob_a, "ooo: unauthorized: unknown token"),
        (clock, "ooo: unauthorized: unknown token"),
    ]:
        msg = await ws.receive(timeout=5)
        while msg.type is aiohttp.WSMsgType.BINARY:  # frames queued before the close
            msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, reason)
    await live.store.set("b/2", 2)  # the stream still allowed keeps getting changes
    assert (await next_frame(ana_b))["data"] is not None
    assert not anon_clock.closed
    assert (await call(live, "GET", "a/1", "ana"))[0] == 403
    assert (await call(live, "GET", "b/1", "ana"))[0] == 200
    assert (await call(live, "GET", "a/1", "bob"))[0] == 401
    for ws in (ana_b, anon_clock):
        await ws.close()


async def test_a_request_past_authentication_finishes_under_the_old_policy(make_live: LiveFactory) -> None:
    reached = asyncio.Event()

    @web.middleware
    async def signal(request: web.Request, handler: Handler) -> web.StreamResponse:
        reached.set()  # runs after the guard let the request in
        return await handler(request)

    live = await make_live(auth=single(["a/*"], ["write"]), middlewares=[signal])
    release = asyncio.Event()

    async def body() -> Any:
        yield b'{"v":'
        await release.wait()
        yield b"1}"

    posting = asyncio.create_task(call(live, "POST", "a/1", "tok", body()))  # type: ignore[arg-type]
    await reached.wait()
    live.server.set_policy(Policy())  # nobody may do anything from now on
    release.set()
    status, _, _ = await posting
    assert status == 200
    assert (await live.store.get("a/1")).value == {"v": 1}
    assert (await call(live, "POST", "a/1", "tok", b"2"))[0] == 401


async def test_set_policy_turns_access_control_on_and_off(live: Live) -> None:
    await live.store.set("a/1", 1)
    open_ws = await subscribe(live, "a/1")
    assert not isinstance(open_ws, int)
    assert live.server.set_policy(single(["b/*"], ["read"])) == 1
    msg = await open_ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert (await call(live, "GET", "a/1"))[0] == 401
    assert live.server.set_policy(None) == 0
    assert (await call(live, "GET", "a/1"))[0] == 200


# -- usage per namespace ---------------------------------------------------------------------------


def usage_policy(namespaces: list[dict[str, str]]) -> Policy:
    rules = [{"paths": EVERYWHERE, "rights": list(RIGHTS)}]
    reader = [{"paths": EVERYWHERE, "rights": ["read"]}]
    return Policy.from_dict({
        "tokens": [
            {"name": "root", "sha256": token_digest("root"), "rules": rules},
            {"name": "reader", "sha256": token_digest("reader"), "rules": reader},
        ],
        "namespaces": namespaces,
    })


async def serving(store: Layered, policy: Policy) -> tuple[ServerRunner, aiohttp.ClientSession, str]:
    runner = ServerRunner(store, "127.0.0.1", 0, auth=policy, shutdown_timeout=1.0)
    await runner.start()
    return runner, aiohttp.ClientSession(), runner.url


async def stats_of(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/?api=stats", headers=bearer("root")) as resp:
        assert resp.status == 200, await resp.text()
        report = orjson.loads(await resp.read())
    return {ns["name"]: (ns["objects"], ns["bytes"], ns["requests"]["lastHour"]) for ns in report["namespaces"]}


async def with_server(
    policy: Policy,
    fill: dict[str, Any],
    check: Callable[[Layered, Any, aiohttp.ClientSession, str], Awaitable[None]],
    store: Layered | None = None,
) -> None:
    store = store or Layered(memory=MemoryLayer())
    await store.start()
    for key, value in fill.items():
        await store.set(key, value)
    runner, session, base = await serving(store, policy)
    try:
        await check(store, runner.server, session, base)
    finally:
        await session.close()
        await runner.stop()
        await store.close()


@pytest.mark.parametrize("backend", ["memory", "leveldb"], ids=["mirrored", "leveldb without mirror"])
async def test_usage_counts_stored_objects_at_every_depth_then_follows_writes_and_requests(
    backend: str, tmp_path: Path
) -> None:
    namespaces = [{"name": "acme", "prefix": "acme/"}, {"name": "deep", "prefix": "acme/deep/"}]
    fill = {"acme/1": {"v": 1}, "acme/x/y/z": [1, 2, 3], "acme/deep/1": '"abc"', "other/1": 1, "acme": 0}

    async def check(store: Layered, server: Any, session: aiohttp.ClientSession, base: str) -> None:
        assert await stats_of(session, base) == {"acme": (2, 14, 0), "deep": (1, 5, 0)}
        async with session.post(f"{base}/acme/2", data=b"[10]", headers=bearer("root")) as resp:
            assert resp.status == 200
        async with session.get(f"{base}/acme/*", headers=bearer("root")) as resp:
            assert resp.status == 200
        async with session.delete(f"{base}/acme/deep/1", headers=bearer("reader")) as resp:
            assert resp.status == 403  # refused: not counted
        ws = await session.ws_connect(f"{base.replace('http', 'ws')}/acme/deep/*", protocols=("bearer", "root"))
        await next_frame(ws)
        await ws.close()
        await store.delete("acme/x/*/z")  # a library write: its event counts too
        assert await stats_of(session, base) == {"acme": (2, 11, 2), "deep": (1, 5, 1)}
        async with session.get(f"{base}/?api=stats", headers=bearer("reader")) as resp:
            assert resp.status == 403  # admin only

    if backend == "memory":
        store = Layered(memory=MemoryLayer())
    else:
        store = Layered(embedded=LevelDBLayer(str(tmp_path / "db")))
    await with_server(usage_policy(namespaces), fill, check, store)


async def test_usage_is_counted_once_the_store_opens() -> None:
    """A server may start before its store (waiting for disk space): ?api=stats is then 503, and
    the first one after the store opened counts what it holds."""
    store = Layered(memory=MemoryLayer())
    runner, session, base = await serving(store, usage_policy([{"name": "acme", "prefix": "acme/"}]))
    try:
        async with session.get(f"{base}/?api=stats", headers=bearer("root")) as resp:
            assert (resp.status, await resp.text()) == (503, "storage: storage is not active")
        await store.start()
        await store.set("acme/1", 1)
        assert await stats_of(session, base) == {"acme": (1, 1, 0)}
        await store.set("acme/2", 22)
        assert await stats_of(session, base) == {"acme": (2, 3, 0)}
    finally:
        await session.close()
        await runner.stop()
        await store.close()


async def test_a_new_policy_recounts_usage_for_its_namespaces() -> None:
    fill = {"acme/1": 1, "beta/1": 22, "beta/2/3": 333}

    async def check(store: Layered, server: Any, session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/acme/1", headers=bearer("root")) as resp:
            assert resp.status == 200
        assert await stats_of(session, base) == {"acme": (1, 1, 1)}
        server.set_policy(usage_policy([{"name": "acme", "prefix": "acme/"}, {"name": "beta", "prefix": "beta/"}]))
        assert await stats_of(session, base) == {"acme": (1, 1, 1), "beta": (2, 5, 0)}  # acme keeps its count
        await store.set("beta/4", 4444)
        assert await stats_of(session, base) == {"acme": (1, 1, 1), "beta": (3, 9, 0)}
        server.set_policy(usage_policy([]))
        async with session.get(f"{base}/?api=stats", headers=bearer("root")) as resp:
            assert resp.status == 404
        await store.set("beta/5", 5)  # nothing observes it any more
        server.set_policy(usage_policy([{"name": "beta", "prefix": "beta/"}]))
        assert await stats_of(session, base) == {"beta": (4, 10, 0)}

    await with_server(usage_policy([{"name": "acme", "prefix": "acme/"}]), fill, check)
