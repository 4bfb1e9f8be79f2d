#!/usr/bin/env bash
# The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in mcp-server/package.json)
# against the reference MCP server: every server scenario whose feature the server offers must pass; the others
# are listed as not applicable with the reason and not counted. A scenario the suite has but this script does not
# classify fails, so a new suite version cannot slip in untested.
#   bash test/conformance/server.sh        prints a table and "# pass N" / "# fail N" (scripts/suites.sh node_suite)
# Node 20: the suite imports fs.globSync (Node 22) in code this runner never reaches; node20-globsync.mjs, preloaded
# with --import, gives only that package an fs that has it (see that file).
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=test/conformance
SUITE=mcp-server/node_modules/@modelcontextprotocol/conformance/dist/index.js
[ -f "$SUITE" ] || { echo "conformance suite missing: run npm ci in mcp-server"; echo "# pass 0"; echo "# fail 1"; exit 1; }

NODE=(node)
[ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ] && NODE=(node --import "./$HERE/node20-globsync.mjs")

# Scenarios the server's features cover (tool calls, progress, tool errors, SSE streams and polling, DNS-rebinding
# protection, JSON Schema 2020-12 tool schemas). The fixture tools they call by name are src/fixtures.js.
# With 0.2.0-alpha.12: the 2026-07-28 wire (server-stateless, caching of tools/list, the standard headers), the
# legacy session's lifecycle, and the tasks extension (the server runs with --tasks). The tasks-* scenarios call
# fixture tools (greet, slow_compute, failing_job, protocol_error_job, confirm_delete), server-stateless three
# diagnostic tools, and caching also lists prompts and resources: --conformance-fixtures offers them all.
APPLICABLE=(server-initialize ping tools-list tools-call-simple-text tools-call-error tools-call-with-progress
  json-schema-2020-12 server-sse-polling server-sse-multiple-streams dns-rebinding-protection
  server-session-lifecycle server-stateless caching http-header-validation
  tasks-lifecycle tasks-capability-negotiation tasks-wire-fields tasks-request-state-removal tasks-request-headers
  tasks-dispatch-and-envelope tasks-status-notifications tasks-required-task-error)
declare -A NOT_APPLICABLE=(
  [logging-set-level]="no logging capability (logging is deprecated in 2026-07-28, SEP-2577)"
  [tools-call-with-logging]="no logging capability"
  [completion-complete]="no prompts or resource templates, so no completions capability"
  [tools-call-image]="results are text and structuredContent only; no image content"
  [tools-call-audio]="results are text and structuredContent only; no audio content"
  [tools-call-embedded-resource]="no resources"
  [tools-call-mixed-content]="results are text and structuredContent only; no image or resource content"
  [tools-call-sampling]="the server never asks the client for sampling"
  [tools-call-elicitation]="the server never asks the client for input (elicitation)"
  [elicitation-sep1034-defaults]="the server never asks the client for input (elicitation)"
  [elicitation-sep1330-enums]="the server never asks the client for input (elicitation)"
  [resources-list]="no resources" [resources-read-text]="no resources" [resources-read-binary]="no resources"
  [resources-templates-read]="no resources" [resources-subscribe]="no resources" [resources-unsubscribe]="no resources"
  [prompts-list]="no prompts" [prompts-get-simple]="no prompts" [prompts-get-with-args]="no prompts"
  [prompts-get-embedded-resource]="no prompts" [prompts-get-with-image]="no prompts"
  [sep-2164-resource-not-found]="no resources"
  [sep-2640-skills-directory]="no skills" [sep-2640-skills-enumeration]="no skills" [sep-2640-skills-manifest]="no skills"
  [http-custom-header-server-validation]="no tool has x-mcp-header annotations"
  [tasks-mrtr-input]="its tasks never ask the client for input" [tasks-mrtr-composition]="its tasks never ask the client for input"
)
for scenario in basic-elicitation basic-sampling basic-list-roots request-state multiple-input-requests multi-round \
  missing-input-response non-tool-request result-type unsupported-methods tampered-state capability-check \
  ignore-extra-params validate-input; do
  NOT_APPLICABLE[input-required-result-$scenario]="the server never asks the client for input (MRTR)"
done

WORK=$(mktemp -d /tmp/pgd-conformance.XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "${KEEP_CONFORMANCE_OUTPUT:-}" ] && echo "output kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# One server for every scenario: sessions, SSE replies, SSE polling (for server-sse-polling), the fixture tools.
node mcp-server/src/server.js --host 127.0.0.1 --port 0 --mode stateful --reply sse --sse-polling --sse-retry-ms 500 \
  --tasks --conformance-fixtures >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=
for _ in $(seq 100); do
  URL=$(grep -oE 'MCP_URL=\S+' "$WORK/server.log" | head -1 | cut -d= -f2)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$WORK/server.log"; echo "# pass 0"; echo "# fail 1"; exit 1; }

passed=0
failed=0
printf '%-32s %-8s %s\n' scenario result checks
for scenario in "${APPLICABLE[@]}"; do
  out="$WORK/$scenario"
  "${NODE[@]}" "$SUITE" server --url "$URL" --scenario "$scenario" -o "$out" >"$out.log" 2>&1
  checks=$(find "$out" -name checks.json 2>/dev/null | head -1)
  # A scenario passes when it ran and no check failed (WARNING and INFO are the suite's advice, not failures).
  verdict=$([ -n "$checks" ] && node -e '
    const checks = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const by = (s) => checks.filter((c) => c.status === s).length;
    const failed = checks.filter((c) => c.status === "FAILURE");
    console.log((failed.length ? "FAIL" : "PASS") + " " + by("SUCCESS") + " ok, " + by("WARNING") + " warnings, " +
      failed.length + " failed" + failed.map((c) => "; " + c.id + ": " + (c.errorMessage ?? "")).join(""));' "$checks")
  [ -n "$verdict" ] || verdict="FAIL did not run: $(tail -3 "$out.log" | tr '\n' ' ')"
  if [[ $verdict == PASS* ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  printf '%-32s %-8s %s\n' "$scenario" "${verdict%% *}" "${verdict#* }"
done

echo
echo "not applicable (not counted):"
for scenario in $(printf '%s\n' "${!NOT_APPLICABLE[@]}" | sort); do printf '  %-30s %s\n' "$scenario" "${NOT_APPLICABLE[$scenario]}"; done

# Every server scenario of the installed suite must be classified above.
listed=$("${NODE[@]}" "$SUITE" list 2>/dev/null | sed -n '/^Server scenarios/,/^$/p' | grep -oE '^  - [a-z0-9-]+' | sed 's/^  - //')
[ -n "$listed" ] || { echo "could not list the suite's scenarios"; failed=$((failed + 1)); }
for scenario in $listed; do
  if [[ ! " ${APPLICABLE[*]} " == *" $scenario "* && -z "${NOT_APPLICABLE[$scenario]:-}" ]]; then
    echo "unclassified scenario: $scenario (add it to APPLICABLE or NOT_APPLICABLE)"
    failed=$((failed + 1))
  fi
done

echo "# pass $passed"
echo "# fail $failed"
[ "$failed" -eq 0 ]
