"""Access control cost (issue 9): the policy check per request with 50 rules, in-process and end to end.

    .venv/bin/python bench/auth.py [--seconds 2] [--rounds 10] [--connections 16] [--count 100]
                                   [--engines aiohttp,lean] [--baseline DIR] [--no-pin] [--no-server]

The policy has 50 rules, a realistic mix with globs: 10 opaque tokens with 3 rules each (30), 15 JWT
rules with ``{sub}``/``{team}`` placeholders, 5 anonymous rules. The principals measured are the
worst placed: the token and the JWT whose matching rule comes last among their own.

1. **Decisions, in-process**: ns per call of each step a request takes through
   ``protocol/access.py`` (SHA-256 of the token, the lookup, PyJWT's HS256 decode, filling a JWT's
   rules, the decision for a key and for a glob), best of 3 ``timeit`` runs; ``--baseline DIR``
   runs the same steps in a child process on another tree (e.g. /work/baseline10) for a
   before/after column. They leave out what the guard does around the policy (the key, the right,
   the token out of the headers) and run hot in the caches, and on a shared machine they move
   several-fold between runs: the end-to-end instruction counts below answer the target.
2. **End to end**, per ``--http-engine`` (aiohttp, and the lean front that calls the same policy
   functions): ``ooo-storage serve --memory-only`` without a policy and with ``--auth`` (the policy
   above, no namespaces, so that usage counting is not measured). ``--connections`` keep-alive
   connections alternate ``POST`` and ``GET`` of ``users/ingest/<n>`` (an ~90 B body), every
   request with a bearer token (the plain server ignores it, so the legs differ by the guard only):
   a. **server CPU per request** (/proc), ``--rounds`` rounds of ``--seconds`` rotating the plain
      server, the auth server with the opaque token and with the JWT; the servers pinned to core 0
      (``taskset -c 0``), this load generator to core 1; each auth leg paired with the plain leg of
      its round, the median ratio is the overhead. On a shared machine the rounds stay noisy
      (other processes on the server core are measured and reported), hence
   b. **instructions per request** (``--count`` requests per connection after a warm-up, each
      server under ``valgrind --tool=callgrind``): deterministic, whatever else runs. User-space
      only: the kernel's share of a request (loopback TCP) is left out of the denominator, so the
      overhead it shows overstates the CPU overhead. Target: under 5 %.

Only 127.0.0.1 is used. Nothing is written to bench/RESULTS.md: the report is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Import bench/ as a package of the repository root, so that both `python bench/<script>.py` and
# `python -m bench.<script>` work (a script's own directory is otherwise first on sys.path).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import _load  # noqa: E402
from bench._load import ROOT, HttpLoadResult, Target, http_load, table  # noqa: E402

SECRET = "bench-secret-" + "k" * 32
SUB = "ingest"
BODY = b'{"sensor":"greenhouse-7","temperature":21.5,"humidity":0.43,"tags":["a","b"],"ok":true}'
TOKEN = "tok-9-" + "x" * 37  # the length of `ooo-storage token new`'s tokens (43)


# -- the policy -----------------------------------------------------------------------------------


def policy_document() -> dict[str, Any]:
    """50 rules: 10 tokens x 3, 15 JWT rules, 5 anonymous; the measured principals' useful rule last."""
    import hashlib

    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    tokens = []
    for i in range(10):
        name = f"service-{i}"
        rules = [
            {"paths": [f"apps/{name}/*", f"apps/{name}/*/*"], "rights": ["read", "write", "delete"]},
            {"paths": ["public/*", "public/*/*", f"logs/{name}-*"], "rights": ["read"]},
            {"paths": [f"users/{SUB if i == 9 else name}/*", "metrics/*/*"], "rights": ["read", "write"]},
        ]
        tokens.append({"name": name, "sha256": digest(TOKEN if i == 9 else f"tok-{i}-" + "x" * 37),
                       "rules": rules})
    jwt_rules = [
        {"paths": ["public/*", "public/*/*"], "rights": ["read"]},
        {"paths": ["teams/{team}/*", "teams/{team}/*/*"], "rights": ["read", "write"]},
        {"paths": ["teams/{team}/admin/*"], "rights": ["delete"]},
        {"paths": ["inbox/{sub}/*"], "rights": ["read", "delete"]},
        {"paths": ["outbox/{sub}/*"], "rights": ["write"]},
        {"paths": ["profiles/*"], "rights": ["read"]},
        {"paths": ["profiles/{sub}"], "rights": ["write"]},
        {"paths": ["chats/*/messages/*"], "rights": ["read"]},
        {"paths": ["chats/{sub}-*/messages/*"], "rights": ["write"]},
        {"paths": ["feeds/{team}-*"], "rights": ["read"]},
        {"paths": ["drafts/{sub}/*/*"], "rights": ["read", "write", "delete"]},
        {"paths": ["presence/*"], "rights": ["read"]},
        {"paths": ["presence/{sub}"], "rights": ["write"]},
        {"paths": ["uploads/{sub}/*"], "rights": ["write"]},
        {"paths": ["users/{sub}/*"], "rights": ["read", "write"]},
    ]
    anonymous = [
        {"paths": ["public/*"], "rights": ["read"]},
        {"paths": ["public/*/*"], "rights": ["read"]},
        {"paths": ["status"], "rights": ["read"]},
        {"paths": ["profiles/*"], "rights": ["read"]},
        {"paths": ["docs/*"], "rights": ["read"]},
    ]
    return {"tokens": tokens, "jwt": {"secret": SECRET, "rules": jwt_rules},
            "anonymous": {"rules": anonymous}}


