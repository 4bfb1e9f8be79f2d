/*
 * guc.hpp: the diagnosis.* settings (SPEC section 7).
 */
#pragma once

extern "C" {
extern char *pgdiag_database;
extern int pgdiag_workers;
extern bool pgdiag_enabled;
extern char *pgdiag_mcp_url;
extern char *pgdiag_mcp_tool;
extern char *pgdiag_mcp_auth_token;
extern int pgdiag_max_inflight;
extern int pgdiag_request_timeout_ms;
extern int pgdiag_connect_timeout_ms;
extern int pgdiag_max_retries;
extern int pgdiag_retry_base_delay_ms;
extern int pgdiag_poll_interval_ms;
extern int pgdiag_max_response_bytes;
extern int pgdiag_max_inputs_bytes;
extern double pgdiag_min_confidence;
extern char *pgdiag_context_pack_function;
extern int pgdiag_max_inflight_per_organization;
extern int pgdiag_max_context_pack_bytes;
extern int pgdiag_context_pack_timeout_ms;
extern char *pgdiag_fhir_source; /* read by diagnosis.fhir_context_pack through current_setting() */
/* Read by the enqueue functions through current_setting(). */
extern char *pgdiag_default_schema_version;
extern char *pgdiag_worker_role;
extern char *pgdiag_mcp_oauth_client_id;
extern char *pgdiag_mcp_oauth_client_secret;
extern char *pgdiag_mcp_oauth_private_key;
extern char *pgdiag_mcp_oauth_scope;
extern char *pgdiag_mcp_ca_file;
extern char *pgdiag_mcp_client_cert;
extern char *pgdiag_mcp_client_key;
}

namespace pgdiag {
/* Defines every setting and reserves the prefix. Called once from _PG_init. */
void InitGucs();
} // namespace pgdiag
