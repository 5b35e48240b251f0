"""The OpenAPI 3.1 description of the REST routes, served at ``GET /?api=openapi`` (issue 13).

It describes docs/protocol.md §4 as it is on the wire, so that generic tools (Swagger UI, client
generators, ``schemathesis``, which fuzzes it in the tests) can use the server: the key routes, the
paged glob lists, the ``?api=`` endpoints and ``POST /?api=txn``, their status codes (every error is
``text/plain`` with its reason) and the object format of §2.1. OpenAPI path parameters cannot hold a
``/``, so a key is described as one segment (``/{key}``), two (``/{prefix}/{key}``) and a glob as
``/*`` or ``/{prefix}/*``; deeper keys work the same way. The bearer scheme is declared when the
server has an access policy. Built once per configuration (a few dicts), then served as bytes.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from .. import __version__

_SEGMENT = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
_ANY: dict[str, Any] = {}
_PART = r"[A-Za-z0-9*]([A-Za-z0-9*._-]*[A-Za-z0-9*])?"
_KEY = {
    "type": "string",
    "pattern": f"^{_PART}(/{_PART})*$",
    "description": "A key (docs/protocol.md §1: no `**`; `*` only in a glob `del`)",
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_REASONS = {
    400: "Bad request: an invalid key, body, parameter or a filter's refusal (reason in the body)",
    401: "No token, or a bad or expired one (`WWW-Authenticate: Bearer`)",
    403: "Origin or Host not allowed, or the principal lacks the right",
    404: "Not found: no such key, or a path with a character no key can have (reason in the body)",
    405: "Method not allowed",
    409: "Conflict",
    410: "?since=: the server cannot say what changed since that version (no history, trimmed, "
    "filtered, or more items than a page): GET it again (reason in the body)",
    413: "Body, or merged document, over --max-body-bytes",
    415: "Unsupported Content-Encoding",
    501: "Not supported by the persistent layer (SOS and erasure-coded layers refuse transactions)",
    503: "The storage failed or is not open, or the server is busy (Retry-After)",
}
_COMMON = (400, 403, 404, 503)  # 404: a path with a character no key can have


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(auth: bool, *codes: int) -> dict[str, Any]:
    """Plain-text error answers: the common ones, the route's own, 401 under an access policy."""
    every = sorted({*_COMMON, *codes, *((401,) if auth else ())})
    return {str(code): {"description": _REASONS[code], "content": _TEXT} for code in every}


def _key_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": _SEGMENT},
    }


_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "Items per page: 1 to --list-limit (larger is lowered to it).",
    "schema": {"type": "integer", "minimum": 1},
}
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "The X-Next-Cursor of the previous page (empty: the first page).",
    "schema": {"type": "string"},
}
_SINCE = {
    "name": "since",
    "in": "query",
    "description": "What changed since this version (a frame's `version`, or that of an earlier "
    "?since= answer): the answer is a frame payload (protocol.md §4.8); needs --history-bytes",
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{1,32}$"},
}
_PAGE_HEADERS = {
    "X-List-Truncated": {"description": "`true` when more items follow", "schema": {"type": "string"}},
    "X-Next-Cursor": {"description": "the cursor of the next page", "schema": {"type": "string"}},
    "Link": {"description": '`</{glob}?limit=N&cursor=C>; rel="next"`', "schema": {"type": "string"}},
}
_WRITTEN = {"description": "Stored", "content": _json(_ref("Index"))}
_BODY = {"required": True, "description": "Any JSON value", "content": _json(_ANY)}


def _key_item(auth: bool, params: list[dict[str, Any]]) -> dict[str, Any]:
    """The operations on one key (docs/protocol.md §4.1, 4.3-4.5)."""
    read = {
        "200": {"description": "The object; with ?since=, the changes since then (a frame payload)",
                "content": _json({"anyOf": [_ref("Object"), _ref("Changes")]})},
        **_errors(auth, 404, 410),
    }
    return {
        "parameters": params,
        "get": {"operationId": _op("get", params), "summary": "Read one object, or its changes",
                "parameters": [_SINCE], "responses": read},
        "head": {
            "operationId": _op("head", params),
            "summary": "GET without the body",
            "responses": {"200": {"description": "The object exists"}, **_bare(auth, 404)},
        },
        "post": {
            "operationId": _op("set", params),
            "summary": "Set the key to the JSON body",
            "requestBody": _BODY,
            "responses": {"200": _WRITTEN, **_errors(auth, 413, 415)},
        },
        "patch": {
            "operationId": _op("patch", params),
            "summary": "Merge a JSON object into the stored data (§4.4)",
            "requestBody": _BODY,
            "responses": {"200": _WRITTEN, **_errors(auth, 404, 413, 415)},
        },
        "delete": {
            "operationId": _op("delete", params),
            "summary": "Delete the key",
            "responses": {"204": {"description": "Deleted"}, **_errors(auth, 404)},
        },
    }