def rule_count(doc: dict[str, Any]) -> int:
    return (sum(len(t["rules"]) for t in doc["tokens"]) + len(doc["jwt"]["rules"])
            + len(doc["anonymous"]["rules"]))


def policy_toml(doc: dict[str, Any]) -> str:
    """``doc`` as a policy file (each value written as JSON, which TOML reads the same)."""
    lines = []
    for entry in doc["tokens"]:
        lines += ["[[tokens]]", f"name = {json.dumps(entry['name'])}",
                  f"sha256 = {json.dumps(entry['sha256'])}",
                  "rules = [" + ", ".join(_rule(r) for r in entry["rules"]) + "]", ""]
    lines += ["[jwt]", f"secret = {json.dumps(SECRET)}",
              "rules = [" + ", ".join(_rule(r) for r in doc["jwt"]["rules"]) + "]", ""]
    lines += ["[anonymous]", "rules = [" + ", ".join(_rule(r) for r in doc["anonymous"]["rules"]) + "]"]
    return "\n".join(lines) + "\n"


def _rule(rule: dict[str, Any]) -> str:
    return f"{{ paths = {json.dumps(rule['paths'])}, rights = {json.dumps(rule['rights'])} }}"


def jwt_token() -> str:
    import jwt

    return jwt.encode({"sub": SUB, "team": "red", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


# -- 1. decisions in-process ----------------------------------------------------------------------


def per_call_ns(fn: Callable[[], object]) -> float:
    """Best of 3 timeit runs, each long enough to last ~0.2 s (the machine is shared: the best run
    is the one least disturbed)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(3, number)) / number * 1e9


def decisions() -> dict[str, float]:
    """ns per call of each step, on whichever ooo_storage is first on sys.path."""
    import jwt

    from ooo_storage.errors import Unauthorized
    from ooo_storage.protocol.access import Policy, token_digest

    policy = Policy.from_dict(policy_document())
    assert policy.jwt is not None
    config = policy.jwt
    bearer = jwt_token()
    token_principal = policy.authenticate(TOKEN)
    jwt_principal = policy.authenticate(bearer)
    key, glob = f"users/{SUB}/123", f"users/{SUB}/1*"
    for who in (token_principal, jwt_principal):
        assert policy.allows(who, "write", key) and policy.allows(who, "read", glob)
        assert not policy.allows(who, "write", "users/other/1") and not policy.allows(who, "read", "users/*")

    def unknown() -> None:
        with suppress(Unauthorized):
            policy.authenticate("no-such-token-" + "x" * 29)

    def whole(bearer_token: str, right: str, asked: str) -> Callable[[], bool]:
        return lambda: policy.allows(policy.authenticate(bearer_token), right, asked)  # type: ignore[arg-type]

    steps: dict[str, Callable[[], object]] = {
        "token_digest (SHA-256 of a 43-char token)": lambda: token_digest(TOKEN),
        "authenticate: opaque token": lambda: policy.authenticate(TOKEN),
        "authenticate: unknown token (401 raised)": unknown,
        "PyJWT decode, HS256 (signature + claims)": lambda: jwt.decode(bearer, SECRET, algorithms=["HS256"]),
        "JWT rules filled from claims (15 rules)": lambda: policy.jwt_principal(
            {"sub": SUB, "team": "red"}),
        "authenticate: JWT, verified each time": lambda: policy.jwt_principal(Policy._verify(bearer, config)),
        "authenticate: JWT, as the server calls it": lambda: policy.authenticate(bearer),
        "allows: token, key (allowed)": lambda: policy.allows(token_principal, "write", key),
        "allows: token, glob (covered)": lambda: policy.allows(token_principal, "read", glob),
        "allows: token, glob users/* (refused)": lambda: policy.allows(token_principal, "read", "users/*"),
        "allows: JWT, key (allowed)": lambda: policy.allows(jwt_principal, "write", key),
        "allows: JWT, glob (covered)": lambda: policy.allows(jwt_principal, "read", glob),
        "per request: opaque token, key": whole(TOKEN, "write", key),
        "per request: opaque token, glob": whole(TOKEN, "read", glob),
        "per request: JWT, key": whole(bearer, "write", key),
        "per request: JWT, glob": whole(bearer, "read", glob),
    }
    return {name: per_call_ns(fn) for name, fn in steps.items()}


def decisions_in(tree: str) -> dict[str, float]:
    """:func:`decisions` on the ooo_storage of another tree, in a child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--decisions-json", "--tree", tree],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout
    return dict(json.loads(out))


# -- 2. end to end --------------------------------------------------------------------------------


SERVER_CORE, LOAD_CORE = 0, 1
ENGINES = ("aiohttp", "lean")
PLAIN, OPAQUE, JWT = "no auth", "opaque token", "JWT (HS256)"
LEGS = (PLAIN, OPAQUE, JWT)
PLAIN_JWT = "no auth, JWT sent"  # the plain server parsing the JWT's longer header (instruction counts)
CONTENDED = 0.15  # other processes' share of the server's core above which a leg is flagged
WARM_UP = 50  # requests per connection before an instruction count starts


def core_busy(core: int) -> float:
    """CPU seconds core ``core`` has spent busy (anyone's work), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def server_command(engine: str, leg: str, policy_file: Path) -> list[str]:
    """``ooo-storage serve --memory-only`` from this tree for ``leg``: the plain leg without a
    policy, the others with the 50 rules."""
    access = ["--insecure-no-auth"] if leg == PLAIN else ["--auth", str(policy_file)]
    return [sys.executable, "-m", "ooo_storage", "serve", "--memory-only", "--port", "0",
            "--max-connections", "256", "--log-level", "info", "--http-engine", engine, *access]


def start(command: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve(name: str, command: list[str]) -> Iterator[Target]:
    """A server running ``command`` until the block ends."""
    process = start(command)
    try:
        yield Target(name, process, _port(process))
    finally:
        stop(process)


def _port(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The port of the ``serving on http://127.0.0.1:PORT`` log line."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode(errors="replace")
        if not line and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if found:
            # The rest of the log is read and dropped, so that a full pipe never blocks the server.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return int(found.group(1))
    raise RuntimeError("server did not report its port in time")


class _BearerWriter:
    """A StreamWriter that adds ``Authorization: Bearer <token>`` to each request head that
    bench/_load.py's HttpConnection writes (it has no header option)."""

    def __init__(self, writer: asyncio.StreamWriter, token: str) -> None:
        self._writer = writer
        self._header = f"\r\nAuthorization: Bearer {token}\r\nContent-Type: ".encode()

    def write(self, data: bytes) -> None:
        self._writer.write(data.replace(b"\r\nContent-Type: ", self._header, 1))

    def close(self) -> None:
        self._writer.close()


@contextmanager
def bearer(token: str | None) -> Iterator[None]:
    """http_load's connections send ``token`` while the block runs."""
    if token is None:
        yield
        return
    plain, sent = _load.HttpConnection, token

    class Bearer(plain):  # type: ignore[valid-type,misc]
        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            super().__init__(reader, _BearerWriter(writer, sent))

    _load.HttpConnection = Bearer  # type: ignore[misc]
    try:
        yield
    finally:
        _load.HttpConnection = plain  # type: ignore[misc]


def request(c: int, n: int) -> tuple[str, str, bytes]:
    """Connection ``c``'s n-th request: POST then GET of the same key, 100 keys per connection."""
    path = f"/users/{SUB}/{c}-{(n // 2) % 100}"
    return ("POST", path, BODY) if n % 2 == 0 else ("GET", path, b"")



# -- 2a. server CPU per request, pinned rounds -----------------------------------------------------


@dataclass
class Round:
    """One leg of one round: the load's result and how busy other processes kept the server's core."""

    result: HttpLoadResult
    foreign: float  # share of the server's core used by processes other than the server (nan unpinned)
    user: float  # the server's user time over its user + system time during the leg


def user_system(pid: int) -> tuple[int, int]:
    """A process's user and system CPU time so far, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


async def measured(target: Target, token: str, core: int | None, args: argparse.Namespace) -> Round:
    busy, server, wall = core_busy(core or 0), target.cpu_seconds(), time.monotonic()
    user, system = user_system(target.pid)
    with bearer(token):
        result = await http_load(target, request, connections=args.connections, seconds=args.seconds)
    used = core_busy(core or 0) - busy - (target.cpu_seconds() - server)
    user_after, system_after = user_system(target.pid)
    share = (user_after - user) / max(1, user_after - user + system_after - system)
    return Round(result, max(0.0, used / (time.monotonic() - wall)) if core is not None else float("nan"),
                 share)


async def cpu_rounds(args: argparse.Namespace, policy_file: Path, engine: str) -> dict[str, list[Round]]:
    """Rounds of the three legs, rotated. Every request carries a bearer token, the plain server's
    too (it ignores it), so that the legs differ by the guard's work only, not by the bytes parsed."""
    runs: dict[str, list[Round]] = {leg: [] for leg in LEGS}
    core = args.server_core
    pin = [] if core is None else ["taskset", "-c", str(core)]  # taskset execs: the same pid
    with (serve("plain", [*pin, *server_command(engine, PLAIN, policy_file)]) as plain,
          serve("auth", [*pin, *server_command(engine, OPAQUE, policy_file)]) as guarded):
        legs = [(PLAIN, plain, TOKEN), (OPAQUE, guarded, TOKEN), (JWT, guarded, jwt_token())]
        for r in range(args.rounds):
            for name, target, token in legs[r % 3:] + legs[: r % 3]:
                runs[name].append(await measured(target, token, core, args))
    return runs


# -- 2b. instructions per request, under callgrind -------------------------------------------------


async def instructions(args: argparse.Namespace, policy_file: Path, engine: str) -> dict[str, float]:
    """Instructions the server executes per request (user space: what callgrind counts), each leg's
    server under ``valgrind --tool=callgrind``: a count that other processes cannot disturb, so
    one run decides what the noisy CPU rounds cannot. Counting starts after a warm-up
    (``callgrind_control -i on``) and covers exactly ``--count`` requests per connection."""
    legs = (PLAIN, PLAIN_JWT, OPAQUE, JWT)
    with tempfile.TemporaryDirectory(prefix="ooo-bench-auth-cg-") as tmp:
        outs = {leg: Path(tmp) / f"leg{i}.out" for i, leg in enumerate(legs)}
        processes = {leg: start(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                 f"--callgrind-out-file={outs[leg]}",
                                 *server_command(engine, PLAIN if leg == PLAIN_JWT else leg, policy_file)])
                     for leg in legs}
        try:
            ports = {leg: _port(process, timeout=600) for leg, process in processes.items()}
            jwt = jwt_token()
            tokens = {PLAIN: TOKEN, PLAIN_JWT: jwt, OPAQUE: TOKEN, JWT: jwt}
            for leg, process in processes.items():
                await requests(ports[leg], tokens[leg], WARM_UP, args.connections)
                _callgrind(process, "on")
                await requests(ports[leg], tokens[leg], args.count, args.connections)
                _callgrind(process, "off")
        finally:
            for process in processes.values():
                stop(process, timeout=120)  # callgrind writes its counts at exit
        return {leg: _total(out) / (args.count * args.connections) for leg, out in outs.items()}


async def requests(port: int, token: str, each: int, connections: int) -> None:
    """Exactly ``each`` requests on each of ``connections`` connections (:func:`request`'s)."""
    with bearer(token):
        conns = [await _load.HttpConnection.open(port) for _ in range(connections)]

    async def worker(c: int) -> None:
        for n in range(each):
            status, body = await conns[c].request(*request(c, n))
            if status not in (200, 204):
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")

    try:
        await asyncio.gather(*(worker(c) for c in range(connections)))
    finally:
        for conn in conns:
            conn.close()


def _callgrind(process: subprocess.Popen[bytes], switch: str) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(process.pid)], check=True, capture_output=True)


