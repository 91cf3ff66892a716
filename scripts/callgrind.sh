#!/usr/bin/env bash
# Instructions per call of the runner for a fixed workload, counted by callgrind: a stable
# regression signal where wall-clock figures drift (a shared 2-core box has no hardware counters).
#
# Optional tooling, not part of CI: needs valgrind (`apt-get install valgrind`).
#
# How: start the release runner under callgrind, replay N calls of the corpus over one
# connection, stop the runner (SIGTERM: callgrind writes its totals on exit); again with 2N
# calls; (Ir(2N) - Ir(N)) / N is the runner's user-space instructions per call, with start-up,
# prepare_conf and shutdown cancelled out. Kernel work (socket syscalls) is not counted.
#
# Usage: scripts/callgrind.sh [scenario.json] [N] [capnp|flatbuffers]
#   e.g. scripts/callgrind.sh benches/scenarios/trivial.json 2000 capnp
# RUNNER_ARGS adds runner flags, e.g. with metrics on (`@DIR@` is the script's scratch directory):
#   RUNNER_ARGS='--metrics-listen unix:@DIR@/metrics.sock' scripts/callgrind.sh
# RUNNER measures that runner binary instead of this tree's (scripts/bench.sh's baseline).
# TOOL=dhat counts heap allocations (blocks) instead of instructions, the same way: prints
# "allocations per call".
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:-benches/scenarios/trivial.json}
n=${2:-2000}
protocol=${3:-capnp}

tool=${TOOL:-callgrind}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
if [ -n "${RUNNER:-}" ]; then
    cargo build --release --quiet --bin ext-plugin-replay
    runner=$RUNNER
else
    cargo build --release --quiet --bin ext-plugin-runner --bin ext-plugin-replay
    runner=target/release/ext-plugin-runner
fi
replay=target/release/ext-plugin-replay

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
extra=${RUNNER_ARGS:-}
extra=${extra//@DIR@/$work}
"$replay" generate --scenario "$scenario" --protocol "$protocol" --out "$work/corpus" 2>/dev/null

# Prints the instruction (or allocation) total of the runner serving $1 calls.
measure() {
    local calls=$1 sock="$work/runner-$1.sock" out="$work/$tool-$1.out" log="$work/valgrind-$1.log"
    local out_flag=--callgrind-out-file
    [ "$tool" = dhat ] && out_flag=--dhat-out-file
    # One worker thread: the same instructions either way, fewer scheduling differences.
    valgrind --tool="$tool" "$out_flag=$out" \
        "$runner" --listen "unix:$sock" --log warn --workers 1 $extra 2>"$log" &
    local pid=$!
    for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "callgrind.sh: the runner did not listen" >&2; kill "$pid"; exit 1; }
    "$replay" replay --corpus "$work/corpus" --socket "$sock" --count "$calls" --warmup 0s \
        >"$work/replay-$calls.txt" || { cat "$work/replay-$calls.txt" >&2; kill "$pid"; exit 1; }
    kill -TERM "$pid"
    wait "$pid" || true
    if [ "$tool" = dhat ]; then
        # "==PID== Total:     1,234 bytes in 56 blocks"
        awk '/ Total: / { gsub(",", "", $(NF-1)); print $(NF-1); exit }' "$log"
    else
        awk '/^(totals|summary):/ { print $2; exit }' "$out"
    fi
}

ir1=$(measure "$n")
ir2=$(measure $((2 * n)))
if [ "$tool" = dhat ]; then
    # Two decimals: a fraction of an allocation per call is a real figure (one per connection).
    per_call=$(awk -v a="$ir1" -v b="$ir2" -v n="$n" 'BEGIN { v = (b - a) / n; if (v < 0.005 && v > -0.005) v = 0; printf "%.2f", v }')
    echo "scenario $scenario, $protocol${extra:+, runner flags: $extra}: blocks($n) = $ir1, blocks($((2 * n))) = $ir2"
    echo "allocations per call: $per_call"
else
    per_call=$(( (ir2 - ir1) / n ))
    echo "scenario $scenario, $protocol${extra:+, runner flags: $extra}: Ir($n) = $ir1, Ir($((2 * n))) = $ir2"
    echo "instructions per call: $per_call"
fi
