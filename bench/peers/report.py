"""Markdown for bench/peers/peers.py: one table per workload, the issue's targets, profile summaries."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench._load import table

if TYPE_CHECKING:
    from bench.peers.peers import Outcome, Rep

GEN_BOUND = 0.85  # generator CPU (cores) from which a rate is the instrument's limit, not the server's

HOW = {
    "ooo": "`ooo-storage serve --data <tmp>` (memory + LevelDB, no fsync)",
    "ooo-sync": "`ooo-storage serve --data <tmp> --sync` (fsync per group commit)",
    "etcd": "`etcd --data-dir <tmp>` single member, v3 JSON gateway on the client port (WAL fsync per batch)",
    "nats": "`nats-server -js -sd <tmp>`, KV bucket history=1, file storage (JetStream default: no fsync "
            "per write)",
}

RESUME = {
    "ooo": "reconnect with `?v=<last version>`: one snapshot frame of the current list",
    "etcd": "watch with `start_revision = last mod_revision + 1`: every event since",
    "nats": "ordered consumer from `last stream sequence + 1`: what the stream still holds (history=1: "
            "the last value of each key written since)",
}


def brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    keys = ("rate", "p50_ms", "p99_ms", "delivered_pct", "gen_cpu", "resent_values", "catch_up_ms")
    return ", ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in keys if k in result)


def _number(x: float, digits: int) -> str:
    if digits == 0 or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _values(reps: Sequence[Rep], get: Callable[[Rep], float | None]) -> list[float]:
    return [v for r in reps if not r.error and (v := get(r)) is not None]


def cell(reps: Sequence[Rep] | None, get: Callable[[Rep], float | None], digits: int = 0) -> str:
    """``median (min–max)`` over the successful repetitions, or the error."""
    if not reps:
        return "n/a"
    values = _values(reps, get)
    errors = [r.error for r in reps if r.error]
    if not values:
        return f"error: {errors[0]}"
    text = _number(statistics.median(values), digits)
    if len(values) > 1:
        text += f" ({_number(min(values), digits)}–{_number(max(values), digits)})"
    if errors:
        text += f" [{len(errors)} failed: {errors[0]}]"
    return text


def median(reps: Sequence[Rep] | None, field: str) -> float | None:
    values = _values(reps or (), lambda r: r.result.get(field))
    return statistics.median(values) if values else None


def _paired_ratio(a: Sequence[Rep] | None, b: Sequence[Rep] | None, field: str) -> float | None:
    """Median of per-repetition ratios a/b (the repetitions ran interleaved)."""
    pairs = [(x.result[field], y.result[field]) for x, y in zip(a or (), b or (), strict=False)
             if not x.error and not y.error and y.result[field]]
    return statistics.median(x / y for x, y in pairs) if pairs else None


def _contended(reps: Sequence[Rep] | None) -> str:
    if not reps:
        return ""
    n = sum(r.contended for r in reps if not r.error)
    worst = [max((r.foreign[i] for r in reps if not r.error), default=0.0) for i in (0, 1)]
    return f"{n}/{len(reps)} (max {worst[0]:.0%} / {worst[1]:.0%})" if n else f"0/{len(reps)}"


def _gen(reps: Sequence[Rep] | None) -> str:
    g = median(reps, "gen_cpu")
    if g is None:
        return "n/a"
    return f"{g:.2f}" + (" ⚠ generator-bound" if g >= GEN_BOUND else "")


def _server_cpu(reps: Sequence[Rep] | None) -> str:
    return cell(reps, lambda r: r.server_cpu, 2)


def _label(outcome: Outcome, name: str) -> str:
    target = outcome.targets.get(name)
    return target.label if target else {"ooo": "ooo-storage", "ooo-sync": "ooo-storage --sync",
                                         "etcd": "etcd", "nats": "NATS JetStream KV"}[name]


def _rows(outcome: Outcome, step_key: str, names: Sequence[str],
          columns: Sequence[Callable[[Sequence[Rep] | None], str]]) -> list[list[str]]:
    rows = []
    for name in names:
        reps = outcome.reps.get((step_key, name))
        if name in outcome.unavailable and not reps:
            blank = [""] * (len(columns) - 1)
            rows.append([_label(outcome, name), f"n/a: {outcome.unavailable[name]}", *blank])
            continue
        rows.append([_label(outcome, name), *(c(reps) for c in columns)])
    return rows


def _step_keys(outcome: Outcome, step_id: str) -> list[tuple[str, list[str]]]:
    return [(f"{s.id} {s.variant}", s.targets) for s in outcome.steps if s.id == step_id]


def _rate_tables(outcome: Outcome, step_id: str, unit: str, extra: str = "") -> str:
    parts = []
    for key, names in _step_keys(outcome, step_id):
        columns: list[Callable[[Sequence[Rep] | None], str]] = [
            lambda reps: cell(reps, lambda r: r.result["rate"]),
            lambda reps: cell(reps, lambda r: r.result["p50_ms"], 2),
            lambda reps: cell(reps, lambda r: r.result["p99_ms"], 2),
            _server_cpu, _gen, _contended,
        ]
        headers = ["target", f"{unit}/s", "p50 ms", "p99 ms", "server CPU (cores)", "generator CPU",
                   "contended reps (other load, server / generator core)"]
        if extra:
            columns.insert(1, lambda reps: cell(reps, lambda r: r.result[extra]))
            headers.insert(2, "items/s")
        parts.append(f"**{key.split(' ', 1)[1]}**\n\n" + table(headers, _rows(outcome, key, names, columns)))
    return "\n\n".join(parts)


def verdicts(outcome: Outcome) -> list[tuple[str, bool | None, str]]:
    """(target text, met?, evidence) for the issue's three targets."""
    w1 = next((k for k, _ in _step_keys(outcome, "W1")), "")
    etcd = outcome.reps.get((w1, "etcd"))
    out: list[tuple[str, bool | None, str]] = []
    for name, factor in (("ooo-sync", 2.0), ("ooo", 3.0)):
        what = f"{_label(outcome, name)} point writes >= {factor:g}x etcd put (64 clients)"
        ratio = _paired_ratio(outcome.reps.get((w1, name)), etcd, "rate")
        if ratio is None:
            reason = outcome.unavailable.get(name) or outcome.unavailable.get("etcd") or "no measurement"
            out.append((what, None, f"not measured: {reason}"))
        else:
            evidence = f"{ratio:.2f}x (median of per-repetition ratios)"
            out.append((what, ratio >= factor, evidence))
    w4 = _step_keys(outcome, "W4")
    if w4:
        key = w4[-1][0]
        ours = median(outcome.reps.get((key, "ooo")), "p99_ms")
        what = f"fan-out p99 at {key.split(' ', 1)[1]} below etcd's and NATS's"
        others = {n: median(outcome.reps.get((key, n)), "p99_ms") for n in ("etcd", "nats")}
        known = {n: v for n, v in others.items() if v is not None}
        if ours is None or not known:
            out.append((what, None, "not measured"))
        else:
            met = all(ours < v for v in known.values())
            evidence = f"ours {ours:.1f} ms vs " + ", ".join(
                f"{_label(outcome, n)} {v:.1f} ms" for n, v in known.items())
            missing = [n for n in others if n not in known]
            if missing:
                evidence += " (" + ", ".join(f"{n} not measured" for n in missing) + ")"
            out.append((what, met, evidence))
    return out


