#!/usr/bin/env bash
# The conformance suites against CONTAINERS (issue 19), as CI runs them after the main tests:
#
#   1. installs Docker from Debian (`docker.io`, `docker-compose`) when missing;
#   2. starts its OWN dockerd (data root and socket in a temp dir, `--storage-driver vfs
#      --iptables=false --bridge=none`; containers use host networking) and stops it by its pid
#      on any exit;
#   3. builds the local images (scripts/build-test-images.sh; no registry is needed);
#   4. runs, with COORD_TESTKIT=containers, the conformance suite of each adapter on every
#      server version tested (ZooKeeper 3.8.0 and 3.9.3, etcd 3.4.23 and 3.5.16, Consul 1.8.7),
#      and the fault tests of each adapter on the newest images;
#   5. tests docker-compose.yml: `docker-compose up -d` with the image overrides, the README's
#      command (COORD_*_ENDPOINTS) for the conformance suites, then `down`.
#
# `--workspace` replaces 4 and 5 with the whole workspace in containers, on the newest images:
# `COORD_TESTKIT=containers cargo test --workspace --all-features` (too long for CI's budget:
# run it by hand). Either way the run fails if a container of the test kit is left behind.
#
# A summary table (backend, version, how, tests passed, seconds) ends the output.
# Where dockerd cannot start: one loud SKIPPED line and success, unless COORD_REQUIRE_BACKENDS=1
# (CI), which makes it a failure. Extra arguments go to every `cargo test` run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
log() { printf '[test-containers] %s\n' "$*" >&2; }
START=$(date +%s)
WORKSPACE=0
if [ "${1:-}" = "--workspace" ]; then
    WORKSPACE=1
    shift
fi

skip_or_fail() {
    if [ "${COORD_REQUIRE_BACKENDS:-0}" = 1 ]; then
        log "ERROR: $* (COORD_REQUIRE_BACKENDS=1)"
        exit 1
    fi
    echo "SKIPPED: the container suites: $*" >&2
    exit 0
}

# ----- 1. Docker from Debian ------------------------------------------------------------------
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
missing=()
for p in docker.io docker-compose; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] ||
        missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { "${SUDO[@]}" apt-get update -q && "${SUDO[@]}" apt-get install -y -q \
            --no-install-recommends "${missing[@]}"; } ||
        skip_or_fail "cannot install ${missing[*]}"
fi
[ -x /usr/sbin/dockerd ] || skip_or_fail "no /usr/sbin/dockerd (Debian docker.io)"
# Debian's CLI, whatever else is on PATH (it matches the daemon's API version).
DOCKER_CLI_DIR="$(mktemp -d)"
ln -s /usr/bin/docker "$DOCKER_CLI_DIR/docker"
export PATH="$DOCKER_CLI_DIR:$PATH"

