#!/usr/bin/env bash
# A node joining a service of N keys (default 1,000,000) from its newest committed snapshot (priority 6), on
# release binaries: prints how long the joiner took from its trust vote to serving and to reading the newest key.
# The same test runs on debug binaries in CI (tests/tests/join_large.rs); only this run's times mean anything.
#
#   scripts/bench-join.sh [--keys 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=1000000
while (($#)); do
    case "$1" in
        --keys) KEYS="$2"; shift 2 ;;
        -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-join: unknown option $1" >&2; exit 2 ;;
    esac
done
./scripts/setup.sh
cargo build -q --release -p synod-node -p synod-client -p synod-governance --bins
SYNOD_BIN_DIR="$(./scripts/target-dir.sh)/release" SYNOD_JOIN_KEYS="$KEYS" \
    cargo test -q -p synod-tests --test join_large -- --nocapture 2>&1 | grep -E '^join:|panicked|Error|FAILED'
