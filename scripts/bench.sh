#!/usr/bin/env bash
# Synod (3 nodes) against etcd 3.4 (3 members), same load: builds the release binaries, starts a 3-node Synod
# network on 127.0.0.1, runs synod-load against it (clients spread over the 3 nodes, then all on the primary),
# stops it, starts a 3-member etcd cluster (scripts/etcd-cluster.sh), runs synod-load against it with the same
# parameters (clients spread over the 3 members, then all on the leader), stops it, and prints committed writes/s,
# p50, p99 of each and the ratios Synod ÷ etcd, like for like (`synod-load --compare`). Only one system runs at a
# time; both fsync as in production (their defaults).
#
#   scripts/bench.sh [--clients 32] [--requests 20000] [--value-bytes 64] [--keys 10000] [--workspace DIR]
#                    [--synod-only | --etcd-only] [--wait-commit] [--rounds 1]
#
# --rounds N: N rounds, each a fresh Synod network then a fresh etcd cluster (data of round r in DIR/round-r,
# summaries NAME-rR.json), and a summary over the rounds: this 2-core VM's speed changes by a third within minutes,
# so Synod and etcd measured minutes apart can differ by the machine alone; interleaved rounds pair each Synod
# run with the etcd run next to it, and the median of the pairs' ratios says what one pair cannot.
#
# etcd is measured through its native gRPC API (ETCD_TARGET=etcd: through its HTTP/JSON gateway, as before);
# Synod's report includes commit latency (send to Committed), etcd's is its put latency.
#
# --wait-commit: each client waits until its write is Committed before its next one (synod-load --wait-commit),
# as a client that needs durability does and as etcd's clients do (a put answers once committed).
# SYNOD_NODE_ARGS adds flags to every Synod node (e.g. "--sig-ms-interval 5" to compare signature settings).
# SYNOD_BIN=DIR runs the synod-node, synod and synod-load found in DIR instead of building them (to compare two builds
# over alternating runs: copy each build's release binaries aside first).
# Defaults can also be set with CLIENTS, REQUESTS, VALUE_BYTES, KEYS, BENCH_WORKSPACE. LOAD_TIMEOUT_S (default 600)
# bounds each synod-load run. The workspace (default target/bench, emptied first) keeps data, logs and the --json
# summaries (synod-spread.json, synod-primary.json, etcd-spread.json, etcd-leader.json).
# With --rounds, each pair is checked against issue 11's goal: Synod >= 2x etcd's committed writes/s at a commit
# p99 <= etcd's p99, with Synod's ack p99 <= 5x its ack p50.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CLIENTS="${CLIENTS:-32}"
REQUESTS="${REQUESTS:-20000}"
VALUE_BYTES="${VALUE_BYTES:-64}"
KEYS="${KEYS:-10000}"
LOAD_TIMEOUT_S="${LOAD_TIMEOUT_S:-600}"
WORKSPACE="${BENCH_WORKSPACE:-}"
RUN_SYNOD=1
RUN_ETCD=1
WAIT_COMMIT=0
ROUNDS="${ROUNDS:-1}"
usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --value-bytes) VALUE_BYTES="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        --workspace) WORKSPACE="$2"; shift 2 ;;
        --synod-only) RUN_ETCD=0; shift ;;
        --wait-commit) WAIT_COMMIT=1; shift ;;
        --etcd-only) RUN_SYNOD=0; shift ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in CLIENTS REQUESTS VALUE_BYTES KEYS LOAD_TIMEOUT_S ROUNDS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "bench: $v must be a number, not '${!v}'" >&2; exit 2; }
done
((ROUNDS >= 1)) || { echo "bench: --rounds must be at least 1" >&2; exit 2; }

log() { echo "bench: $*" >&2; }

if [ -z "$WORKSPACE" ]; then
    WORKSPACE="$ROOT/target/bench"
    rm -rf "$WORKSPACE"
elif [ -e "$WORKSPACE" ] && [ -n "$(ls -A "$WORKSPACE")" ]; then
    echo "bench: workspace $WORKSPACE is not empty" >&2
    exit 2
