#!/usr/bin/env bash
# Starts a Synod network of N nodes on this machine (127.0.0.1 only) and prints how to use it. The first node
# creates the service with M members; the members then open it by vote and trust each joining node by vote,
# through the synod-gov CLI, as a real consortium would. Ctrl-C stops every node it started; running it again on
# the same workspace restarts the same network from disk. --recover WORKSPACE brings a stopped network back from
# its ledger files alone, as after a disaster (docs/RECOVERY.md): a new service identity, the members accept the
# recovery and submit their recovery shares, the other nodes join again.
#
#   ./sandbox.sh [-n N] [--members M] [--js-app DIR] [--workspace DIR] [--port PORT] [--debug] [--verbose]
#   ./sandbox.sh --recover WORKSPACE [-n N] [--port PORT] [--debug]
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"

WORKSPACE="$ROOT/workspace"
PORT=8000
PROFILE=release
VERBOSE=0
NODES=3
MEMBERS=1
JS_APP=""
RECOVER=0
usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo "  --js-app DIR     deploy the JavaScript bundle in DIR (app.json + src/) by vote, e.g. js-apps/logging"
    echo "  -n N             number of nodes (default 3)"
    echo "  --members M      number of consortium members (default 1); a strict majority decides"
    echo "  --workspace DIR  where keys, node data and network.json go (default ./workspace; alias --data-dir)"
    echo "  --port PORT      HTTPS port of the first node; node i uses PORT+i, and PORT+100+i between nodes"
    echo "  --debug          use a debug build (faster to build, slower to run)"
    echo "  --verbose        node logs at debug level"
    echo "  --recover DIR    recover the stopped network in DIR from its nodes' ledger files (its members' keys,"
    echo "                   *_enc_privk.pem, decrypt their recovery shares); the old node data moves to DIR/lost-*"
}
while (($#)); do
    case "$1" in
        --workspace | --data-dir) WORKSPACE="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        --verbose) VERBOSE=1; shift ;;
        -n) NODES="$2"; shift 2 ;;
        --members) MEMBERS="$2"; shift 2 ;;
        --js-app) JS_APP="$2"; shift 2 ;;
        --recover) RECOVER=1; WORKSPACE="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "sandbox: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 50)); then
    echo "sandbox: -n takes a number of nodes between 1 and 50" >&2
    exit 2
fi
if ! [[ "$MEMBERS" =~ ^[0-9]+$ ]] || ((MEMBERS < 1 || MEMBERS > 20)); then
    echo "sandbox: --members takes a number between 1 and 20" >&2
    exit 2
fi
mkdir -p "$WORKSPACE"
WORKSPACE="$(cd "$WORKSPACE" && pwd)"

./scripts/setup.sh
echo "sandbox: building ($PROFILE)..." >&2
if [ "$PROFILE" = release ]; then
    cargo build -q --release -p synod-node -p synod-client -p synod-governance --bins
else
    cargo build -q -p synod-node -p synod-client -p synod-governance --bins
fi
BIN="$(./scripts/target-dir.sh)/$PROFILE"

MEMBER_NAMES=()
if ((RECOVER)); then
    # The consortium of the lost network: every member whose keys are in the workspace.
    MEMBERS=0
    while [ -f "$WORKSPACE/member${MEMBERS}_cert.pem" ]; do MEMBERS=$((MEMBERS + 1)); done
    if ((MEMBERS == 0)); then
        echo "sandbox: $WORKSPACE holds no member0_cert.pem: is it a sandbox workspace?" >&2
        exit 2
    fi
fi
for ((m = 0; m < MEMBERS; m++)); do MEMBER_NAMES+=("member$m"); done
if [ ! -f "$WORKSPACE/user0_cert.pem" ]; then
    "$BIN/synod" keygen --name user0 --out "$WORKSPACE" >/dev/null
fi
for who in "${MEMBER_NAMES[@]}"; do
    # Members get an encryption key too: they are recovery members, each holding a recovery share.
    if [ ! -f "$WORKSPACE/${who}_cert.pem" ]; then
        "$BIN/synod-gov" keygen --name "$who" --out "$WORKSPACE" >/dev/null
    fi
