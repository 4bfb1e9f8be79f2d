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
# Authorization: the scenario's context (MCP_CONFORMANCE_CONTEXT: client_id, client_secret, private_key_pem) becomes
# mcp_check's OAuth options; the auth/* scenarios' authorization servers answer without a person (--oauth-headless),
# and a client ID metadata document URL is offered for the servers that take them.
auth=()
case "${MCP_CONFORMANCE_SCENARIO:-}" in
  auth/*)
    scratch=$(mktemp -d /tmp/pg_diagnosis-cut.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    node -e '
      const fs = require("fs"), dir = process.argv[1];
      const c = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || "{}");
      if (c.client_id) fs.writeFileSync(dir + "/client_id", c.client_id);
      if (c.client_secret) fs.writeFileSync(dir + "/secret", c.client_secret + "\n", { mode: 0o600 });
      if (c.private_key_pem) fs.writeFileSync(dir + "/key.pem", c.private_key_pem, { mode: 0o600 });
    ' "$scratch" || exit 2
    [ -f "$scratch/client_id" ] && auth+=(--oauth-client-id "$(cat "$scratch/client_id")")
    [ -f "$scratch/secret" ] && auth+=(--oauth-client-secret-file "$scratch/secret")
    [ -f "$scratch/key.pem" ] && auth+=(--oauth-private-key "$scratch/key.pem")
    case "${MCP_CONFORMANCE_SCENARIO}" in
      auth/client-credentials-*) ;;
      *) auth+=(--oauth-headless --oauth-client-metadata-url https://conformance-test.local/client-metadata.json) ;;
    esac
    ;;
esac
"${PGDIAG_MCP_CHECK:?PGDIAG_MCP_CHECK names pg_diagnosis_mcp_check}" --timeout 15000 "${auth[@]}" "$1" $tool
rc=$?
[ "$rc" -le 1 ] && exit 0
exit "$rc"