def _total(out: Path) -> int:
    found = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


# -- report ---------------------------------------------------------------------------------------


def report(args: argparse.Namespace, ours: dict[str, float], before: dict[str, float] | None,
           runs: dict[str, dict[str, list[Round]]], counts: dict[str, dict[str, float]]) -> str:
    doc = policy_document()
    parts = [f"Policy: {rule_count(doc)} rules (10 tokens x 3, 15 JWT rules with {{sub}}/{{team}}, "
             f"5 anonymous); the measured principals' matching rule is their last. Python "
             f"{sys.version.split()[0]}, 2 cores shared with other work.\n"]
    headers = ["step (in-process)", "ns/call"]
    if before is not None:
        headers = ["step (in-process)", "ns/call (this tree)", f"ns/call ({args.baseline_name})"]
    rows = []
    for name, ns in ours.items():
        row = [name, f"{ns:,.0f}"]
        if before is not None:
            row.append(f"{before[name]:,.0f}" if name in before else "")
        rows.append(row)
    parts.append(table(headers, rows))
    if runs or counts:
        parts.append("\n" + end_to_end_table(args, ours, runs, counts))
    parts.append(f"\nCommand: `{command_line(args)}`.")
    return "\n".join(parts)


def command_line(args: argparse.Namespace) -> str:
    words = [".venv/bin/python bench/auth.py", f"--engines {','.join(args.engines)}"]
    words += [f"--seconds {args.seconds:g}"] if args.rounds else []
    words += [f"--rounds {args.rounds}"]
    words += [f"--connections {args.connections}", f"--count {args.count}"]
    words += [f"--baseline {args.baseline}"] if args.baseline else []
    words += ["--no-pin"] if args.no_pin else []
    return " ".join(words)


