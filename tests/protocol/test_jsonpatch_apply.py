"""The client's RFC 6902 applier: examples from the RFC, the server's op shapes, and an oracle check."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.protocol.jsonpatch import PatchError, apply_patch, json_equal, parse_pointer

OBJ = {"created": 1, "updated": 0, "index": "a", "path": "box/a", "data": {"n": 1}}


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [
        # RFC 6902 appendix A.
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
        ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}],
         {"foo": ["bar", "qux", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}],
         {"baz": "boo", "foo": "bar"}),
        ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
         [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
         {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
        ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
         {"foo": ["all", "cows", "eat", "grass"]}),
        ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
         {"foo": ["bar", ["abc", "def"]]}),
        ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
        ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
        ({"a": 1}, [{"op": "move", "from": "/a", "path": "/a"}], {"a": 1}),
        # The shapes the server sends: whole-document add/replace, list positions, object fields.
        ({}, [{"op": "replace", "path": "", "value": [OBJ]}], [OBJ]),
        ([], [{"op": "add", "path": "/0", "value": OBJ}], [OBJ]),
        ([OBJ], [{"op": "remove", "path": "/0"}], []),
        ([1, 2], [{"op": "add", "path": "/2", "value": 3}], [1, 2, 3]),
        (OBJ, [{"op": "replace", "path": "/updated", "value": 5},
               {"op": "replace", "path": "/data/n", "value": 2}],
         {**OBJ, "updated": 5, "data": {"n": 2}}),
    ],
)
def test_examples(doc: Any, patch: list[dict[str, Any]], expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert apply_patch(doc, patch) == expected
    assert doc == before  # the input is never modified


@pytest.mark.parametrize(
    ("doc", "op"),
    [
        ({"foo": "bar"}, {"op": "add", "path": "/baz/bat", "value": "qux"}),  # RFC A.12
        ({"foo": "bar"}, {"op": "remove", "path": "/nope"}),
        ({"foo": "bar"}, {"op": "replace", "path": "/nope", "value": 1}),
        ([1, 2], {"op": "add", "path": "/3", "value": 1}),
        ([1, 2], {"op": "remove", "path": "/2"}),
        ([1, 2], {"op": "remove", "path": "/-"}),
        ([1, 2], {"op": "replace", "path": "/01", "value": 0}),
        ([1, 2], {"op": "replace", "path": "/-1", "value": 0}),
        ({"a": {"b": 1}}, {"op": "move", "from": "/a", "path": "/a/b/c"}),
        ({"a": 1}, {"op": "test", "path": "/a", "value": True}),  # true is not 1
        ({"a": [1]}, {"op": "test", "path": "/a", "value": [1, 1]}),
        ({"a": 1}, {"op": "frob", "path": "/a"}),
        ({"a": 1}, {"op": "add", "path": "/b"}),  # no value
        ({"a": 1}, {"op": "copy", "path": "/b"}),  # no from
        ({"a": 1}, {"op": "add", "path": "a", "value": 1}),  # not a pointer
        ({"a": 1}, {"op": "remove", "path": ""}),
        ("text", {"op": "add", "path": "/x", "value": 1}),
        ({"a": 1}, ["op", "add"]),
    ],
)
def test_errors(doc: Any, op: Any) -> None:
    with pytest.raises(PatchError):
        apply_patch(doc, [op])


def test_pointer_escapes() -> None:
    assert parse_pointer("") == []
    assert parse_pointer("/") == [""]
    assert parse_pointer("/a~1b/~0c/~01") == ["a/b", "~c", "~1"]


def test_json_equal() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal(True, 1)
    assert not json_equal([False], [0])
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal([1], {"0": 1})
    assert json_equal(None, None)


def test_deep_document_does_not_recurse() -> None:
    depth = 3000
    doc: Any = 0
    for _ in range(depth):
        doc = {"a": doc}
    result = apply_patch(doc, [{"op": "replace", "path": "/a" * depth, "value": 1}])
    for _ in range(depth):
        result = result["a"]
    assert result == 1


# Oracle: the `jsonpatch` package must agree on every generated document and patch, including on
# which patches fail. Tokens come from a small alphabet so that paths hit existing members often.
TOKENS = st.sampled_from(["a", "b", "0", "1", "2", "-", "01", "~", "/"])
POINTERS = st.lists(TOKENS, max_size=3).map(
    lambda ts: "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in ts)
)
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.text("ab", max_size=2)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TOKENS, inner, max_size=3),
    max_leaves=8,
)
OPS = st.one_of(
    st.builds(lambda p, v: {"op": "add", "path": p, "value": v}, POINTERS, JSON),
    st.builds(lambda p: {"op": "remove", "path": p}, POINTERS),
    st.builds(lambda p, v: {"op": "replace", "path": p, "value": v}, POINTERS, JSON),
    st.builds(lambda p, f: {"op": "move", "path": p, "from": f}, POINTERS, POINTERS),
    st.builds(lambda p, f: {"op": "copy", "path": p, "from": f}, POINTERS, POINTERS),
)
ORACLE_ERRORS = (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError)


@settings(max_examples=400, deadline=None)
@given(JSON, st.lists(OPS, min_size=1, max_size=6))
def test_agrees_with_jsonpatch(doc: Any, patch: list[dict[str, Any]]) -> None:
    """Same result or same refusal as the oracle; and neither the document nor the patch's own
    values are ever changed, although a patch changes the containers it copied in place."""
    before, ops_before = copy.deepcopy(doc), copy.deepcopy(patch)
    try:
        expected = jsonpatch.apply_patch(copy.deepcopy(doc), patch)
    except ORACLE_ERRORS:
        expected = PatchError
    if any(op["op"] == "remove" and op["path"] == "" for op in patch):
        return  # jsonpatch turns a root remove into None; we refuse it (no JSON value is "nothing")
    try:
        got = apply_patch(doc, patch)
    except PatchError:
        got = PatchError
    assert got == expected
    assert doc == before and patch == ops_before


def test_a_copied_value_does_not_share_its_containers() -> None:
    doc = {"a": {"x": [1]}}
    patch = [
        {"op": "add", "path": "/a/x/-", "value": 5},  # /a and /a/x now copies made by this call
        {"op": "copy", "from": "/a", "path": "/b"},
        {"op": "add", "path": "/b/x/-", "value": 2},
        {"op": "add", "path": "/b/y", "value": 3},
    ]
    assert apply_patch(doc, patch) == {"a": {"x": [1, 5]}, "b": {"x": [1, 5, 2], "y": 3}}
    assert doc == {"a": {"x": [1]}}
