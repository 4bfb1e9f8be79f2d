/*
 * mcp_protocol.cpp: MCP JSON-RPC messages for both eras, and the classification of what comes back.
 */
#include <algorithm>
#include <cctype>
#include <cstring>
#include <strings.h>
#include <ctime>

#include <curl/curl.h>

#include "pg_diagnosis/core/backoff.hpp"
#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/result.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

const char *const kModernVersion = "2026-07-28";
const char *const kLegacyRequestVersion = "2025-11-25";
const char *const kTasksExtension = "io.modelcontextprotocol/tasks";

namespace {

const char *const kClientName = "pg_diagnosis";
const char *const kClientVersion = "0.3.0";

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void
Str(Writer &w, const std::string &s)
{
	w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
}

void
Header(Writer &w, const std::string &id, const char *method)
{
	w.Key("jsonrpc");
	w.String("2.0");
	if (!id.empty()) {
		w.Key("id");
		Str(w, id);
	}
	w.Key("method");
	w.String(method);
}

/* The modern per-request _meta members (protocol version, client identity and capabilities), written into an
 * open _meta object; nothing for the legacy era, whose session carries them. */
void
EraMeta(Writer &w, const RequestContext &ctx)
{
	if (ctx.era != Era::Modern)
		return;
	w.Key("io.modelcontextprotocol/protocolVersion");
	Str(w, ctx.protocol_version);
	w.Key("io.modelcontextprotocol/clientInfo");
	w.StartObject();
	w.Key("name");
	w.String(kClientName);
	w.Key("version");
	w.String(kClientVersion);
	w.EndObject();
	w.Key("io.modelcontextprotocol/clientCapabilities");
	w.StartObject();
	if (ctx.declare_tasks) {
		w.Key("extensions");
		w.StartObject();
		w.Key(kTasksExtension);
		w.StartObject();
		w.EndObject();
		w.EndObject();
	}
	w.EndObject();
}

std::string
Text(const rapidjson::StringBuffer &b)
{
	return std::string(b.GetString(), b.GetSize());
}

const rapidjson::Value *
Member(const rapidjson::Value &v, const char *name)
{
	if (!v.IsObject())
		return nullptr;
	auto it = v.FindMember(name);
	return it == v.MemberEnd() ? nullptr : &it->value;
}

std::string
StringMember(const rapidjson::Value &v, const char *name)
{
	const rapidjson::Value *m = Member(v, name);
	return m && m->IsString() ? std::string(m->GetString(), m->GetStringLength()) : std::string();
}

int64_t
IntMember(const rapidjson::Value &v, const char *name)
{
	const rapidjson::Value *m = Member(v, name);
	if (!m || !m->IsNumber())
		return -1;
	double d = m->GetDouble();
	return d < 0 ? -1 : d > 9e15 ? static_cast<int64_t>(9e15) : static_cast<int64_t>(d);
}

bool
ParseObject(const std::string &text, rapidjson::Document &doc, std::string *error)
{
	if (!ParseJson(text.data(), text.size(), doc, error))
		return false;
	if (!doc.IsObject()) {
		*error = "not a JSON object";
		return false;
	}
	return true;
}

RpcMessage
MessageOf(const rapidjson::Value &msg)
{
	RpcMessage m;
	const rapidjson::Value *id = Member(msg, "id");
	if (id && !id->IsNull())
		m.id = ToJson(*id);
	m.method = StringMember(msg, "method");
	if (const rapidjson::Value *p = Member(msg, "params"))
		m.params = ToJson(*p);
	if (!m.method.empty()) {
		m.kind = m.id.empty() ? RpcMessage::Kind::Notification : RpcMessage::Kind::Request;
		return m;
	}
	m.kind = RpcMessage::Kind::Response;
	if (const rapidjson::Value *err = Member(msg, "error")) {
		m.is_error = true;
		m.error_code = "null";
		if (const rapidjson::Value *c = Member(*err, "code")) {
			m.error_code = ToJson(*c);
			if (c->IsInt64())
				m.error_code_int = c->GetInt64();
		}
		m.error_message = StringMember(*err, "message");
		if (const rapidjson::Value *d = Member(*err, "data"))
			m.error_data = ToJson(*d);
	} else if (const rapidjson::Value *res = Member(msg, "result"))
		m.result = ToJson(*res);
	else {
		m.is_error = true;
		m.error_code = "null";
		m.error_message = "JSON-RPC response has neither result nor error";
	}
	return m;
}

bool
IsModernCode(int64_t code, long status)
{
	return code == kRpcHeaderMismatch || code == kRpcMissingCapability || code == kRpcUnsupportedVersion ||
	       (code == kRpcMethodNotFound && status == 404);
}

} // namespace

