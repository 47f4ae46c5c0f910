#!/usr/bin/env bash
# The same load against the native logging app and the JavaScript logging bundle (js-apps/logging) on a 3-node
# sandbox (release build, one member deploys the bundle by vote), clients at the primary: prints committed
# writes/s, p50, p99 of both and the ratio JS ÷ native (`synod-load --compare`), for each round and the median.
# Rounds alternate which app goes first (this 2-core machine is noisy: one pair of runs varies by ±20%).
#
#   scripts/bench-js.sh [--rounds 3] [--clients 32] [--requests 20000] [--value-bytes 64] [--keys 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
ROUNDS=3 CLIENTS=32 REQUESTS=20000 VALUE_BYTES=64 KEYS=10000
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --value-bytes) VALUE_BYTES="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        -h | --help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-js: unknown option $1" >&2; exit 2 ;;
    esac
done
# sandbox.sh runs the binaries in ./target: a build elsewhere would leave it running stale ones.
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "$(realpath -m "$CARGO_TARGET_DIR")" != "$(realpath -m "$ROOT/target")" ]; then
    echo "bench-js: CARGO_TARGET_DIR is not ./target, whose binaries sandbox.sh runs; unset it (or link ./target to it)" >&2
    exit 2
fi
# Built here, so that the sandbox's own build is a no-op and its start is not timed out by a long build.
echo "bench-js: building (release)..." >&2
cargo build -q --release -p synod-node -p synod-client -p synod-governance --bins
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
LOAD="$(./scripts/target-dir.sh)/release/synod-load"
PRIMARY=$(curl -s --cacert "$W/service_cert.pem" https://127.0.0.1:8900/node/primary |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
common=(--url "$PRIMARY" --service-cert "$W/service_cert.pem" --cert "$W/user0_cert.pem" --key "$W/user0_privk.pem"
    --clients "$CLIENTS" --requests "$REQUESTS" --value-bytes "$VALUE_BYTES" --keys "$KEYS" --json)
run() { # label path round
    timeout 600 "$LOAD" "${common[@]}" --path "$2" --label "$1" >"$W/$1-$3.json"
}
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        run native /app/log/private "$r"
        run js /app/js/log/private "$r"
    else
        run js /app/js/log/private "$r"
        run native /app/log/private "$r"
    fi
    echo "Round $r of $ROUNDS: native vs JavaScript logging app, 3 nodes on 127.0.0.1, clients at the primary:"
    "$LOAD" --compare "$W/js-$r.json" "$W/native-$r.json"
done
python3 - "$W" "$ROUNDS" <<'PY'
import json, statistics, sys
w, rounds = sys.argv[1], int(sys.argv[2])
rate = lambda label, r: json.load(open(f"{w}/{label}-{r}.json"))["committed_writes_per_s"]
js = [rate("js", r) for r in range(1, rounds + 1)]
native = [rate("native", r) for r in range(1, rounds + 1)]
ratios = [j / n for j, n in zip(js, native)]
print(f"rounds: js/native {', '.join(f'{x:.2f}x' for x in ratios)}; median {statistics.median(ratios):.2f}x "
      f"(median writes/s: js {statistics.median(js):.0f}, native {statistics.median(native):.0f})")
PY
