#!/usr/bin/env bash
# The dashboard (GET /node/dashboard) end to end in a real browser: Debian's Chromium, driven by Playwright
# (playwright-core from npm, which uses the system browser: nothing is downloaded besides the npm package), against
# a 1-node sandbox with 2 members (debug build unless SYNOD_BIN_DIR says otherwise). It makes a write and leaves
# one proposal open with one ballot, then tests/dashboard/dashboard.test.mjs checks what the page shows and that its
# explorer verifies the write's receipt in the browser. Screenshots: $(scripts/target-dir.sh)/dashboard/*.png.
# Part of scripts/test.sh; `scripts/setup.sh --test` installs chromium (apt) and playwright-core (npm) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
TARGET="$(./scripts/target-dir.sh)"
BIN="${SYNOD_BIN_DIR:-$TARGET/debug}"
OUT="$TARGET/dashboard"
mkdir -p "$OUT"
W=$(mktemp -d)
SANDBOX_PID=""
cleanup() {
    if [ -n "$SANDBOX_PID" ]; then
        # TERM, not INT: a background job of a script starts with SIGINT ignored, which it cannot trap.
        kill -TERM "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PROFILE_ARG=--debug
[ "$BIN" = "$TARGET/release" ] && PROFILE_ARG=""
./sandbox.sh -n 1 --members 2 --workspace "$W/net" --port "$PORT" $PROFILE_ARG >"$W/sandbox.out" 2>&1 &
SANDBOX_PID=$!
for _ in $(seq 1 1800); do
    grep -q "Synod sandbox is running" "$W/sandbox.out" && break
    kill -0 "$SANDBOX_PID" 2>/dev/null || { cat "$W/sandbox.out" >&2; exit 1; }
    sleep 0.1
done
grep -q "Synod sandbox is running" "$W/sandbox.out" || { echo "check-dashboard: sandbox did not start" >&2; exit 1; }
export SYNOD_NETWORK="$W/net/network.json"
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
TX_ID=$("$BIN/synod" --json call -X POST /app/log/public --data '{"id": 1, "msg": "dashboard"}' --wait \
    | json_field '["transaction_id"]')
# An open proposal with one of the two ballots it needs.
OPEN_PROPOSAL=$("$BIN/synod-gov" --network "$SYNOD_NETWORK" --member member0 --json propose --action trigger_snapshot --args '{}' \
    | json_field '["proposalId"]')
"$BIN/synod-gov" --network "$SYNOD_NETWORK" --member member0 --json vote "$OPEN_PROPOSAL" --accept >/dev/null
SYNOD_URL="https://127.0.0.1:$PORT" TX_ID="$TX_ID" OPEN_PROPOSAL="$OPEN_PROPOSAL" OUT_DIR="$OUT" \
    USER_CERT="$W/net/user0_cert.pem" USER_KEY="$W/net/user0_privk.pem" \
    timeout 300 node tests/dashboard/dashboard.test.mjs
