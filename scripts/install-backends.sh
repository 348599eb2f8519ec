#!/usr/bin/env bash
# Installs the backend servers the coord test suites run against, from Debian's archive only:
#
#   - ZooKeeper 3.8 (bookworm package `zookeeper`, system-wide; no service is started)
#   - protoc + the well-known protos (`protobuf-compiler`, `libprotobuf-dev`; etcd-client needs them)
#   - openssl (the etcd TLS test makes its own CA and certificates with it)
#   - the peers of the mixed-fleet tests: a JDK (`default-jdk-headless`, for javac) with
#     Curator 5.4 (`libcurator-{framework,recipes,discovery}-java`), kazoo (`python3-kazoo`),
#     and `dig` (`bind9-dnsutils`, for the Consul DNS test)
#   - etcd 3.4 (bookworm `etcd-server` / `etcd-client`, unpacked into <repo>/.tools/etcd)
#   - Consul 1.8.7 (bullseye `consul`, fetched with a PRIVATE apt configuration, unpacked into
#     <repo>/.tools/consul; /etc/apt is never touched)
#   - ZooKeeper 3.9.3 and etcd 3.5.16 (trixie `libzookeeper-java`, `etcd-server`, the same way,
#     into <repo>/.tools/zookeeper-3.9.3 and <repo>/.tools/etcd-3.5.16): the newer versions tested
#
# Symlinks to etcd, etcdctl and consul are placed in <repo>/.tools/bin.
# Idempotent: every step checks first and does nothing when already done.
# Environment: COORD_TOOLS_DIR overrides <repo>/.tools.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${COORD_TOOLS_DIR:-$REPO/.tools}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-backends] %s\n' "$*"; }
START=$(date +%s)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "not root and no sudo: system packages cannot be installed"
    fi
fi

mkdir -p "$TOOLS/bin"

# ---------------------------------------------------------------------------------------------
# 1. System packages: zookeeper, protobuf-compiler, libprotobuf-dev
# ---------------------------------------------------------------------------------------------
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

# True when apt's lists know a candidate version for every package given.
have_candidates() {
    local p
    for p in "$@"; do
        local cand
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            return 1
        fi
    done
    return 0
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q
        APT_UPDATED=1
        return 0
    fi
    return 1
}

# Runs an apt-get command; if it fails (e.g. a stale package list pointing at a superseded
# .deb) and apt-get update has not run yet, updates once and tries again.
apt_retry() {
    "$@" && return 0
    if apt_update_once; then
        log "retrying after apt-get update: $*"
        "$@"
    else
        return 1
    fi
}

MISSING=()
for p in zookeeper protobuf-compiler libprotobuf-dev openssl default-jdk-headless \
    libcurator-framework-java libcurator-recipes-java libcurator-discovery-java python3-kazoo \
    bind9-dnsutils iproute2; do
    pkg_installed "$p" || MISSING+=("$p")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "ERROR: ${MISSING[*]} must be installed, which needs root (or sudo)"
        exit 1
    fi
    have_candidates "${MISSING[@]}" || apt_update_once || true
    log "apt-get install -y ${MISSING[*]}"
    apt_retry "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${MISSING[@]}"
else
    log "system packages (zookeeper, protoc, JDK, Curator, kazoo, dig, iproute2): already installed"
fi

# ---------------------------------------------------------------------------------------------
# 2. etcd (bookworm etcd-server + etcd-client), unpacked into $TOOLS/etcd
# ---------------------------------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# `apt-get download` as root drops privileges to _apt, which needs to write where it downloads.
chmod 755 "$WORK"

if [ -x "$TOOLS/etcd/usr/bin/etcd" ] && [ -x "$TOOLS/etcd/usr/bin/etcdctl" ]; then
    log "etcd: already in $TOOLS/etcd"
