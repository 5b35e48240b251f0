"""``GET /?api=openapi`` (issue 13): the OpenAPI 3.1 description of the REST routes, and schemathesis
fuzzing a real server on 127.0.0.1 with it, on both HTTP engines: no 5xx, and every answer (status,
content type, body, headers) is one the document describes."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_live import Live, LiveFactory

from ooo_storage.protocol.access import Policy, token_digest

CHECKS = [  # and no 5xx but the documented 501 (the test reads the statuses: schemathesis' own check
    status_code_conformance,  # would call that one a server error)
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = {"lean": 5, "aiohttp": 3}
"""Cases per operation and generation mode: ~18 operations x 2 modes x 5 = ~180 requests on the
default engine, fewer on aiohttp's (the same handlers behind it): ~30 s in all on a busy machine."""


async def test_openapi_document_describes_the_routes(live: Live) -> None:
    status, body = await live.request("GET", "?api=openapi")
    assert status == 200
    doc = orjson.loads(body)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/", "/*", "/{key}", "/{prefix}/*", "/{prefix}/{key}", "/healthz", "/readyz", "/metrics"}
    assert set(doc["paths"]["/{key}"]) >= {"get", "head", "post", "patch", "delete"}
    assert set(doc["paths"]["/"]) == {"get", "post"}  # GET / and ?api=..., POST /?api=txn and backup
    listing = doc["paths"]["/{prefix}/*"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}
    assert set(listing["responses"]["200"]["headers"]) == {"X-List-Truncated", "X-Next-Cursor", "Link"}
    assert doc["paths"]["/{key}"]["get"]["responses"]["404"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert "securitySchemes" not in doc["components"] and "security" not in doc
    schema = schemathesis.openapi.from_dict(doc)  # schemathesis reads every operation of it
    assert all(result.ok() for result in schema.get_all_operations())


async def test_openapi_declares_the_bearer_scheme_under_a_policy(make_live: LiveFactory) -> None:
    token = "t" * 40
    policy = Policy.from_dict({"tokens": [{"name": "root", "sha256": token_digest(token), "rules": [{"paths": ["*"], "rights": ["admin"]}]}]})
    live = await make_live(auth=policy)
    status, body = await live.request("GET", "?api=openapi")
    assert status == 401, body  # like every ?api=: admin
    status, body = await live.request("GET", "?api=openapi", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    doc = orjson.loads(body)
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert doc["security"] == [{"bearer": []}, {}]
    assert "401" in doc["paths"]["/{key}"]["post"]["responses"]



async def test_openapi_lists_only_the_own_endpoints_the_server_serves(make_live: LiveFactory) -> None:
    live = await make_live(metrics=False, health=False)  # then /metrics, /healthz are plain keys
    doc = orjson.loads((await live.request("GET", "?api=openapi"))[1])
    assert not {"/healthz", "/readyz", "/metrics"} & set(doc["paths"])


def _fuzz(base: str, doc: dict[str, Any], examples: int) -> tuple[collections.Counter[str], list[str]]:
    """Every operation of ``doc``, ``examples`` positive and negative cases each, against ``base``:
    the statuses seen and the failures found (blocking: run in a thread)."""
    schema = schemathesis.openapi.from_dict(doc)
    statuses: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _cases(operation, mode, examples, (base, session), statuses, failures)
                except Exception as exc:  # an operation with nothing to make invalid (DELETE /*)
                    if type(exc).__name__ != "Unsatisfiable" or mode is GenerationMode.POSITIVE:
                        raise
    return statuses, failures


def _cases(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    server: tuple[str, requests.Session],
    statuses: collections.Counter[str],
    failures: list[str],
) -> None:
    label = operation.label
    base, session = server

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base, session=session, timeout=10)
        statuses[f"{label} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # collected, and reported whole by the test
            failures.append(f"{label} ({mode.name}): {exc}")

    run()


@pytest.mark.parametrize("engine", ["lean", "aiohttp"], indirect=True)
async def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(make_live: LiveFactory, engine: str) -> None:
    # memory only: ?api=backup answers 501 (on LevelDB a fuzzed target would be written to disk)
    live = await make_live("memory", list_limit=5)  # small pages: cursors and Link headers show up
    for i in range(12):
        await live.store.set(f"0/{i}", {"n": i})  # keys hypothesis tends to try first
        await live.store.set(f"a{i}", [i])
    await live.store.set("0", {"a": {"b": 1}})
    await live.store.set("A", b"\"text\"")
    doc = orjson.loads((await live.request("GET", "?api=openapi"))[1])
    statuses, failures = await asyncio.to_thread(_fuzz, live.base, doc, EXAMPLES[engine])
    assert not failures, "\n\n".join(failures[:5])
    server_errors = [s for s in statuses if s.rpartition(" ")[2][0] == "5" and not s.endswith(" 501")]
    assert server_errors == [], statuses
    seen = {s.rpartition(" ")[2] for s in statuses}
    assert {"200", "204", "400", "404"} <= seen, statuses  # the fuzz reached successes and refusals