def end_to_end_table(args: argparse.Namespace, ours: dict[str, float],
                     runs: dict[str, dict[str, list[Round]]], counts: dict[str, dict[str, float]]) -> str:
    rows = []
    policy_core = {OPAQUE: "per request: opaque token, key", JWT: "per request: JWT, key"}
    for engine in args.engines:
        legs = runs.get(engine)
        ir = counts.get(engine)
        plain = [r.result for r in legs[PLAIN]] if legs else []
        base_us = statistics.median(r.cpu_us for r in plain) if plain else None
        for leg in LEGS:
            row = [f"{engine}: {'`--insecure-no-auth`' if leg == PLAIN else '`--auth`, ' + leg}"]
            if legs:
                results = [r.result for r in legs[leg]]
                us = [r.cpu_us for r in results]
                row += [f"{statistics.median(r.rate for r in results):,.0f}",
                        f"{statistics.median(us):.1f} ({min(us):.1f}–{max(us):.1f})"]
                if leg == PLAIN:
                    row.append("")
                else:
                    paired = [a.cpu_us / p.cpu_us - 1 for a, p in zip(results, plain, strict=True)]
                    row.append(f"{statistics.median(paired):+.1%} ({min(paired):+.1%}…{max(paired):+.1%})")
            if ir:
                base = ir[PLAIN_JWT] if leg == JWT else ir[PLAIN]  # the same header parsed
                row.append(f"{ir[leg]:,.0f}" if leg != PLAIN else
                           f"{ir[PLAIN]:,.0f} (with the JWT's header: {ir[PLAIN_JWT]:,.0f})")
                row.append("" if leg == PLAIN else f"**{ir[leg] / base - 1:+.1%}**")
                if legs:
                    user = statistics.median(r.user for r in legs[PLAIN])
                    estimate = (ir[leg] / base - 1) * user
                    row.append(f"(user {user:.0%})" if leg == PLAIN else f"{estimate:+.1%}")
            if base_us is not None:
                row.append("" if leg == PLAIN else f"{ours[policy_core[leg]] / 1000 / base_us:.1%}")
            rows.append(row)
    headers = ["server"]
    if runs:
        headers += ["req/s seen (median)", "server CPU µs/req, median (min–max)",
                    "CPU overhead, paired rounds: median (min…max)"]
    if counts:
        headers += ["instructions/req (callgrind)", "instruction overhead"]
        if runs:
            headers += ["CPU overhead estimated: instructions × user share of the plain server's CPU"]
    if runs:
        headers += ["policy core in-process / plain CPU per request"]
    notes = [f"End to end: {args.connections} keep-alive connections, one request in flight each, "
             f"alternating POST and GET of users/{SUB}/<n> ({len(BODY)} B bodies, 100 keys per "
             f"connection), every request with `Authorization: Bearer` (the plain server ignores it, "
             f"so the legs differ by the guard's work only); `ooo-storage serve --memory-only "
             f"--http-engine E`, each in its own process."]
    if runs:
        every = [r for legs in runs.values() for rs in legs.values() for r in rs]
        busy = statistics.median(r.result.bench_cpu / r.result.seconds for r in every)
        if args.server_core is None:
            pinning = "not pinned"
        else:
            flagged = sum(r.foreign > CONTENDED for r in every)
            pinning = (f"servers pinned to core {args.server_core} (`taskset -c {args.server_core}`), "
                       f"the load generator to core {LOAD_CORE}; other processes used a median "
                       f"{statistics.median(r.foreign for r in every):.0%} of the server core during "
                       f"a leg ({flagged} of {len(every)} legs above {CONTENDED:.0%})")
        notes.append(f"CPU: {args.rounds} rounds of {args.seconds:g} s (after 1 s warm-up) per leg, "
                     f"legs rotated each round; {pinning}; the load generator was {busy:.0%} busy. "
                     f"Server CPU per request from /proc; overhead = with `--auth` over without, "
                     f"paired round by round. The last column is the in-process cost of authenticate "
                     f"+ allows over the plain server's CPU per request.")
    if counts:
        notes.append(f"Instructions: each leg's server under `valgrind --tool=callgrind` (the plain one "
                     f"twice: with the opaque token's header and with the JWT's, each auth leg over "
                     f"the plain one that parsed the same header), counting "
                     f"{args.count} requests per connection after {WARM_UP} of warm-up: user-space "
                     f"instructions, deterministic (other processes cannot change them); the "
                     f"kernel's share of a request is not in the denominator, so the overhead they "
                     f"show overstates the CPU one (unless the guard's instructions run slower than "
                     f"the request's average). The estimate scales it by the plain server's user "
                     f"time over its user + system time in the CPU rounds (the guard runs in user "
                     f"space only). Target: under 5 %.")
    return "\n\n".join([*notes, table(headers, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=10, help="CPU rounds per engine (0: none)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--count", type=int, default=100,
                        help="requests per connection counted under callgrind (0: no instruction count)")
    parser.add_argument("--engines", type=lambda v: v.split(","), default=list(ENGINES),
                        help="comma-separated --http-engine values (default aiohttp,lean)")
    parser.add_argument("--baseline", help="another tree (e.g. /work/baseline10): its decisions too")
    parser.add_argument("--no-server", action="store_true", help="in-process decisions only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator")
    parser.add_argument("--decisions-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    if args.decisions_json:
        print(json.dumps(decisions()))
        return
    if args.no_server:
        args.rounds = args.count = 0
    if args.count and shutil.which("valgrind") is None:
        raise SystemExit("instruction counts need valgrind (apt-get install valgrind), or pass --count 0")
    args.baseline_name = _describe(args.baseline) if args.baseline else None
    ours = decisions_in(str(ROOT))
    before = decisions_in(args.baseline) if args.baseline else None
    runs: dict[str, dict[str, list[Round]]] = {}
    counts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ooo-bench-auth-") as tmp:
        policy_file = Path(tmp) / "auth.toml"
        policy_file.write_text(policy_toml(policy_document()))
        args.server_core = pin_load_generator(args.no_pin)
        for engine in args.engines:
            if args.rounds:
                runs[engine] = asyncio.run(cpu_rounds(args, policy_file, engine))
            if args.count:
                counts[engine] = asyncio.run(instructions(args, policy_file, engine))
    print("## Access control: the policy check per request (issue 9)\n\n"
          + report(args, ours, before, runs, counts))


def pin_load_generator(no_pin: bool) -> int | None:
    """Pin this process (the load generator) to :data:`LOAD_CORE`; the core for the servers, or
    None when not pinning (``--no-pin``, or a single core)."""
    if no_pin or (os.cpu_count() or 1) <= LOAD_CORE or shutil.which("taskset") is None:
        return None
    os.sched_setaffinity(0, {LOAD_CORE})
    return SERVER_CORE


def _describe(tree: str) -> str:
    """``tree``'s commit, when it is a git checkout."""
    head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() or Path(tree).name


if __name__ == "__main__":
    main()
