#!/usr/bin/env bash
# A 3-member etcd 3.4 cluster on 127.0.0.1, for comparing Synod with etcd (scripts/bench.sh).
#
#   scripts/etcd-cluster.sh start DIR   # installs etcd-server if needed, starts m0 m1 m2, waits until healthy,
#                                       # prints the client endpoints (comma-separated) on stdout
#   scripts/etcd-cluster.sh stop DIR    # stops the members started in DIR
#
# Data, logs and pid files go under DIR (m0.etcd/, m0.log, m0.pid...). etcd runs with its default durability
# settings (WAL fsync on every commit, as in production): no --unsafe-no-fsync. Client ports default to
# 2379 22379 32379 and peer ports to 2380 22380 32380; override with ETCD_CLIENT_PORTS / ETCD_PEER_PORTS
# (three space-separated ports each). ETCD_START_TIMEOUT_S (default 60) bounds the wait for health.
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
(($# == 2)) || usage
ACTION="$1"
DIR="$2"
read -r -a CLIENT_PORTS <<<"${ETCD_CLIENT_PORTS:-2379 22379 32379}"
read -r -a PEER_PORTS <<<"${ETCD_PEER_PORTS:-2380 22380 32380}"
START_TIMEOUT_S="${ETCD_START_TIMEOUT_S:-60}"
N=3
((${#CLIENT_PORTS[@]} == N && ${#PEER_PORTS[@]} == N)) || {
    echo "etcd-cluster: ETCD_CLIENT_PORTS and ETCD_PEER_PORTS need $N ports each" >&2
    exit 2
}

log() { echo "etcd-cluster: $*" >&2; }

# Whether $1 is the pid of an etcd process whose command line names data directory $2 (so a recycled pid is
# never signalled).
is_our_etcd() {
    local pid="$1" data="$2"
    [ -r "/proc/$pid/cmdline" ] || return 1
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    [[ "$cmd" == *etcd* && "$cmd" == *"$data"* ]]
}

install_etcd() {
    command -v etcd >/dev/null && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing etcd-server (Debian package)"
    # Keep the package from starting its own etcd on 2379 (invoke-rc.d and deb-systemd-invoke honour
    # policy-rc.d); only if no policy is in place already.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
    } || rc=$?
    if ((added_policy)); then $sudo rm -f "$policy"; fi
    ((rc == 0)) || { log "apt-get install etcd-server failed ($rc)"; exit 1; }
    # If a system etcd was started anyway, stop it and keep it from starting again.
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        log "stopping and disabling the system etcd service"
        $sudo systemctl stop etcd || true
        $sudo systemctl disable etcd >/dev/null 2>&1 || true
    elif pgrep -x etcd >/dev/null && [ -x /etc/init.d/etcd ]; then
        log "stopping the system etcd service"
        $sudo /etc/init.d/etcd stop >/dev/null || true
    fi
    if pgrep -x etcd >/dev/null; then
        log "warning: an etcd is running that this script did not start: $(pgrep -a -x etcd | head -3)"
    fi
    command -v etcd >/dev/null || { log "etcd is still not on PATH after installing etcd-server"; exit 1; }
}

port_in_use() {
    # bash's /dev/tcp: a connection means something listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    install_etcd
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    local i cluster=""
    for ((i = 0; i < N; i++)); do
        if [ -f "$DIR/m$i.pid" ] && is_our_etcd "$(cat "$DIR/m$i.pid")" "$DIR/m$i.etcd"; then
            log "m$i is already running in $DIR (pid $(cat "$DIR/m$i.pid")); stop it first"
            exit 1
        fi
        for port in "${CLIENT_PORTS[$i]}" "${PEER_PORTS[$i]}"; do
            if port_in_use "$port"; then
                log "port $port on 127.0.0.1 is already in use (a system etcd? set ETCD_CLIENT_PORTS/ETCD_PEER_PORTS)"
                exit 1
            fi
        done
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${PEER_PORTS[$i]}"
    done
    log "etcd $(etcd --version 2>/dev/null | head -1 | sed 's/^etcd Version: //'), data in $DIR"
    for ((i = 0; i < N; i++)); do
        local cp="${CLIENT_PORTS[$i]}" pp="${PEER_PORTS[$i]}"
        # setsid: the members outlive this script (and its caller's Ctrl-C) until `stop`.
        setsid etcd --name "m$i" --data-dir "$DIR/m$i.etcd" \
            --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
            --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
            --initial-cluster "$cluster" --initial-cluster-token synod-bench --initial-cluster-state new \
            --logger zap --log-outputs stderr \
            </dev/null >>"$DIR/m$i.log" 2>&1 &
        echo $! >"$DIR/m$i.pid"
    done
    local deadline=$((SECONDS + START_TIMEOUT_S)) endpoints=""
    for ((i = 0; i < N; i++)); do
        local url="http://127.0.0.1:${CLIENT_PORTS[$i]}"
        until curl -fsS --max-time 2 "$url/health" 2>/dev/null | grep -q '"health":"true"'; do
            if ! is_our_etcd "$(cat "$DIR/m$i.pid")" "$DIR/m$i.etcd"; then
                log "m$i exited during start-up; last log lines:"
                tail -n 20 "$DIR/m$i.log" >&2
                stop
                exit 1
            fi
            if ((SECONDS >= deadline)); then
                log "m$i not healthy within $START_TIMEOUT_S s; last log lines:"
                tail -n 20 "$DIR/m$i.log" >&2
                stop
                exit 1
            fi
            sleep 0.2
        done
        endpoints+="${endpoints:+,}$url"
    done
    echo "$endpoints" >"$DIR/endpoints"
    log "3 members healthy"
    echo "$endpoints"
}

stop() {
    [ -d "$DIR" ] || return 0
    local i pid pids=()
    for ((i = 0; i < N; i++)); do
        [ -f "$DIR/m$i.pid" ] || continue
        pid="$(cat "$DIR/m$i.pid")"
        if is_our_etcd "$pid" "$DIR/m$i.etcd"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$DIR/m$i.pid"
    done
    ((${#pids[@]})) || return 0
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || { log "stopped ${#pids[@]} member(s)"; return 0; }
        sleep 0.1
    done
    log "members did not stop within 10 s of SIGTERM; killing them"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
