/*
 * error_code.hpp: the run error codes of SPEC section 5 and whether each is worth a retry.
 */
#pragma once

namespace pgdiag {

enum class ErrorCode {
	None = 0,         /* success */
	ValidationError,  /* result does not match the run's JSON Schema: permanent */
	LlmError,         /* tool result has isError: true: permanent */
	ContextPackError, /* building the context pack failed (raised by the worker, not the core): permanent, but for a
	                     pack over diagnosis.context_pack_timeout_ms or a lock it could not get, retried */
	McpError,         /* JSON-RPC error, protocol violation, HTTP 4xx other than 408/429: permanent */
	NetworkError,     /* connect, reset, DNS, HTTP 5xx, 408, 429: transient */
	TimeoutError,     /* connect, total or inactivity timeout: transient */
	UnknownError,     /* anything else: permanent */
};

/* Every code a run can end with (all but None): the list of runs.error_code's CHECK in sql/pg_diagnosis.sql, which
 * test/unit/test_run_status.cpp compares it with. A new code is added here, in ErrorCodeName and IsTransient, in
 * that CHECK (install script and update script) and in SPEC section 5. */
constexpr ErrorCode kRunErrorCodes[] = {
    ErrorCode::ValidationError, ErrorCode::LlmError,     ErrorCode::ContextPackError, ErrorCode::McpError,
    ErrorCode::NetworkError,    ErrorCode::TimeoutError, ErrorCode::UnknownError};

/* The name stored in runs.error_code, e.g. "VALIDATION_ERROR"; "" for None. */
const char *ErrorCodeName(ErrorCode code);

/* True for the codes a run retries on (NETWORK_ERROR, TIMEOUT_ERROR). */
bool IsTransient(ErrorCode code);

} // namespace pgdiag
