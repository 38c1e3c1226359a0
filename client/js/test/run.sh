#!/usr/bin/env bash
# The JavaScript client's tests, from a fresh Debian machine:
#
#   1. Node (node:test) against the echo example: every transport, cuts,
#      fallback, reconnects, refusals, the API;
#   2. Debian's Chromium, headless, driven by playwright-core: the same
#      exchange on every transport, a network cut and restore, a hostile
#      proxy refusing WebSocket, the chat example (with a screenshot), and
#      three echo nodes sharing a redis-server behind nginx round-robin.
#
# The hostile proxy is the testkit's (testkit/src/bin/hostile-proxy.rs),
# the same the Rust tests use, driven by test/support/proxy.js.
#
# Installs what it needs (chromium with apt-get, playwright-core with npm
# ci, the examples and the proxy with cargo build) and exits non-zero if a
# test failed.
# Called by the repository's ./test.sh; also `npm test` in client/js.
#
#   UPDATE_SCREENSHOTS=1 test/run.sh    also rewrites test/screenshots/chat.png
#   CHROMIUM=/path/to/chromium          another browser binary
set -euo pipefail
cd "$(dirname "$0")/.."
js=$(pwd)
root=$(cd ../.. && pwd)

step() { printf '\n==> %s\n' "$*"; }

if ! command -v node >/dev/null; then
  echo "node is missing: install Node.js 20 or newer" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old: the client needs 20 or newer" >&2
  exit 1
fi

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null && { [ -z "$sudo" ] || command -v sudo >/dev/null; }; then
    step "installing chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "$chromium is missing: apt-get install chromium, or set CHROMIUM" >&2
    exit 1
  fi
fi

if [ ! -d node_modules/playwright-core ]; then
  step "npm ci (playwright-core; no browser download)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi

step "cargo build --example echo --example chat; the hostile proxy"
(cd "$root" && cargo build --locked --example echo --example chat)
# The testkit's hostile proxy (test/support/proxy.js runs it). Built on its
# own: together with the examples, cargo would unify their features and
# rebuild the examples.
(cd "$root" && cargo build --locked --quiet -p holdfast-testkit --bin hostile-proxy)

# Node 20 and 21 have a WebSocket only behind a flag.
ws_flag=()
if [ "$(node -p 'typeof WebSocket')" = undefined ]; then
  ws_flag=(--experimental-websocket)
fi

# A failed test may leave a client reconnecting or a browser open: end the
# run when the tests are done rather than wait for them (Node >= 20.14).
exit_flag=()
if node --help | grep -q -- --test-force-exit; then
  exit_flag=(--test-force-exit)
fi

failed=0
step "Node client tests"
node "${ws_flag[@]}" --test "${exit_flag[@]}" "$js"/test/node/*.test.js || failed=1

step "browser tests (headless $("$chromium" --version 2>/dev/null | head -1))"
node --test "${exit_flag[@]}" "$js"/test/browser/*.test.js || failed=1

if [ "$failed" != 0 ]; then
  echo "JavaScript client tests failed" >&2
  exit 1
fi
printf '\nJavaScript client tests passed\n'
