#!/usr/bin/env bash
# The same load against the native logging app and the JavaScript logging bundle (js-apps/logging) on a 3-node
# sandbox (release build, one member deploys the bundle by vote), clients at the primary: prints committed
# writes/s, p50, p99 of both and the ratio JS ÷ native (`synod-load --compare`).
#
#   scripts/bench-js.sh [--clients 32] [--requests 20000] [--value-bytes 64] [--keys 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CLIENTS=32 REQUESTS=20000 VALUE_BYTES=64 KEYS=10000
while (($#)); do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --value-bytes) VALUE_BYTES="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-js: unknown option $1" >&2; exit 2 ;;
    esac
done
W="$ROOT/target/bench-js"
rm -rf "$W"
mkdir -p "$W"
./sandbox.sh --workspace "$W" --port 8900 --js-app js-apps/logging >"$W/sandbox.out" 2>&1 &
SANDBOX=$!
trap 'kill -TERM $SANDBOX 2>/dev/null || true; wait $SANDBOX 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 1800); do
    grep -q "is running" "$W/sandbox.out" 2>/dev/null && break
    kill -0 $SANDBOX 2>/dev/null || { cat "$W/sandbox.out" >&2; exit 1; }
    sleep 0.2
done
grep -q "is running" "$W/sandbox.out" || { echo "bench-js: the sandbox did not start" >&2; exit 1; }
LOAD="$ROOT/target/release/synod-load"
PRIMARY=$(curl -s --cacert "$W/service_cert.pem" https://127.0.0.1:8900/node/primary |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
common=(--url "$PRIMARY" --service-cert "$W/service_cert.pem" --cert "$W/user0_cert.pem" --key "$W/user0_privk.pem"
    --clients "$CLIENTS" --requests "$REQUESTS" --value-bytes "$VALUE_BYTES" --keys "$KEYS" --json)
timeout 600 "$LOAD" "${common[@]}" --path /app/log/private --label native >"$W/native.json"
timeout 600 "$LOAD" "${common[@]}" --path /app/js/log/private --label js >"$W/js.json"
echo "Native vs JavaScript logging app, 3 nodes on 127.0.0.1, clients at the primary:"
"$LOAD" --compare "$W/js.json" "$W/native.json"
