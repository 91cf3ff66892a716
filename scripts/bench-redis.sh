#!/usr/bin/env bash
# BENCHMARKS.md's "Redis-backed limits": limit-count with the local policy, on Redis in exact
# mode and on Redis with `sync_interval` leasing, interleaved in one run so all three see the
# same machine load; then the Redis round trips each mode costs, counted (not timed) with
# `INFO commandstats` around a fixed number of calls. Starts its own redis-server on a unix
# socket in a temporary directory and stops it at the end. Release build; a few minutes.
# Needs redis-server, redis-cli and jq. Not part of CI.
#
# Usage: scripts/bench-redis.sh [duration per run, default 3s] [repeats, default 3]
#   RUNTIME=work-stealing|per-core  the runner's --runtime (default: the runner's default)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-3s}
repeats=${2:-3}
modes=(local exact leasing)
runtime_args=()
[ -n "${RUNTIME:-}" ] && runtime_args=(--runtime "$RUNTIME")
for tool in redis-server redis-cli jq; do
    command -v "$tool" >/dev/null || { echo "bench-redis: $tool is not installed" >&2; exit 2; }
done

cargo build --release --quiet --bin ext-plugin-runner --bin ext-plugin-replay
bin=target/release

dir=$(mktemp -d)
redis_pid=""
runner_pid=""
cleanup() {
    # Only the processes this script started, by pid.
    [ -n "$runner_pid" ] && kill "$runner_pid" 2>/dev/null && wait "$runner_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no --dir "$dir" \
    >"$dir/redis.log" 2>&1 &
redis_pid=$!
rcli() { redis-cli -s "$dir/redis.sock" "$@"; }
for _ in $(seq 100); do rcli PING >/dev/null 2>&1 && break; sleep 0.05; done
rcli PING >/dev/null
# The scenarios name the server as ${REDIS_HOST}.
export REDIS_HOST="unix:$dir/redis.sock"

# Round trips to Redis so far: the script calls in INFO commandstats (EVAL, EVALSHA, SCRIPT
# LOAD, ...). Redis also counts each command a script runs under its own name, so the sum of
# every command is not the number of round trips; the limiters send nothing but scripts.
round_trips() {
    rcli INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_(eval|fcall|script\|)/ {
            for (i = 2; i < NF; i++) if ($i == "calls") total += $(i + 1)
        }
        END { print total + 0 }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), $(redis-server --version | cut -d' ' -f3)"
echo "# $repeats repeats x C = 1, 16 x (local, exact, leasing), $duration each after 1s warm-up, depth 1, capnp, runtime ${RUNTIME:-default}"
failures=0
for rep in $(seq "$repeats"); do
    for c in 1 16; do
        for mode in "${modes[@]}"; do
            before=$(round_trips)
            "$bin/ext-plugin-replay" compare --scenario "benches/scenarios/redis-$mode.json" \
                --runner "$bin/ext-plugin-runner" --connections "$c" --depth 1 \
                ${RUNTIME:+--runner-arg=--runtime=$RUNTIME} \
                --duration "$duration" --warmup 1s --json >"$dir/$mode-$c-$rep.json" \
                || failures=$((failures + 1))
            after=$(round_trips)
            echo $((after - before)) >"$dir/$mode-$c-$rep.trips"
        done
    done
done

echo
echo "| C | policy | calls/s (median) | p50 µs | p99 µs (median) | p99 ÷ local p99 | runs (calls/s; p99 µs) | Redis round trips per call | mismatches |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in 1 16; do
    local_p99=""
    for mode in "${modes[@]}"; do
        files=("$dir/$mode-$c-"*.json)
        field() { for f in "${files[@]}"; do jq ".pairings[0].runner.$1" "$f"; done; }
        rps=$(field rps | median)
        p50=$(field latency_us.p50 | median)
        p99=$(field latency_us.p99 | median)
        [ "$mode" = local ] && local_p99=$p99
        runs=$(for f in "${files[@]}"; do jq -r '.pairings[0].runner | "\(.rps | round); \(.latency_us.p99)"' "$f"; done | paste -sd, | sed 's/,/, /g')
        calls=$(field ok | paste -sd+ | bc)
        cmds=$(cat "$dir/$mode-$c-"*.trips | paste -sd+ | bc)
        bad=$(for f in "${files[@]}"; do jq '[.pairings[] | (.runner, .echo) | ((.mismatches | add // 0) + (.errors | add // 0))] | add' "$f"; done | paste -sd+ | bc)
        awk -v c="$c" -v m="$mode" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v lp="$local_p99" \
            -v runs="$runs" -v cmds="$cmds" -v calls="$calls" -v bad="$bad" 'BEGIN {
            printf "| %s | %s | %.0f | %.1f | %.1f | %.2f | %s | %.4f | %s |\n",
                c, m, rps, p50, p99, p99 / lp, runs, cmds / calls, bad }'
    done
done

echo
echo "Round trips, counted: INFO commandstats before and after a fixed number of calls on one"
echo "runner (a first short replay connects, loads the scripts and takes each key's first grant)."
"$bin/ext-plugin-runner" --listen "unix:$dir/runner.sock" --log warn "${runtime_args[@]}" &
runner_pid=$!
for _ in $(seq 100); do [ -S "$dir/runner.sock" ] && break; sleep 0.05; done
replay() { "$bin/ext-plugin-replay" replay --socket "$dir/runner.sock" --warmup 0s "$@" >/dev/null; }
calls=100000
for mode in exact leasing; do
    "$bin/ext-plugin-replay" generate --scenario "benches/scenarios/redis-$mode.json" \
        --out "$dir/$mode.corpus" 2>/dev/null
    replay --corpus "$dir/$mode.corpus" --count 1000
    before=$(round_trips)
    replay --corpus "$dir/$mode.corpus" --count "$calls" || failures=$((failures + 1))
    after=$(round_trips)
    awk -v m="$mode" -v n=$((after - before)) -v calls="$calls" 'BEGIN {
        printf "%s: %d round trips for %d admitted calls (%.4f per call)\n", m, n, calls, n / calls }'
done
# One key, count 1: the first call is admitted (a mismatch for this corpus, which expects 503s)
# and the second learns from Redis that the window is spent; then only rejects.
"$bin/ext-plugin-replay" generate --scenario benches/scenarios/redis-exhausted.json \
    --out "$dir/exhausted.corpus" 2>/dev/null
replay --corpus "$dir/exhausted.corpus" --count 2 || true
rejects=10000
before=$(round_trips)
replay --corpus "$dir/exhausted.corpus" --count "$rejects" || failures=$((failures + 1))
after=$(round_trips)
echo "exact, key exhausted: $((after - before)) round trips for $rejects rejected calls"
[ "$failures" -eq 0 ] || { echo "bench-redis: $failures runs had mismatches or errors" >&2; exit 1; }
