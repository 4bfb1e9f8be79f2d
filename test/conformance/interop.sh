#!/usr/bin/env bash
# Interop: pg_diagnosis_mcp_check (the worker's own MCP client) against servers built on the official SDKs, each on
# 127.0.0.1 and a free port, stopped by this script:
#   sdk2-modern       SDK v2 (@modelcontextprotocol/server 2.4.0): the 2026-07-28 era, server/discover, no session
#   sdk1-tasks        SDK v1 (1.32.2) sessionful 2025-11-25 with experimental tasks: one tools/call, tasks/get polls,
#                     tasks/result, and the session DELETEd at the end
#   server-everything @modelcontextprotocol/server-everything: its long-running tool's 5 progress notifications
#                     (its answer is text, not a diagnosis: mcp_check's exit 1, "the tool answered", is expected)
# Prints one line per case and "interop: N passed, N failed"; exits non-zero when one failed.
#   bash test/conformance/interop.sh [BUILD_DIR]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
check="$build/pg_diagnosis_mcp_check"
CASES=3
if [ ! -x "$check" ] || [ ! -d "$here/node_modules/@modelcontextprotocol/server" ]; then
  echo "interop: needs $check (cmake) and test/conformance/node_modules (npm ci)"; echo "interop: 0 passed, $CASES failed"; exit 1
fi
work=$(mktemp -d /tmp/pg_diagnosis-interop.XXXXXX)
server_pid=""
stop_server() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; server_pid=""; fi; }
trap 'stop_server; rm -rf "$work"' EXIT

# start_server NAME COMMAND... : runs it in the background, waits (10 s at most) for "PORT n" on its stdout.
start_server() {
  local name=$1; shift
  (cd "$here" && exec "$@") >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  for _ in $(seq 100); do
    port=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$work/$name.out" | head -1)
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  echo "  $name: the server did not start"; cat "$work/$name.err"; return 1
}

free_port() { node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

passed=0 failed=0
# verdict NAME OK : counts and prints one case; shows mcp_check's output when it failed.
verdict() {
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "  $1 PASSED"
  else failed=$((failed + 1)); echo "  $1 FAILED"; sed 's/^/    /' "$work/check.out"; fi
}
# expect PATTERN... : every extended regular expression matches a line of mcp_check's output.
expect() { local p; for p in "$@"; do grep -qE "$p" "$work/check.out" || { echo "    missing: $p"; return 1; }; done; }

# SDK v2: the modern era.
ok=1
if start_server sdk2-modern node servers/sdk2-modern.mjs; then
  "$check" --timeout 10000 "http://127.0.0.1:$port/mcp" run_diagnosis >"$work/check.out" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] && expect '^era: +modern$' '^protocol version: +2026-07-28$' '^outcome: +OK$' && ok=0
fi
stop_server; verdict "sdk2-modern (2026-07-28)" $ok

# SDK v1 with experimental tasks: exactly one tools/call, and the session ends with DELETE.
ok=1
if start_server sdk1-tasks node servers/sdk1-tasks.mjs; then
  "$check" --timeout 10000 "http://127.0.0.1:$port/mcp" run_diagnosis >"$work/check.out" 2>&1
  rc=$?
  counts=$(node -e "fetch('http://127.0.0.1:$port/counts').then(r=>r.text()).then(console.log)")
  echo "server counts: $counts" >>"$work/check.out"
  [ "$rc" -eq 0 ] && expect '^era: +legacy$' '^protocol version: +2025-11-25$' '^tasks: +yes' '^task: ' '^outcome: +OK$' \
    '"counts":\{"mcp-check-[0-9a-f]+":1\},"sessions":0' && ok=0
fi
stop_server; verdict "sdk1-tasks (2025-11-25 tasks)" $ok

# server-everything: progress on a long-running call.
ok=1
everything_port=$(free_port)
(cd "$here" && PORT=$everything_port exec node -r ./servers/loopback.cjs \
  node_modules/@modelcontextprotocol/server-everything/dist/index.js streamableHttp) >"$work/everything.out" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on port" "$work/everything.out" && break; sleep 0.1; done
"$check" --timeout 30000 "http://127.0.0.1:$everything_port/mcp" trigger-long-running-operation >"$work/check.out" 2>&1
rc=$?
[ "$rc" -eq 1 ] && expect '^progress: +5 notifications$' '^outcome: +VALIDATION_ERROR' && ok=0
stop_server; verdict "server-everything (progress)" $ok

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