const char *
EraName(Era era)
{
	switch (era) {
	case Era::Modern:
		return "modern";
	case Era::Legacy:
		return "legacy";
	default:
		return "";
	}
}

bool
IsAcceptedLegacyVersion(const std::string &v)
{
	return v == "2025-11-25" || v == "2025-06-18" || v == "2025-03-26";
}

/* ------------------------------------------------------------ building */

std::string
JsonString(const std::string &s)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	Str(w, s);
	return Text(b);
}

std::string
BuildDiscover(const std::string &id, const RequestContext &ctx)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, id, "server/discover");
	w.Key("params");
	w.StartObject();
	w.Key("_meta");
	w.StartObject();
	EraMeta(w, ctx);
	w.EndObject();
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildInitialize(const std::string &id, const std::string &version)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, id, "initialize");
	w.Key("params");
	w.StartObject();
	w.Key("protocolVersion");
	Str(w, version);
	w.Key("capabilities");
	w.StartObject();
	w.EndObject();
	w.Key("clientInfo");
	w.StartObject();
	w.Key("name");
	w.String(kClientName);
	w.Key("version");
	w.String(kClientVersion);
	w.EndObject();
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildInitialized()
{
	return "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";
}

std::string
BuildToolsList(const std::string &id, const RequestContext &ctx, const std::string &cursor)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, id, "tools/list");
	w.Key("params");
	w.StartObject();
	if (!cursor.empty()) {
		w.Key("cursor");
		Str(w, cursor);
	}
	if (ctx.era == Era::Modern) {
		w.Key("_meta");
		w.StartObject();
		EraMeta(w, ctx);
		w.EndObject();
	}
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildToolCall(const std::string &id, const RequestContext &ctx, const ToolCallParams &p)
{
	const CallRequest &r = *p.call;
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, id, "tools/call");
	w.Key("params");
	w.StartObject();
	w.Key("name");
	Str(w, p.tool);
	w.Key("arguments");
	std::string arguments = BuildToolArguments(r);
	w.RawValue(arguments.data(), arguments.size(), rapidjson::kObjectType);
	if (p.legacy_task) {
		w.Key("task");
		w.StartObject();
		w.EndObject();
	}
	if (!p.input_responses_json.empty()) {
		w.Key("inputResponses");
		w.RawValue(p.input_responses_json.data(), p.input_responses_json.size(), rapidjson::kObjectType);
	}
	if (p.has_request_state) {
		w.Key("requestState");
		Str(w, p.request_state);
	}
	w.Key("_meta");
	w.StartObject();
	w.Key("progressToken");
	Str(w, p.progress_token);
	if (!p.traceparent.empty()) {
		w.Key("traceparent");
		Str(w, p.traceparent);
	}
	EraMeta(w, ctx);
	w.EndObject();
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildToolArguments(const CallRequest &r)
{
	if (!r.arguments_json.empty())
		return r.arguments_json;
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	w.Key("run_id");
	Str(w, r.run_id);
	w.Key("patient_id");
	Str(w, r.patient_id);
	w.Key("attempt");
	w.Int(r.attempt);
	w.Key("schema_version");
	Str(w, r.schema_version);
	w.Key("inputs");
	w.RawValue(r.inputs_json.data(), r.inputs_json.size(), rapidjson::kObjectType);
	w.Key("context_pack");
	w.RawValue(r.context_pack_json.data(), r.context_pack_json.size(), rapidjson::kObjectType);
	w.EndObject();
	return Text(b);
}

std::string
BuildTaskRequest(const std::string &id, const RequestContext &ctx, const std::string &method,
                 const std::string &task_id, const std::string &traceparent)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, id, method.c_str());
	w.Key("params");
	w.StartObject();
	w.Key("taskId");
	Str(w, task_id);
	if (ctx.era == Era::Modern || !traceparent.empty()) {
		w.Key("_meta");
		w.StartObject();
		if (!traceparent.empty()) {
			w.Key("traceparent");
			Str(w, traceparent);
		}
		EraMeta(w, ctx);
		w.EndObject();
	}
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildEmptyResult(const std::string &id_json)
{
	return "{\"jsonrpc\":\"2.0\",\"id\":" + id_json + ",\"result\":{}}";
}

