#!/usr/bin/env bash
# Compares Synod builds (or node settings) over alternating runs: this 2-core VM's speed varies by a quarter
# within the hour, so only runs interleaved in time compare. Each round runs `scripts/bench.sh --synod-only` once
# per build, in turn (in the reverse order every other round), and prints one line per run and mode (spread over
# the nodes / all at the primary): committed writes/s, ack and commit p50/p99, server CPU per write. A build is a
# directory holding synod-node, synod and synod-load (copy target/release's aside after each build); NAME=ARGS
# instead runs the current build's binaries with those node flags.
#
#   scripts/bench-compare.sh [--rounds 3] [--clients 64] [--requests 40000] [--value-bytes 128] [--wait-commit] \
#       DIR|NAME=ARGS...
#
# e.g. scripts/bench-compare.sh /tmp/before /tmp/after
#      scripts/bench-compare.sh default= one-in-flight="--sig-in-flight-max 1"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
ARGS=(--clients 64 --requests 40000 --value-bytes 128)
BUILDS=()
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --clients | --requests | --value-bytes) ARGS+=("$1" "$2"); shift 2 ;;
        --wait-commit) ARGS+=("$1"); shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "bench-compare: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) BUILDS+=("$1"); shift ;;
    esac
done
[[ "$ROUNDS" =~ ^[0-9]+$ ]] || { echo "bench-compare: --rounds must be a number" >&2; exit 2; }
((${#BUILDS[@]})) || { usage >&2; exit 2; }
CURRENT=""
for b in "${BUILDS[@]}"; do
    if [[ "$b" == *=* ]]; then
        if [ -z "$CURRENT" ]; then
            cargo build -q --release -p synod-node --bins
            cargo build -q --release -p synod-client --bins --features etcd-grpc
            CURRENT="$(./scripts/target-dir.sh)/release"
        fi
    elif [ ! -x "$b/synod-node" ] || [ ! -x "$b/synod" ] || [ ! -x "$b/synod-load" ]; then
        echo "bench-compare: $b holds no synod-node, synod and synod-load" >&2
        exit 2
    fi
done
printf '%-16s %-8s %10s %15s %17s %8s\n' build mode "writes/s" "ack p50/p99" "commit p50/p99" "us/write"
for round in $(seq 1 "$ROUNDS"); do
    # Every other round runs the builds in the reverse order: the first run of a round was the slower one in 16 of
    # 22 pairs of two identical builds' comparisons here (2026-12-01), which a fixed order would credit to a build.
    ORDER=("${BUILDS[@]}")
    if ((round % 2 == 0)); then
        ORDER=()
        for ((i = ${#BUILDS[@]} - 1; i >= 0; i--)); do ORDER+=("${BUILDS[$i]}"); done
    fi
    for b in "${ORDER[@]}"; do
        if [[ "$b" == *=* ]]; then
            name="${b%%=*}" bin="$CURRENT" node_args="${b#*=}"
        else
            name="$(basename "$b")" bin="$b" node_args="${SYNOD_NODE_ARGS:-}"
        fi
        ws="$(mktemp -d)"
        rmdir "$ws"
        if ! SYNOD_BIN="$bin" SYNOD_NODE_ARGS="$node_args" ./scripts/bench.sh --synod-only "${ARGS[@]}" \
            --workspace "$ws" >/dev/null 2>"$ws.err"; then
            echo "bench-compare: round $round of $name failed; last lines:" >&2
            tail -5 "$ws.err" >&2
        fi
        for mode in spread primary; do
            python3 - "$ws/synod-$mode.json" "$ws.err" "$name" "$mode" <<'PY'
import json, re, sys
path, err, name, mode = sys.argv[1:]
try:
    d = json.load(open(path))
except (OSError, ValueError):
    print("%-16s %-8s %10s" % (name, mode, "failed"))
    sys.exit()
cpu = re.search(r"synod-%s: .*\((\d+) us per write\)" % mode, open(err).read())
print("%-16s %-8s %10.0f %15s %17s %8s" % (name, mode, d["committed_writes_per_s"],
      "%.1f / %.1f" % (d["p50_ms"], d["p99_ms"]),
      "%.1f / %.1f" % (d.get("commit_p50_ms", 0), d.get("commit_p99_ms", 0)), cpu.group(1) if cpu else "?"))
PY
        done
        rm -rf "$ws" "$ws.err"
    done
done