def losses(outcome: Outcome) -> list[str]:
    """Every throughput measurement where a peer beat ooo-storage, and by how much."""
    out = []
    measures = (("W1", "rate", "more"), ("W2", "rate", "more"), ("W3", "rate", "more"),
                ("W4", "p99_ms", "less"))
    for step_id, field_name, better in measures:
        for key, _ in _step_keys(outcome, step_id):
            for ours_name in (("ooo", "ooo-sync") if step_id == "W1" else ("ooo",)):
                ours = median(outcome.reps.get((key, ours_name)), field_name)
                for name in ("etcd", "nats"):
                    theirs = median(outcome.reps.get((key, name)), field_name)
                    if ours is None or theirs is None:
                        continue
                    if better == "more" and theirs > ours:
                        out.append(f"{key}: {_label(outcome, name)} {theirs / ours:.1f}x the rate of "
                                   f"{_label(outcome, ours_name)} ({theirs:,.0f} vs {ours:,.0f}/s)")
                    elif better == "less" and theirs < ours:
                        out.append(f"{key}: {_label(outcome, name)} p99 {theirs:.0f} ms vs "
                                   f"{_label(outcome, ours_name)} {ours:.0f} ms")
    return out


_HINTS = {
    "_SelectorSocketTransport.write": "a send() syscall per response or frame, per connection",
    "LevelDBLayer.set": "the LevelDB put, on the event loop thread",
    "StreamWriter.write_headers": "aiohttp serialising and sending response headers",
    "RequestHandler.data_received": "aiohttp parsing requests",
}