std::string
BuildMethodNotFound(const std::string &id_json, const std::string &method)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	w.Key("jsonrpc");
	w.String("2.0");
	w.Key("id");
	w.RawValue(id_json.data(), id_json.size(), rapidjson::kStringType);
	w.Key("error");
	w.StartObject();
	w.Key("code");
	w.Int64(kRpcMethodNotFound);
	w.Key("message");
	Str(w, "Method not found: " + method + " (pg_diagnosis answers no server requests but ping)");
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
BuildCancelled(const std::string &request_id_json, const std::string &reason)
{
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	Header(w, "", "notifications/cancelled");
	w.Key("params");
	w.StartObject();
	w.Key("requestId");
	w.RawValue(request_id_json.data(), request_id_json.size(), rapidjson::kStringType);
	w.Key("reason");
	Str(w, reason);
	w.EndObject();
	w.EndObject();
	return Text(b);
}

std::string
EncodeHeaderValue(const std::string &value)
{
	bool safe =
	    !value.empty() && value.front() != ' ' && value.front() != '\t' && value.back() != ' ' && value.back() != '\t';
	for (unsigned char c : value)
		safe = safe && ((c >= 0x20 && c <= 0x7e) || c == '\t');
	if (value.size() >= 11 && value.rfind("=?base64?", 0) == 0 && value.compare(value.size() - 2, 2, "?=") == 0)
		safe = false;
	if (safe)
		return value;
	static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	std::string out = "=?base64?";
	size_t i = 0;
	for (; i + 2 < value.size(); i += 3) {
		uint32_t n = (uint8_t(value[i]) << 16) | (uint8_t(value[i + 1]) << 8) | uint8_t(value[i + 2]);
		out += table[n >> 18];
		out += table[(n >> 12) & 63];
		out += table[(n >> 6) & 63];
		out += table[n & 63];
	}
	if (i + 1 == value.size()) {
		uint32_t n = uint8_t(value[i]) << 16;
		out += table[n >> 18];
		out += table[(n >> 12) & 63];
		out += "==";
	} else if (i + 2 == value.size()) {
		uint32_t n = (uint8_t(value[i]) << 16) | (uint8_t(value[i + 1]) << 8);
		out += table[n >> 18];
		out += table[(n >> 12) & 63];
		out += table[(n >> 6) & 63];
		out += '=';
	}
	return out + "?=";
}

std::vector<std::string>
EraHeaders(const RequestContext &ctx, const std::string &method, const std::string &name)
{
	std::vector<std::string> h;
	if (!ctx.protocol_version.empty())
		h.push_back("MCP-Protocol-Version: " + ctx.protocol_version);
	if (ctx.era == Era::Modern) {
		h.push_back("Mcp-Method: " + method);
		if (!name.empty())
			h.push_back("Mcp-Name: " + EncodeHeaderValue(name));
	}
	return h;
}

/* ------------------------------------------------------------ parsing */

bool
ParseMessages(const std::string &text, std::vector<RpcMessage> *out, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseJson(text.data(), text.size(), doc, error))
		return false;
	if (doc.IsArray()) {
		for (auto &item : doc.GetArray())
			if (item.IsObject())
				out->push_back(MessageOf(item));
	} else if (doc.IsObject())
		out->push_back(MessageOf(doc));
	return true;
}

bool
ProgressOf(const RpcMessage &m, const std::string &token, CallProgress *p)
{
	if (m.kind != RpcMessage::Kind::Notification || m.method != "notifications/progress" || token.empty())
		return false;
	rapidjson::Document doc;
	std::string error;
	if (!ParseObject(m.params, doc, &error))
		return false;
	const rapidjson::Value *t = Member(doc, "progressToken");
	const rapidjson::Value *progress = Member(doc, "progress");
	if (!t || !progress || !progress->IsNumber() || ToJson(*t) != token)
		return false;
	p->progress = progress->GetDouble();
	const rapidjson::Value *total = Member(doc, "total");
	p->total = total && total->IsNumber() ? total->GetDouble() : -1;
	p->message = Utf8Prefix(StringMember(doc, "message"), kMaxProgressMessageChars);
	return true;
}

