#!/usr/bin/env bash
# Runs every holdfast test, installing what they need on a fresh Debian
# machine first. This is the command the README gives and CI runs.
#
#   ./test.sh            everything
#   ./test.sh --quick    skip fmt and clippy
set -euo pipefail
cd "$(dirname "$0")"

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust from https://rustup.rs first" >&2
  exit 1
fi

# tests/nginx*.rs run a real nginx (they fail, not skip, without it).
# Install the Debian package when it is missing; sudo only if not root.
# (/usr/sbin is not on a normal user's PATH on Debian: look there too.)
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  step "installing nginx (apt-get install -y nginx)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y nginx || { $sudo apt-get update && $sudo apt-get install -y nginx; }
fi

# redis/tests and the Redis-backed integration tests run real redis-server
# processes (single and cluster; redis-cli joins the cluster). The Debian
# package redis-server brings both (redis-tools).
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
  step "installing redis-server (apt-get install -y redis-server)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y redis-server || { $sudo apt-get update && $sudo apt-get install -y redis-server; }
fi

if [ "$quick" = 0 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy (all targets, warnings are errors)"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  step "cargo doc (broken links are errors)"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
fi

# First: some integration tests run the example binaries as users do.
step "examples build"
cargo build --examples --locked

step "cargo test (unit, property, integration and doc tests)"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "JavaScript client (Node and headless Chromium)"
client/js/test/run.sh

step "benchmark tool (a few seconds; figures are meaningless in debug)"
cargo run --locked -p holdfast-bench -- --quick >/dev/null

printf '\nall tests passed\n'
