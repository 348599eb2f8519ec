#!/usr/bin/env bash
# The whole test suite, real servers included: installs the backend servers (idempotent, from
# Debian's archive only), then runs every test of every crate with every backend compiled in.
# The test kit starts ZooKeeper, etcd and Consul on 127.0.0.1 by itself and stops them after.
#
#   COORD_REQUIRE_BACKENDS=1  a backend that cannot be started or reached fails the run
#                             (CI sets it); without it such tests print a loud SKIPPED line.
#   COORD_ZK_ENDPOINTS / COORD_ETCD_ENDPOINTS / COORD_CONSUL_ENDPOINTS
#                             use running servers instead (for example docker-compose.yml).
#   Extra arguments go to `cargo test` (for example `-- zk::`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-backends.sh
exec cargo test --workspace --all-features "$@"
