#!/usr/bin/env bash
# Builds LOCAL container images of the coordination servers for machines without a route to an
# image registry (this project's CI), from the same Debian packages scripts/install-backends.sh
# fetches: `docker import` of a minimal root filesystem per server.
#
#   coord-test/zookeeper:3.8.0   a jlink'ed JRE (from the JDK's jmods), bookworm's ZooKeeper jars
#   coord-test/zookeeper:3.9.3   the same with trixie's zookeeper/zookeeper-jute 3.9.3 jars
#   coord-test/etcd:3.4.23       bookworm's etcd binary (+ the libc it links)
#   coord-test/etcd:3.5.16       trixie's etcd binary
#   coord-test/consul:1.8.7      bullseye's consul binary
#
# The tags are our own (`coord-test/...`): these images never pretend to be the official ones.
# They are laid out like the official images where the test kit relies on it: `etcd` and
# `consul` on PATH, and ZooKeeper's `zkServer.sh start-foreground <zoo.cfg>` (here a small
# script that runs the server's main class on the JRE, JVM flags from SERVER_JVMFLAGS).
# The test kit overrides each image's entrypoint and command, so no image has one of its own
# beyond a default for a manual `docker run`.
#
# Usage: scripts/build-test-images.sh [--print-env]
#   DOCKER_HOST selects the daemon (scripts/test-containers.sh points it at its own dockerd).
#   --print-env prints the COORD_*_IMAGE overrides for the newest image of each server.
#   COORD_TOOLS_DIR as in scripts/install-backends.sh (run first; this script needs its output).
# Idempotent: an image whose tag exists is not rebuilt (COORD_REBUILD_IMAGES=1 forces it).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${COORD_TOOLS_DIR:-$REPO/.tools}"
log() { printf '[build-test-images] %s\n' "$*" >&2; }

if [ "${1:-}" = "--print-env" ]; then
    echo "COORD_ZK_IMAGE=coord-test/zookeeper:3.9.3"
    echo "COORD_ETCD_IMAGE=coord-test/etcd:3.5.16"
    echo "COORD_CONSUL_IMAGE=coord-test/consul:1.8.7"
    exit 0
fi

