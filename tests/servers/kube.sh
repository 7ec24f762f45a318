#!/usr/bin/env bash
# Build (cached) and run a real Kubernetes control plane on loopback for the integration tests.
#
#   kube.sh build            apt deps + Debian's kubernetes source package -> kube-apiserver,
#                            kube-controller-manager, kube-scheduler in $THE0_KUBE_CACHE/bin
#                            (skips everything when the binaries are already there)
#   kube.sh start DIR        etcd + kube-apiserver + controller-manager + scheduler on free loopback
#                            ports; writes DIR/kubeconfig, DIR/env (ports, pids); prints DIR/env
#   kube.sh stop DIR         stops them by pid: scheduler, controller-manager, apiserver, etcd
#   kube.sh restart-apiserver DIR   stops and starts only kube-apiserver (etcd keeps the data)
#   kube.sh stop-apiserver DIR / start-apiserver DIR   the two halves of that
#   kube.sh clean-src        frees the ~2.3 GB source + Go build cache once bin/ is there
# With THE0_KUBE_OWNER_PID set, `start` adds a watchdog that stops the cluster when that process dies.
#
# Cache: $THE0_KUBE_CACHE (default ~/.cache/the0-kube): src/ (Debian source), bin/ (binaries),
# and the Go build cache under src/kubernetes-*/_output (~1.6 GB; removable once bin/ exists).
set -euo pipefail

CACHE="${THE0_KUBE_CACHE:-$HOME/.cache/the0-kube}"
BIN="$CACHE/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "kube.sh: $*" >&2; }
die() { echo "kube.sh: ERROR: $*" >&2; exit 1; }

have_binaries() {
    local b
    for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
    command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || return 1
    command -v openssl >/dev/null 2>&1 || return 1
    return 0
}

