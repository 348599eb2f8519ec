#!/usr/bin/env bash
# The conformance suites on the NEWER server versions, as processes (the default provider):
# ZooKeeper 3.9.3 (trixie's jars on bookworm's dependencies, through COORD_ZK_CLASSPATH) and
# etcd 3.5.16 (trixie's binary, through COORD_ETCD_BIN), both fetched by
# scripts/install-backends.sh. The default versions (ZooKeeper 3.8.0, etcd 3.4.23, Consul 1.8.7)
# run in scripts/test-all.sh; `--all` runs them here too. Extra arguments go to `cargo test`.
# A summary (backend, version, tests passed, seconds) ends the output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
TOOLS="${COORD_TOOLS_DIR:-$REPO/.tools}"
log() { printf '[test-versions] %s\n' "$*" >&2; }
ALL=0
if [ "${1:-}" = "--all" ]; then
    ALL=1
    shift
fi
bash scripts/install-backends.sh >/dev/null
SUMMARY="$(mktemp)"
OUT="$(mktemp)"
trap 'rm -f "$SUMMARY" "$OUT"' EXIT

# run <backend> <version> <filter> [cargo test args...] (environment set by the caller)
run() {
    local backend=$1 version=$2 filter=$3 t0 rc
    shift 3
    log "== $backend $version (processes): conformance"
    t0=$(date +%s)
    set +e
    cargo test --workspace --all-features --test conformance "$@" -- "$filter" 2>&1 |
        tee "$OUT" | grep -E "^test result|FAILED|panicked|SKIPPED"
    rc=${PIPESTATUS[0]}
    set -e
    printf '%-10s %-8s %-26s %5s %6ss\n' "$backend" "$version" "processes: conformance" \
        "$(awk '/^test result:/ {n += $4} END {print n + 0}' "$OUT")" "$(($(date +%s) - t0))" \
        >>"$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$OUT" >&2
        log "FAILED: $backend $version"
        exit 1
    fi
}

ZK_NEW="$TOOLS/zookeeper-3.9.3/usr/share/java"
COORD_ZK_CLASSPATH="$ZK_NEW/zookeeper-jute-3.9.3.jar:$ZK_NEW/zookeeper-3.9.3.jar:/usr/share/java/slf4j-simple.jar" \
    run ZooKeeper 3.9.3 zk:: "$@"
COORD_ETCD_BIN="$TOOLS/etcd-3.5.16/usr/bin/etcd" run etcd 3.5.16 etcd:: "$@"
if [ "$ALL" = 1 ]; then
    run ZooKeeper 3.8.0 zk:: "$@"
    run etcd 3.4.23 etcd:: "$@"
    run Consul 1.8.7 consul:: "$@"
fi
{
    printf '%-10s %-8s %-26s %5s %7s\n' backend version how passed time
    cat "$SUMMARY"
} >&2