done
FRESH=1
[ -d "$WORKSPACE/n0/db" ] && FRESH=0
LOST=""
if ((RECOVER)); then
    # The ledger to recover from: the longest one starting at seqno 1 (a node that joined from a snapshot holds
    # only the ledger after it).
    best="" best_size=0
    for dir in "$WORKSPACE"/n*/ledger; do
        [ -d "$dir" ] || continue
        compgen -G "$dir/ledger_1[-.]*" >/dev/null || compgen -G "$dir/ledger_1" >/dev/null || continue
        size=$(du -sb "$dir" | cut -f1)
        if ((size > best_size)); then best="$dir" best_size=$size; fi
    done
    if [ -z "$best" ]; then
        echo "sandbox: no node in $WORKSPACE holds a ledger starting at seqno 1: nothing to recover from" >&2
        exit 1
    fi
    LOST="$WORKSPACE/lost-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$LOST"
    for dir in "$WORKSPACE"/n*; do [ -d "$dir" ] && mv "$dir" "$LOST/"; done
    cp "$WORKSPACE/service_cert.pem" "$LOST/service_cert.pem"
    RECOVER_LEDGER="$LOST/$(basename "$(dirname "$best")")/ledger"
    echo "sandbox: recovering from $RECOVER_LEDGER (the old node data is in $LOST)" >&2
    FRESH=1
fi

json_field() { # field: reads JSON on stdin
    python3 -c "import json,sys; print(json.load(sys.stdin)$1)"
}

write_network() { # node entries JSON
    local members=""
    for m in "${MEMBER_NAMES[@]}"; do
        members+="${members:+,}{\"name\": \"$m\", \"cert\": \"$WORKSPACE/${m}_cert.pem\", \"key\": \"$WORKSPACE/${m}_privk.pem\"}"
    done
    cat >"$WORKSPACE/network.json.tmp" <<JSON
{
  "nodes": [$1],
  "service_cert": "$WORKSPACE/service_cert.pem",
  "users": [{"name": "user0", "cert": "$WORKSPACE/user0_cert.pem", "key": "$WORKSPACE/user0_privk.pem"}],
  "members": [$members]
}
JSON
    mv "$WORKSPACE/network.json.tmp" "$WORKSPACE/network.json"
}

# The members pass one proposal: the first proposes, a strict majority votes for it.
pass() { # action args-json
    pass_proposal "$1" --action "$1" --args "$2"
}
pass_proposal() { # description synod-gov-propose-arguments...
    local what="$1" id
    shift
    id=$("$BIN/synod-gov" --network "$WORKSPACE/network.json" --member member0 --json \
        propose "$@" | json_field '["proposalId"]')
    for ((m = 0; m <= MEMBERS / 2; m++)); do
        "$BIN/synod-gov" --network "$WORKSPACE/network.json" --member "member$m" --json vote "$id" --accept >/dev/null
    done
    local state
    state=$("$BIN/synod-gov" --network "$WORKSPACE/network.json" --member member0 --json show "$id" | json_field '["proposal"]["state"]')
    echo "sandbox: proposal $what $id: $state" >&2
    [ "$state" = Accepted ]
}

service_status() {
    curl -s --cacert "$WORKSPACE/service_cert.pem" "https://127.0.0.1:$PORT/gov/service/info" | json_field '["status"]'
}

