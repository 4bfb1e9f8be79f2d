#!/usr/bin/env bash
# The client the conformance suite drives: pg_diagnosis_mcp_check against the scenario's server URL ($1), with the
# scenario's tool. The suite's tools are not diagnosis tools, so "the tool answered but not with a valid diagnosis"
# (mcp_check's exit 1) is the expected outcome here and counts as success; anything else (configuration, protocol,
# network, timeout: exit 2) fails the scenario.
set -u
case "${MCP_CONFORMANCE_SCENARIO:-}" in
  initialize) tool="" ;;               # the handshake only: its server declares no tools
  tools_call) tool=add_numbers ;;
  sse-retry) tool=test_reconnection ;;
  *) echo "client-under-test.sh: no tool known for scenario '${MCP_CONFORMANCE_SCENARIO:-}'" >&2; exit 2 ;;
esac
"${PGDIAG_MCP_CHECK:?PGDIAG_MCP_CHECK names pg_diagnosis_mcp_check}" --timeout 15000 "$1" $tool
rc=$?
[ "$rc" -le 1 ] && exit 0
exit "$rc"
