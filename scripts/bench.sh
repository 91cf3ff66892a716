#!/usr/bin/env bash
# Every end-to-end figure of BENCHMARKS.md's performance tables, in one run, for this tree's
# build and (with --baseline) an older revision's, measured interleaved and repeated; then a
# report of medians with the command behind each figure (scripts/bench-report.py). Release
# builds; not part of CI. Needs valgrind (instructions and allocations), taskset, jq, python3.
#
# Usage: scripts/bench.sh [--baseline REV] [--quick] [--repeat N] [--duration D] [--warmup D]
#                         [--thread-repeat N] [--no-threads] [--out DIR]
#   --baseline REV  also measure REV's runner, built in a temporary git worktree (cached in
#                   target/bench/runner-<sha>); the replayer is always this tree's.
#   --quick         fewer cells and shorter runs: a check that the script works, not figures.
#   --repeat N      repeats of every wall-clock cell (default 3); medians are reported.
#   --thread-repeat N  repeats of the thread-model comparison (default: --repeat).
#   --no-threads    skip the thread-model comparison (the longest part).
# What runs, per build (baseline first, then current, in every repeat):
#   instructions per call   scripts/callgrind.sh S N P           (S = trivial, realistic)
#   allocations per call    TOOL=dhat scripts/callgrind.sh S N P
#   one CPU, runner ÷ echo  taskset -c 1 ext-plugin-replay compare ... --runner-arg=--workers=1
#                           -c 1,4 --depth 1          (S = trivial, ip-restriction, realistic)
#   two CPUs, C = 16 p99    ext-plugin-replay compare ... -c 16 --depth 1   (S = trivial)
#   RSS, 10 000 idle conns  ext-plugin-replay memory --confs 1 --idle 10000
# and for this tree's build only, the thread models (--runtime work-stealing | per-core) at
# C = 1, 4, 16, 64 and depth 1, 16, trivial scenario, on one CPU and on two.
# Each compare runs the echo floor and the runner in turns on the same frames; both codecs.
set -euo pipefail
cd "$(dirname "$0")/.."

baseline='' quick=0 repeat=3 thread_repeat='' duration=2s warmup=1s threads=1 out=''
while [ $# -gt 0 ]; do
    case $1 in
        --baseline) baseline=$2; shift ;;
        --quick) quick=1 ;;
        --repeat) repeat=$2; shift ;;
        --thread-repeat) thread_repeat=$2; shift ;;
        --duration) duration=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --no-threads) threads=0 ;;
        --out) out=$2; shift ;;
        *) echo "bench.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
for tool in valgrind taskset jq python3 strip; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool is needed" >&2; exit 2; }
done
calls=2000 conns_1cpu=1,4 thread_conns=1,4,16,64 thread_depths=1,16 idle=10000
if [ "$quick" = 1 ]; then
    repeat=1 duration=500ms warmup=200ms calls=300 thread_conns=1,16 thread_depths=1 idle=1000
fi
thread_repeat=${thread_repeat:-$repeat}
out=${out:-target/bench/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" target/bench
results="$out/results.jsonl"
: >"$results"

# The builds: name=path of the runner binary. The baseline is built first, since it shares
# the target directory and its build replaces target/release's binaries.
builds=()
if [ -n "$baseline" ]; then
    sha=$(git rev-parse --verify "$baseline^{commit}")
    cached="target/bench/runner-$sha"
    if [ ! -x "$cached" ]; then
        tree=$(mktemp -d)/baseline
        git worktree add --detach "$tree" "$sha" >/dev/null
        (cd "$tree" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release --quiet --bin ext-plugin-runner)
        cp target/release/ext-plugin-runner "$cached"
        git worktree remove --force "$tree"
    fi
    builds+=("baseline=$cached")
fi
cargo build --release --quiet --bin ext-plugin-runner --bin ext-plugin-replay
cp target/release/ext-plugin-runner target/bench/runner-current
builds+=("current=target/bench/runner-current")
replay=target/release/ext-plugin-replay

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "current: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"
    [ -n "$baseline" ] && echo "baseline: $(git rev-parse --short "$baseline")"
    echo "repeat: $repeat, duration: $duration, warm-up: $warmup, callgrind calls: $calls"
} >"$out/conditions.txt"
cat "$out/conditions.txt"

# record SECTION BUILD SCENARIO PROTOCOL CPUS MODEL REPEAT COMMAND...: runs COMMAND (which
# prints compare or memory JSON) and appends one line to results.jsonl.
record() {
    local section=$1 build=$2 scenario=$3 protocol=$4 cpus=$5 model=$6 rep=$7
    shift 7
    local json status=0
    json=$("$@") || status=$?
    # compare exits 1 on mismatches: the report counts them; anything else is a failure.
    if [ "$status" -gt 1 ] || [ -z "$json" ]; then
        echo "bench.sh: failed ($status): $*" >&2
        exit 1
    fi
    jq -c --arg section "$section" --arg build "$build" --arg scenario "$scenario" \
        --arg protocol "$protocol" --arg cpus "$cpus" --arg model "$model" --argjson repeat "$rep" \
        --arg command "$*" \
        '{section: $section, build: $build, scenario: $scenario, protocol: $protocol,
          cpus: $cpus, model: $model, repeat: $repeat, command: $command, result: .}' \
        <<<"$json" >>"$results"
}

