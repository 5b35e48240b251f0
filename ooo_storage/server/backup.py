"""``POST /?api=backup&target=NAME`` (admin): an online, consistent snapshot of the LevelDB layer
copied into a fresh LevelDB at ``NAME`` inside the operator's backup directory (``serve
--backup-dir DIR``, :attr:`ServerConfig.backup_dir`), while the server keeps serving.

The copy holds every write acknowledged before the request and none after it
(:meth:`~ooo_storage.layers.LevelDBLayer.backup`); ``ooo-storage serve --data DIR/NAME`` serves it
as it is (docs/operations.md, Backups). Only the operator chooses where the server writes: a
request names a directory inside the backup directory (a relative name, or an absolute path in it),
never one elsewhere, so that a client cannot make the server write a database wherever its user
may write. Refusals, each with its reason: 401/403 without ``admin`` (403 for a client on another
machine when the server has no policy), 501 when the store has no LevelDB layer (memory only, SOS,
erasure-coded: their files are copied another way), 403 when the server has no backup directory
(backups over HTTP are off), 400 for a missing target, one outside the backup directory (``..``
and symlinks resolved first) or inside the data directory, or one holding a control character
(a NUL byte, a newline), 409 when the target exists and is not empty, 503 while the store is not
open.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import time

import orjson
from aiohttp import web

from ..errors import HTTPFailure
from ..layers import LevelDBLayer
from .auth import decide, principal_of
from .context import Context
from .rest import json_response

log = logging.getLogger("ooo_storage.server")


def _authorize(ctx: Context, request: web.Request) -> None:
    """``admin``, as every ``?api=`` needs (the guard decides GETs of ``/`` only). Without a policy
    only a client on this machine may: a backup writes to the server's disk, which a server exposed
    with ``--insecure-no-auth`` must not let anyone fill."""
    policy, principal = ctx.guard.policy, principal_of(request)
    if policy is not None and principal is not None:
        decide(policy, principal, "admin", "")
    elif policy is None and not _local(request.remote):
        raise HTTPFailure(403, "ooo: backup: without --auth only a client on the server's own machine may "
                               "take a backup: give the server an access policy with an admin token")


def _local(remote: str | None) -> bool:
    if not remote:
        return True  # a unix socket: on this machine
    try:
        return ipaddress.ip_address(remote.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _layer(ctx: Context) -> LevelDBLayer:
    layer = ctx.store.embedded
    if not isinstance(layer, LevelDBLayer):
        kind = "a memory-only store" if layer is None else f"a {type(layer).__name__}"
        raise HTTPFailure(501, f"ooo: backup: snapshots are of LevelDB, and this is {kind}: copy its "
                               "files while it is stopped instead (docs/operations.md, Backups)")
    if not ctx.store.active:
        raise HTTPFailure(503, "ooo: backup: the store is not open yet: try again once it serves")
    return layer


def _root(ctx: Context) -> str:
    """The backup directory, resolved; backups over HTTP are off (403) without one."""
    root = ctx.config.backup_dir
    if root is None:
        raise HTTPFailure(403, "ooo: backup: backups over HTTP are off: start the server with "
                               "--backup-dir DIR (the directory backups may be written to)")
    return os.path.realpath(root)


def _target(request: web.Request, root: str, data: str) -> str:
    """The directory to write, resolved (``..`` and symlinks) inside ``root`` and outside ``data``."""
    target = request.query.get("target", "")
    if not target:
        raise HTTPFailure(400, "ooo: backup: give the name of a new directory in the backup "
                               "directory: ?api=backup&target=NAME")
    if any(ord(c) < 0x20 or c == "\x7f" for c in target):  # NUL: realpath's ValueError; \n: a log line
        raise HTTPFailure(400, f"ooo: backup: target {target!r} holds a control character: give a "
                               "plain name")
    real, home = os.path.realpath(os.path.join(root, target)), os.path.realpath(data)
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        raise HTTPFailure(400, f"ooo: backup: target {target!r} is not inside the backup directory "
                               f"{root}: give a name in it, e.g. ?api=backup&target=ooo-2026-12-03")
    if real == home or real.startswith(home + os.sep):
        raise HTTPFailure(400, f"ooo: backup: target {target!r} is inside the data directory: give "
                               "a directory elsewhere")
    return real


async def backup(ctx: Context, request: web.Request) -> web.Response:
    """Take the snapshot and copy it; reply ``{"target", "keys", "revision", "seconds"}``."""
    _authorize(ctx, request)
    layer = _layer(ctx)
    target = _target(request, _root(ctx), layer.path)
    revision, started = ctx.store.revision, time.monotonic()
    try:
        count = await layer.backup(target)
    except FileExistsError:
        raise HTTPFailure(409, f"ooo: backup: target {target!r} exists and is not empty: give a new "
                               "or empty directory") from None
    except OSError as exc:
        status = 507 if exc.errno == errno.ENOSPC else 400
        raise HTTPFailure(status, f"ooo: backup: can't write to {target!r}: {exc.strerror or exc}") from None
    seconds = round(time.monotonic() - started, 3)
    log.info("backup: %d keys at revision %d copied to %s in %.3f s", count, revision, target, seconds)
    return json_response(orjson.dumps(
        {"target": target, "keys": count, "revision": format(revision, "x"), "seconds": seconds}))