# ----- 2. Our own dockerd ---------------------------------------------------------------------
# A short path: dockerd and containerd put unix sockets under it (108-byte limit).
DD="$(mktemp -d /tmp/coord-dockerd.XXXXXX)"
DOCKERD_PID=""
cleanup() {
    local rc=$?
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "stopping dockerd (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    # dockerd leaves mounts under its exec root (the host netns); then the vfs data root,
    # which holds a full copy per image and container, goes.
    awk -v d="$DD/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do "${SUDO[@]}" umount -l "$m" 2>/dev/null || true; done
    "${SUDO[@]}" rm -rf "$DD" 2>/dev/null || log "could not remove $DD"
    rm -rf "$DOCKER_CLI_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DOCKER_HOST="unix://$DD/docker.sock"
log "starting dockerd (data root $DD/root, $DOCKER_HOST)"
"${SUDO[@]}" /usr/sbin/dockerd \
    --data-root "$DD/root" --exec-root "$DD/exec" --pidfile "$DD/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver vfs --iptables=false --ip6tables=false --bridge=none \
    >"$DD/dockerd.log" 2>&1 &
DOCKERD_PID=$!
ready=0
for _ in $(seq 1 120); do
    if docker version >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
done
if [ "$ready" != 1 ]; then
    tail -n 20 "$DD/dockerd.log" >&2 || true
    skip_or_fail "dockerd did not start (log above)"
fi
log "dockerd $(docker version --format '{{.Server.Version}}') is up (pid $DOCKERD_PID)"

# ----- 3. Images ------------------------------------------------------------------------------
bash scripts/install-backends.sh >/dev/null
bash scripts/build-test-images.sh

# ----- 4. The suites in containers ------------------------------------------------------------
SUMMARY="$DD/summary"
: >"$SUMMARY"
# run <backend> <version> <how> <cargo test args...>: runs, records passed count and seconds.
run() {
    local backend=$1 version=$2 how=$3
    shift 3
    local out="$DD/run.log" t0 rc passed
    log "== $backend $version ($how): cargo test $*"
    t0=$(date +%s)
    set +e
    cargo test --workspace --all-features "$@" 2>&1 | tee "$out" | grep -E "^test result|FAILED|panicked|SKIPPED"
    rc=${PIPESTATUS[0]}
    set -e
    passed=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$out")
    printf '%-10s %-8s %-26s %5s %6ss\n' "$backend" "$version" "$how" "$passed" \
        "$(($(date +%s) - t0))" >>"$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$out" >&2
        log "FAILED: $backend $version ($how)"
        no_containers_left
        exit 1
    fi
}

# Fails if a container of the test kit is still there: each test process removes its own on
# exit (drop, or its lifeline a moment after it ended), so wait a bounded while first.
no_containers_left() {
    local left=""
    for _ in $(seq 1 60); do
        left=$(docker ps -aq --filter label=coord-testkit.owner)
        [ -z "$left" ] && break
        sleep 0.5
    done
    if [ -n "$left" ]; then
        docker ps -a --filter label=coord-testkit.owner >&2
        log "ERROR: containers of the test kit left behind (above)"
        exit 1
    fi
    log "no container left behind (docker ps -a: $(docker ps -aq | wc -l) containers)"
}

summary() {
    log "done in $(($(date +%s) - START)) s"
    {
        printf '%-10s %-8s %-26s %5s %7s\n' backend version how passed time
        cat "$SUMMARY"
    } >&2
}

export COORD_TESTKIT=containers
if [ "$WORKSPACE" = 1 ]; then
    export COORD_ZK_IMAGE=coord-test/zookeeper:3.9.3 COORD_ETCD_IMAGE=coord-test/etcd:3.5.16 \
        COORD_CONSUL_IMAGE=coord-test/consul:1.8.7
    run all newest "containers: workspace" "$@"
    no_containers_left
    summary
    exit 0
fi
for v in 3.8.0 3.9.3; do
    COORD_ZK_IMAGE=coord-test/zookeeper:$v run ZooKeeper "$v" "containers: conformance" \
        --test conformance "$@" -- zk::
done
for v in 3.4.23 3.5.16; do
    COORD_ETCD_IMAGE=coord-test/etcd:$v run etcd "$v" "containers: conformance" \
        --test conformance "$@" -- etcd::
done
COORD_CONSUL_IMAGE=coord-test/consul:1.8.7 run Consul 1.8.7 "containers: conformance" \
    --test conformance "$@" -- consul::
export COORD_ZK_IMAGE=coord-test/zookeeper:3.9.3 COORD_ETCD_IMAGE=coord-test/etcd:3.5.16 \
    COORD_CONSUL_IMAGE=coord-test/consul:1.8.7
run ZooKeeper 3.9.3 "containers: faults" --test zk_faults "$@"
run etcd 3.5.16 "containers: faults" --test etcd_faults "$@"
run Consul 1.8.7 "containers: faults" --test consul_faults "$@"
unset COORD_TESTKIT

# ----- 5. docker-compose.yml ------------------------------------------------------------------
COMPOSE=(docker-compose)
docker compose version >/dev/null 2>&1 && COMPOSE=(docker compose)
PROJECT="coord-test-$$"
compose_down() { "${COMPOSE[@]}" -p "$PROJECT" down -v --timeout 10 >/dev/null 2>&1 || true; }
trap 'rc=$?; compose_down; set +e; (exit "$rc"); cleanup' EXIT
log "${COMPOSE[*]} up -d (images $COORD_ZK_IMAGE, $COORD_ETCD_IMAGE, $COORD_CONSUL_IMAGE)"
"${COMPOSE[@]}" -p "$PROJECT" up -d
export COORD_ZK_ENDPOINTS=127.0.0.1:2181 COORD_ETCD_ENDPOINTS=127.0.0.1:2379 \
    COORD_CONSUL_ENDPOINTS=127.0.0.1:8500
ready=0
for _ in $(seq 1 120); do
    if [ "$(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2181; echo srvr >&3; cat <&3' 2>/dev/null |
        grep -c '^Mode:')" = 1 ] &&
        curl -fsS -m 2 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"' &&
        curl -fsS -m 2 http://127.0.0.1:8500/v1/status/leader 2>/dev/null | grep -q ':'; then
        ready=1
        break
    fi
    sleep 0.5
done
if [ "$ready" != 1 ]; then
    "${COMPOSE[@]}" -p "$PROJECT" logs --tail 30 >&2 || true
    log "ERROR: the docker-compose servers did not become ready"
    exit 1
fi
# The README's command, for the conformance suites.
run all compose "docker-compose: conformance" --test conformance "$@"
compose_down
trap cleanup EXIT
no_containers_left
summary
