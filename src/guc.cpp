/*-------------------------------------------------------------------------
 * guc.cpp
 *		The diagnosis.* settings: contexts, units and ranges of SPEC section 7.
 *
 * database and workers shape the set of background workers, and worker_role is who they are once for their
 * life, so these are PGC_POSTMASTER; everything the worker
 * reads while running is PGC_SIGHUP and takes effect at the next reload; max_inputs_bytes bounds what callers
 * may enqueue, so only a superuser may change it in a session (PGC_SUSET).
 *-------------------------------------------------------------------------
 */
#include <climits>

extern "C" {
#include "postgres.h"

#include "utils/guc.h"
}

#include "pg_diagnosis/pg/guc.hpp"

char *pgdiag_database = nullptr;
int pgdiag_workers = 1;
bool pgdiag_enabled = true;
char *pgdiag_mcp_url = nullptr;
char *pgdiag_mcp_tool = nullptr;
char *pgdiag_mcp_auth_token = nullptr;
int pgdiag_max_inflight = 64;
int pgdiag_request_timeout_ms = 300000;
int pgdiag_connect_timeout_ms = 10000;
int pgdiag_max_retries = 3;
int pgdiag_retry_base_delay_ms = 5000;
int pgdiag_poll_interval_ms = 1000;
int pgdiag_max_response_bytes = 8 * 1024 * 1024;
int pgdiag_max_inputs_bytes = 1024 * 1024;
double pgdiag_min_confidence = 0.5;
char *pgdiag_context_pack_function = nullptr;
int pgdiag_max_inflight_per_organization = 0;
int pgdiag_max_context_pack_bytes = 1024 * 1024;
int pgdiag_context_pack_timeout_ms = 5000;
char *pgdiag_fhir_source = nullptr;
char *pgdiag_default_schema_version = nullptr;
char *pgdiag_worker_role = nullptr;

char *pgdiag_mcp_oauth_client_id = nullptr;
char *pgdiag_mcp_oauth_client_secret = nullptr;
char *pgdiag_mcp_oauth_private_key = nullptr;
char *pgdiag_mcp_oauth_scope = nullptr;
char *pgdiag_mcp_ca_file = nullptr;
char *pgdiag_mcp_client_cert = nullptr;
char *pgdiag_mcp_client_key = nullptr;

/* The token is a secret: SHOW and pg_settings print a mask, to superusers too. */
static const char *
ShowAuthToken(void)
{
	return (pgdiag_mcp_auth_token && pgdiag_mcp_auth_token[0]) ? "********" : "";
}

/* So is the OAuth client secret (its "file:/path" form included: even the path is not shown). */
static const char *
ShowClientSecret(void)
{
	return (pgdiag_mcp_oauth_client_secret && pgdiag_mcp_oauth_client_secret[0]) ? "********" : "";
}

/* Defines a sighup string setting of the MCP connection. */
static void
DefineConnectionString(const char *name, const char *short_desc, const char *long_desc, char **variable, int flags,
                       GucShowHook show)
{
	DefineCustomStringVariable(name, short_desc, long_desc, variable, "", PGC_SIGHUP, flags, NULL, NULL, show);
}

