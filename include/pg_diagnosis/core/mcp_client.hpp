/*
 * mcp_client.hpp: a non-blocking MCP Streamable HTTP client on libcurl's multi socket interface.
 *
 * The owner (the background worker) never blocks inside the client. It waits on EventFd() becoming
 * readable (an epoll descriptor that aggregates every socket libcurl asked to watch) together with its own
 * latch, for at most TimeoutMs(); then it calls Drive(), which performs whatever I/O and timers are due, and
 * collects finished calls with TakeOutcomes() and progress notifications with TakeProgress().
 *
 * One MCP session per endpoint is shared by all calls: initialize, notifications/initialized, then
 * concurrent tools/call requests. Calls submitted before the session is ready wait for it inside the client.
 * On a 404 to a request that carried Mcp-Session-Id the session is re-initialized once and the call retried
 * once. No exception escapes a public member except std::bad_alloc; no exception or error ever crosses a
 * libcurl callback.
 */
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pg_diagnosis/core/error_code.hpp"

namespace pgdiag {

class SchemaRegistry;

struct ClientConfig {
	std::string url;                      /* http(s)://host:port/path of the MCP endpoint */
	std::string tool = "run_diagnosis";   /* tools/call name */
	std::string auth_token;               /* sent as "Authorization: Bearer <token>" when not empty */
	long connect_timeout_ms = 10000;
	long request_timeout_ms = 300000;     /* total per call, session set-up included */
	long inactivity_timeout_ms = 0;       /* no byte for this long ends the call; 0 = request_timeout_ms */
	size_t max_response_bytes = 8u << 20; /* per HTTP response, enforced in the write callback */
	int max_inflight = 64;                /* tools/call requests at once */
	std::string ca_file;                  /* extra CA bundle for TLS tests; "" = system default */
	std::string user_agent = "pg_diagnosis";
};

/* One tools/call. The arguments sent are {run_id, patient_id, attempt, schema_version, inputs, context_pack}. */
struct CallRequest {
	uint64_t tag = 0;              /* the owner's handle, echoed in progress and outcome */
	std::string run_id;
	std::string patient_id;
	int attempt = 1;
	std::string schema_version = "v1";
	std::string inputs_json = "{}";       /* a JSON object, embedded as is */
	std::string context_pack_json = "{}"; /* a JSON object, embedded as is */
};

/* A notifications/progress for a call's progressToken. */
struct CallProgress {
	uint64_t tag = 0;
	double progress = 0;
	double total = -1;        /* < 0 when the server sent none */
	std::string message;
};

/* How a call ended. */
struct CallOutcome {
	uint64_t tag = 0;
	ErrorCode code = ErrorCode::None;
	std::string message;        /* for runs.error_message */
	std::string details_json;   /* a JSON object for runs.error_details, or "" */
	std::string response_json;  /* the JSON-RPC result object when one arrived (the mcp_response artifact), or "" */
	std::string result_json;    /* the validated diagnosis on success, or "" */
	std::string mcp_run_id;     /* result._meta.run_id, or "" */
	long http_status = 0;       /* of the tools/call response, 0 if none */
	int64_t retry_after_ms = -1;/* from a Retry-After header, -1 if none */
	int64_t elapsed_ms = 0;     /* from Submit to the outcome */
};

class McpClient {
public:
	/* `schemas` must outlive the client; results are validated against schemas->Find(schema_version). */
	static std::unique_ptr<McpClient> Create(const ClientConfig &config, const SchemaRegistry *schemas);
	virtual ~McpClient() = default;

	/* Applies to calls submitted from now on; a changed url or token drops the session. */
	virtual void Configure(const ClientConfig &config) = 0;

	/* Starts a call; false when max_inflight calls are already in flight. */
	virtual bool Submit(CallRequest request) = 0;
	virtual size_t InFlight() const = 0;

	/* A descriptor that is readable when Drive() has socket work to do. Stable for the client's life. */
	virtual int EventFd() const = 0;
	/* Milliseconds until Drive() must run for timers even without socket events; -1 when none is pending. */
	virtual long TimeoutMs() const = 0;
	/* Performs due socket I/O and timers without blocking. */
	virtual void Drive() = 0;

	virtual std::vector<CallProgress> TakeProgress() = 0;
	virtual std::vector<CallOutcome> TakeOutcomes() = 0;

	/* Ends every call in flight at once without an outcome (shutdown); returns their tags. */
	virtual std::vector<uint64_t> AbortAll() = 0;
};

} // namespace pgdiag
