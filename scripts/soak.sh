#!/usr/bin/env bash
# A bounded soak under attack (tests/tests/soak.rs): a 3-node network keeps committing a client's writes while an
# attacker holds thousands of half-open and idle TLS connections to every node and floods them with forged joins.
# Prints one line of figures (writes/s, longest gap, descriptors, RSS, ledger bytes, Pending records).
#
#   scripts/soak.sh [SECS] [CONNECTIONS_PER_NODE_AND_KIND] [FORGED_JOINERS]      (defaults: 60 1500 8)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export SOAK_SECS="${1:-60}" SOAK_CONNECTIONS="${2:-1500}" SOAK_JOINERS="${3:-8}"
cargo build -q --release --workspace --bins
cargo test -q --release -p synod-tests --test soak -- --nocapture 2>&1 | grep -E '^soak:|panicked|Error|test result'
