/*
 * mcp_protocol.hpp: MCP's JSON-RPC messages: building requests for either era, parsing what the server sends, and
 * classifying an exchange into a CallOutcome exactly as the worker needs it (error code, config/local flags).
 *
 * Pure functions over strings and HttpExchange records: no I/O, no state, so every rule is unit-testable and
 * fuzzable on its own. Eras: "modern" is 2026-07-28 (per-request _meta, no sessions); "legacy" is the initialize
 * handshake revisions 2025-03-26 .. 2025-11-25.
 */
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pg_diagnosis/core/http_transport.hpp"
#include "pg_diagnosis/core/mcp_types.hpp"

namespace pgdiag {

class SchemaRegistry;

extern const char *const kModernVersion;        /* "2026-07-28" */
extern const char *const kLegacyRequestVersion; /* what initialize asks for: "2025-11-25" */
extern const char *const kTasksExtension;       /* "io.modelcontextprotocol/tasks" */

enum class Era { Unknown, Modern, Legacy };
const char *EraName(Era era); /* "modern", "legacy", "" */

/* True for the handshake revisions the client accepts from initialize. */
bool IsAcceptedLegacyVersion(const std::string &version);

/* JSON-RPC error codes the client acts on. */
constexpr int64_t kRpcMethodNotFound = -32601;
constexpr int64_t kRpcInvalidParams = -32602;
constexpr int64_t kRpcHeaderMismatch = -32020;
constexpr int64_t kRpcMissingCapability = -32021;
constexpr int64_t kRpcUnsupportedVersion = -32022;

/* What a request builder needs to know about the endpoint. */
struct RequestContext {
	Era era = Era::Unknown;
	std::string protocol_version;
	bool declare_tasks = false; /* modern: list the tasks extension in clientCapabilities */
};

struct ToolCallParams {
	std::string tool;
	std::string progress_token; /* also the request id */
	std::string traceparent;    /* "" = none */
	bool legacy_task = false;   /* 2025-11-25 experimental form: add "task": {} */
	const CallRequest *call = nullptr;
	/* MRTR retry: the inputResponses object (JSON text; "" = none) and the requestState to echo */
	std::string input_responses_json;
	bool has_request_state = false;
	std::string request_state;
};

/* `s` as JSON text (a quoted, escaped JSON string): how a request id is compared with the ids that come back. */
std::string JsonString(const std::string &s);

/* Request bodies. `id` is the request id as a plain string (sent as a JSON string). */
std::string BuildDiscover(const std::string &id, const RequestContext &ctx);
std::string BuildInitialize(const std::string &id, const std::string &version);
std::string BuildInitialized();
std::string BuildToolsList(const std::string &id, const RequestContext &ctx, const std::string &cursor);
std::string BuildToolCall(const std::string &id, const RequestContext &ctx, const ToolCallParams &params);
/* tasks/get, tasks/result or tasks/cancel for `task_id`. */
std::string BuildTaskRequest(const std::string &id, const RequestContext &ctx, const std::string &method,
                             const std::string &task_id, const std::string &traceparent);
/* Replies to a server request: `id_json` is the request's id as JSON text. */
std::string BuildEmptyResult(const std::string &id_json);
std::string BuildMethodNotFound(const std::string &id_json, const std::string &method);
/* notifications/cancelled for the request whose id (JSON text) is `request_id_json`. */
std::string BuildCancelled(const std::string &request_id_json, const std::string &reason);

/* The headers every request of the era carries besides Content-Type/Accept/Authorization. */
std::vector<std::string> EraHeaders(const RequestContext &ctx, const std::string &method, const std::string &name);
/* An HTTP header value as the transport page prescribes: plain when safe ASCII, else "=?base64?...?=". */
std::string EncodeHeaderValue(const std::string &value);

/* One JSON-RPC message from the server. JSON members are kept as compact JSON text. */
struct RpcMessage {
	enum class Kind { Response, Request, Notification };
	Kind kind = Kind::Notification;
	std::string id;     /* JSON text of the id; "" when absent */
	std::string method; /* requests and notifications */
	std::string params; /* JSON text, "" when absent */
	bool is_error = false;
	std::string result;     /* JSON text of result */
	std::string error_code; /* JSON text of error.code */
	int64_t error_code_int = 0;
	std::string error_message;
	std::string error_data; /* JSON text of error.data, "" when absent */
};

/* Parses a JSON body or one SSE event's data: a message or a batch. Non-objects in a batch are skipped. False
 * (and *error) when the text is not JSON. */
bool ParseMessages(const std::string &text, std::vector<RpcMessage> *out, std::string *error);

/* The longest progress message kept (characters): a peer's flood of long messages is not stored whole. */
constexpr size_t kMaxProgressMessageChars = 1000;
/* The longest task id accepted: it is committed with the run and sent back with every poll. */
constexpr size_t kMaxTaskIdBytes = 1024;

/* A notifications/progress for `token` (JSON text) becomes a CallProgress, its message cut to
 * kMaxProgressMessageChars; false for anything else. */
bool ProgressOf(const RpcMessage &message, const std::string &token, CallProgress *progress);

/* Outcome building blocks. */
CallOutcome ErrorOutcome(ErrorCode code, std::string message, std::string details = "");
/* A JSON-RPC error response: MCP_ERROR with {jsonrpc_code, jsonrpc_message} details. */
CallOutcome RpcErrorOutcome(const RpcMessage &response);
/* The HTTP layer of a finished exchange. `answered` = our JSON-RPC response arrived before the transfer ended (a
 * later reset does not matter then). Returns code None when the exchange is a usable 2xx. Sets config_error for
 * 401/403, local_failure for this process's resource shortage, http_status and retry_after_ms. */
CallOutcome TransportOutcome(const HttpExchange &x, bool answered);
/* A tools/call (or tasks/result) result object classified as a diagnosis. */
CallOutcome ToolResultOutcome(const std::string &result_json, const std::string &schema_version,
                              const SchemaRegistry &schemas);

/* The JSON-RPC error a 4xx body holds (one error response, parsed), false when it holds none. */
bool ErrorBodyOf(const HttpExchange &x, RpcMessage *error);
/* True when a non-2xx body holds a JSON-RPC error only a modern server sends (HeaderMismatch, missing client
 * capability, unsupported protocol version, or Method not found with 404): the era is modern. */
bool IsModernErrorBody(const HttpExchange &x, RpcMessage *error);
/* The `supported` versions of an UnsupportedProtocolVersionError. */
std::vector<std::string> SupportedVersions(const RpcMessage &error);

/* What server/discover or initialize told about the server. */
struct ServerFeatures {
	std::vector<std::string> versions; /* discover: supportedVersions; initialize: the one negotiated */
	bool tools = false;
	bool tasks_extension = false;   /* modern: capabilities.extensions["io.modelcontextprotocol/tasks"] */
	bool legacy_task_tools = false; /* legacy: capabilities.tasks.requests.tools.call */
	bool legacy_task_cancel = false;
	std::string capabilities_json;
	std::string server_name;
};
bool ParseDiscoverResult(const std::string &result_json, ServerFeatures *features, std::string *error);
bool ParseInitializeResult(const std::string &result_json, ServerFeatures *features, std::string *error);

/* A tool parameter the server wants mirrored into an Mcp-Param-{name} header (x-mcp-header, 2026-07-28). */
struct ParamHeader {
	std::vector<std::string> path; /* the chain of `properties` keys from the inputSchema root */
	std::string name;
};

/* The configured tool's entry in a tools/list page. */
struct ToolEntry {
	bool found = false;
	std::string task_support; /* execution.taskSupport: "forbidden", "optional", "required"; "" when absent */
	std::vector<ParamHeader> param_headers;
	std::string invalid; /* why its x-mcp-header annotations make the definition invalid, "" if they do not */
};
bool ParseToolsList(const std::string &result_json, const std::string &tool, ToolEntry *entry, std::string *next_cursor,
                    std::string *error);
/* Every tool of a tools/list page, appended to *tools. */
bool ParseToolsPage(const std::string &result_json, std::vector<ListedTool> *tools, std::string *next_cursor,
                    std::string *error);
/* Arguments that fit an inputSchema's shape, for a test call (pg_diagnosis_mcp_check --all-tools): each required
 * property (all of them when none is required) gets its default, its first enum value, or a value of its type. */
std::string ExampleArguments(const std::string &input_schema_json);
/* The tools/call arguments object {run_id, patient_id, attempt, schema_version, inputs, context_pack}, or the
 * call's arguments_json when set. */
std::string BuildToolArguments(const CallRequest &call);
/* "Mcp-Param-{name}: value" for each annotated parameter present in `arguments_json` (strings as they are,
 * integers in decimal, booleans as true/false, encoded as EncodeHeaderValue says); absent or null ones are
 * omitted. */
std::vector<std::string> ParamHeaderLines(const std::vector<ParamHeader> &headers, const std::string &arguments_json);

/* MRTR (2026-07-28, basic/patterns/mrtr): a result with resultType "input_required" asks the client to answer its
 * inputRequests and call again, echoing requestState exactly. */
struct InputRequest {
	std::string key;
	std::string method;  /* "elicitation/create", "sampling/createMessage", "roots/list", ... */
	std::string message; /* params.message of an elicitation, "" otherwise */
};
struct InputRequired {
	std::vector<InputRequest> requests;
	bool has_request_state = false;
	std::string request_state; /* opaque: never inspected */
};
/* True when `result_json` is an InputRequiredResult; *out gets its requests and state. */
bool ParseInputRequired(const std::string &result_json, InputRequired *out);
/* The inputResponses a worker gives (it has no user and no model): every elicitation declined, roots an empty list.
 * "" when there is no request. False when a request cannot be answered (sampling, an unknown method); *refused then
 * names it. */
bool BuildInputResponses(const InputRequired &input, std::string *responses_json, std::string *refused);
/* What the requests ask for, for an error message: `method "message"` or `method (key)`, comma-separated. */
std::string DescribeInputRequests(const InputRequired &input);

/* Tasks: the modern extension's CreateTaskResult/DetailedTask and the 2025-11-25 experimental form. */
struct TaskInfo {
	std::string task_id;
	std::string status;
	std::string status_message;
	int64_t ttl_ms = -1;  /* -1 unknown or unlimited */
	int64_t poll_ms = -1; /* -1 none suggested */
	std::string result;   /* modern completed task: the tool result (JSON text) */
	std::string error;    /* modern failed task: the JSON-RPC error object (JSON text) */
};
enum class TaskParse { NotATask, Task, Invalid };
/* A tools/call result that is a task handle. */
TaskParse ParseCreateTask(const std::string &result_json, Era era, TaskInfo *task);
/* A tasks/get result. */
bool ParseTaskStatus(const std::string &result_json, Era era, TaskInfo *task);
bool IsTerminalTaskStatus(const std::string &status);

} // namespace pgdiag