def _bare(auth: bool, *codes: int) -> dict[str, Any]:
    """Error answers of a HEAD: the status alone."""
    return {code: {"description": answer["description"]} for code, answer in _errors(auth, *codes).items()}


def _op(verb: str, params: list[dict[str, Any]]) -> str:
    return verb + "".join("_" + p["name"] for p in params)


def _glob_item(auth: bool, params: list[dict[str, Any]]) -> dict[str, Any]:
    """The operations on a glob whose last segment is ``*`` (§4.2, push, glob delete)."""
    name = _op("", params) or "_top"
    return {
        "parameters": params,
        "get": {
            "operationId": "list" + name,
            "summary": "A page of the matching objects, newest first (?since=: the changes since a "
            "version, protocol.md §4.8)",
            "parameters": [_LIMIT, _CURSOR],
            "responses": {
                "200": {
                    "description": "One page (headers when more follow)",
                    "headers": _PAGE_HEADERS,
                    "content": _json({"type": "array", "items": _ref("Object")}),
                },
                **_errors(auth),
            },
        },
        "post": {
            "operationId": "push" + name,
            "summary": "Push: store the body under a new time-ordered key",
            "requestBody": _BODY,
            "responses": {"200": _WRITTEN, **_errors(auth, 413, 415)},
        },
        "delete": {
            "operationId": "delete_all" + name,
            "summary": "Delete every match (one event)",
            "responses": {"204": {"description": "Deleted (even when nothing matched)"}, **_errors(auth)},
        },
    }


_APIS = ["keys", "folders", "info", "filters", "state", "stats", "openapi"]


def _root_item(auth: bool) -> dict[str, Any]:
    """``GET /`` (§4.6) and ``POST /?api=txn``."""
    query = [
        {"name": "api", "in": "query", "description": "Which endpoint; absent: the key listing",
         "schema": {"type": "string", "enum": _APIS}},
        {"name": "page", "in": "query", "description": "?api=keys: 1 to 10^12",
         "schema": {"type": "integer", "minimum": 1, "maximum": 10**12}},
        {"name": "limit", "in": "query", "description": "?api=keys: 1 to 500 (default 50); ?api=folders: "
         "1 to 500 (default 500)", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        {"name": "filter", "in": "query", "description": "?api=keys: a key prefix (up to its first *)",
         "schema": {"type": "string"}},
        {"name": "prefix", "in": "query", "description": "?api=folders: a literal key prefix (no *); the "
         "folders right under it are listed", "schema": {"type": "string"}},
        {"name": "cursor", "in": "query", "description": "?api=folders: the cursor of the previous page "
         "(a folder under prefix)", "schema": {"type": "string"}},
    ]
    answers = [_ref(n) for n in ("KeyListing", "KeysPage", "FoldersPage", "Info", "Filters", "State", "Stats",
                                 "Document")]
    return {
        "get": {
            "operationId": "root",
            "summary": "The explorer (HTML), the key listing (Accept: application/json), the ?api= endpoints",
            "parameters": query,
            "responses": {
                "200": {
                    "description": "HTML for a browser; JSON for Accept: application/json or ?api=",
                    "content": {**_json({"anyOf": answers}), "text/html": {"schema": {"type": "string"}}},
                },
                **_errors(auth, 404),
            },
        },
        "post": {
            "operationId": "post_api",
            "summary": "?api=txn: a transaction, all or nothing, with compare-and-set (protocol.md §4.7); "
            "?api=backup&target=NAME: an online LevelDB snapshot copied into NAME inside the server's "
            "--backup-dir (admin; off, 403, without --backup-dir; operations.md, Backups)",
            "parameters": [
                {"name": "api", "in": "query", "required": True,
                 "schema": {"type": "string", "enum": ["txn", "backup"]}},
                {"name": "target", "in": "query", "description": "?api=backup: a name (or an absolute "
                 "path) inside the server's --backup-dir, new or empty", "schema": {"type": "string"}},
            ],
            "requestBody": {"description": "?api=txn: the transaction",
                            "content": _json(_ref("Transaction"))},
            "responses": {
                "200": {"description": "Committed, or backed up",
                        "content": _json({"anyOf": [_ref("Committed"), _ref("Backup")]})},
                "409": {"description": "txn: a key of expect changed, or its keys stayed locked: nothing "
                        "applied (JSON); backup: the target is not empty (text)",
                        "content": {**_json(_ref("Conflict")), **_TEXT}},
                **_errors(auth, 403, 404, 405, 413, 415, 501),
            },
        },
    }


def _schemas() -> dict[str, Any]:
    integer, string = {"type": "integer"}, {"type": "string"}
    return {
        "Object": {
            "type": "object",
            "description": "docs/protocol.md §2.1; exactly these members, in this order",
            "required": ["created", "updated", "index", "data"],
            "properties": {
                "created": integer, "updated": integer, "index": string, "path": string, "data": _ANY,
            },
            "additionalProperties": False,
        },
        "Index": {"type": "object", "required": ["index"], "properties": {"index": string}},
        "KeyListing": {"type": "object", "required": ["keys"],
                       "properties": {"keys": {"type": "array", "items": string}}},
        "KeysPage": {
            "type": "object",
            "required": ["keys", "total", "page", "limit", "filter"],
            "properties": {"keys": {"type": "array", "items": string}, "total": integer, "page": integer,
                           "limit": integer, "filter": string},
        },
        "FoldersPage": {
            "type": "object",
            "description": "?api=folders: prefix + S for every key prefix + S/..., in key order; cursor "
            "null on the last page",
            "required": ["folders", "cursor", "prefix"],
            "properties": {"folders": {"type": "array", "items": string},
                           "cursor": {"type": ["string", "null"]}, "prefix": string},
        },
        "Info": {"type": "object", "required": ["name", "version", "revision"],
                 "properties": {"name": string, "version": string, "revision": integer}},
        "Filters": {"type": "object", "required": ["static", "filters"],
                    "properties": {"static": {"type": "boolean"}, "filters": {"type": "array"}}},
        "State": {"type": "object", "required": ["pools", "totalConnections"],
                  "properties": {"pools": {"type": "array"}, "totalConnections": integer}},
        "Stats": {"type": "object", "required": ["namespaces"],
                  "properties": {"namespaces": {"type": "array"}}},
        "Document": {"type": "object", "required": ["openapi", "paths"]},
        "Transaction": {
            "type": "object",
            "description": "docs/protocol.md §4.7",
            "required": ["ops"],
            "additionalProperties": False,
            "properties": {
                "expect": {
                    "type": "object",
                    "description": "key: its `updated` (or `created`) ns, or null for must not exist",
                    "additionalProperties": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
                },
                "ops": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"oneOf": [
                    {"type": "object", "required": ["op", "key", "data"], "additionalProperties": False,
                     "properties": {"op": {"enum": ["set", "patch"]}, "key": _KEY, "data": _ANY}},
                    {"type": "object", "required": ["op", "key"], "additionalProperties": False,
                     "properties": {"op": {"const": "del"}, "key": _KEY}},
                ]}},
            },
        },
        "Conflict": {"type": "object", "required": ["error", "keys"],
                     "properties": {"error": string, "keys": {"type": "array", "items": string}}},
        "Backup": {"type": "object", "required": ["target", "keys", "revision"],
                   "properties": {"target": string, "keys": integer, "revision": string}},
        "Changes": {
            "type": "object",
            "description": "docs/protocol.md §4.8: snapshot false with an RFC 6902 patch (`[]`: no "
            "change), or snapshot true with the object now",
            "required": ["snapshot", "version", "data"],
            "properties": {"snapshot": {"type": "boolean"}, "version": string, "data": _ANY},
            "additionalProperties": False,
        },
        "Committed": {"type": "object", "required": ["revision", "indexes"],
                      "properties": {"revision": string, "indexes": {"type": "array", "items": string}}},
    }


