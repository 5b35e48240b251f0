"""LevelDBLayer: the default persistent layer, LevelDB through plyvel, called inline.

plyvel calls take about a microsecond, far less than a thread hop, so this layer is synchronous and
runs on the event loop. Keys are the UTF-8 key bytes; values are the exact object JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import plyvel

from ..errors import StorageUnavailable
from ..keys import glob_prefix, has_glob, match
from ..meta import Object


class LevelDBLayer:
    """LevelDB at ``path`` (the database directory itself, created if missing).

    ``sync=True`` makes every write durable before it is acknowledged.
    """

    def __init__(self, path: str | os.PathLike[str], sync: bool = False) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self._db: plyvel.DB | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._db is not None:
            return
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"storage: can't create database directory {self.path}: {exc.strerror}"
            ) from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"storage: database directory {self.path} is not writable")
        try:
            self._db = plyvel.DB(self.path, create_if_missing=True)
        except plyvel.IOError as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StorageUnavailable(
                    f"storage: database {self.path} is locked by another process"
                ) from exc
            raise StorageUnavailable(f"storage: can't open database {self.path}: {text}") from exc
        except plyvel.Error as exc:
            raise StorageUnavailable(f"storage: can't open database {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> plyvel.DB:
        if self._db is None:
            raise StorageUnavailable(f"storage: database {self.path} is not open")
        return self._db

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Object | None:
        raw = self.db.get(key.encode())
        return None if raw is None else Object.from_json(raw)

    def get_list(self, pattern: str) -> list[Object]:
        return [Object.from_json(raw) for _, raw in self._matching(pattern, True)]

    def keys(self) -> list[str]:
        return [k.decode() for k in self.db.iterator(include_value=False)]

    def load(self) -> dict[str, Object]:
        return {k.decode(): Object.from_json(v) for k, v in self.db.iterator()}

    def load_raw(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.db.iterator()}

    def _matching(self, pattern: str, values: bool) -> Iterable[tuple[str, bytes]]:
        prefix = glob_prefix(pattern).encode()
        if values:
            for k, v in self.db.iterator(prefix=prefix):
                key = k.decode()
                if match(pattern, key):
                    yield key, v
        else:
            for k in self.db.iterator(prefix=prefix, include_value=False):
                key = k.decode()
                if match(pattern, key):
                    yield key, b""

    # -- writes --------------------------------------------------------------------------------
    def set(self, key: str, obj: Object) -> None:
        self.db.put(key.encode(), obj.to_json(), sync=self.sync)

    def delete(self, key_or_glob: str) -> int:
        db = self.db
        if not has_glob(key_or_glob):
            k = key_or_glob.encode()
            if db.get(k) is None:
                return 0
            db.delete(k, sync=self.sync)
            return 1
        doomed = [key.encode() for key, _ in self._matching(key_or_glob, False)]
        if doomed:
            with db.write_batch(sync=self.sync) as batch:
                for k in doomed:
                    batch.delete(k)
        return len(doomed)

    def clear(self) -> None:
        db = self.db
        with db.write_batch(sync=self.sync) as batch:
            for k in db.iterator(include_value=False):
                batch.delete(k)