fi
mkdir -p "$WORKSPACE"
W="$(cd "$WORKSPACE" && pwd)"
# D: where the current round's servers keep their data and logs (the workspace itself for a single round).
D="$W"

./scripts/setup.sh
# etcd is driven through its native gRPC API (synod-load's etcd-grpc feature, which needs protoc to build);
# ETCD_TARGET=etcd measures its HTTP/JSON gateway instead.
ETCD_TARGET="${ETCD_TARGET:-etcd-grpc}"
if [ "$ETCD_TARGET" = etcd-grpc ] && ! command -v protoc >/dev/null; then
    log "installing protobuf-compiler (protoc, for etcd's gRPC client)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi
if [ -n "${SYNOD_BIN:-}" ]; then
    BIN="$(cd "$SYNOD_BIN" && pwd)"
    for b in synod-node synod synod-load; do
        [ -x "$BIN/$b" ] || { echo "bench: SYNOD_BIN=$SYNOD_BIN holds no $b" >&2; exit 2; }
    done
else
    log "building release binaries (waits if another cargo holds the lock)..."
    cargo build -q --release -p synod-node --bins
    cargo build -q --release -p synod-client --bins --features etcd-grpc
    BIN="$(./scripts/target-dir.sh)/release"
fi

SYNOD_PIDS=()
ETCD_STARTED=0
stop_synod() {
    ((${#SYNOD_PIDS[@]})) || return 0
    log "stopping ${#SYNOD_PIDS[@]} Synod node(s)"
    kill -TERM "${SYNOD_PIDS[@]}" 2>/dev/null || true
    for _ in $(seq 1 200); do
        local alive=0 pid
        for pid in "${SYNOD_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    kill -KILL "${SYNOD_PIDS[@]}" 2>/dev/null || true
    wait "${SYNOD_PIDS[@]}" 2>/dev/null || true
    SYNOD_PIDS=()
}
stop_etcd() {
    ((ETCD_STARTED)) || return 0
    ./scripts/etcd-cluster.sh stop "$D/etcd" || true
    ETCD_STARTED=0
}
LOAD_PID=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$LOAD_PID" ]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    stop_synod
    stop_etcd
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free TCP ports on 127.0.0.1 (held open together, so they are distinct).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# GET a JSON document from a Synod node and print the value at a Python expression over it (`d`), or nothing.
synod_json() {
    local url="$1" expr="$2"
    curl -fsS --max-time 5 --cacert "$D/service_cert.pem" "$url" 2>/dev/null |
        python3 -c "import json, sys; d = json.load(sys.stdin); print($expr)" 2>/dev/null || true
}

LOAD_ARGS=(--clients "$CLIENTS" --requests "$REQUESTS" --value-bytes "$VALUE_BYTES" --keys "$KEYS"
    --duration-s "$LOAD_TIMEOUT_S" --json)
((WAIT_COMMIT)) && LOAD_ARGS+=(--wait-commit)

# CPU seconds (user + system) used so far by the processes SERVER_PIDS names.
SERVER_PIDS=()
server_cpu_s() {
    local pid ticks=0
    for pid in "${SERVER_PIDS[@]}"; do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields 14 and 15 (utime, stime) counted after the ")" that ends the command name.
        ticks=$((ticks + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# run_load NAME ARGS...: one synod-load run, its --json summary in $W/NAME.json; also reports the CPU time the
# servers (SERVER_PIDS) used during the run, per write.
run_load() {
    local name="$1"
    shift
    log "synod-load $name: ${LOAD_ARGS[*]} $*"
    local rc=0 cpu_before cpu_after
    cpu_before="$(server_cpu_s)"
    # In the background so that Ctrl-C interrupts `wait` at once (cleanup then stops the run).
    timeout --kill-after=10 "$((LOAD_TIMEOUT_S + 120))" \
        "$BIN/synod-load" "${LOAD_ARGS[@]}" --label "$name" "$@" >"$W/$name.json" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    cpu_after="$(server_cpu_s)"
    if ((rc != 0)); then
        log "synod-load $name exited with $rc"
        [ -s "$W/$name.json" ] || { rm -f "$W/$name.json"; return 1; }
    fi
    python3 -c "import json, sys, time; d = json.load(open(sys.argv[1])); cpu = float(sys.argv[4]) - float(sys.argv[3]); \
ok = d['requests'] - d['errors']; \
print('bench: %s: %s committed writes/s, p50 %.3f ms, p99 %.3f ms, %d errors; servers used %.2f CPU s in %.2f s \
(%.0f us per write)%s' % (sys.argv[2], d['committed_writes_per_s'], d['p50_ms'], d['p99_ms'], d['errors'], cpu, \
d['elapsed_s'], 1e6 * cpu / max(ok, 1), \
'' if d.get('commit_stall_ms') is None else '; longest commit stall %.1f ms, from %s UTC' % (d['commit_stall_ms'], \
time.strftime('%H:%M:%S', time.gmtime(d['commit_stall_at_unix_ms'] / 1000)) + '.%03d' % (d['commit_stall_at_unix_ms'] % 1000))))" \
        "$W/$name.json" "$name" "$cpu_before" "$cpu_after" >&2
}

# bench_synod SUFFIX: a fresh 3-node Synod network in $D, the spread and primary runs (NAME$SUFFIX), stopped.
bench_synod() {
    local sfx="$1"
    read -r -a PORTS <<<"$(free_ports 6)"
    # A service without members (development mode) opens at once and trusts joining nodes that present the join
    # token n0 wrote: enough for a benchmark (with members, ./sandbox.sh shows the governed way).
    "$BIN/synod" keygen --name user0 --out "$D" >/dev/null
    NODES_JSON=""
    for i in 0 1 2; do
        dir="$D/n$i"
        mkdir -p "$dir"
        common=(--data-dir "$dir" --node-name "n$i" --rpc-address "127.0.0.1:${PORTS[$i]}"
            --node-address "127.0.0.1:${PORTS[$((i + 3))]}")
        read -r -a extra <<<"${SYNOD_NODE_ARGS:-}"
        common+=("${extra[@]}")
        if ((i == 0)); then
            RUST_LOG=info "$BIN/synod-node" start "${common[@]}" \
                --user-cert "$D/user0_cert.pem" >>"$D/n$i.log" 2>&1 &
        else
            RUST_LOG=info "$BIN/synod-node" join "${common[@]}" \
                --target "https://127.0.0.1:${PORTS[0]}" --service-cert "$D/service_cert.pem" \
                --join-token-file "$D/n0/join_token" \
                >>"$D/n$i.log" 2>&1 &
        fi
        SYNOD_PIDS+=($!)
        for _ in $(seq 1 600); do
            [ -f "$dir/rpc_address" ] && break
            if ! kill -0 "${SYNOD_PIDS[-1]}" 2>/dev/null; then
                log "node n$i exited during start-up; last log lines:"
                tail -n 20 "$D/n$i.log" >&2
                exit 1
            fi
            sleep 0.1
        done
        [ -f "$dir/rpc_address" ] || { log "node n$i did not listen within 60 s"; tail -n 20 "$D/n$i.log" >&2; exit 1; }
        ((i == 0)) && cp "$D/n0/service_cert.pem" "$D/service_cert.pem"
        NODES_JSON+="${NODES_JSON:+,}{\"name\":\"n$i\",\"url\":\"https://127.0.0.1:${PORTS[$i]}\",\"data_dir\":\"$dir\"}"
    done
    cat >"$D/network.json" <<JSON
{
  "nodes": [$NODES_JSON],
  "service_cert": "$D/service_cert.pem",
  "users": [{"name": "user0", "cert": "$D/user0_cert.pem", "key": "$D/user0_privk.pem"}],
  "members": []
}
JSON
    # Joining nodes start as learners and are promoted once caught up: wait for 3 voters and one primary.
    PRIMARY=""
    deadline=$((SECONDS + 120))
    while :; do
        PRIMARY=""
        for i in 0 1 2; do
            if [ "$(synod_json "https://127.0.0.1:${PORTS[$i]}/node/primary" "d.get('is_this_node')")" = True ]; then
                PRIMARY="n$i"
                PRIMARY_URL="https://127.0.0.1:${PORTS[$i]}"
            fi
        done
        if [ -n "$PRIMARY" ]; then
            voters="$(synod_json "$PRIMARY_URL/node/consensus" \
                "'%d %d' % (len(d['details'].get('voters') or []), len(d['details'].get('learners') or []))")"
            [ "$voters" = "3 0" ] && break
        fi
        ((SECONDS < deadline)) || { log "no 3-voter Synod network within 120 s (primary '$PRIMARY', voters/learners '${voters:-}')"; exit 1; }
        sleep 0.2
    done
    log "Synod: 3 voters, primary $PRIMARY ($PRIMARY_URL); data and logs in $D"
    export SYNOD_NETWORK="$D/network.json"
    SERVER_PIDS=("${SYNOD_PIDS[@]}")
    run_load "synod-spread$sfx" --spread || true
    run_load "synod-primary$sfx" --node "$PRIMARY" || true
    after="$(synod_json "$PRIMARY_URL/node/primary" "d.get('is_this_node')")"
    [ "$after" = True ] || log "warning: $PRIMARY is no longer primary after the runs (an election happened)"
    stop_synod
}

# bench_etcd SUFFIX: a fresh 3-member etcd cluster in $D/etcd, the spread and leader runs (NAME$SUFFIX), stopped.
bench_etcd() {
    local sfx="$1"
    ETCD_STARTED=1
    ENDPOINTS="$(./scripts/etcd-cluster.sh start "$D/etcd")"
    log "etcd: endpoints $ENDPOINTS; data and logs in $D/etcd"
    SERVER_PIDS=()
    for f in "$D"/etcd/m*.pid; do SERVER_PIDS+=("$(cat "$f")"); done
    run_load "etcd-spread$sfx" --target "$ETCD_TARGET" --etcd-endpoints "$ENDPOINTS" || true
    # The leader: the member whose id is the leader id it reports (the gateway writes uint64s as strings).
    LEADER=""
    for ep in ${ENDPOINTS//,/ }; do
        is_leader="$(curl -fsS --max-time 5 -X POST "$ep/v3/maintenance/status" -d '{}' |
            python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["leader"] == d["header"]["member_id"])' \
            2>/dev/null || true)"
        [ "$is_leader" = True ] && LEADER="$ep"
    done
    if [ -n "$LEADER" ]; then
        run_load "etcd-leader$sfx" --target "$ETCD_TARGET" --etcd-endpoints "$LEADER" || true
    else
        log "warning: no etcd member says it is the leader; skipping the leader-only run"
    fi
    # Sanity check: the keys are in etcd (count of keys under log/).
    count="$(curl -fsS --max-time 5 -X POST "${ENDPOINTS%%,*}/v3/kv/range" \
        -d "{\"key\": \"$(printf 'log/' | base64)\", \"range_end\": \"$(printf 'log0' | base64)\", \"count_only\": true}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo '?')"
    log "etcd holds $count keys under log/"
    stop_etcd
}

for r in $(seq 1 "$ROUNDS"); do
    SFX=""
    if ((ROUNDS > 1)); then
        SFX="-r$r"
        D="$W/round-$r"
        mkdir -p "$D"
        log "round $r of $ROUNDS"
    fi
    if ((RUN_SYNOD)); then bench_synod "$SFX"; fi
    if ((RUN_ETCD)); then bench_etcd "$SFX"; fi
done

# compare TITLE SYNOD_RUN ETCD_RUN: the side-by-side table and the ratio, if both runs produced a summary.
compare() {
    local title="$1" a="$W/$2.json" b="$W/$3.json"
    [ -s "$a" ] && [ -s "$b" ] || return 0
    echo "$title"
    "$BIN/synod-load" --compare "$a" "$b" || log "$2 and $3 are not directly comparable (see the warnings)"
    echo
}
shopt -s nullglob
RESULTS=("$W"/synod-*.json "$W"/etcd-*.json)
((${#RESULTS[@]})) || { log "no run produced a result"; exit 1; }
echo
echo "Synod 3 nodes vs etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p') 3 members, 127.0.0.1," \
    "$(nproc) cores, $CLIENTS clients, $REQUESTS writes, $VALUE_BYTES-byte values, $KEYS keys"
echo
SPREAD_TITLE="Clients spread over the 3 nodes / members (client i on node i mod 3; backups and followers forward)"
PRIMARY_TITLE="All clients on the Synod primary / the etcd leader"
if ((ROUNDS == 1)); then
    compare "$SPREAD_TITLE:" synod-spread etcd-spread
    compare "$PRIMARY_TITLE:" synod-primary etcd-leader
    echo "summaries: ${RESULTS[*]}"
    exit 0
fi
for r in $(seq 1 "$ROUNDS"); do
    compare "Round $r. $SPREAD_TITLE:" "synod-spread-r$r" "etcd-spread-r$r"
    compare "Round $r. $PRIMARY_TITLE:" "synod-primary-r$r" "etcd-leader-r$r"
done
# Each Synod run against the etcd run of its own round, and the medians over the rounds.
python3 - "$W" "$ROUNDS" <<'PY'
import json, os, statistics, sys
w, rounds = sys.argv[1], int(sys.argv[2])
def load(name, r):
    path = os.path.join(w, "%s-r%d.json" % (name, r))
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def goal(s, e):
    return (s["committed_writes_per_s"] >= 2 * e["committed_writes_per_s"]
            and s["commit_p99_ms"] <= e["p99_ms"] and s["p99_ms"] <= 5 * s["p50_ms"])
for title, syn, etc in (("spread over the nodes / members", "synod-spread", "etcd-spread"),
                        ("at the Synod primary / the etcd leader", "synod-primary", "etcd-leader")):
    pairs = [(r, load(syn, r), load(etc, r)) for r in range(1, rounds + 1)]
    pairs = [(r, s, e) for r, s, e in pairs if s and e]
    if not pairs:
        continue
    print("Over %d rounds, %s: each Synod run against the etcd run of its round" % (len(pairs), title))
    print("%-7s %14s %18s %15s %12s %16s %8s %5s" % ("round", "synod writes/s", "commit p50/p99 ms",
          "ack p50/p99 ms", "etcd writes/s", "etcd p50/p99 ms", "ratio", "goal"))
    ratios, met = [], 0
    for r, s, e in pairs:
        ratio = s["committed_writes_per_s"] / max(e["committed_writes_per_s"], 1e-9)
        ratios.append(ratio)
        ok = goal(s, e)
        met += ok
        print("%-7d %14.1f %8.1f / %-7.1f %6.1f / %-6.1f %12.1f %7.1f / %-6.1f %7.2fx %5s" % (
            r, s["committed_writes_per_s"], s["commit_p50_ms"], s["commit_p99_ms"], s["p50_ms"], s["p99_ms"],
            e["committed_writes_per_s"], e["p50_ms"], e["p99_ms"], ratio, "met" if ok else "-"))
    med = lambda key, runs: statistics.median(x[key] for x in runs)
    syns, etcs = [s for _, s, _ in pairs], [e for _, _, e in pairs]
    print("%-7s %14.1f %8.1f / %-7.1f %6.1f / %-6.1f %12.1f %7.1f / %-6.1f %7.2fx" % (
        "median", med("committed_writes_per_s", syns), med("commit_p50_ms", syns), med("commit_p99_ms", syns),
        med("p50_ms", syns), med("p99_ms", syns), med("committed_writes_per_s", etcs), med("p50_ms", etcs),
        med("p99_ms", etcs), statistics.median(ratios)))
    print("goal (>= 2x etcd's committed writes/s, commit p99 <= etcd's p99, ack p99 <= 5x ack p50): met in %d of %d"
          " rounds" % (met, len(pairs)))
    print()
PY
echo "summaries: ${RESULTS[*]}"