def profile_wanted(outcome: Outcome) -> list[tuple[str, str, str]]:
    """(title, target, step key) to profile: the issue's targets that were missed, then other losses."""
    wanted = []
    w1 = next((k for k, _ in _step_keys(outcome, "W1")), "")
    for (what, met, _), name in zip(verdicts(outcome), ("ooo-sync", "ooo", "ooo"), strict=False):
        if met is False:
            key = w1 if "writes" in what else _step_keys(outcome, "W4")[-1][0]
            wanted.append((f"{_label(outcome, name)} under {key}", name, key))
    for step_id in ("W2", "W3"):
        for key, names in _step_keys(outcome, step_id):
            ours = median(outcome.reps.get((key, "ooo")), "rate")
            best = max((v for n in names if n != "ooo" and (v := median(outcome.reps.get((key, n)), "rate"))),
                       default=None)
            if ours is not None and best is not None and ours < best:
                wanted.append((f"ooo-storage under {key}", "ooo", key))
    return wanted[:3]


def summarise_profile(raw: str, seconds: float, top: int = 8) -> str:
    """The top frames of a py-spy ``--format raw`` (collapsed stacks) profile, by self and by total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "no samples"
    leader = own.most_common(1)[0][0]
    hint = next((text for name, text in _HINTS.items() if leader.startswith(name + " ")), "")

    def listing(counter: Counter[str], keep: Callable[[str], bool]) -> str:
        return "; ".join(f"`{f}` {n / samples:.0%}" for f, n in counter.most_common() if keep(f))

    entry = ("ooo_storage/__main__.py", "ooo_storage/cli/__init__.py", "ooo_storage/cli/serve.py")
    inclusive = [f for f, _ in total.most_common() if ("ooo_storage/" in f or "aiohttp/" in f
                 or "plyvel" in f) and not f.endswith(tuple(e + ")" for e in entry))][:top]
    loop = sum(n for f, n in total.items() if f.startswith("BaseEventLoop.run_forever "))
    return (f"{samples} samples in {seconds:g} s at 100 Hz (all threads; {loop / samples:.0%} on the "
            "event loop thread). "
            + (f"Most self time: {hint}. " if hint else "")
            + "Self time: "
            + listing(Counter(dict(own.most_common(top))), lambda f: True)
            + ". Inclusive, our code and aiohttp: "
            + "; ".join(f"`{f}` {total[f] / samples:.0%}" for f in inclusive) + ".")


_LINE = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _frame(text: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (to/file.py)``."""
    match = _LINE.match(text.strip())
    if not match:
        return text.strip()
    path = match["file"].split("/")
    if "site-packages" in path:
        path = path[path.index("site-packages") + 1 :]
    elif "ooo_storage" in path:
        path = path[path.index("ooo_storage") :]
    else:
        path = path[-2:]
    return f"{match['func']} ({'/'.join(path)})"


