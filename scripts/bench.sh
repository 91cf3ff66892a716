#!/usr/bin/env bash
# Every end-to-end figure in BENCHMARKS.md, in one go: the runner beside the echo floor for the
# trivial and realistic scenarios in both codecs, then memory, then (if valgrind is there)
# instructions per call. Release build; a few minutes. Not part of CI.
#
# Usage: scripts/bench.sh [duration per run, default 3s]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-3s}

cargo build --release --quiet --bin ext-plugin-runner --bin ext-plugin-replay
bin=target/release

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for scenario in trivial realistic; do
    for protocol in capnp flatbuffers; do
        "$bin/ext-plugin-replay" compare --scenario "benches/scenarios/$scenario.json" \
            --protocol "$protocol" --runner "$bin/ext-plugin-runner" \
            --connections 1,4,16 --depth 1,16 --duration "$duration" --warmup 1s
    done
done
"$bin/ext-plugin-replay" memory --runner "$bin/ext-plugin-runner" --confs 10000 --idle 1000
if command -v valgrind >/dev/null; then
    scripts/callgrind.sh benches/scenarios/trivial.json 2000 capnp
    scripts/callgrind.sh benches/scenarios/realistic.json 2000 capnp
fi