_ENDPOINTS = {
    "healthz": ("live: 200 `ok` while the process answers", ()),
    "readyz": ("ready: 200 `ready` when the store is open and takes writes, else 503 and why", (503,)),
    "metrics": ("Prometheus text format (operations.md, Metrics)", ()),
}


def _endpoint(name: str) -> dict[str, Any]:
    """A plain GET of one of the server's own paths (health.py); other methods on it are the key
    routes (these names are keys too)."""
    summary, codes = _ENDPOINTS[name]
    answers = {str(code): {"description": _REASONS[code], "content": _TEXT} for code in codes}
    return {"get": {"operationId": name, "summary": summary,
                    "responses": {"200": {"description": "OK", "content": _TEXT}, **answers}}}


@functools.lru_cache(maxsize=16)
def document(auth: bool, endpoints: frozenset[str] = frozenset()) -> bytes:
    """The OpenAPI document as JSON bytes; ``auth``: the server has an access policy; ``endpoints``:
    the server's own paths it serves (``healthz``, ``readyz``, ``metrics``)."""
    one = [_key_param("key", "A key without `/` (deeper keys: more segments, same routes)")]
    two = [_key_param("prefix", "The first segment"), _key_param("key", "The second segment")]
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "ooo-storage",
            "version": __version__,
            "description": "Key/value storage with live websocket streams; see docs/protocol.md. Websocket "
            "subscriptions (GET /{key} with Upgrade: websocket) are not described here (§5).",
        },
        "paths": {
            "/": _root_item(auth),
            "/*": _glob_item(auth, []),
            "/{key}": _key_item(auth, one),
            "/{prefix}/*": _glob_item(auth, two[:1]),
            "/{prefix}/{key}": _key_item(auth, two),
            **{f"/{name}": _endpoint(name) for name in sorted(endpoints) if name in _ENDPOINTS},
        },
        "components": {"schemas": _schemas()},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}, {}]  # anonymous requests may be granted rights too
    return orjson.dumps(doc)
