"""``resume.list_patch``: from the client's list at a version to the current one, knowing only the
changed keys' old ``created`` stamps (never their old values). Random lists and changes, ties in
``created`` included: applying the patch to the old list gives the current list exactly."""

from __future__ import annotations

import random

import jsonpatch
import orjson

from ooo_storage.protocol.jsonpatch import apply_patch
from ooo_storage.protocol.objects import Object
from ooo_storage.server.resume import Touched, list_patch, may_overlap


def _obj(path: str, created: int, data: int) -> Object:
    return Object(created, 0, path.rpartition("/")[2], path, b"%d" % data)


def _shown(items: dict[str, Object]) -> list[Object]:
    return sorted(items.values(), key=lambda o: (o.created, o.path), reverse=True)


def _json(objs: list[Object]) -> list[object]:
    return [orjson.loads(o.to_json()) for o in objs]


def test_random_changes_patch_the_old_list_into_the_new_one() -> None:
    rng = random.Random(7)
    for case in range(400):
        names = [f"k/{i}" for i in range(rng.randrange(1, 30))]
        old = {n: _obj(n, rng.randrange(1, 40), 0) for n in names if rng.random() < 0.6}
        new = dict(old)
        changed: Touched = {}
        for step in range(rng.randrange(0, 25)):
            name = rng.choice(names)
            if name not in changed:  # the first change tells what the client had
                changed[name] = old[name].created if name in old else None
            roll = rng.random()
            if roll < 0.25 and name in new:
                del new[name]
            elif roll < 0.5 or name not in new:  # created anew: a new stamp, maybe a tie
                new[name] = _obj(name, rng.randrange(1, 60), step + 1)
            else:  # overwritten in place
                new[name] = new[name]._replace(data=b"%d" % (step + 100))
        current = _shown(new)
        patch = orjson.loads(orjson.dumps(list_patch(current, changed)))
        before = _json(_shown(old))
        assert jsonpatch.JsonPatch(patch).apply(before) == _json(current), case
        assert apply_patch(before, patch) == _json(current), case  # our client's applier too


def test_in_place_overwrites_are_replaces_only() -> None:
    old = {f"k/{i}": _obj(f"k/{i}", i, 0) for i in range(10)}
    current = _shown({**old, "k/3": old["k/3"]._replace(data=b"9")})
    assert orjson.loads(orjson.dumps(list_patch(current, {"k/3": 3}))) == [
        {"op": "replace", "path": "/6", "value": orjson.loads(current[6].to_json())}
    ]
    assert list_patch(current, {}) == []


def test_may_overlap_is_conservative() -> None:
    assert may_overlap("a/*", "a/b") and may_overlap("a/x*", "a/*y") and may_overlap("*/b", "a/*")
    assert not may_overlap("a/*", "b/*") and not may_overlap("a/*", "a/b/c") and not may_overlap("a", "b")