# The members accept the recovery (naming the lost service's identity), then submit their shares until the
# threshold is reached; the recovered service opens once its private state is replayed.
recover_service() {
    local previous
    previous=$(python3 -c "import json,sys; print(json.dumps({'previous_service_identity': open(sys.argv[1]).read()}))" "$LOST/service_cert.pem")
    pass transition_service_to_open "$previous" || { echo "sandbox: the members did not accept the recovery" >&2; exit 1; }
    for m in "${MEMBER_NAMES[@]}"; do
        [ "$(service_status)" = WaitingForRecoveryShares ] || break
        if [ ! -f "$WORKSPACE/${m}_enc_privk.pem" ]; then continue; fi
        "$BIN/synod-gov" --network "$WORKSPACE/network.json" --member "$m" recovery share \
            --encryption-key "$WORKSPACE/${m}_enc_privk.pem" | sed "s/^/sandbox: $m: /" >&2 ||
            { echo "sandbox: $m could not submit its recovery share" >&2; exit 1; }
    done
    for _ in $(seq 1 600); do
        [ "$(service_status)" = Open ] && { echo "sandbox: the service is recovered and open" >&2; return 0; }
        sleep 0.1
    done
    echo "sandbox: the recovered service did not open (status $(service_status)); see $WORKSPACE/n0.log" >&2
    exit 1
}

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

wait_listening() { # name pid
    local dir="$WORKSPACE/$1"
    for _ in $(seq 1 600); do
        [ -f "$dir/rpc_address" ] && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            echo "sandbox: node $1 failed to start; last log lines:" >&2
            tail -n 20 "$WORKSPACE/$1.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "sandbox: node $1 did not start within 60 s (see $WORKSPACE/$1.log)" >&2
    exit 1
}

