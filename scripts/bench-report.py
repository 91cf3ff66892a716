#!/usr/bin/env python3
"""Summarizes a scripts/bench.sh run (DIR/results.jsonl) as Markdown: medians over the repeats,
baseline beside current, the command behind each figure, and the thread-model comparison.

Usage: scripts/bench-report.py DIR
"""
import json
import statistics
import sys
from collections import defaultdict

run_dir = sys.argv[1]
rows = [json.loads(line) for line in open(f"{run_dir}/results.jsonl")]
builds = [b for b in ("baseline", "current") if any(r["build"] == b for r in rows)]
PROTOCOLS = ("capnp", "flatbuffers")


def median(values):
    return statistics.median(values) if values else None


def select(**want):
    return [r for r in rows if all(r[k] == v for k, v in want.items())]


def template(command, runner):
    """The command with the runner binary's path as <runner>, for either build."""
    return command.replace(runner, "<runner>") if runner else command


def runner_of(rec):
    words = rec["command"].split()
    for flag in ("--runner", "RUNNER"):
        for i, w in enumerate(words):
            if w == flag and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(flag + "="):
                return w.split("=", 1)[1]
    return None


def commands(recs):
    seen = []
    for r in recs:
        t = template(r["command"], runner_of(r))
        if t not in seen:
            seen.append(t)
    return "<br>".join(f"`{c}`" for c in seen)


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 0.005:
        v = 0.0  # -0.00: one block fewer in the longer run, within noise
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    if digits == 0 and (isinstance(v, int) or v.is_integer()):
        return f"{int(v):,}".replace(",", " ")
    return f"{v:.{digits}f}"


def pairing(rec, conns, depth=1):
    for p in rec["result"]["pairings"]:
        if p["runner"]["connections"] == conns and p["runner"]["depth"] == depth:
            return p
    return None


def cell(section, build, scenario, protocol, conns, depth=1, cpus=None, model=None):
    """Medians over the repeats: (ratio, echo rps, runner rps, echo p99, runner p99, ratios)."""
    want = dict(section=section, build=build, scenario=scenario, protocol=protocol)
    if cpus is not None:
        want["cpus"] = cpus
    if model is not None:
        want["model"] = model
    ps = [p for r in select(**want) if (p := pairing(r, conns, depth))]
    if not ps:
        return None
    return {
        "ratio": median([p["ratio"] for p in ps]),
        "ratios": sorted(p["ratio"] for p in ps),
        "echo": median([p["echo"]["rps"] for p in ps]),
        "runner": median([p["runner"]["rps"] for p in ps]),
        "echo_p99": median([p["echo"]["latency_us"]["p99"] for p in ps]),
        "runner_p99": median([p["runner"]["latency_us"]["p99"] for p in ps]),
        "n": len(ps),
    }


def value(section, build, scenario, protocol):
    rs = select(section=section, build=build, scenario=scenario, protocol=protocol)
    return median([r["result"]["value"] for r in rs])


out = []
p = out.append
p(open(f"{run_dir}/conditions.txt").read().strip().replace("\n", "  \n"))
p("")

# Every reply checked: any mismatch or connection error makes the figures void.
failures = 0
for r in rows:
    for pr in r["result"].get("pairings", []):
        for side in ("echo", "runner"):
            failures += sum(pr[side]["mismatches"].values()) + sum(pr[side]["errors"].values())
p(f"Mismatched replies and connection errors over every compare run: **{failures}**.")
p("")

header = "| measure | " + " | ".join(builds) + " | command |"
p(header)
p("|" + "---|" * (len(builds) + 2))
for section, label, digits in (("callgrind", "instructions per call", 0),
                               ("dhat", "allocations per call", 2)):
    for scenario in ("trivial", "realistic"):
        cells = [" / ".join(fmt(value(section, b, scenario, pr), digits) for pr in PROTOCOLS)
                 for b in builds]
        recs = select(section=section, scenario=scenario)
        p(f"| {label}, {scenario} chain (capnp / flatbuffers) | " + " | ".join(cells)
          + f" | {commands(recs)} |")
