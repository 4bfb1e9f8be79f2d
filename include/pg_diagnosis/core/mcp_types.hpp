/*
 * mcp_types.hpp: what the MCP client and its owner exchange: the configuration, a call, its progress, task and
 * outcome, and what is known about the endpoint. Shared by the facade (mcp_client.hpp), the protocol rules
 * (mcp_protocol.hpp) and the worker.
 */
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pg_diagnosis/core/error_code.hpp"
#include "pg_diagnosis/core/oauth.hpp"

namespace pgdiag {

struct ClientConfig {
	std::string url; /* http(s)://host:port/path of the MCP endpoint */
	/* tools/call name; "" = none: the endpoint is set up without requiring the tools capability or looking the tool
	 * up */
	std::string tool = "run_diagnosis";
	std::string auth_token; /* sent as "Authorization: Bearer <token>" when not empty */
	long connect_timeout_ms = 10000;
	long request_timeout_ms = 300000; /* total per call, session set-up included */
	/* total for a task-backed call (polls included), from Submit; 0 = request_timeout_ms. Past it the call ends
	 * with TIMEOUT_ERROR and its task keeps running for the next attempt to resume. */
	long task_timeout_ms = 0;
	long inactivity_timeout_ms = 0;       /* no byte for this long ends the call; 0 = request_timeout_ms */
	size_t max_response_bytes = 8u << 20; /* per HTTP response, enforced in the write callback */
	int max_inflight = 64;                /* tools/call requests at once */
	std::string ca_file;                  /* CA bundle that verifies the server; "" = the system's */
	std::string client_cert, client_key;  /* mutual TLS (PEM files); "" = none */
	/* OAuth (used on a 401 when it can authorize: client credentials, a stored login, or the CLI's login); its
	 * TLS and timeouts are taken from the fields above. */
	OAuthSettings oauth;
	/* The operator's login (refresh token) file, read at each authorization and rewritten when the refresh token
	 * rotates; "" = none. */
	std::string oauth_store;
	std::string user_agent = "pg_diagnosis";
	/* sockets open at once (CURLMOPT_MAX_TOTAL_CONNECTIONS); 0 = no cap. Calls beyond it queue inside libcurl
	 * instead of failing. */
	long max_connections = 0;
	long shutdown_timeout_ms = 1000; /* how long Shutdown() may take to deliver its messages */
	/* With tool "": the set-up reads every tools/list page into EndpointInfo::tools (pg_diagnosis_mcp_check; the
	 * worker only looks its one tool up). */
	bool list_tools = false;
};

/* One tools/call. The arguments sent are {run_id, patient_id, attempt, schema_version, inputs, context_pack}. */
struct CallRequest {
	uint64_t tag = 0; /* the owner's handle, echoed in progress and outcome */
	std::string run_id;
	std::string patient_id;
	int attempt = 1;
	std::string schema_version = "v1";
	std::string inputs_json = "{}";       /* a JSON object, embedded as is */
	std::string context_pack_json = "{}"; /* a JSON object, embedded as is */
	std::string traceparent;    /* W3C traceparent: params._meta.traceparent and the traceparent header; "" = none */
	std::string resume_task_id; /* poll this task (created by an earlier call) instead of calling the tool */
	/* "" = the arguments above; else this JSON object is sent as the arguments instead (pg_diagnosis_mcp_check's
	 * calls of other tools; the worker never sets it) */
	std::string arguments_json;
};

/* A notifications/progress for a call's progressToken. */
struct CallProgress {
	uint64_t tag = 0;
	double progress = 0;
	double total = -1; /* < 0 when the server sent none */
	std::string message;
};

/* How a call ended. */
struct CallOutcome {
	uint64_t tag = 0;
	ErrorCode code = ErrorCode::None;
	std::string message;         /* for runs.error_message */
	std::string details_json;    /* a JSON object for runs.error_details, or "" */
	std::string response_json;   /* the JSON-RPC result object when one arrived (the mcp_response artifact), or "" */
	std::string result_json;     /* the validated diagnosis on success, or "" */
	std::string mcp_run_id;      /* result._meta.run_id, or "" */
	long http_status = 0;        /* of the tools/call response, 0 if none */
	int64_t retry_after_ms = -1; /* from a Retry-After header, -1 if none */
	int64_t elapsed_ms = 0;      /* from Submit to the outcome */
	/* the setting cannot work (tool not offered, no tools capability, protocol version rejected, HTTP 401/403, wrong
	 * URL): pause, do not spend an attempt */
	bool config_error = false;
	bool local_failure = false; /* this process ran out of descriptors or memory: requeue, do not spend an attempt */
	/* the task (resume_task_id or created by this call) is unknown or expired on the server: start a new attempt
	 * with a fresh call */
	bool task_lost = false;
	/* ended by Cancel(); code is McpError, result_json is "", response_json holds any result that still arrived */
	bool cancelled = false;
	std::string task_id; /* the task that backed this call, "" if none */
	/* server requests that came with the call and were not answered (past the few answered on its own stream,
	 * or on another stream of it) */
	int ignored_server_requests = 0;
};

/* A task the server created for a call: the worker commits it so that a restart resumes polling it. */
struct CallTask {
	uint64_t tag = 0;
	std::string task_id;
	int64_t ttl_ms = -1; /* -1 unknown or unlimited */
};

/* A tool of the endpoint's tools/list (ClientConfig::list_tools). */
struct ListedTool {
	std::string name;
	std::string input_schema_json; /* "" when it has none */
	std::string invalid;           /* why its x-mcp-header annotations make it unusable, "" if they do not */
};

/* What the client knows about the endpoint. */
struct EndpointInfo {
	std::string state;             /* "idle", "probing" (discover, initialize, tools/list) or "ready" */
	std::string era;               /* "modern", "legacy" or "" (not probed yet) */
	std::string protocol_version;  /* negotiated; "" until known */
	bool tasks = false;            /* tools/call of the configured tool may become a task */
	std::string last_error;        /* the last endpoint-level failure (probe, initialize, tools/list), "" if none */
	std::string session_id;        /* legacy session, "" if none */
	std::string capabilities_json; /* the server's capabilities object, "" until known */
	std::string server_name;       /* "name version" the server reported */
	int tool_offered = -1;         /* tools/list listed the tool: 1, did not: 0, not checked: -1 */
	std::string tool_task_support; /* the tool's execution.taskSupport, "" if none */
	int64_t oauth_tokens = 0;      /* access tokens obtained so far (OAuth) */
	std::vector<ListedTool> tools; /* every tool listed, with ClientConfig::list_tools */
};

} // namespace pgdiag
