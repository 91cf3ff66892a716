#!/usr/bin/env bash
# Regenerates src/proto/ext_plugin_capnp.rs from schema/ext_plugin.capnp. Needs the `capnp`
# schema compiler (Debian: apt-get install capnproto). The generation itself is build.rs's,
# asked to write the checked-in file; see docs/building.md.
#
# Usage: scripts/regen-capnp.sh           rewrite the file (then commit it with the schema)
#        scripts/regen-capnp.sh --check   also fail if that changed the file (CI: drift check)
set -euo pipefail
cd "$(dirname "$0")/.."
file=src/proto/ext_plugin_capnp.rs

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if ! version=$(capnp --version 2>/dev/null); then
    echo "error: no capnp binary on PATH; install it (Debian: apt-get install capnproto)" >&2
    exit 1
fi

# A new value every run, so cargo reruns build.rs even if nothing else changed.
EXT_PLUGIN_RUNNER_REGEN_CAPNP="$(date +%s%N)" cargo check --quiet -p ext-plugin-runner --lib

if $check; then
    git ls-files --error-unmatch "$file" >/dev/null
    if ! git diff --exit-code -- "$file"; then
        committed=$(git show ":$file" | sed -n 's|^// capnp binary version: ||p')
        echo "error: $file is not what schema/ext_plugin.capnp generates (${version}; the" \
            "checked-in file is from capnp ${committed:-unknown}). Run scripts/regen-capnp.sh" \
            "and commit the result." >&2
        exit 1
    fi
fi