def render(outcome: Outcome, *, command: str, when: str, machine: str) -> str:
    args = outcome.args
    names = ["ooo", "ooo-sync", "etcd", "nats"]
    versions = table(
        ["target", "version", "run as"],
        [[_label(outcome, n),
          outcome.targets[n].version if n in outcome.targets else f"n/a: {outcome.unavailable.get(n, '?')}",
          HOW[n]]
         for n in names],
    )
    rep_count = sum(len(v) for v in outcome.reps.values())
    contended = sum(r.contended for v in outcome.reps.values() for r in v if not r.error)
    lines = [
        f"Run {when} on {machine}; {args.reps} repetition(s){' (--quick)' if args.quick else ''}, "
        f"{outcome.seconds:.0f} s in all. Command: `{command}`.",
        "",
        "Each server is pinned to core 0 (`taskset -c 0`), each load generator (bench/peers/load.py, a new "
        "process per measurement) to core 1. The generator speaks raw protocols (HTTP/1.1 + websocket for "
        "ooo-storage, HTTP/1.1 for etcd's JSON gateway, the NATS text protocol sending exactly what "
        "nats-py's KV sends; nats-py only creates the bucket), because with nats-py or aiohttp the "
        "client would cost more per message than the servers and set the figures. "
        "Targets run interleaved (A B C, A B C, ...); cells are the median of the "
        "repetitions with (min–max). Every value is the same 150 B JSON document. A repetition is "
        f"*contended* when other processes used more than {CONTENDED_TEXT} of the server's or the "
        "generator's core during its window (from /proc/stat minus the server's and generator's own "
        f"CPU time): {contended} of {rep_count} were. *generator-bound* (generator CPU >= {GEN_BOUND}) "
        "means the client, not the server, was the limit: the server's rate is at least that.",
        "",
        versions,
        "",
        "### Targets from the issue",
        "",
        table(["target", "met?", "evidence"],
              [[w, {True: "**yes**", False: "**NO**", None: "n/a"}[m], e] for w, m, e in verdicts(outcome)]),
        "",
        "### W1 point writes (64 clients, one request in flight each, 1 000 keys)",
        "",
        _rate_tables(outcome, "W1", "writes"),
        "",
        "### W2 point reads (64 clients, random keys of 1 000)",
        "",
        _rate_tables(outcome, "W2", "reads"),
        "",
        "### W3 prefix reads (8 clients)",
        "",
        "ooo-storage `GET /b1000/*` (newest first); etcd `/v3/kv/range` with the prefix's `range_end`; NATS: "
        "the watch-all snapshot `kv.watch(\"b1000.>\")` makes (an ephemeral push consumer delivering the "
        "last value of each key, read until pending = 0, then deleted; `keys()` + one `get` per key "
        "would cost 1 000 round trips). Every item is decoded by the client.",
        "",
        _rate_tables(outcome, "W3", "lists", extra="items_rate"),
        "",
        "### W4 fan-out (one writer at 200 writes/s over 10 keys `fan/0..9`, N watchers of the prefix)",
        "",
        "ooo-storage: N websocket subscribers of `fan/*` (one connection each); etcd: N `/v3/watch` "
        "gateway streams with a prefix range (one HTTP connection and one gRPC watch each); NATS: N "
        "`kv.watch(\"fan.>\")` consumers (an ephemeral push consumer each, no acks), one connection each. "
        "NATS KV keeps history=1: a value overwritten before a lagging consumer reached it is skipped, so "
        "NATS's *delivered %* below 100 is conflation, not loss. "
        "Latency is receive time minus the writer's CLOCK_MONOTONIC timestamp in the value (so it includes "
        "the write's commit); deliveries/s is what the watchers received divided by the time from the "
        "first write to the last delivery. *writes/s* is what the writer achieved: when a server "
        "cannot keep up, its POSTs/puts slow down and the rate falls below 200; compare the "
        "latencies together with it and with deliveries/s.",
        "",
        _fanout_tables(outcome),
        "",
        "### W5 resume (writer at 100 writes/s over `res/0..9`; the watcher is offline 5 s, the writer "
        "stops, the watcher resumes from its last position)",
        "",
        _resume_table(outcome),
    ]
    if outcome.unavailable:
        lines += ["", "Not measured: " + "; ".join(f"{_label(outcome, n)}: {why}"
                                                   for n, why in outcome.unavailable.items()) + "."]
    lost = losses(outcome)
    lines += ["", "### Where we lose", ""]
    lines += [f"- {line}" for line in lost] if lost else ["- nowhere in this run"]
    if outcome.profiles:
        lines += ["", "Profiles (py-spy of the ooo-storage server process under that load; frames are "
                  "`function (module)`, percentages of samples):", ""]
        lines += [f"- **{title}**: {summary}" for title, summary in outcome.profiles]
    return "\n".join(lines)


CONTENDED_TEXT = "15 %"


def _fanout_tables(outcome: Outcome) -> str:
    parts = []
    for key, names in _step_keys(outcome, "W4"):
        columns: list[Callable[[Sequence[Rep] | None], str]] = [
            lambda reps: cell(reps, lambda r: r.result["p50_ms"], 2),
            lambda reps: cell(reps, lambda r: r.result["p99_ms"], 2),
            lambda reps: cell(reps, lambda r: r.result["rate"]),
            lambda reps: cell(reps, lambda r: r.result["delivered_pct"], 1),
            lambda reps: cell(reps, lambda r: r.result["write_rate"]),
            _server_cpu, _gen, _contended,
        ]
        headers = ["target", "p50 ms", "p99 ms", "deliveries/s", "delivered %", "writes/s", "server CPU",
                   "generator CPU", "contended reps (other load, server / generator core)"]
        parts.append(f"**{key.split(' ', 1)[1]}**\n\n" + table(headers, _rows(outcome, key, names, columns)))
    return "\n\n".join(parts)


def _resume_table(outcome: Outcome) -> str:
    parts = []
    for key, names in _step_keys(outcome, "W5"):
        columns: list[Callable[[Sequence[Rep] | None], str]] = [
            lambda reps: cell(reps, lambda r: r.result["missed"]),
            lambda reps: cell(reps, lambda r: r.result["resent_values"]),
            lambda reps: cell(reps, lambda r: r.result["resent_updates"]),
            lambda reps: cell(reps, lambda r: r.result["resent_bytes"]),
            lambda reps: cell(reps, lambda r: r.result["catch_up_ms"], 1),
            lambda reps: "n/a" if not reps else (
                f"{sum(bool(r.result.get('state_ok')) for r in reps if not r.error)}/{len(reps)} correct"),
        ]
        headers = ["target", "writes while offline", "values resent", "frames/messages", "bytes",
                   "catch-up ms", "final state", "how it resumes"]
        rows = _rows(outcome, key, names, columns)
        for row, name in zip(rows, names, strict=True):
            row.append(RESUME[name])
        parts.append(table(headers, rows))
    return "\n\n".join(parts)
