#!/usr/bin/env bash
# Installs what the test suite needs (redis-server, through apt-get, when it is
# missing), then runs the formatting and lint checks and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

if ! have redis-server || ! have redis-cli || ! have redis-benchmark; then
    echo "test.sh: installing redis-server and redis-tools with apt-get" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
