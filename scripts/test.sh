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
# Without the default store every target that does not need SQLite builds
# (the others declare it, and cargo skips them here or names the feature
# when one is asked for).
cargo clippy --workspace --all-targets --no-default-features -- -D warnings
cargo test --workspace --all-features
# What differs without TLS (a rediss:// URL names the feature it needs).
cargo test -p tempox-runtime --features redis --lib

# The examples, the README's main command first: each must run to its end and
# tell the story it promises.
example() {
    local name=$1 out
    shift
    out=$(timeout 300 cargo run -q "$@") || {
        echo "test.sh: the $name example failed" >&2
        return 1
    }
    EXAMPLE_OUT=$out
}
expect() {
    local needle
    for needle in "$@"; do
        if ! grep -qF -- "$needle" <<<"$EXAMPLE_OUT"; then
            printf 'test.sh: the example did not print %s; it printed:\n%s\n' "$needle" "$EXAMPLE_OUT" >&2
            return 1
        fi
    done
}
example checkout --example checkout
expect "replayed ch_order-1: nothing ran" \
    "failed   key \`order-1\` of \`shop.checkout\` was already used with different arguments" \
    "undone   2 step(s) compensated, newest first" \
    "recovered by a fresh runtime: workflow is completed" \
    "calls 19  bodies run 13  replayed 1  key reuse refused 1  compensations 3"
example "checkout --again" --example checkout -- --again
expect "replayed ch_order-4: nothing ran" "calls 6  bodies run 0  replayed 3"
db="${TMPDIR:-/tmp}/tempox-checkout.db"
example "tempox show" --features cli --bin tempox -- --store "$db" show shop.checkout/order-4
expect "status       completed" "shop.confirm/shop.checkout/order-4#3"
example event_pipeline --example event_pipeline
expect 'balances: {"alice": 1200, "bob": 950, "carol": 2000}' \
    "mirror search-index: 3 key(s) drifted, 3 repaired" \
    'index: ["e-1", "e-2", "e-3", "e-4", "e-5"]'
example http_api --features http --example http_api
expect "key pay-1    {\"amount\":250}                         -> 201 Created (replayed)" \
    "-> 409 Conflict" "-> 422 Unprocessable Entity" "-> 400 Bad Request" \
    "http/acct_7/pay-3 completed" "requests 10  cards charged 3"
echo "test.sh: all tests and examples passed"