/* ------------------------------------------------------------ outcomes */

CallOutcome
ErrorOutcome(ErrorCode code, std::string message, std::string details)
{
	CallOutcome o;
	o.code = code;
	o.message = std::move(message);
	o.details_json = std::move(details);
	return o;
}

CallOutcome
RpcErrorOutcome(const RpcMessage &m)
{
	rapidjson::Document details(rapidjson::kObjectType);
	auto &a = details.GetAllocator();
	rapidjson::Document code_doc;
	code_doc.Parse(m.error_code.empty() ? "null" : m.error_code.c_str());
	rapidjson::Value code_value;
	code_value.CopyFrom(code_doc, a);
	details.AddMember("jsonrpc_code", code_value, a);
	details.AddMember("jsonrpc_message", rapidjson::Value(m.error_message.c_str(), a), a);
	return ErrorOutcome(ErrorCode::McpError, "JSON-RPC error " + m.error_code + ": " + m.error_message,
	                    ToJson(details));
}

CallOutcome
TransportOutcome(const HttpExchange &x, bool answered)
{
	CallOutcome o;
	o.http_status = x.status;
	if (!x.retry_after.empty())
		o.retry_after_ms = ParseRetryAfterMs(x.retry_after, std::time(nullptr));
	auto fail = [&](ErrorCode code, std::string message, std::string details = "") {
		CallOutcome e = ErrorOutcome(code, std::move(message), std::move(details));
		e.http_status = x.status;
		e.retry_after_ms = o.retry_after_ms;
		return e;
	};
	if (x.curl_code != CURLE_OK && !(answered && x.status >= 200 && x.status < 300)) {
		if (x.local_failure) {
			CallOutcome e =
			    fail(ErrorCode::NetworkError,
			         "local resource shortage: " + x.error +
			             (x.os_errno ? " (" + std::string(strerror(static_cast<int>(x.os_errno))) + ")" : ""));
			e.local_failure = true;
			return e;
		}
		if (x.too_big)
			return fail(ErrorCode::McpError, "response exceeds diagnosis.max_response_bytes (" +
			                                     std::to_string(x.request.max_bytes) + " bytes)");
		if (x.sse_failed)
			return fail(ErrorCode::McpError, "malformed SSE stream: " + x.sse.FailureReason() +
			                                     " (diagnosis.max_response_bytes bounds an event)");
		if (x.held_too_much)
			return fail(ErrorCode::McpError,
			            "the SSE events of one response held more than twice diagnosis.max_response_bytes (" +
			                std::to_string(x.request.max_bytes) + " bytes) before they were read");
		if (x.headers_too_big)
			return fail(ErrorCode::McpError,
			            "the response headers exceed " + std::to_string(HttpTransport::kMaxHeaderBytes) + " bytes");
		if (!x.callback_error.empty())
			return fail(ErrorCode::UnknownError, "reading the response failed: " + x.callback_error);
		if (x.inactive)
			return fail(ErrorCode::TimeoutError,
			            "no data from the MCP server for " + std::to_string(x.request.inactivity_ms) + " ms");
		if (x.timed_out)
			return fail(ErrorCode::TimeoutError, "MCP request timed out: " + x.error);
		CURLcode c = static_cast<CURLcode>(x.curl_code);
		if (c == CURLE_PEER_FAILED_VERIFICATION || c == CURLE_SSL_CACERT_BADFILE || c == CURLE_SSL_CERTPROBLEM ||
		    c == CURLE_SSL_ISSUER_ERROR || c == CURLE_SSL_CRL_BADFILE) {
			/* Verification is never turned off and retrying cannot fix a certificate: a setting to correct
			 * (diagnosis.mcp_ca_file, mcp_client_cert, mcp_client_key), so claiming pauses. */
			CallOutcome e = fail(ErrorCode::McpError, "TLS verification failed: " + x.error);
			e.config_error = true;
			return e;
		}
		if (c == CURLE_UNSUPPORTED_PROTOCOL || c == CURLE_URL_MALFORMAT) {
			CallOutcome e = fail(ErrorCode::McpError, "bad MCP URL: " + x.error);
			e.config_error = true;
			return e;
		}
		return fail(ErrorCode::NetworkError, "MCP request failed: " + x.error);
	}
	std::string status_details = "{\"http_status\":" + std::to_string(x.status) + "}";
	if (x.status >= 300 && x.status < 400)
		return fail(ErrorCode::McpError, "HTTP " + std::to_string(x.status) + ": redirects are not followed",
		            status_details);
	if (x.status == 408 || x.status == 429 || x.status >= 500)
		return fail(x.status == 408 ? ErrorCode::TimeoutError : ErrorCode::NetworkError,
		            "MCP server answered HTTP " + std::to_string(x.status), status_details);
	if (x.status == 401 || x.status == 403) {
		CallOutcome e = fail(
		    ErrorCode::McpError,
		    "MCP server answered HTTP " + std::to_string(x.status) +
		        (x.status == 401
		             ? ": no token it accepts (diagnosis.mcp_auth_token, or the OAuth settings diagnosis.mcp_oauth_*)"
		             : ": the credentials are not allowed to call this server"),
		    status_details);
		e.config_error = true;
		return e;
	}
	if (x.status >= 400 || x.status < 200)
		return fail(ErrorCode::McpError, "MCP server answered HTTP " + std::to_string(x.status), status_details);
	return o;
}