add_deb_src() {
    if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
        return 0
    fi
    local uri
    uri=$(grep -hsE '^URIs: .*debian/?$' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}')
    if [ -z "$uri" ]; then
        uri=$(grep -hsE '^deb [^ ]*debian/? bookworm ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -1 | awk '{print $2}')
    fi
    [ -n "$uri" ] || die "no Debian bookworm mirror found in /etc/apt/sources.list*; add a deb-src line for bookworm main"
    log "adding deb-src for $uri bookworm main"
    cat > /etc/apt/sources.list.d/the0-kube-src.sources <<EOF
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

cmd_build() {
    if have_binaries; then
        log "binaries cached in $BIN"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    add_deb_src
    apt-get update -qq
    apt-get install -y -qq golang-go etcd-server rsync jq openssl make curl >/dev/null
    if have_binaries; then log "binaries cached in $BIN"; return 0; fi
    mkdir -p "$CACHE/src" "$BIN"
    cd "$CACHE/src"
    if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
        apt-get source --download-only kubernetes
    fi
    local orig dir
    orig=$(ls kubernetes_*.orig.tar.gz | head -1)
    if ! ls -d kubernetes-*/ >/dev/null 2>&1; then
        tar xzf "$orig"
    fi
    dir=$(ls -d kubernetes-*/ | head -1)
    dir="$CACHE/src/${dir%/}"
    mkdir -p gp/src/k8s.io
    ln -sfn "$dir" gp/src/k8s.io/kubernetes
    cd gp/src/k8s.io/kubernetes
    log "building ${BINARIES[*]} (about 5 minutes cold)"
    GOPATH="$CACHE/src/gp" GOPROXY=off CGO_ENABLED=0 \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
    for b in "${BINARIES[@]}"; do
        local f
        f=$(ls _output/local/bin/*/*/"$b" 2>/dev/null | head -1)
        [ -n "$f" ] || f="_output/bin/$b"
        [ -x "$f" ] || die "build finished but $b is missing under _output"
        cp "$f" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
    done
    log "binaries in $BIN"
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

wait_until() {  # wait_until SECONDS WHAT CMD...
    local secs=$1 what=$2; shift 2
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
    log "$what ready"
}

start_apiserver() {  # uses DIR env vars
    "$BIN/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 --secure-port="$API_PORT" --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --token-auth-file="$DIR/tokens.csv" \
        --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$DIR/sa.pub" \
        --service-account-signing-key-file="$DIR/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --cert-dir="$DIR/certs" \
        --enable-priority-and-fairness=false \
        >"$DIR/apiserver.log" 2>&1 &
    echo $! > "$DIR/apiserver.pid"
    wait_until 90 kube-apiserver curl -skf -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" \
        || { tail -20 "$DIR/apiserver.log" >&2; die "kube-apiserver did not become ready (log: $DIR/apiserver.log)"; }
}

cmd_start() {
    DIR=${1:?usage: kube.sh start DIR}
    have_binaries || die "binaries missing in $BIN: run 'kube.sh build' first"
    mkdir -p "$DIR/certs" "$DIR/etcd"
    DIR=$(cd "$DIR" && pwd)
    ETCD_PORT=$(free_port); ETCD_PEER=$(free_port); API_PORT=$(free_port)
    CM_PORT=$(free_port); SCHED_PORT=$(free_port)
    TOKEN=$(openssl rand -hex 16)
    RUNTIME_TOKEN=$(openssl rand -hex 16)
    # admin (system:masters) for the tests; the0-runtime has no rights until a RoleBinding grants them.
    printf '%s,admin,admin-uid,"system:masters"\n%s,the0-runtime,the0-runtime-uid\n' "$TOKEN" "$RUNTIME_TOKEN" > "$DIR/tokens.csv"
    openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
    openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

    etcd --name the0-test --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
        --initial-cluster "the0-test=http://127.0.0.1:$ETCD_PEER" \
        --listen-metrics-urls "" >"$DIR/etcd.log" 2>&1 &
    echo $! > "$DIR/etcd.pid"
    wait_until 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health" \
        || { tail -20 "$DIR/etcd.log" >&2; die "etcd did not start (log: $DIR/etcd.log)"; }

    start_apiserver

    cat > "$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: the0-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $DIR/certs/apiserver.crt
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: the0-test
  context: {cluster: the0-test, user: admin, namespace: default}
current-context: the0-test
EOF
    "$BIN/kube-controller-manager" --kubeconfig="$DIR/kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port="$CM_PORT" --port=0 \
        --service-account-private-key-file="$DIR/sa.key" --use-service-account-credentials=false \
        --controllers='*,-nodeipam,-nodelifecycle,-ttl,-service,-route,-cloud-node-lifecycle' \
        >"$DIR/controller-manager.log" 2>&1 &
    echo $! > "$DIR/controller-manager.pid"
    "$BIN/kube-scheduler" --kubeconfig="$DIR/kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --port=0 \
        >"$DIR/scheduler.log" 2>&1 &
    echo $! > "$DIR/scheduler.pid"

    if [ -n "${THE0_KUBE_OWNER_PID:-}" ]; then
        # Stop everything when the owner (the test run) dies without stopping us, e.g. killed on a timeout.
        nohup "$0" watchdog "$DIR" "$THE0_KUBE_OWNER_PID" </dev/null >/dev/null 2>&1 &
        echo $! > "$DIR/watchdog.pid"
    fi

    cat > "$DIR/env" <<EOF
KUBECONFIG=$DIR/kubeconfig
API_PORT=$API_PORT
ETCD_PORT=$ETCD_PORT
TOKEN=$TOKEN
RUNTIME_TOKEN=$RUNTIME_TOKEN
ETCD_PID=$(cat "$DIR/etcd.pid")
APISERVER_PID=$(cat "$DIR/apiserver.pid")
CONTROLLER_MANAGER_PID=$(cat "$DIR/controller-manager.pid")
SCHEDULER_PID=$(cat "$DIR/scheduler.pid")
EOF
    cat "$DIR/env"
}

load_env() {
    DIR=${1:?usage: kube.sh stop|restart-apiserver DIR}
    DIR=$(cd "$DIR" && pwd)
    [ -f "$DIR/env" ] || die "no $DIR/env: was the cluster started with 'kube.sh start $DIR'?"
    # shellcheck disable=SC1091
    . "$DIR/env"
}

stop_pid() {  # stop_pid NAME PIDFILE GRACE
    local name=$1 f=$2 grace=$3 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local end=$(( $(date +%s) + grace ))
        while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM for ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        fi
    fi
    rm -f "$f"
}

cmd_stop() {
    load_env "$@"
    if [ -f "$DIR/watchdog.pid" ] && [ "$(cat "$DIR/watchdog.pid")" != "$$" ]; then
        kill "$(cat "$DIR/watchdog.pid")" 2>/dev/null || true
    fi
    rm -f "$DIR/watchdog.pid"
    stop_pid kube-scheduler "$DIR/scheduler.pid" 5
    stop_pid kube-controller-manager "$DIR/controller-manager.pid" 5
    stop_pid kube-apiserver "$DIR/apiserver.pid" 5
    stop_pid etcd "$DIR/etcd.pid" 5
}

cmd_watchdog() {
    local owner=${2:?usage: kube.sh watchdog DIR OWNER_PID}
    while kill -0 "$owner" 2>/dev/null && [ -f "$1/env" ]; do sleep 1; done
    [ -f "$1/env" ] || exit 0
    log "owner $owner is gone: stopping the cluster in $1"
    cmd_stop "$1"
}

cmd_restart_apiserver() {
    load_env "$@"
    stop_pid kube-apiserver "$DIR/apiserver.pid" "${GRACE:-3}"
    start_apiserver
    sed -i "s/^APISERVER_PID=.*/APISERVER_PID=$(cat "$DIR/apiserver.pid")/" "$DIR/env"
}

cmd_stop_apiserver() {
    load_env "$@"
    stop_pid kube-apiserver "$DIR/apiserver.pid" "${GRACE:-3}"
}

cmd_start_apiserver() {
    load_env "$@"
    start_apiserver
    sed -i "s/^APISERVER_PID=.*/APISERVER_PID=$(cat "$DIR/apiserver.pid")/" "$DIR/env"
}

case "${1:-}" in
    build) cmd_build ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    watchdog) shift; cmd_watchdog "$@" ;;
    clean-src) rm -rf "$CACHE/src"; log "removed $CACHE/src (binaries kept in $BIN)" ;;
    restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
    stop-apiserver) shift; cmd_stop_apiserver "$@" ;;
    start-apiserver) shift; cmd_start_apiserver "$@" ;;
    *) echo "usage: kube.sh build | start DIR | stop DIR | restart-apiserver DIR | stop-apiserver DIR | start-apiserver DIR | clean-src" >&2; exit 2 ;;
esac
