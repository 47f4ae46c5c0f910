#!/usr/bin/env bash
# Property-based run of the HTTP API against its own OpenAPI documents (schemathesis, from PyPI): one node (debug
# build unless SYNOD_BIN_DIR says otherwise), every operation of /node/api, /gov/api and /app/api fed generated
# requests as a user; fails if any answer is a 5xx or the node stops. Part of scripts/test.sh.
#
#   scripts/check-api.sh [--examples N]      (default 25 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=25
while (($#)); do
    case "$1" in
        --examples) EXAMPLES="$2"; shift 2 ;;
        *) echo "check-api: unknown option $1" >&2; exit 2 ;;
    esac
done
if ! command -v st >/dev/null || ! python3 -c 'import schemathesis' 2>/dev/null; then
    echo "check-api: installing schemathesis" >&2
    python3 -m pip install -q schemathesis 2>/dev/null || python3 -m pip install -q --break-system-packages schemathesis
fi
BIN="${SYNOD_BIN_DIR:-$(./scripts/target-dir.sh)/debug}"
W=$(mktemp -d)
NODE_PID=""
cleanup() {
    [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/synod" keygen --name user0 --out "$W" >/dev/null
"$BIN/synod-node" start --data-dir "$W/n0" --rpc-address "127.0.0.1:$PORT" --user-cert "$W/user0_cert.pem" \
    >"$W/n0.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 300); do
    [ -f "$W/n0/rpc_address" ] && break
    kill -0 "$NODE_PID" 2>/dev/null || { cat "$W/n0.log" >&2; exit 1; }
    sleep 0.1
done
for doc in node gov app; do
    if ! timeout 600 st run "https://127.0.0.1:$PORT/$doc/api" --tls-verify "$W/n0/service_cert.pem" \
        --request-cert "$W/user0_cert.pem" --request-cert-key "$W/user0_privk.pem" \
        -c not_a_server_error -n "$EXAMPLES" --workers 2 --seed 1 >"$W/st-$doc.out" 2>&1; then
        cat "$W/st-$doc.out" >&2
        echo "check-api: /$doc/api: a generated request got a server error (above)" >&2
        exit 1
    fi
    echo "check-api: /$doc/api: $(grep -Eo '[0-9]+ generated, [0-9]+ passed' "$W/st-$doc.out" | tail -1), no 5xx"
done
kill -0 "$NODE_PID" 2>/dev/null || { echo "check-api: the node stopped" >&2; tail -20 "$W/n0.log" >&2; exit 1; }
