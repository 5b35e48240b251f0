"""``protocol/txn_body.py``: the body of ``POST /?api=txn`` into a checked plan, without a server
(the HTTP answers are in tests/server/test_server_txn.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.errors import InvalidTransaction
from ooo_storage.protocol import jsontext
from ooo_storage.protocol.txn import TxnOp
from ooo_storage.protocol.txn_body import parse

KEYS = st.from_regex(r"[a-z][a-z0-9]{0,5}(/[a-z0-9]{1,5}){0,2}", fullmatch=True)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def test_a_body_becomes_ops_in_order_and_expectations() -> None:
    body = orjson.dumps({
        "expect": {"a": 17, "c": None},
        "ops": [{"op": "set", "key": "a", "data": {"n": 1}}, {"op": "patch", "key": "b", "data": {"m": 2}},
                {"op": "del", "key": "h/*"}],
    })
    plan = parse(body)
    assert plan.ops == (TxnOp("set", "a", {"n": 1}), TxnOp("patch", "b", {"m": 2}), TxnOp("del", "h/*"))
    assert plan.expect == {"a": 17, "c": None}
    assert plan.locked == ("a", "b", "c")
    assert plan.globs


def test_the_limit_of_ops_is_a_parameter() -> None:
    body = orjson.dumps({"ops": [{"op": "del", "key": f"k{i}"} for i in range(3)]})
    assert len(parse(body, max_ops=3).ops) == 3
    with pytest.raises(InvalidTransaction, match="3 ops, over the limit of 2: split the transaction"):
        parse(body, max_ops=2)


@settings(max_examples=50)
@given(st.dictionaries(KEYS, VALUES, min_size=1, max_size=5))
def test_every_json_value_round_trips_through_the_body(values: dict[str, Any]) -> None:
    """What the store gets for each op is that value: itself, or its JSON text for a str or null
    (the store reads a str as JSON text)."""
    body = orjson.dumps({"ops": [{"op": "set", "key": k, "data": v} for k, v in values.items()]})
    for op, (key, value) in zip(parse(body).ops, values.items(), strict=True):
        assert op.key == key
        got = jsontext.loads(op.data) if isinstance(op.data, bytes) else op.data
        assert isinstance(op.data, bytes) == (value is None or isinstance(value, str))
        assert got == value