CallOutcome
ToolResultOutcome(const std::string &result_json, const std::string &schema_version, const SchemaRegistry &schemas)
{
	ResultCheck check = CheckToolResult(result_json, schema_version, schemas);
	CallOutcome done;
	done.code = check.code;
	done.message = std::move(check.message);
	done.details_json = std::move(check.details_json);
	done.result_json = std::move(check.result_json);
	done.mcp_run_id = std::move(check.mcp_run_id);
	done.response_json = result_json;
	return done;
}

bool
ErrorBodyOf(const HttpExchange &x, RpcMessage *error)
{
	if (x.status < 400 || x.status >= 500 || x.body.empty())
		return false;
	std::vector<RpcMessage> messages;
	std::string parse_error;
	if (!ParseMessages(x.body, &messages, &parse_error) || messages.size() != 1 || !messages[0].is_error)
		return false;
	*error = std::move(messages[0]);
	return true;
}

bool
IsModernErrorBody(const HttpExchange &x, RpcMessage *error)
{
	RpcMessage parsed;
	if (!ErrorBodyOf(x, &parsed) || !IsModernCode(parsed.error_code_int, x.status))
		return false;
	if (error)
		*error = std::move(parsed);
	return true;
}

std::vector<std::string>
SupportedVersions(const RpcMessage &error)
{
	std::vector<std::string> out;
	rapidjson::Document doc;
	std::string parse_error;
	if (error.error_data.empty() || !ParseObject(error.error_data, doc, &parse_error))
		return out;
	const rapidjson::Value *s = Member(doc, "supported");
	if (s && s->IsArray())
		for (auto &v : s->GetArray())
			if (v.IsString())
				out.emplace_back(v.GetString(), v.GetStringLength());
	return out;
}

/* ------------------------------------------------------------ server features */

namespace {

void
ReadCapabilities(const rapidjson::Value &caps, ServerFeatures *f)
{
	f->capabilities_json = ToJson(caps);
	f->tools = Member(caps, "tools") != nullptr;
	if (const rapidjson::Value *ext = Member(caps, "extensions"))
		f->tasks_extension = Member(*ext, kTasksExtension) != nullptr;
	if (const rapidjson::Value *tasks = Member(caps, "tasks")) {
		f->legacy_task_cancel = Member(*tasks, "cancel") != nullptr;
		const rapidjson::Value *requests = Member(*tasks, "requests");
		const rapidjson::Value *tools = requests ? Member(*requests, "tools") : nullptr;
		f->legacy_task_tools = tools && Member(*tools, "call") != nullptr;
	}
}

} // namespace

bool
ParseDiscoverResult(const std::string &result_json, ServerFeatures *f, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(result_json, doc, error))
		return false;
	const rapidjson::Value *versions = Member(doc, "supportedVersions");
	if (!versions || !versions->IsArray()) {
		*error = "server/discover result has no supportedVersions";
		return false;
	}
	for (auto &v : versions->GetArray())
		if (v.IsString())
			f->versions.emplace_back(v.GetString(), v.GetStringLength());
	const rapidjson::Value *caps = Member(doc, "capabilities");
	if (caps && caps->IsObject())
		ReadCapabilities(*caps, f);
	if (const rapidjson::Value *meta = Member(doc, "_meta"))
		if (const rapidjson::Value *info = Member(*meta, "io.modelcontextprotocol/serverInfo"))
			f->server_name = StringMember(*info, "name") + " " + StringMember(*info, "version");
	return true;
}