void
pgdiag::InitGucs()
{
	DefineCustomStringVariable("diagnosis.database", gettext_noop("Database the pg_diagnosis workers connect to."),
	                           NULL, &pgdiag_database, "postgres", PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.workers", gettext_noop("Number of pg_diagnosis background workers."), NULL,
	                        &pgdiag_workers, 1, 0, 64, PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("diagnosis.enabled", gettext_noop("Whether the workers claim new runs."),
	                         gettext_noop("When off, runs in flight finish and queued runs wait."), &pgdiag_enabled,
	                         true, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.mcp_url", gettext_noop("URL of the MCP server's Streamable HTTP endpoint."),
	                           gettext_noop("When unset the workers idle and runs stay queued."), &pgdiag_mcp_url, "",
	                           PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.mcp_tool", gettext_noop("Name of the MCP tool called for each run."), NULL,
	                           &pgdiag_mcp_tool, "run_diagnosis", PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.mcp_auth_token",
	                           gettext_noop("Bearer token sent to the MCP server; never shown."), NULL,
	                           &pgdiag_mcp_auth_token, "", PGC_SIGHUP,
	                           GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, NULL, NULL, ShowAuthToken);
	DefineCustomIntVariable("diagnosis.max_inflight", gettext_noop("MCP calls in flight per worker."), NULL,
	                        &pgdiag_max_inflight, 64, 1, 4096, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.request_timeout_ms", gettext_noop("Total time allowed for one MCP call."), NULL,
	                        &pgdiag_request_timeout_ms, 300000, 100, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL,
	                        NULL);
	DefineCustomIntVariable("diagnosis.connect_timeout_ms", gettext_noop("Time allowed to connect to the MCP server."),
	                        NULL, &pgdiag_connect_timeout_ms, 10000, 10, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL,
	                        NULL);
	DefineCustomIntVariable("diagnosis.max_retries",
	                        gettext_noop("Default retries after the first attempt for runs enqueued without one."),
	                        NULL, &pgdiag_max_retries, 3, 0, 100, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.retry_base_delay_ms",
	                        gettext_noop("Base delay of the exponential backoff between attempts."), NULL,
	                        &pgdiag_retry_base_delay_ms, 5000, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.poll_interval_ms",
	                        gettext_noop("Longest sleep of an idle worker when no wake-up comes."), NULL,
	                        &pgdiag_poll_interval_ms, 1000, 10, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.max_response_bytes", gettext_noop("Largest MCP response accepted."), NULL,
	                        &pgdiag_max_response_bytes, 8 * 1024 * 1024, 1024, INT_MAX, PGC_SIGHUP, GUC_UNIT_BYTE, NULL,
	                        NULL, NULL);
	DefineCustomIntVariable("diagnosis.max_inputs_bytes", gettext_noop("Largest inputs object a run may carry."), NULL,
	                        &pgdiag_max_inputs_bytes, 1024 * 1024, 2, INT_MAX, PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL,
	                        NULL);
	DefineCustomRealVariable("diagnosis.min_confidence",
	                         gettext_noop("Diagnoses less confident than this are marked needs_review."), NULL,
	                         &pgdiag_min_confidence, 0.5, 0.0, 1.0, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.context_pack_function",
	                           gettext_noop("Function (patient_id uuid) returning jsonb that builds context packs."),
	                           gettext_noop("Empty means diagnosis.build_context_pack."), &pgdiag_context_pack_function,
	                           "", PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.max_inflight_per_organization",
	                        gettext_noop("Most runs one organization may have running at once; 0 means no cap."),
	                        gettext_noop("Counted by each claim from committed runs."),
	                        &pgdiag_max_inflight_per_organization, 0, 0, 1000000, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.max_context_pack_bytes",
	                        gettext_noop("Largest context pack a run may carry; a larger one fails its run."),
	                        gettext_noop("A claim holds at most 8 times this in packs; later runs wait for the next."),
	                        &pgdiag_max_context_pack_bytes, 1024 * 1024, 1024, INT_MAX / 8, PGC_SIGHUP, GUC_UNIT_BYTE,
	                        NULL, NULL, NULL);
	DefineCustomIntVariable("diagnosis.context_pack_timeout_ms",
	                        gettext_noop("Longest time building one claim's or one run's context pack may take."),
	                        gettext_noop("A pack over it is retried with backoff (CONTEXT_PACK_ERROR)."),
	                        &pgdiag_context_pack_timeout_ms, 5000, 10, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL,
	                        NULL);
	DefineCustomStringVariable("diagnosis.fhir_source",
	                           gettext_noop("Table or view of FHIR R4 Observation resources read by "
	                                        "diagnosis.fhir_context_pack."),
	                           gettext_noop("A schema-qualified name; the relation has a jsonb column \"resource\"."),
	                           &pgdiag_fhir_source, "", PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.default_schema_version",
	                           gettext_noop("Result schema version of runs enqueued without one."),
	                           gettext_noop("A version in diagnosis.result_schemas; checked at each enqueue."),
	                           &pgdiag_default_schema_version, "v1", PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("diagnosis.worker_role",
	                           gettext_noop("Role the pg_diagnosis workers act as; neither a superuser nor a member of "
	                                        "one."),
	                           gettext_noop("CREATE EXTENSION creates diagnosis_worker; another role must be a member "
	                                        "of it."),
	                           &pgdiag_worker_role, "diagnosis_worker", PGC_POSTMASTER, 0, NULL, NULL, NULL);
	/* (0.3) OAuth and TLS. The private key and the client secret take "file:/path"; the secret is shown to no
	 * one, and only superusers see or set either (the key's value names a file, never holds the key, in practice). */
	DefineConnectionString("diagnosis.mcp_oauth_client_id",
	                       gettext_noop("OAuth client id the workers authorize with at the MCP server."), NULL,
	                       &pgdiag_mcp_oauth_client_id, 0, NULL);
	DefineConnectionString("diagnosis.mcp_oauth_client_secret",
	                       gettext_noop("OAuth client secret (client_secret_basic/_post); never shown."),
	                       gettext_noop("\"file:/path\" reads the first line of that file."),
	                       &pgdiag_mcp_oauth_client_secret, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
	                       ShowClientSecret);
	DefineConnectionString("diagnosis.mcp_oauth_private_key",
	                       gettext_noop("\"file:/path\" of the PEM private key for private_key_jwt (RFC 7523)."), NULL,
	                       &pgdiag_mcp_oauth_private_key, GUC_SUPERUSER_ONLY, NULL);
	DefineConnectionString("diagnosis.mcp_oauth_scope",
	                       gettext_noop("OAuth scope to ask for; empty means what the MCP server names."), NULL,
	                       &pgdiag_mcp_oauth_scope, 0, NULL);
	DefineConnectionString("diagnosis.mcp_ca_file",
	                       gettext_noop("CA bundle (PEM) that verifies the MCP and authorization servers."),
	                       gettext_noop("Empty means the system's CA bundle."), &pgdiag_mcp_ca_file, 0, NULL);
	DefineConnectionString("diagnosis.mcp_client_cert", gettext_noop("Client certificate (PEM) for mutual TLS."), NULL,
	                       &pgdiag_mcp_client_cert, 0, NULL);
	DefineConnectionString("diagnosis.mcp_client_key", gettext_noop("Private key (PEM) of the client certificate."),
	                       NULL, &pgdiag_mcp_client_key, GUC_SUPERUSER_ONLY, NULL);
	MarkGUCPrefixReserved("diagnosis");
}
