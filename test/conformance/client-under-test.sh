#!/usr/bin/env bash
# The client the conformance suite drives: pg_diagnosis_mcp_check against the scenario's server URL ($1). The
# scenario's server offers its own tools, not run_diagnosis: when the suite hands the client the calls to make
# (MCP_CONFORMANCE_CONTEXT's toolCalls) mcp_check makes exactly those (--calls), otherwise it calls every tool the
# server lists with arguments built from the tool's inputSchema (--all-tools). These tools are not diagnosis tools,
# so "the tool answered but not with a valid diagnosis" (mcp_check's exit 1) is the expected outcome and counts as
# success; anything else (configuration, protocol, network, timeout: exit 2) fails the scenario.
set -u
check=${PGDIAG_MCP_CHECK:?PGDIAG_MCP_CHECK names pg_diagnosis_mcp_check}
# Authorization scenarios: the context's credentials (client_id, client_secret, private_key_pem) go to mcp_check as
# they are; their authorization servers answer without a person (--oauth-headless), and a client ID metadata
# document URL is offered for the servers that take them. The client-credentials ones need neither.
auth=()
case "${MCP_CONFORMANCE_SCENARIO:-}" in
  auth/client-credentials-*) auth=(--oauth-context "${MCP_CONFORMANCE_CONTEXT:-{\}}") ;;
  auth/*) auth=(--oauth-context "${MCP_CONFORMANCE_CONTEXT:-{\}}" --oauth-headless
                --oauth-client-metadata-url https://conformance-test.local/client-metadata.json) ;;
esac
# (No node here: the suite starts every scenario's client at once, and 39 node start-ups starve its servers.)
if [[ ${MCP_CONFORMANCE_CONTEXT:-} == *'"toolCalls"'* ]]; then
  "$check" --timeout 15000 "${auth[@]}" --calls "$MCP_CONFORMANCE_CONTEXT" "$1"
else
  "$check" --timeout 15000 "${auth[@]}" --all-tools "$1"
fi
rc=$?
[ "$rc" -le 1 ] && exit 0
exit "$rc"
