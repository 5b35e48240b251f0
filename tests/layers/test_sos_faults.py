"""SOS under injected I/O errors and on-disk corruption (ADAPTERS.md §5.6 items 2 and 5)."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import temp_entries
from hypothesis import given, settings
from hypothesis import strategies as st

from ooo_storage.errors import StorageUnavailable
from ooo_storage.layers import CorruptObject, SimpleObjectStore

# -- fault injection --------------------------------------------------------------------------------

FAULTY = ("open", "write", "writev", "fsync", "rename", "replace", "link", "makedirs", "mkdir")
OLD, NEW = b"old value " * 10, b"new value " * 3000
Op = Callable[[SimpleObjectStore], Awaitable[Any]]

# name -> (operation, key whose value is checked, its value on success)
SCENARIOS: dict[str, tuple[Op, str, bytes | None]] = {
    "overwrite": (lambda s: s.store("old", NEW), "old", NEW),
    "create-in-new-dirs": (lambda s: s.store("fresh", NEW), "fresh", NEW),
    "store-from": (lambda s: s.store_from("old", io.BytesIO(NEW * 200)), "old", NEW * 200),
    "store-if-absent": (lambda s: s.store_if_absent("fresh", NEW), "fresh", NEW),
    "delete": (lambda s: s.delete("old"), "old", None),
    "get-and-delete": (lambda s: s.get_and_delete("old"), "old", None),
    "rename-source": (lambda s: s.rename("old", "fresh"), "old", None),
    "rename-target": (lambda s: s.rename("old", "fresh"), "fresh", OLD),
}


class Injector:
    """Counts calls to the faulty syscalls and makes call number ``fail_at`` raise ``err``.

    Records whether the operation had already published (a rename/link onto an object path
    succeeded), after which the new value may legitimately be visible.
    """

    def __init__(self, fail_at: int, err: int) -> None:
        self.fail_at = fail_at
        self.err = err
        self.calls = 0
        self.fired = False
        self.published = False

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            if self.calls == self.fail_at:
                self.fired = True
                raise OSError(self.err, f"injected {os.strerror(self.err)} in os.{name}")
            result = real(*args, **kw)
            if name in ("rename", "link") and ".tmp" not in str(args[1]):
                self.published = True
            return result

        return faulty

    def observe_unlink(self, real: Callable[[str], None]) -> Callable[[str], None]:
        """``unlink`` never fails here (clean-up needs it) but unlinking an object publishes a delete."""

        def observed(path: str) -> None:
            real(path)
            if ".tmp" not in str(path):
                self.published = True

        return observed


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_fault_at_every_syscall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, err: int
) -> None:
    """For N = 1, 2, ...: the Nth syscall fails. The error surfaces as StorageUnavailable (never as
    "not found"), the old value stays intact (or, after the publishing rename, the complete new
    one), and no temp file leaks. Ends when the operation succeeds with no fault left to fire."""
    op, key, expected = SCENARIOS[scenario]
    root = tmp_path / "s"
    store = SimpleObjectStore(root)  # "full": every fsync is on the faultable path
    prep = SimpleObjectStore(root, durability="none")  # resets the state cheaply between rounds
    await store.start()
    await prep.start()
    for n in range(1, 40):
        await prep.store("old", OLD)
        await prep.delete("fresh")
        injector = Injector(n, err)
        with monkeypatch.context() as patch:
            for name in FAULTY:
                patch.setattr(os, name, injector.wrap(name, getattr(os, name)))
            patch.setattr(os, "unlink", injector.observe_unlink(os.unlink))
            try:
                await op(store)
            except StorageUnavailable as exc:
                assert injector.fired
                assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == err
        value = await store.get(key)
        if not injector.fired:
            assert value == expected
            break
        before = OLD if key == "old" else None
        allowed = [before, expected] if injector.published else [before]
        assert value in allowed, (n, value and value[:20])
        assert temp_entries(root) == [], n
        assert (await store.scrub())["corrupted"] == 0
    else:
        pytest.fail("operation never completed")
    await store.close()
    await prep.close()
    assert n >= 3  # every scenario made at least two faultable calls


async def test_fsync_failure_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync the operation fails; the same descriptor is never fsynced again."""
    store = SimpleObjectStore(tmp_path / "s")
    await store.start()
    seen: list[int] = []
    real = os.fsync

    def failing_fsync(fd: int) -> None:
        seen.append(fd)
        if len(seen) == 1:
            raise OSError(errno.EIO, "injected")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageUnavailable):
        await store.store("k", b"v")
    assert len(seen) == 1
    monkeypatch.undo()
    assert await store.get("k") is None
    await store.close()


