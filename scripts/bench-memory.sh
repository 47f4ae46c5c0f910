#!/usr/bin/env bash
# Memory and restart against ledger length (priority 6): one node (development mode, release build) takes writes
# on a fixed key space, so its live state does not grow; after each step the node's RSS is printed. At the end the
# node is restarted: time until it serves, RSS after the restart, and the latency of a receipt for the ledger's
# first user transaction.
#
#   scripts/bench-memory.sh [--steps 100000,1000000,5000000] [--keys 10000] [--clients 32] [--workdir DIR]
#
# SYNOD_BIN=DIR runs the synod-node, synod and synod-load in DIR instead of building them (to compare builds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
STEPS="100000,1000000"
KEYS=10000
CLIENTS=32
W="$ROOT/target/bench-memory"
while (($#)); do
    case "$1" in
        --steps) STEPS="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --workdir) W="$2"; shift 2 ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-memory: unknown option $1" >&2; exit 2 ;;
    esac
done
./scripts/setup.sh
if [ -n "${SYNOD_BIN:-}" ]; then
    BIN="$(cd "$SYNOD_BIN" && pwd)"
else
    cargo build -q --release -p synod-node -p synod-client --bins
    BIN="$(./scripts/target-dir.sh)/release"
fi
rm -rf "$W"
mkdir -p "$W"
log() { echo "bench-memory: $*" >&2; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/synod" keygen --name user0 --out "$W" >/dev/null
NODE_PID=""
cleanup() { [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
start_node() {
    rm -f "$W/n0/rpc_address"
    "$BIN/synod-node" start --data-dir "$W/n0" --rpc-address "127.0.0.1:$PORT" --user-cert "$W/user0_cert.pem" \
        >>"$W/n0.log" 2>&1 &
    NODE_PID=$!
    local t0 t1
    t0=$(date +%s.%N)
    until [ -f "$W/n0/rpc_address" ]; do
        kill -0 "$NODE_PID" 2>/dev/null || { tail -20 "$W/n0.log" >&2; exit 1; }
        sleep 0.01
    done
    until curl -sf --cacert "$W/n0/service_cert.pem" "https://127.0.0.1:$PORT/node/commit" >/dev/null 2>&1; do
        sleep 0.01
    done
    t1=$(date +%s.%N)
    STARTUP_S=$(python3 -c "print('%.2f' % ($t1 - $t0))")
}
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$NODE_PID/status"; }
start_node
cp "$W/n0/service_cert.pem" "$W/service_cert.pem"
cat >"$W/network.json" <<JSON
{"nodes": [{"name": "n0", "url": "https://127.0.0.1:$PORT"}], "service_cert": "$W/service_cert.pem",
 "users": [{"name": "user0", "cert": "$W/user0_cert.pem", "key": "$W/user0_privk.pem"}], "members": []}
JSON
log "idle: RSS $(rss_mb) MB"
done_writes=0
IFS=',' read -r -a targets <<<"$STEPS"
for target in "${targets[@]}"; do
    n=$((target - done_writes))
    ((n > 0)) || continue
    "$BIN/synod-load" --network "$W/network.json" --clients "$CLIENTS" --requests "$n" --keys "$KEYS" \
        --seed "$target" --duration-s 36000 --json >"$W/load-$target.json"
    done_writes=$target
    rate=$(python3 -c "import json; print(json.load(open('$W/load-$target.json'))['committed_writes_per_s'])")
    log "after $target writes: RSS $(rss_mb) MB, ledger $(du -sm "$W/n0/ledger" | cut -f1) MB ($rate committed writes/s in this step)"
done
WAL_MB=$(du -cm "$W"/n0/db/*.log 2>/dev/null | tail -1 | cut -f1)
kill "$NODE_PID"
wait "$NODE_PID" 2>/dev/null || true
start_node
log "restart with $done_writes writes in the ledger ($WAL_MB MB of RocksDB write-ahead log): serving after $STARTUP_S s, RSS $(rss_mb) MB"
first=$(curl -s --cacert "$W/service_cert.pem" --cert "$W/user0_cert.pem" --key "$W/user0_privk.pem" \
    "https://127.0.0.1:$PORT/app/log/private?id=0" -o /dev/null -w '%{http_code}')
t0=$(date +%s.%N)
code=$(curl -s --cacert "$W/service_cert.pem" --cert "$W/user0_cert.pem" --key "$W/user0_privk.pem" \
    "https://127.0.0.1:$PORT/app/receipt?transaction_id=1.2" -o "$W/receipt.json" -w '%{http_code}')
t1=$(date +%s.%N)
log "receipt for 1.2 (genesis, the ledger's first transaction): HTTP $code in $(python3 -c "print('%.1f' % (($t1 - $t0) * 1000))") ms (read probe $first)"