else
    have_candidates etcd-server etcd-client || apt_update_once || true
    log "apt-get download etcd-server etcd-client"
    mkdir -p "$WORK/etcd"
    chmod 777 "$WORK/etcd"
    cd "$WORK/etcd"
    apt_retry apt-get download -q etcd-server etcd-client
    cd "$REPO"
    rm -rf "$TOOLS/etcd.partial"
    mkdir -p "$TOOLS/etcd.partial"
    for deb in "$WORK"/etcd/*.deb; do
        log "dpkg -x $(basename "$deb") $TOOLS/etcd"
        dpkg -x "$deb" "$TOOLS/etcd.partial"
    done
    rm -rf "$TOOLS/etcd"
    mv "$TOOLS/etcd.partial" "$TOOLS/etcd"
fi
ln -sfn "$TOOLS/etcd/usr/bin/etcd" "$TOOLS/bin/etcd"
ln -sfn "$TOOLS/etcd/usr/bin/etcdctl" "$TOOLS/bin/etcdctl"

# ---------------------------------------------------------------------------------------------
# 3. Consul (bullseye), via a private apt configuration; unpacked into $TOOLS/consul
# ---------------------------------------------------------------------------------------------
# Use the same Debian mirror host as the machine's own apt sources, so it is reachable.
debian_mirror() {
    local uri=""
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f" |
            grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)"
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f" |
                grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)"
            [ -n "$uri" ] && break
        done
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

if [ -x "$TOOLS/consul/usr/bin/consul" ]; then
    log "consul: already in $TOOLS/consul"
else
    MIRROR="$(debian_mirror)"
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    LISTS="$TOOLS/apt-lists"
    CACHE="$TOOLS/apt-cache"
    mkdir -p "$LISTS/partial" "$CACHE/archives/partial"
    SRC="$WORK/bullseye.list"
    if [ -f "$KEYRING" ]; then
        echo "deb [signed-by=$KEYRING] $MIRROR bullseye main" >"$SRC"
    else
        echo "deb $MIRROR bullseye main" >"$SRC"
    fi
    APT_PRIVATE=(
        -o "Dir::Etc::SourceList=$SRC"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$LISTS"
        -o "Dir::Cache=$CACHE"
        -o "Dir::Cache::pkgcache=$CACHE/pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=$CACHE/srcpkgcache.bin"
        -o "Dir::Etc::Preferences=/dev/null"
        -o "Dir::Etc::PreferencesParts=/dev/null"
        -o "APT::Sandbox::User=root"
        -o "Acquire::Languages=none"
    )
    if ! (apt-cache "${APT_PRIVATE[@]}" policy consul 2>/dev/null | grep -q 'Candidate: [0-9]'); then
        log "apt-get update (private config: $MIRROR bullseye main -> $LISTS)"
        apt-get "${APT_PRIVATE[@]}" update -q
    fi
    log "apt-get download consul (bullseye)"
    mkdir -p "$WORK/consul"
    cd "$WORK/consul"
    if ! apt-get "${APT_PRIVATE[@]}" download -q consul; then
        log "apt-get update (private config), then retry"
        apt-get "${APT_PRIVATE[@]}" update -q
        apt-get "${APT_PRIVATE[@]}" download -q consul
    fi
    cd "$REPO"
    rm -rf "$TOOLS/consul.partial"
    mkdir -p "$TOOLS/consul.partial"
    for deb in "$WORK"/consul/*.deb; do
        log "dpkg -x $(basename "$deb") $TOOLS/consul"
        dpkg -x "$deb" "$TOOLS/consul.partial"
    done
    rm -rf "$TOOLS/consul"
    mv "$TOOLS/consul.partial" "$TOOLS/consul"
    # The private package lists and cache (~85 MB) are only needed to fetch consul again.
    rm -rf "$LISTS" "$CACHE"
fi
ln -sfn "$TOOLS/consul/usr/bin/consul" "$TOOLS/bin/consul"

# ---------------------------------------------------------------------------------------------
# 3b. The newer server versions the suites are also proven against (issue 19): ZooKeeper 3.9.3
#     (trixie `libzookeeper-java`; it runs on bookworm's dependency jars) and etcd 3.5.16 (trixie
#     `etcd-server`), fetched with a PRIVATE apt configuration like Consul, unpacked into
#     $TOOLS/zookeeper-3.9.3 and $TOOLS/etcd-3.5.16. The tests use them through COORD_ZK_CLASSPATH
#     and COORD_ETCD_BIN (scripts/test-versions.sh) or as images (scripts/build-test-images.sh).
# ---------------------------------------------------------------------------------------------
ZK_NEW=3.9.3
ETCD_NEW=3.5.16
if [ -f "$TOOLS/zookeeper-$ZK_NEW/usr/share/java/zookeeper-$ZK_NEW.jar" ] &&
    [ -x "$TOOLS/etcd-$ETCD_NEW/usr/bin/etcd" ]; then
    log "zookeeper $ZK_NEW, etcd $ETCD_NEW: already in $TOOLS"
else
    MIRROR="$(debian_mirror)"
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    LISTS="$TOOLS/apt-lists-trixie"
    CACHE="$TOOLS/apt-cache-trixie"
    mkdir -p "$LISTS/partial" "$CACHE/archives/partial"
    SRC="$WORK/trixie.list"
    if [ -f "$KEYRING" ]; then
        echo "deb [signed-by=$KEYRING] $MIRROR trixie main" >"$SRC"
    else
        echo "deb $MIRROR trixie main" >"$SRC"
    fi
    APT_TRIXIE=(
        -o "Dir::Etc::SourceList=$SRC"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$LISTS"
        -o "Dir::Cache=$CACHE"
        -o "Dir::Cache::pkgcache=$CACHE/pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=$CACHE/srcpkgcache.bin"
        -o "Dir::Etc::Preferences=/dev/null"
        -o "Dir::Etc::PreferencesParts=/dev/null"
        -o "APT::Sandbox::User=root"
        -o "Acquire::Languages=none"
    )
    log "apt-get update (private config: $MIRROR trixie main -> $LISTS)"
    apt-get "${APT_TRIXIE[@]}" update -q
    # The exact upstream versions, whatever the Debian revision is.
    zk_ver="$(apt-cache "${APT_TRIXIE[@]}" madison libzookeeper-java |
        awk -v v="$ZK_NEW" '$3 ~ "^"v"-" {print $3; exit}')"
    etcd_ver="$(apt-cache "${APT_TRIXIE[@]}" madison etcd-server |
        awk -v v="$ETCD_NEW" '$3 ~ "^"v"-" {print $3; exit}')"
    if [ -z "$zk_ver" ] || [ -z "$etcd_ver" ]; then
        log "ERROR: trixie has no libzookeeper-java $ZK_NEW-* or etcd-server $ETCD_NEW-*"
        exit 1
    fi
    log "apt-get download libzookeeper-java=$zk_ver etcd-server=$etcd_ver (trixie)"
    mkdir -p "$WORK/trixie"
    chmod 777 "$WORK/trixie"
    cd "$WORK/trixie"
    apt-get "${APT_TRIXIE[@]}" download -q "libzookeeper-java=$zk_ver" "etcd-server=$etcd_ver"
    cd "$REPO"
    for pair in "zookeeper-$ZK_NEW:libzookeeper-java" "etcd-$ETCD_NEW:etcd-server"; do
        dest="${pair%%:*}"
        pkg="${pair#*:}"
        rm -rf "$TOOLS/$dest.partial"
        mkdir -p "$TOOLS/$dest.partial"
        log "dpkg -x ${pkg}_*.deb $TOOLS/$dest"
        dpkg -x "$WORK"/trixie/"${pkg}"_*.deb "$TOOLS/$dest.partial"
        rm -rf "${TOOLS:?}/$dest"
        mv "$TOOLS/$dest.partial" "$TOOLS/$dest"
    done
    rm -rf "$LISTS" "$CACHE"
fi

# ---------------------------------------------------------------------------------------------
# 4. Report
# ---------------------------------------------------------------------------------------------
log "etcd:    $TOOLS/bin/etcd -> $TOOLS/etcd/usr/bin/etcd"
"$TOOLS/bin/etcd" --version | sed 's/^/    /'
log "etcdctl: $TOOLS/bin/etcdctl"
ETCDCTL_API=3 "$TOOLS/bin/etcdctl" version | sed 's/^/    /'
log "etcd $ETCD_NEW: $TOOLS/etcd-$ETCD_NEW/usr/bin/etcd"
log "zookeeper $ZK_NEW: $TOOLS/zookeeper-$ZK_NEW/usr/share/java/zookeeper-$ZK_NEW.jar"
log "consul:  $TOOLS/bin/consul -> $TOOLS/consul/usr/bin/consul"
"$TOOLS/bin/consul" version | sed 's/^/    /'
log "protoc:  $(command -v protoc)"
protoc --version | sed 's/^/    /'
ZK_JAR="$(readlink -f /usr/share/java/zookeeper.jar)"
log "zookeeper jar: /usr/share/java/zookeeper.jar -> $ZK_JAR"
log "done in $(($(date +%s) - START)) s"
