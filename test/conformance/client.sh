#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, npm) client scenarios against
# pg_diagnosis_mcp_check, the command-line program built on the worker's own MCP client, and prints one line per
# scenario and "conformance-client: N passed, N failed" (N = scenarios). Exits non-zero when one failed.
#   bash test/conformance/client.sh [BUILD_DIR]      (default build/; built here when missing)
#
# Applicable client scenarios, all of the suite's that pg_diagnosis's features cover (0.1.16 has no 2026-07-28 client
# scenario yet; the modern era is covered by the unit tests):
#   initialize   the handshake (legacy era, reached through the modern probe's fallback)
#   tools_call   tools/list and tools/call
#   sse-retry    SEP-1699: resume a closed SSE stream with GET + Last-Event-ID after the server's retry interval
# Not applicable, not run and not counted:
#   elicitation-sep1034-client-defaults  pg_diagnosis declares no elicitation capability (a worker has no user to ask)
#   auth/*                               OAuth flows: pg_diagnosis sends a static bearer token
#                                        (diagnosis.mcp_auth_token) and implements no OAuth client
# (resources, prompts and sampling have no client scenario in this suite version; pg_diagnosis uses none of them.)
#
# Node 20: the suite imports fs.globSync (Node 22) in code the client runner never reaches; node20-globsync.mjs,
# preloaded with --import, gives only that package an fs that has it (as server.sh does).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
SCENARIOS=(initialize tools_call sse-retry)

if [ ! -x "$build/pg_diagnosis_mcp_check" ]; then
  echo "== building pg_diagnosis_mcp_check in $build"
  cmake -S "$root" -B "$build" >/dev/null && cmake --build "$build" -j2 --target pg_diagnosis_mcp_check >/dev/null ||
    { echo "building pg_diagnosis_mcp_check failed"; echo "conformance-client: 0 passed, ${#SCENARIOS[@]} failed"; exit 1; }
fi
if [ ! -f "$here/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) ||
    { echo "npm ci failed"; echo "conformance-client: 0 passed, ${#SCENARIOS[@]} failed"; exit 1; }
fi
node=(node)
[ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ] && node=(node --import "$here/node20-globsync.mjs")
cli="$here/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export PGDIAG_MCP_CHECK="$build/pg_diagnosis_mcp_check"

work=$(mktemp -d /tmp/pg_diagnosis-conformance.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
for scenario in "${SCENARIOS[@]}"; do
  # The suite writes results/ into its working directory: keep it out of the checkout.
  (cd "$work" && timeout 120 "${node[@]}" "$cli" client --command "$here/client-under-test.sh" --scenario "$scenario") \
    >"$work/$scenario.log" 2>&1
  rc=$?
  checks=$(grep -aE '^Passed: [0-9]+/[0-9]+' "$work/$scenario.log" | tail -1)
  if [ "$rc" -eq 0 ] && grep -aq 'OVERALL: PASSED' "$work/$scenario.log"; then
    passed=$((passed + 1)); printf '  %-12s PASSED  (%s)\n' "$scenario" "$checks"
  else
    failed=$((failed + 1)); printf '  %-12s FAILED  (%s, exit %s)\n' "$scenario" "${checks:-no checks}" "$rc"
    sed 's/\x1b\[[0-9;]*m//g' "$work/$scenario.log" | tail -40
  fi
done
echo "conformance-client: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