for scenario, name in (("trivial", "empty"), ("ip-restriction", "ip-restriction"),
                       ("realistic", "realistic")):
    for protocol in PROTOCOLS:
        cells = []
        for b in builds:
            got = [cell("one-cpu", b, scenario, protocol, c) for c in (1, 4)]
            cells.append(" / ".join(fmt(g and g["ratio"]) for g in got))
        recs = select(section="one-cpu", scenario=scenario, protocol=protocol)
        p(f"| one CPU, {name} chain, {protocol}, runner ÷ echo at C = 1 / 4 | "
          + " | ".join(cells) + f" | {commands(recs[:1])} |")
for protocol in PROTOCOLS:
    cells = []
    for b in builds:
        g = cell("two-cpu", b, "trivial", protocol, 16)
        cells.append(f"{fmt(g and g['runner_p99'], 0)} µs (echo {fmt(g and g['echo_p99'], 0)} µs)"
                     if g else "–")
    recs = select(section="two-cpu", protocol=protocol)
    p(f"| two CPUs, C = 16, p99, empty chain, {protocol} | " + " | ".join(cells)
      + f" | {commands(recs[:1])} |")
cells = []
for b in builds:
    rs = select(section="memory", build=b)
    if rs:
        kib = median([r["result"]["with_idle_connections_kib"] for r in rs])
        idle = rs[0]["result"]["idle_connections"]
        cells.append(f"{kib / 1024:.1f} MiB ({idle} connections)")
    else:
        cells.append("–")
p("| RSS after idle connections that made one call each | " + " | ".join(cells)
  + f" | {commands(select(section='memory')[:1])} |")
p("")

p("One CPU in detail (medians; the ratios of every repeat in brackets):")
p("")
p("| chain | protocol | C | build | echo calls/s | runner calls/s | runner ÷ echo |")
p("|---|---|---|---|---|---|---|")
for scenario in ("trivial", "ip-restriction", "realistic"):
    for protocol in PROTOCOLS:
        for c in (1, 4):
            for b in builds:
                g = cell("one-cpu", b, scenario, protocol, c)
                if g:
                    ratios = ", ".join(f"{x:.2f}" for x in g["ratios"])
                    p(f"| {scenario} | {protocol} | {c} | {b} | {fmt(g['echo'], 0)} | "
                      f"{fmt(g['runner'], 0)} | {g['ratio']:.2f} [{ratios}] |")
p("")

threads = select(section="threads")
if threads:
    p("Thread models (current build, empty chain; medians over the repeats; p99 in µs):")
    p("")
    for cpus in ("1", "0,1"):
        for protocol in PROTOCOLS:
            recs = select(section="threads", cpus=cpus, protocol=protocol)
            if not recs:
                continue
            where = "one CPU (`taskset -c 1`, `--workers 1`)" if cpus == "1" else \
                "two CPUs (`--workers 2`)"
            p(f"**{where}, {protocol}**: {commands(recs[:2])}")
            p("")
            p("| C | depth | echo calls/s | work-stealing calls/s | ÷ echo | p99 "
              "| per-core calls/s | ÷ echo | p99 |")
            p("|---|---|---|---|---|---|---|---|---|")
            settings = sorted({(pr["runner"]["depth"], pr["runner"]["connections"])
                               for r in recs for pr in r["result"]["pairings"]})
            for depth, c in settings:
                ws = cell("threads", "current", "trivial", protocol, c, depth, cpus, "work-stealing")
                pc = cell("threads", "current", "trivial", protocol, c, depth, cpus, "per-core")
                echo = median([g["echo"] for g in (ws, pc) if g])
                line = f"| {c} | {depth} | {fmt(echo, 0)} |"
                for g in (ws, pc):
                    line += (f" {fmt(g['runner'], 0)} | {g['ratio']:.2f} | {fmt(g['runner_p99'], 0)} |"
                             if g else " – | – | – |")
                p(line)
            p("")

print("\n".join(out))