# per_call TOOL BUILD RUNNER SCENARIO PROTOCOL: instructions (callgrind) or allocations (dhat)
# per call. Valgrind runs a copy without debug info: the same code, but it starts in seconds
# instead of minutes (reading 100 MB of DWARF twice per figure).
per_call() {
    local tool=$1 build=$2 runner=$3 scenario=$4 protocol=$5 line
    [ "$runner.nodebug" -nt "$runner" ] || strip --strip-debug -o "$runner.nodebug" "$runner"
    runner=$runner.nodebug
    local cmd="TOOL=$tool RUNNER=$runner scripts/callgrind.sh benches/scenarios/$scenario.json $calls $protocol"
    line=$(TOOL=$tool RUNNER=$runner scripts/callgrind.sh "benches/scenarios/$scenario.json" "$calls" "$protocol" | tail -1)
    jq -nc --arg section "$tool" --arg build "$build" --arg scenario "$scenario" \
        --arg protocol "$protocol" --arg command "$cmd" --argjson value "${line##*: }" \
        '{section: $section, build: $build, scenario: $scenario, protocol: $protocol,
          cpus: "", model: "default", repeat: 0, command: $command, result: {value: $value}}' >>"$results"
    echo "  $tool $build $scenario $protocol: $line"
}

# compare SECTION BUILD RUNNER SCENARIO PROTOCOL CPUS MODEL REPEAT CONNS DEPTHS [RUNNER ARGS]:
# the runner beside the echo floor, replayer, echo and runner all on CPUS.
compare() {
    local section=$1 build=$2 runner=$3 scenario=$4 protocol=$5 cpus=$6 model=$7 rep=$8
    local conns=$9 depths=${10}
    shift 10
    record "$section" "$build" "$scenario" "$protocol" "$cpus" "$model" "$rep" \
        taskset -c "$cpus" "$replay" compare --scenario "benches/scenarios/$scenario.json" \
        --protocol "$protocol" --runner "$runner" --connections "$conns" --depth "$depths" \
        --duration "$duration" --warmup "$warmup" --json "$@"
}

echo "== instructions and allocations per call (valgrind)"
for tool in callgrind dhat; do
    for scenario in trivial realistic; do
        for protocol in capnp flatbuffers; do
            for b in "${builds[@]}"; do
                per_call "$tool" "${b%%=*}" "${b#*=}" "$scenario" "$protocol"
            done
        done
    done
done

rounds=$(( repeat > thread_repeat ? repeat : thread_repeat ))
for rep in $(seq "$rounds"); do
    if [ "$rep" -le "$repeat" ]; then
        echo "== round $rep of $rounds: one CPU, two CPUs, memory"
        for scenario in trivial ip-restriction realistic; do
            for protocol in capnp flatbuffers; do
                for b in "${builds[@]}"; do
                    compare one-cpu "${b%%=*}" "${b#*=}" "$scenario" "$protocol" 1 default \
                        "$rep" "$conns_1cpu" 1 --runner-arg=--workers=1
                done
            done
        done
        for protocol in capnp flatbuffers; do
            for b in "${builds[@]}"; do
                compare two-cpu "${b%%=*}" "${b#*=}" trivial "$protocol" 0,1 default "$rep" 16 1
            done
        done
        for b in "${builds[@]}"; do
            # All the idle connections come from one uid: lift the per-uid cap where the
            # build has one (it defaults to half of --max-connections).
            per_uid=()
            if "${b#*=}" --help | grep -q -- --max-connections-per-uid; then
                per_uid=(--runner-arg=--max-connections-per-uid=$((idle + 100)))
            fi
            record memory "${b%%=*}" realistic capnp 0,1 default "$rep" \
                "$replay" memory --runner "${b#*=}" --confs 1 --idle "$idle" \
                --runner-arg=--max-connections=$((idle + 100)) "${per_uid[@]}" --json
        done
    fi
    if [ "$threads" = 1 ] && [ "$rep" -le "$thread_repeat" ]; then
        echo "== round $rep of $rounds: thread models (current build)"
        for cpus in 1 0,1; do
            workers=1
            [ "$cpus" = 1 ] || workers=2
            for protocol in capnp flatbuffers; do
                for model in work-stealing per-core; do
                    compare threads current target/bench/runner-current trivial "$protocol" \
                        "$cpus" "$model" "$rep" "$thread_conns" "$thread_depths" \
                        --runner-arg=--workers=$workers --runner-arg=--runtime=$model
                done
            done
        done
    fi
done

python3 scripts/bench-report.py "$out" | tee "$out/report.md"
echo "raw results: $results; report: $out/report.md"
