#!/usr/bin/env bash
# Starts a Synod network on this machine (127.0.0.1 only) and prints how to use it. Ctrl-C stops every node it
# started; running it again on the same workspace resumes the same network from disk.
#
#   ./sandbox.sh [--workspace DIR] [--port PORT] [--debug] [--verbose]
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"

WORKSPACE="$ROOT/workspace"
PORT=8000
PROFILE=release
VERBOSE=0
NODES=1
usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "  --workspace DIR  where keys, node data and network.json go (default ./workspace)"
    echo "  --port PORT      HTTPS port of the first node (default 8000)"
    echo "  --debug          use a debug build (faster to build, slower to run)"
    echo "  --verbose        node logs at debug level"
}
while (($#)); do
    case "$1" in
        --workspace) WORKSPACE="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        --verbose) VERBOSE=1; shift ;;
        -n)
            if [ "$2" != 1 ]; then
                echo "sandbox: only single-node networks are available until replication lands" >&2
                exit 2
            fi
            shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "sandbox: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
mkdir -p "$WORKSPACE"
WORKSPACE="$(cd "$WORKSPACE" && pwd)"

./scripts/setup.sh
echo "sandbox: building ($PROFILE)..." >&2
if [ "$PROFILE" = release ]; then
    cargo build -q --release -p synod-node -p synod-client --bins
else
    cargo build -q -p synod-node -p synod-client --bins
fi
BIN="$ROOT/target/$PROFILE"

for who in user0 member0; do
    if [ ! -f "$WORKSPACE/${who}_cert.pem" ]; then
        "$BIN/synod" keygen --name "$who" --out "$WORKSPACE" >/dev/null
    fi
done

PIDS=()
stop() {
    trap - INT TERM EXIT
    if ((${#PIDS[@]})); then
        echo "sandbox: stopping ${#PIDS[@]} node(s)" >&2
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
}
trap stop INT TERM EXIT

LOG_LEVEL=info
((VERBOSE)) && LOG_LEVEL=debug
NODES_JSON=""
for ((i = 0; i < NODES; i++)); do
    name="n$i"
    dir="$WORKSPACE/$name"
    mkdir -p "$dir"
    rm -f "$dir/rpc_address"
    RUST_LOG="$LOG_LEVEL" "$BIN/synod-node" start --data-dir "$dir" --node-name "$name" \
        --rpc-address "127.0.0.1:$((PORT + i))" \
        --user-cert "$WORKSPACE/user0_cert.pem" --member-cert "$WORKSPACE/member0_cert.pem" \
        >>"$WORKSPACE/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 300); do
        [ -f "$dir/rpc_address" ] && break
        if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
            echo "sandbox: node $name failed to start; last log lines:" >&2
            tail -n 20 "$WORKSPACE/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    [ -f "$dir/rpc_address" ] || { echo "sandbox: node $name did not start within 30 s" >&2; exit 1; }
    NODES_JSON+="${NODES_JSON:+,}{\"name\":\"$name\",\"url\":\"https://$(cat "$dir/rpc_address")\",\"data_dir\":\"$dir\"}"
done
cp "$WORKSPACE/n0/service_cert.pem" "$WORKSPACE/service_cert.pem"
cat >"$WORKSPACE/network.json.tmp" <<JSON
{
  "nodes": [$NODES_JSON],
  "service_cert": "$WORKSPACE/service_cert.pem",
  "users": [{"name": "user0", "cert": "$WORKSPACE/user0_cert.pem", "key": "$WORKSPACE/user0_privk.pem"}],
  "members": [{"name": "member0", "cert": "$WORKSPACE/member0_cert.pem", "key": "$WORKSPACE/member0_privk.pem"}]
}
JSON
mv "$WORKSPACE/network.json.tmp" "$WORKSPACE/network.json"

URL="https://$(cat "$WORKSPACE/n0/rpc_address")"
W="$WORKSPACE"
cat <<EOT

Synod sandbox is running ($NODES node(s)), logs in $W/n*.log
  node n0          $URL
  service cert     $W/service_cert.pem
  user0            $W/user0_cert.pem  $W/user0_privk.pem
  network.json     $W/network.json   (the synod CLI reads it by default)

Try:
  curl --cacert $W/service_cert.pem --cert $W/user0_cert.pem --key $W/user0_privk.pem \\
       -X POST $URL/app/log/private -H 'content-type: application/json' -d '{"id": 42, "msg": "hello"}' -i
  curl --cacert $W/service_cert.pem --cert $W/user0_cert.pem --key $W/user0_privk.pem "$URL/app/log/private?id=42"
  curl --cacert $W/service_cert.pem "$URL/node/commit"

  export PATH="$BIN:\$PATH" SYNOD_NETWORK=$W/network.json
  synod call -X POST /app/log/public --data '{"id": 1, "msg": "hi"}' --wait
  synod receipt get <transaction_id> --out receipt.json
  synod receipt verify receipt.json --service-cert $W/service_cert.pem
  synod ledger audit $W/n0/ledger --service-cert $W/service_cert.pem
  synod-load --clients 32 --requests 20000      # benchmark

Press Ctrl-C to stop the network.
EOT
wait "${PIDS[@]}"