bool
ParseInitializeResult(const std::string &result_json, ServerFeatures *f, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(result_json, doc, error))
		return false;
	std::string version = StringMember(doc, "protocolVersion");
	if (version.empty()) {
		*error = "initialize result has no protocolVersion";
		return false;
	}
	f->versions = {version};
	const rapidjson::Value *caps = Member(doc, "capabilities");
	if (caps && caps->IsObject())
		ReadCapabilities(*caps, f);
	if (const rapidjson::Value *info = Member(doc, "serverInfo"))
		f->server_name = StringMember(*info, "name") + " " + StringMember(*info, "version");
	return true;
}

namespace {

/* RFC 9110 tchar. */
bool
IsToken(const std::string &s)
{
	if (s.empty())
		return false;
	for (unsigned char c : s)
		if (!(std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c)))
			return false;
	return true;
}

/* Collects the x-mcp-header annotations of an inputSchema. `reachable`: this schema is reached from the root by
 * `properties` keys only (the root itself cannot be a parameter). Sets *invalid at the first violation. */
void
CollectParamHeaders(const rapidjson::Value &schema, std::vector<std::string> &path, bool reachable,
                    std::vector<ParamHeader> *out, std::string *invalid)
{
	if (!invalid->empty())
		return;
	if (schema.IsArray()) {
		for (auto &item : schema.GetArray())
			CollectParamHeaders(item, path, false, out, invalid);
		return;
	}
	if (!schema.IsObject())
		return;
	if (const rapidjson::Value *h = Member(schema, "x-mcp-header")) {
		std::string type = StringMember(schema, "type");
		std::string name = h->IsString() ? std::string(h->GetString(), h->GetStringLength()) : "";
		if (!reachable || path.empty())
			*invalid = "x-mcp-header outside a chain of properties";
		else if (!IsToken(name))
			*invalid = "x-mcp-header \"" + name + "\" is not an HTTP field-name token";
		else if (type != "string" && type != "integer" && type != "boolean")
			*invalid = "x-mcp-header \"" + name + "\" on a parameter that is not a string, integer or boolean";
		for (const ParamHeader &seen : *out)
			if (invalid->empty() && strcasecmp(seen.name.c_str(), name.c_str()) == 0)
				*invalid = "x-mcp-header \"" + name + "\" used twice";
		if (!invalid->empty())
			return;
		out->push_back(ParamHeader{path, name});
	}
	for (auto &m : schema.GetObject()) {
		std::string key(m.name.GetString(), m.name.GetStringLength());
		if (key == "properties" && m.value.IsObject()) {
			for (auto &p : m.value.GetObject()) {
				path.emplace_back(p.name.GetString(), p.name.GetStringLength());
				CollectParamHeaders(p.value, path, reachable, out, invalid);
				path.pop_back();
			}
		} else if (key != "x-mcp-header")
			CollectParamHeaders(m.value, path, false, out, invalid);
	}
}

} // namespace

std::vector<std::string>
ParamHeaderLines(const std::vector<ParamHeader> &headers, const std::string &arguments_json)
{
	std::vector<std::string> lines;
	rapidjson::Document doc;
	std::string error;
	if (headers.empty() || !ParseObject(arguments_json, doc, &error))
		return lines;
	for (const ParamHeader &h : headers) {
		const rapidjson::Value *v = &doc;
		for (const std::string &key : h.path)
			if (!(v = Member(*v, key.c_str())))
				break;
		if (!v || v->IsNull())
			continue;
		std::string text;
		if (v->IsString())
			text.assign(v->GetString(), v->GetStringLength());
		else if (v->IsBool())
			text = v->GetBool() ? "true" : "false";
		else if (v->IsInt64())
			text = std::to_string(v->GetInt64());
		else
			continue; /* not the primitive the schema promised: nothing to mirror */
		lines.push_back("Mcp-Param-" + h.name + ": " + EncodeHeaderValue(text));
	}
	return lines;
}