# -- corruption -------------------------------------------------------------------------------------

KEY, OTHER = "corrupt/key", "other/key"


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def _region(name: str, size: int) -> int:
    klen = len(KEY)
    return {
        "magic": 1, "version": 4, "flags": 5, "key_len": 6, "value_len": 8, "crc": 17,
        "key": 20 + 3, "value-first": 20 + klen, "value-last": 20 + klen + size - 1,
    }[name]  # fmt: skip


def _damage(kind: str, path: Path, size: int, store: SimpleObjectStore) -> None:
    if kind.startswith("flip-"):
        _flip(path, _region(kind[5:], size))
    elif kind == "truncate-empty":
        path.write_bytes(b"")
    elif kind == "truncate-header":
        path.write_bytes(path.read_bytes()[:12])
    elif kind == "truncate-value":
        path.write_bytes(path.read_bytes()[:-1])
    elif kind == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    elif kind == "moved-in":
        os.replace(store.path(OTHER), path)


DAMAGE = [
    *(f"flip-{r}" for r in ("magic", "version", "flags", "key_len", "value_len", "crc", "key",
                            "value-first", "value-last")),
    "truncate-empty", "truncate-header", "truncate-value", "append", "moved-in",
]  # fmt: skip


@pytest.mark.parametrize("size", [100, 200_000], ids=["small", "large"])
@pytest.mark.parametrize("kind", DAMAGE)
async def test_corruption_is_detected_never_returned(tmp_path: Path, kind: str, size: int) -> None:
    root = tmp_path / "s"
    store = SimpleObjectStore(root, durability="none")
    await store.start()
    await store.store(KEY, b"v" * size)
    await store.store(OTHER, b"w" * size)
    path = Path(store.path(KEY))
    _damage(kind, path, size, store)

    for attempt in range(2):  # and again after a restart
        with pytest.raises(CorruptObject):
            await store.get(KEY)
        with pytest.raises(CorruptObject):
            await store.metadata(KEY)
        assert await store.check(KEY) == "corrupted"
        report = await store.scrub()
        assert report["corrupted"] == 1
        assert report["corrupt_paths"] == [os.path.relpath(path, root)]
        with pytest.raises(CorruptObject):  # and the damaged object stays in place
            await store.get_and_delete(KEY)
        assert path.exists()
        # Listing checks the header and the slot only; values are verified by get/check/scrub.
        listed = kind in ("flip-crc", "flip-value-first", "flip-value-last")
        assert (KEY in await store.keys()) == listed
        await store.close()
        if attempt == 0:
            store = SimpleObjectStore(root, durability="none")
            await store.start()

    store = SimpleObjectStore(root, durability="none")
    await store.start()
    await store.store(KEY, b"fresh")  # rewriting repairs
    assert await store.get(KEY) == b"fresh"
    await store.delete(KEY)
    assert await store.check(KEY) == "missing"
    assert (await store.scrub())["corrupted"] == 0
    await store.close()


# -- every single-byte error in a record is caught (property) ---------------------------------------


def _decode_record(raw: bytes, key: bytes) -> bytes:
    from ooo_storage.layers.sos.record import read_record

    fd = os.memfd_create("record")
    try:
        os.write(fd, raw)
        os.lseek(fd, 0, os.SEEK_SET)
        return read_record(fd, len(raw), key, None)[1]
    finally:
        os.close(fd)


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(max_size=300),
    pattern=st.binary(min_size=1, max_size=16),
    size=st.integers(0, 2000) | st.integers(65_000, 70_000),  # both read paths of read_record
    where=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_single_byte_error_is_detected(
    key: bytes, pattern: bytes, size: int, where: float, mask: int
) -> None:
    from ooo_storage.layers.sos.record import BadRecord, encode_record

    value = (pattern * (size // len(pattern) + 1))[:size]
    raw = encode_record(key, value) + value
    assert _decode_record(raw, key) == value
    damaged = bytearray(raw)
    damaged[int(where * len(raw))] ^= mask
    with pytest.raises(BadRecord):
        _decode_record(bytes(damaged), key)
