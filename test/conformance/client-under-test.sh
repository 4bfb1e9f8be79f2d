#!/usr/bin/env bash
# The client the conformance suite drives: pg_diagnosis_mcp_check against the scenario's server URL ($1), with the
# scenario's tool. The suite's tools are not diagnosis tools, so "the tool answered but not with a valid diagnosis"
# (mcp_check's exit 1) is the expected outcome here and counts as success; anything else (configuration, protocol,
# network, timeout: exit 2) fails the scenario.
set -u
case "${MCP_CONFORMANCE_SCENARIO:-}" in
  tools_call) tool=add_numbers ;;
  request-metadata) tool="" ;;
  http-standard-headers) tool=test_headers ;;
  http-custom-headers) tool=test_custom_headers ;;
  http-invalid-tool-headers) tool=valid_tool ;;
  json-schema-ref-no-deref) tool=lookup_user ;;
  sep-2322-client-request-state) tool=test_mrtr_echo_state ;;
  auth/*) tool=test-tool ;;
  *) echo "client-under-test.sh: no tool known for scenario '${MCP_CONFORMANCE_SCENARIO:-}'" >&2; exit 2 ;;
esac
"${PGDIAG_MCP_CHECK:?PGDIAG_MCP_CHECK names pg_diagnosis_mcp_check}" --timeout 15000 "$1" $tool
rc=$?
[ "$rc" -le 1 ] && exit 0
exit "$rc"