bool
ParseToolsList(const std::string &result_json, const std::string &tool, ToolEntry *entry, std::string *next_cursor,
               std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(result_json, doc, error))
		return false;
	const rapidjson::Value *tools = Member(doc, "tools");
	if (!tools || !tools->IsArray()) {
		*error = "tools/list result has no tools array";
		return false;
	}
	for (auto &t : tools->GetArray()) {
		if (StringMember(t, "name") != tool)
			continue;
		entry->found = true;
		const rapidjson::Value *execution = Member(t, "execution");
		entry->task_support = execution ? StringMember(*execution, "taskSupport") : "";
		entry->param_headers.clear();
		entry->invalid.clear();
		if (const rapidjson::Value *schema = Member(t, "inputSchema")) {
			std::vector<std::string> path;
			CollectParamHeaders(*schema, path, true, &entry->param_headers, &entry->invalid);
		}
	}
	*next_cursor = StringMember(doc, "nextCursor");
	return true;
}

bool
ParseToolsPage(const std::string &result_json, std::vector<ListedTool> *tools, std::string *next_cursor,
               std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(result_json, doc, error))
		return false;
	const rapidjson::Value *list = Member(doc, "tools");
	if (!list || !list->IsArray()) {
		*error = "tools/list result has no tools array";
		return false;
	}
	for (auto &t : list->GetArray()) {
		ListedTool tool;
		tool.name = StringMember(t, "name");
		if (tool.name.empty())
			continue;
		if (const rapidjson::Value *schema = Member(t, "inputSchema")) {
			tool.input_schema_json = ToJson(*schema);
			std::vector<ParamHeader> headers;
			std::vector<std::string> path;
			CollectParamHeaders(*schema, path, true, &headers, &tool.invalid);
		}
		tools->push_back(std::move(tool));
	}
	*next_cursor = StringMember(doc, "nextCursor");
	return true;
}

namespace {

void
WriteExample(Writer &w, const rapidjson::Value &schema, int depth)
{
	if (const rapidjson::Value *d = Member(schema, "default")) {
		d->Accept(w);
		return;
	}
	if (const rapidjson::Value *e = Member(schema, "enum"); e && e->IsArray() && !e->Empty()) {
		(*e)[0].Accept(w);
		return;
	}
	if (const rapidjson::Value *c = Member(schema, "const")) {
		c->Accept(w);
		return;
	}
	std::string type = StringMember(schema, "type");
	if (type == "string")
		w.String("example");
	else if (type == "integer" || type == "number")
		w.Int(1);
	else if (type == "boolean")
		w.Bool(true);
	else if (type == "array") {
		w.StartArray();
		w.EndArray();
	} else if (type == "object" && depth < 8) {
		const rapidjson::Value *properties = Member(schema, "properties");
		const rapidjson::Value *required = Member(schema, "required");
		bool all = !required || !required->IsArray() || required->Empty();
		w.StartObject();
		if (properties && properties->IsObject())
			for (auto &p : properties->GetObject()) {
				bool wanted = all;
				if (!all)
					for (auto &r : required->GetArray())
						wanted = wanted || (r.IsString() && r == p.name);
				if (!wanted || !p.value.IsObject())
					continue;
				w.Key(p.name.GetString(), p.name.GetStringLength());
				WriteExample(w, p.value, depth + 1);
			}
		w.EndObject();
	} else
		w.Null(); /* no type this can honour ($ref, anyOf, ...): the server says what it wanted */
}

} // namespace

std::string
ExampleArguments(const std::string &input_schema_json)
{
	rapidjson::Document doc;
	std::string error;
	if (input_schema_json.empty() || !ParseObject(input_schema_json, doc, &error))
		return "{}";
	rapidjson::StringBuffer b;
	Writer w(b);
	if (StringMember(doc, "type").empty())
		doc.AddMember("type", "object", doc.GetAllocator());
	WriteExample(w, doc, 0);
	std::string out = Text(b);
	return out.empty() || out[0] != '{' ? "{}" : out;
}

/* ------------------------------------------------------------ MRTR */

bool
ParseInputRequired(const std::string &result_json, InputRequired *out)
{
	rapidjson::Document doc;
	std::string error;
	if (!ParseObject(result_json, doc, &error) || StringMember(doc, "resultType") != "input_required")
		return false;
	*out = InputRequired();
	if (const rapidjson::Value *requests = Member(doc, "inputRequests"); requests && requests->IsObject())
		for (auto &m : requests->GetObject()) {
			InputRequest r;
			r.key.assign(m.name.GetString(), m.name.GetStringLength());
			r.method = StringMember(m.value, "method");
			if (const rapidjson::Value *params = Member(m.value, "params"))
				r.message = StringMember(*params, "message");
			out->requests.push_back(std::move(r));
		}
	if (const rapidjson::Value *state = Member(doc, "requestState"); state && state->IsString()) {
		out->has_request_state = true;
		out->request_state.assign(state->GetString(), state->GetStringLength());
	}
	return true;
}

