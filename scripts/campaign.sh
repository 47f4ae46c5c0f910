#!/usr/bin/env bash
# Fault campaigns on real processes (priority 7): runs tests/tests/campaign.rs with seeds FIRST..FIRST+N-1
# (default 1..10) and CAMPAIGN_ROUNDS faults each (default 6), on the debug binaries; stops at the first failing
# seed and prints it.
#
#   scripts/campaign.sh [N] [ROUNDS] [FIRST]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10}"
ROUNDS="${2:-6}"
FIRST="${3:-1}"
cargo build -q --workspace --bins
cargo test -q -p synod-tests --test campaign --no-run
for ((seed = FIRST; seed < FIRST + N; seed++)); do
    if ! out=$(CAMPAIGN_SEED=$seed CAMPAIGN_ROUNDS=$ROUNDS cargo test -q -p synod-tests --test campaign -- --nocapture 2>&1); then
        echo "$out" | tail -40
        echo "campaign: seed $seed FAILED (replay: CAMPAIGN_SEED=$seed CAMPAIGN_ROUNDS=$ROUNDS cargo test -p synod-tests --test campaign -- --nocapture)"
        exit 1
    fi
    echo "$out" | grep '^campaign seed'
done
echo "campaign: $N campaigns of $ROUNDS faults, 0 violations"