NODES_JSON=""
for ((i = 0; i < NODES; i++)); do
    name="n$i"
    dir="$WORKSPACE/$name"
    mkdir -p "$dir"
    rm -f "$dir/rpc_address"
    common=(--data-dir "$dir" --node-name "$name" --rpc-address "127.0.0.1:$((PORT + i))"
        --node-address "127.0.0.1:$((PORT + 100 + i))")
    if ((i == 0 && RECOVER)); then
        RUST_LOG="$LOG_LEVEL" "$BIN/synod-node" recover "${common[@]}" --ledger "$RECOVER_LEDGER" \
            >>"$WORKSPACE/$name.log" 2>&1 &
    elif ((i == 0)); then
        member_certs=()
        for m in "${MEMBER_NAMES[@]}"; do
            member="$WORKSPACE/${m}_cert.pem"
            [ -f "$WORKSPACE/${m}_enc_pubk.pem" ] && member+=",$WORKSPACE/${m}_enc_pubk.pem"
            member_certs+=(--member-cert "$member")
        done
        RUST_LOG="$LOG_LEVEL" "$BIN/synod-node" start "${common[@]}" \
            --user-cert "$WORKSPACE/user0_cert.pem" "${member_certs[@]}" \
            >>"$WORKSPACE/$name.log" 2>&1 &
    else
        # On a workspace that already holds this node, `join` resumes it without contacting the target.
        RUST_LOG="$LOG_LEVEL" "$BIN/synod-node" join "${common[@]}" \
            --target "https://127.0.0.1:$PORT" --service-cert "$WORKSPACE/service_cert.pem" \
            >>"$WORKSPACE/$name.log" 2>&1 &
    fi
    PIDS+=($!)
    if ((i > 0 && FRESH)); then
        # A new node asks to join and waits, Pending, until the members trust it.
        node_id=""
        for _ in $(seq 1 600); do
            node_id=$(curl -s --cacert "$WORKSPACE/service_cert.pem" "https://127.0.0.1:$PORT/gov/service/nodes" |
                python3 -c "import json,sys
for n in json.load(sys.stdin)['value']:
    if n['rpcAddress'] == '127.0.0.1:$((PORT + i))' and n['status'] == 'Pending': print(n['nodeId'])" 2>/dev/null || true)
            [ -n "$node_id" ] && break
            kill -0 "${PIDS[-1]}" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$node_id" ]; then
            echo "sandbox: node $name did not ask to join; last log lines:" >&2
            tail -n 20 "$WORKSPACE/$name.log" >&2
            exit 1
        fi
        pass transition_node_to_trusted "{\"node_id\": \"$node_id\"}" || { echo "sandbox: could not trust $name" >&2; exit 1; }
    fi
    wait_listening "$name" "${PIDS[-1]}"
    NODES_JSON+="${NODES_JSON:+,}{\"name\":\"$name\",\"url\":\"https://127.0.0.1:$((PORT + i))\",\"data_dir\":\"$dir\"}"
    if ((i == 0)); then
        cp "$dir/service_cert.pem" "$WORKSPACE/service_cert.pem"
        write_network "$NODES_JSON"
        if ((RECOVER)); then
            recover_service
        elif ((FRESH)); then
            pass transition_service_to_open "{}" || { echo "sandbox: the members could not open the service" >&2; exit 1; }
        fi
    fi
done

# Wait until every node votes (joining nodes start as learners and are promoted once caught up).
URL="https://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
    voters=$(curl -s --cacert "$WORKSPACE/service_cert.pem" "$URL/node/primary" |
        sed -n 's/.*"url":"\([^"]*\)".*/\1/p' | xargs -r -I{} curl -s --cacert "$WORKSPACE/service_cert.pem" {}/node/consensus |
        sed -n 's/.*"voters":\[\([0-9,]*\)\].*/\1/p' | tr ',' '\n' | grep -c . || true)
    [ "${voters:-0}" -ge "$NODES" ] && break
    sleep 0.2
done

write_network "$NODES_JSON"

if [ -n "$JS_APP" ]; then
    if [ ! -f "$JS_APP/app.json" ]; then
        echo "sandbox: $JS_APP/app.json not found (a bundle is app.json plus its modules under src/)" >&2
        exit 2
    fi
    pass_proposal "set_js_app $JS_APP" --set-js-app "$JS_APP" || { echo "sandbox: the members did not deploy $JS_APP" >&2; exit 1; }
fi

W="$WORKSPACE"
C="--cacert $W/service_cert.pem --cert $W/user0_cert.pem --key $W/user0_privk.pem"
{
    echo
    echo "Synod sandbox is running ($NODES node(s)), logs in $W/n*.log"
    for ((i = 0; i < NODES; i++)); do
        echo "  node n$i          https://127.0.0.1:$((PORT + i))   (data $W/n$i)"
    done
    cat <<EOT
  service cert     $W/service_cert.pem
  user0            $W/user0_cert.pem  $W/user0_privk.pem
  members          ${MEMBER_NAMES[*]}  ($W/member*_cert.pem, $W/member*_privk.pem; recovery: *_enc_privk.pem)
  network.json     $W/network.json   (the synod CLI reads it by default)
  dashboard        https://127.0.0.1:$PORT/node/dashboard   (the explorer fetches receipts as a user: import
                   user0 into the browser, e.g. openssl pkcs12 -export -in $W/user0_cert.pem -inkey $W/user0_privk.pem -out user0.p12)

Try (any node takes writes: backups forward them to the primary):
  curl $C \\
       -X POST https://127.0.0.1:$((PORT + NODES - 1))/app/log/private -H 'content-type: application/json' -d '{"id": 42, "msg": "hello"}' -i
  curl $C "$URL/app/log/private?id=42"
  curl --cacert $W/service_cert.pem "$URL/node/network/nodes"
  curl --cacert $W/service_cert.pem "$URL/node/consensus"

  export PATH="$BIN:\$PATH" SYNOD_NETWORK=$W/network.json
  synod call -X POST /app/log/public --data '{"id": 1, "msg": "hi"}' --wait
  synod receipt get <transaction_id> --out receipt.json
  synod receipt verify receipt.json --service-cert $W/service_cert.pem
  synod ledger audit $W/n0/ledger --service-cert $W/service_cert.pem --allow-unsigned-tail   # a live node
  synod-load --clients 32 --requests 20000      # benchmark
  synod-gov list                                   # governance: proposals
  synod call -X POST /app/js/log/private --data '{"id": 1, "msg": "hi"}'   # with --js-app js-apps/logging
  synod-gov propose --action set_user --args '{"cert": "<PEM>"}'; synod-gov --member member0 vote <id> --accept

After a disaster (every node lost): stop this script, then ./sandbox.sh --recover $W   (docs/RECOVERY.md)

Press Ctrl-C to stop the network.
EOT
}
wait "${PIDS[@]}"