bool
BuildInputResponses(const InputRequired &input, std::string *responses_json, std::string *refused)
{
	responses_json->clear();
	if (input.requests.empty())
		return true;
	rapidjson::StringBuffer b;
	Writer w(b);
	w.StartObject();
	for (const InputRequest &r : input.requests) {
		w.Key(r.key.c_str(), static_cast<rapidjson::SizeType>(r.key.size()));
		w.StartObject();
		if (r.method == "elicitation/create") {
			w.Key("action");
			w.String("decline");
		} else if (r.method == "roots/list") {
			w.Key("roots");
			w.StartArray();
			w.EndArray();
		} else {
			*refused = r.method.empty() ? "an input request without a method (" + r.key + ")" : r.method;
			return false;
		}
		w.EndObject();
	}
	w.EndObject();
	*responses_json = Text(b);
	return true;
}

std::string
DescribeInputRequests(const InputRequired &input)
{
	std::string out;
	for (const InputRequest &r : input.requests) {
		std::string what = r.method.empty() ? "?" : r.method;
		what += r.message.empty() ? " (" + r.key + ")" : " \"" + r.message.substr(0, 200) + "\"";
		out += (out.empty() ? "" : ", ") + what;
	}
	return out.empty() ? "nothing but its requestState back" : out;
}

/* ------------------------------------------------------------ tasks */

namespace {

/* Fields common to the modern Task (ttlMs, pollIntervalMs) and the 2025-11-25 one (ttl, pollInterval). */
bool
ReadTask(const rapidjson::Value &t, Era era, TaskInfo *task)
{
	task->task_id = StringMember(t, "taskId");
	task->status = StringMember(t, "status");
	task->status_message = StringMember(t, "statusMessage");
	task->ttl_ms = IntMember(t, era == Era::Modern ? "ttlMs" : "ttl");
	task->poll_ms = IntMember(t, era == Era::Modern ? "pollIntervalMs" : "pollInterval");
	if (const rapidjson::Value *r = Member(t, "result"))
		task->result = ToJson(*r);
	if (const rapidjson::Value *e = Member(t, "error"))
		task->error = ToJson(*e);
	return !task->task_id.empty() && task->task_id.size() <= kMaxTaskIdBytes && !task->status.empty();
}

} // namespace

TaskParse
ParseCreateTask(const std::string &result_json, Era era, TaskInfo *task)
{
	rapidjson::Document doc;
	std::string error;
	if (!ParseObject(result_json, doc, &error))
		return TaskParse::NotATask;
	if (era == Era::Modern) {
		if (StringMember(doc, "resultType") != "task")
			return TaskParse::NotATask;
		return ReadTask(doc, era, task) ? TaskParse::Task : TaskParse::Invalid;
	}
	/* A CreateTaskResult: "task" at the top (no CallToolResult has one). The official SDK adds an empty
	 * "content" for 2025-11-25 clients; content with items would make it a tool result. */
	const rapidjson::Value *t = Member(doc, "task");
	const rapidjson::Value *content = Member(doc, "content");
	if (!t || !t->IsObject() || (content && !(content->IsArray() && content->Empty())))
		return TaskParse::NotATask;
	return ReadTask(*t, era, task) ? TaskParse::Task : TaskParse::Invalid;
}

bool
ParseTaskStatus(const std::string &result_json, Era era, TaskInfo *task)
{
	rapidjson::Document doc;
	std::string error;
	if (!ParseObject(result_json, doc, &error))
		return false;
	/* Some 2025-11-25 servers wrap the task as {"task": {...}}; accept both. */
	const rapidjson::Value *t = Member(doc, "task");
	return ReadTask(t && t->IsObject() && !Member(doc, "taskId") ? *t : doc, era, task);
}

bool
IsTerminalTaskStatus(const std::string &status)
{
	return status == "completed" || status == "failed" || status == "cancelled";
}

} // namespace pgdiag
