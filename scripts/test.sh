#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one:
# starts the real servers the backends need (scripts/test-services.sh), requires them
# (TENURE_REQUIRE_BACKENDS=1: a missing server fails its tests), checks formatting and lints,
# checks the API docs' links, runs every test and doctest with all features, runs the
# quickstart demo, and stops the servers even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${XDG_CACHE_HOME:-$HOME/.cache}/tenure-test
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export TENURE_REQUIRE_BACKENDS=1

state=$(mktemp -d "${TMPDIR:-/tmp}/tenure-services.XXXXXX")
cleanup() { scripts/test-services.sh stop "$state" || true; rm -rf "$state"; }
trap cleanup EXIT INT TERM

scripts/test-services.sh start "$state"
# shellcheck disable=SC1091
source "$state/env"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-features --all-targets -- -D warnings
echo "== cargo doc (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --all-features --no-deps --quiet
echo "== cargo test"
cargo test --all-features
echo "== quickstart demo"
cargo run --quiet --example quickstart