command -v docker >/dev/null || {
    log "ERROR: no docker CLI (Debian package docker.io)"
    exit 1
}
docker version >/dev/null || {
    log "ERROR: the docker daemon does not answer (DOCKER_HOST=${DOCKER_HOST:-unset})"
    exit 1
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

have_image() {
    [ "${COORD_REBUILD_IMAGES:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1
}

# Copies the shared libraries (ldd) that the ELF files given need, and the dynamic loader, into
# the root fs at their own paths (libraries inside the build dir itself are skipped).
add_libs() {
    local root=$1
    shift
    local lib
    while read -r lib; do
        [ -n "$lib" ] || continue
        case "$lib" in "$WORK"/*) continue ;; esac
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(for f in "$@"; do ldd "$f" 2>/dev/null || true; done |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
}

# Copies an ELF file (symlinks followed) to `dest` in the root fs, with its libraries.
add_elf() {
    local root=$1 file=$2 dest=$3
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$file" "$root$dest"
    add_libs "$root" "$file"
}

# The common base: /bin/sh (dash), /tmp, a root user (the servers run as root in the container,
# so they can write the test kit's bind-mounted temp dirs).
base_root() {
    local root=$1
    mkdir -p "$root"/{bin,etc,tmp,usr/local/bin,proc,sys,dev}
    chmod 1777 "$root/tmp"
    add_elf "$root" /bin/dash /bin/dash
    ln -s dash "$root/bin/sh"
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    mkdir -p "$root/root"
}

import_root() {
    local root=$1 tag=$2
    shift 2
    local changes=(--change "ENV PATH=/usr/local/bin:/usr/bin:/bin:/opt/jre/bin")
    local c
    for c in "$@"; do
        changes+=(--change "$c")
    done
    tar -C "$root" -c . | docker import "${changes[@]}" \
        --change "LABEL org.opencontainers.image.title=$tag" \
        --change "LABEL org.opencontainers.image.description=\"coord test image, a local build, not an official image\"" \
        - "$tag" >/dev/null
    log "built $tag ($(du -sh "$root" | cut -f1))"
    rm -rf "$root"
}

# ----- etcd -----------------------------------------------------------------------------------
build_etcd() {
    local bin=$1 tag
    [ -x "$bin" ] || {
        log "ERROR: $bin missing: run scripts/install-backends.sh"
        exit 1
    }
    tag="coord-test/etcd:$("$bin" --version | awk '/^etcd Version:/ {print $3}')"
    if have_image "$tag"; then
        log "$tag: already built"
        return
    fi
    local root="$WORK/etcd-root"
    base_root "$root"
    add_elf "$root" "$bin" /usr/local/bin/etcd
    import_root "$root" "$tag" 'CMD ["/usr/local/bin/etcd"]'
}

# ----- Consul ---------------------------------------------------------------------------------
build_consul() {
    local bin=$1 tag
    [ -x "$bin" ] || {
        log "ERROR: $bin missing: run scripts/install-backends.sh"
        exit 1
    }
    tag="coord-test/consul:$("$bin" version | awk '/^Consul v/ {sub(/^v/, "", $2); print $2}')"
    if have_image "$tag"; then
        log "$tag: already built"
        return
    fi
    local root="$WORK/consul-root"
    base_root "$root"
    add_elf "$root" "$bin" /bin/consul
    import_root "$root" "$tag" 'CMD ["/bin/consul", "agent", "-dev", "-client", "0.0.0.0"]'
}

# ----- ZooKeeper ------------------------------------------------------------------------------
JRE=""
# A small JRE made with jlink from the installed JDK's jmods (default-jdk-headless), once.
build_jre() {
    [ -n "$JRE" ] && return
    local jlink
    jlink="$(command -v jlink || true)"
    [ -n "$jlink" ] || {
        log "ERROR: no jlink (Debian default-jdk-headless): run scripts/install-backends.sh"
        exit 1
    }
    JRE="$WORK/jre"
    "$jlink" --add-modules java.base,java.logging,java.management,java.naming,java.security.jgss,java.security.sasl,java.sql,java.xml,java.desktop,jdk.management,jdk.unsupported,jdk.crypto.ec,jdk.naming.dns,jdk.zipfs \
        --strip-debug --no-header-files --no-man-pages --compress=2 --output "$JRE"
}

# The jars ZooKeeper needs: the jar, then the closure of the manifests' Class-Path entries.
zk_jars() {
    local queue=("$@") seen=" " jar cp
    while [ "${#queue[@]}" -gt 0 ]; do
        jar=${queue[0]}
        queue=("${queue[@]:1}")
        case "$seen" in *" $jar "*) continue ;; esac
        seen="$seen$jar "
        [ -e "$jar" ] || continue
        echo "$jar"
        cp="$(unzip -p "$jar" META-INF/MANIFEST.MF 2>/dev/null | tr -d '\r' |
            awk '/^Class-Path:/ {on=1; sub(/^Class-Path: ?/, ""); printf "%s", $0; next}
                 on && /^ / {sub(/^ /, ""); printf "%s", $0; next} {on=0}')"
        for jar in $cp; do
            queue+=("$jar")
        done
    done
}

# $1 version, $2 zookeeper jar, $3 zookeeper-jute jar (both of that version).
build_zookeeper() {
    local version=$1 zk_jar=$2 jute_jar=$3
    local tag="coord-test/zookeeper:$version"
    [ -f "$zk_jar" ] && [ -f "$jute_jar" ] || {
        log "ERROR: $zk_jar or $jute_jar missing: run scripts/install-backends.sh"
        exit 1
    }
    if have_image "$tag"; then
        log "$tag: already built"
        return
    fi
    build_jre
    local root="$WORK/zk-root" jar
    base_root "$root"
    mkdir -p "$root/opt"
    cp -a "$JRE" "$root/opt/jre"
    # The system libraries (libc, libz, ...) the JRE's programs and libraries link.
    local elves=()
    mapfile -t elves < <(find "$root/opt/jre" -type f \( -name '*.so' -o -path '*/bin/*' \))
    add_libs "$root" "${elves[@]}"
    mkdir -p "$root/usr/share/java"
    # Bookworm's dependency jars (same paths the manifests name), then this version's two jars
    # under the names the manifests use.
    while read -r jar; do
        cp -L "$jar" "$root$jar"
    done < <(zk_jars /usr/share/java/zookeeper.jar /usr/share/java/slf4j-simple.jar)
    cp -L "$zk_jar" "$root/usr/share/java/zookeeper.jar"
    cp -L "$jute_jar" "$root/usr/share/java/zookeeper-jute.jar"
    cat >"$root/usr/local/bin/zkServer.sh" <<'EOF'
#!/bin/sh
# coord-test image: `zkServer.sh start-foreground <zoo.cfg>` like the official image's script
# (only that form). The config's directory comes first on the classpath (log configuration).
if [ "$1" != start-foreground ] || [ -z "$2" ]; then
    echo "usage: zkServer.sh start-foreground <zoo.cfg>" >&2
    exit 2
fi
exec java $SERVER_JVMFLAGS $JVMFLAGS -cp "${2%/*}:/usr/share/java/zookeeper-jute.jar:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$2"
EOF
    chmod 755 "$root/usr/local/bin/zkServer.sh"
    import_root "$root" "$tag"
}

# Which ZooKeeper version a jar is (its pom.properties).
jar_version() {
    unzip -p "$1" 'META-INF/maven/org.apache.zookeeper/zookeeper/pom.properties' 2>/dev/null |
        awk -F= '/^version=/ {print $2}' | tr -d '\r'
}

build_zookeeper "$(jar_version /usr/share/java/zookeeper.jar)" \
    /usr/share/java/zookeeper.jar /usr/share/java/zookeeper-jute.jar
build_zookeeper 3.9.3 "$TOOLS/zookeeper-3.9.3/usr/share/java/zookeeper-3.9.3.jar" \
    "$TOOLS/zookeeper-3.9.3/usr/share/java/zookeeper-jute-3.9.3.jar"
build_etcd "$TOOLS/etcd/usr/bin/etcd"
build_etcd "$TOOLS/etcd-3.5.16/usr/bin/etcd"
build_consul "$TOOLS/consul/usr/bin/consul"
log "done in $(($(date +%s) - START)) s"
docker images --filter 'reference=coord-test/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
