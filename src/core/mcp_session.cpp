/*
 * mcp_session.cpp: era detection (modern first, legacy fallback), version negotiation and the legacy session.
 */
#include <algorithm>

#include "mcp_client_impl.hpp"
#include "pg_diagnosis/core/mcp_session.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

std::string
OriginOf(const std::string &url)
{
	size_t scheme_end = url.find("://");
	if (scheme_end == std::string::npos)
		return "";
	std::string scheme = url.substr(0, scheme_end);
	size_t host_start = scheme_end + 3;
	size_t host_end = url.find_first_of("/?#", host_start);
	std::string authority =
	    url.substr(host_start, host_end == std::string::npos ? std::string::npos : host_end - host_start);
	size_t at = authority.rfind('@');
	if (at != std::string::npos)
		authority = authority.substr(at + 1);
	for (char &c : scheme)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	for (char &c : authority)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	size_t bracket = authority.rfind(']');
	size_t colon = authority.rfind(':');
	bool has_port = colon != std::string::npos && (bracket == std::string::npos || colon > bracket);
	if (!has_port)
		authority += scheme == "https" ? ":443" : ":80";
	return scheme + "://" + authority;
}

Era
EraCache::Get(const std::string &origin) const
{
	auto it = eras_.find(origin);
	return it == eras_.end() ? Era::Unknown : it->second;
}

namespace {

bool
Contains(const std::vector<std::string> &list, const std::string &v)
{
	return std::find(list.begin(), list.end(), v) != list.end();
}

ProbeStep
Failed(CallOutcome failure)
{
	ProbeStep step;
	step.next = ProbeStep::Next::Fail;
	step.failure = std::move(failure);
	return step;
}

ProbeStep
Next(ProbeStep::Next next, std::string version = "")
{
	ProbeStep step;
	step.next = next;
	step.version = std::move(version);
	return step;
}

std::string
Join(const std::vector<std::string> &list)
{
	std::string out;
	for (const std::string &v : list)
		out += (out.empty() ? "" : ", ") + v;
	return out.empty() ? "none" : out;
}

/* The server named the versions it supports: modern if ours is among them, legacy if one of the handshake
 * revisions is, else the setting cannot work. */
ProbeStep
ChooseVersion(const std::vector<std::string> &supported, const std::string &requested)
{
	if (Contains(supported, kModernVersion))
		return Next(requested == kModernVersion ? ProbeStep::Next::Modern : ProbeStep::Next::RetryModern,
		            kModernVersion);
	for (const std::string &v : supported)
		if (IsAcceptedLegacyVersion(v))
			return Next(ProbeStep::Next::Legacy);
	CallOutcome o = ErrorOutcome(ErrorCode::McpError, "the MCP server supports no protocol version pg_diagnosis speaks "
	                                                  "(server: " +
	                                                      Join(supported) + "; pg_diagnosis: " + kModernVersion +
	                                                      ", 2025-11-25, 2025-06-18, 2025-03-26)");
	o.config_error = true;
	return Failed(std::move(o));
}

/* A rejected discover brought no features: a modern verdict means asking again with the version the server
 * listed, even when it is the one we asked for (the client then knows the server's capabilities; a server that
 * rejects it again fails the set-up after the second probe). */
ProbeStep
AfterRejection(ProbeStep step)
{
	if (step.next == ProbeStep::Next::Modern)
		step.next = ProbeStep::Next::RetryModern;
	return step;
}

} // namespace

ProbeStep
JudgeDiscover(const HttpExchange &x, const RpcMessage *response, const std::string &requested)
{
	CallOutcome transport = TransportOutcome(x, response != nullptr);
	bool client_error = x.curl_code == 0 && x.status >= 400 && x.status < 500 && x.status != 401 && x.status != 403 &&
	                    x.status != 408 && x.status != 429;
	if (client_error) {
		RpcMessage error;
		if (!IsModernErrorBody(x, &error))
			return Next(ProbeStep::Next::Legacy); /* a 4xx a modern server would not send */
		if (error.error_code_int == kRpcUnsupportedVersion)
			return AfterRejection(ChooseVersion(SupportedVersions(error), requested));
		if (error.error_code_int == kRpcMethodNotFound)
			return Next(ProbeStep::Next::Modern, requested); /* modern, without discover: features unknown */
		CallOutcome o = RpcErrorOutcome(error);
		o.message = "server/discover rejected: " + o.message;
		o.http_status = x.status;
		return Failed(std::move(o));
	}
	if (transport.code != ErrorCode::None)
		return Failed(std::move(transport));
	if (!response)
		return Failed(ErrorOutcome(ErrorCode::McpError, "HTTP " + std::to_string(x.status) +
		                                                    " to server/discover without a JSON-RPC response"));
	if (response->is_error) {
		if (response->error_code_int == kRpcUnsupportedVersion)
			return AfterRejection(ChooseVersion(SupportedVersions(*response), requested));
		/* A modern server must implement server/discover: any other error comes from a legacy one. */
		return Next(ProbeStep::Next::Legacy);
	}
	ProbeStep step;
	std::string error;
	if (!ParseDiscoverResult(response->result, &step.features, &error))
		/* Not a DiscoverResult: a legacy server answering an unknown method generically (e.g. with {}). */
		return Next(ProbeStep::Next::Legacy);
	ProbeStep chosen = ChooseVersion(step.features.versions, requested);
	chosen.features = std::move(step.features);
	return chosen;
}

ProbeStep
JudgeInitialize(const HttpExchange &x, const RpcMessage *response)
{
	CallOutcome transport = TransportOutcome(x, response != nullptr);
	if (transport.code != ErrorCode::None) {
		transport.message = "MCP initialize failed: " + transport.message;
		/* 404 to initialize is a wrong URL path: no retry fixes it. */
		if (x.status == 404)
			transport.config_error = true;
		return Failed(std::move(transport));
	}
	if (!response)
		return Failed(ErrorOutcome(ErrorCode::McpError, "MCP initialize failed: HTTP " + std::to_string(x.status) +
		                                                    " without a JSON-RPC response"));
	if (response->is_error) {
		CallOutcome o = RpcErrorOutcome(*response);
		o.message = "MCP initialize failed: " + o.message;
		o.config_error = response->error_code_int == kRpcUnsupportedVersion;
		return Failed(std::move(o));
	}
	ProbeStep step;
	std::string error;
	if (!ParseInitializeResult(response->result, &step.features, &error))
		return Failed(ErrorOutcome(ErrorCode::McpError, "MCP initialize failed: " + error));
	const std::string &version = step.features.versions.front();
	if (!IsAcceptedLegacyVersion(version)) {
		CallOutcome o = ErrorOutcome(ErrorCode::McpError, "MCP initialize failed: the server offered unsupported "
		                                                  "protocol version \"" +
		                                                      version + "\"");
		o.config_error = true;
		return Failed(std::move(o));
	}
	step.next = ProbeStep::Next::LegacyReady;
	step.version = version;
	step.session_id = x.session_id;
	return step;
}

void
EndpointSession::Reset()
{
	phase = Phase::Idle;
	era = Era::Unknown;
	version.clear();
	session_id.clear();
	features = ServerFeatures();
	tool = ToolEntry();
	tool_checked = false;
	listed.clear();
	generation++;
}

bool
EndpointSession::TasksForTool() const
{
	bool tool_wants = tool.task_support == "optional" || tool.task_support == "required";
	if (era == Era::Modern)
		return (features.tasks_extension && tool.task_support != "forbidden") || tool_wants;
	if (era == Era::Legacy)
		return features.legacy_task_tools && tool_wants;
	return false;
}

RequestContext
EndpointSession::Context() const
{
	RequestContext ctx;
	ctx.era = era;
	ctx.protocol_version = version;
	ctx.declare_tasks = era == Era::Modern && TasksForTool();
	return ctx;
}

std::vector<std::string>
EndpointSession::Headers(const std::string &method, const std::string &name) const
{
	std::vector<std::string> h = EraHeaders(Context(), method, name);
	if (era == Era::Legacy && !session_id.empty())
		h.push_back("Mcp-Session-Id: " + session_id);
	return h;
}

/* ------------------------------------------------------------ the client's endpoint set-up */

namespace client_detail {

/* DELETE of the legacy session, if there is one: the server may free it at once (a 405 is fine too). */
void
Client::EndSession()
{
	if (session_.era != Era::Legacy || session_.session_id.empty())
		return;
	HttpRequest r = BaseRequest(HttpMethod::Delete, std::max(1L, config_.shutdown_timeout_ms));
	for (std::string &h : session_.Headers("DELETE", ""))
		r.headers.push_back(std::move(h));
	Send(std::move(r), Pending());
}

void
Client::EnsureEndpoint()
{
	if (session_.phase != EndpointSession::Phase::Idle)
		return;
	if (auth_flow_) {
		endpoint_after_auth_ = true; /* set up once the token is there */
		return;
	}
	probes_ = 0;
	list_pages_ = 0;
	if (era_cache_.Get(OriginOf(config_.url)) == Era::Legacy)
		StartInitialize();
	else {
		session_.era = Era::Modern;
		session_.version = kModernVersion;
		StartDiscover();
	}
}

void
Client::StartDiscover()
{
	session_.phase = EndpointSession::Phase::Discovering;
	probes_++;
	Pending p;
	p.purpose = Purpose::Discover;
	std::string id = NextId("discover");
	p.rpc_id = JsonString(id);
	Send(Post("server/discover", "", BuildDiscover(id, session_.Context()), config_.request_timeout_ms, &p),
	     std::move(p));
}

void
Client::StartInitialize()
{
	session_.era = Era::Legacy;
	session_.version.clear();
	session_.session_id.clear();
	session_.phase = EndpointSession::Phase::Initializing;
	Pending p;
	p.purpose = Purpose::Initialize;
	std::string id = NextId("initialize");
	p.rpc_id = JsonString(id);
	Send(Post("initialize", "", BuildInitialize(id, kLegacyRequestVersion), config_.request_timeout_ms, &p),
	     std::move(p));
}

void
Client::StartToolsList(const std::string &cursor)
{
	session_.phase = EndpointSession::Phase::Listing;
	Pending p;
	p.purpose = Purpose::ToolsList;
	std::string id = NextId("tools-list");
	p.rpc_id = JsonString(id);
	Send(Post("tools/list", "", BuildToolsList(id, session_.Context(), cursor), config_.request_timeout_ms, &p),
	     std::move(p));
}

/* The endpoint cannot serve the calls waiting for it. */
void
Client::FailEndpoint(CallOutcome why)
{
	session_.last_error = why.message;
	failed_info_ = Endpoint();
	failed_info_->last_error = why.message;
	failed_info_->state = "idle"; /* what Endpoint() reports from now on: the set-up ended */
	Era era = session_.era;
	session_.Reset();
	if (era == Era::Legacy && why.config_error)
		era_cache_.Forget(OriginOf(config_.url)); /* a cached verdict may be what no longer fits */
	std::vector<Call *> waiting(waiting_.begin(), waiting_.end());
	for (Call *c : waiting)
		Finish(c, why);
}

void
Client::EndpointReady()
{
	endpoint_auth_retries_ = 0;
	session_.phase = EndpointSession::Phase::Ready;
	session_.last_error.clear();
	failed_info_.reset();
	std::vector<Call *> waiting(waiting_.begin(), waiting_.end());
	waiting_.clear();
	for (Call *c : waiting)
		Begin(c);
}

CallOutcome
Client::ConfigError(const std::string &message)
{
	CallOutcome o = ErrorOutcome(ErrorCode::McpError, message);
	o.config_error = true;
	return o;
}

void
Client::AfterFeatures()
{
	if (config_.tool.empty() && (!config_.list_tools || !session_.features.tools)) {
		EndpointReady(); /* no tool to look for */
		return;
	}
	if (!session_.features.capabilities_json.empty() && !session_.features.tools) {
		FailEndpoint(ConfigError("the MCP server declares no tools capability"));
		return;
	}
	StartToolsList("");
}

void
Client::CompleteDiscover(const HttpExchange &x, const Pending &p)
{
	ProbeStep step = JudgeDiscover(x, p.response ? &*p.response : nullptr, session_.version);
	std::string origin = OriginOf(config_.url);
	switch (step.next) {
	case ProbeStep::Next::Modern:
		era_cache_.Set(origin, Era::Modern);
		session_.era = Era::Modern;
		session_.version = step.version;
		session_.features = std::move(step.features);
		AfterFeatures();
		return;
	case ProbeStep::Next::RetryModern:
		if (probes_ >= 2) {
			FailEndpoint(ConfigError("server/discover keeps rejecting protocol version " + step.version));
			return;
		}
		session_.version = step.version;
		StartDiscover();
		return;
	case ProbeStep::Next::Legacy:
		era_cache_.Set(origin, Era::Legacy);
		StartInitialize();
		return;
	default:
		FailEndpoint(std::move(step.failure));
		return;
	}
}

void
Client::CompleteInitialize(const HttpExchange &x, const Pending &p)
{
	ProbeStep step = JudgeInitialize(x, p.response ? &*p.response : nullptr);
	if (step.next != ProbeStep::Next::LegacyReady) {
		FailEndpoint(std::move(step.failure));
		return;
	}
	session_.version = step.version;
	session_.session_id = step.session_id;
	session_.features = std::move(step.features);
	if (!session_.features.tools && !config_.tool.empty()) {
		FailEndpoint(ConfigError("the MCP server declares no tools capability"));
		return;
	}
	session_.phase = EndpointSession::Phase::Notifying;
	Pending n;
	n.purpose = Purpose::Initialized;
	Send(Post("notifications/initialized", "", BuildInitialized(), config_.request_timeout_ms, &n), std::move(n));
}

void
Client::CompleteInitialized(const HttpExchange &x)
{
	if (x.curl_code == 0 && x.status >= 200 && x.status < 300) {
		AfterFeatures();
		return;
	}
	CallOutcome o = TransportOutcome(x, false);
	if (o.code == ErrorCode::None)
		o = ErrorOutcome(ErrorCode::McpError, "HTTP " + std::to_string(x.status));
	o.message = "MCP notifications/initialized failed: " + o.message;
	FailEndpoint(std::move(o));
}

void
Client::CompleteToolsList(const HttpExchange &x, const Pending &p)
{
	CallOutcome o = TransportOutcome(x, p.response.has_value());
	if (o.code != ErrorCode::None) {
		o.message = "MCP tools/list failed: " + o.message;
		FailEndpoint(std::move(o));
		return;
	}
	if (!p.response) {
		FailEndpoint(ErrorOutcome(ErrorCode::McpError, "MCP tools/list: no JSON-RPC response with the request's id"));
		return;
	}
	if (p.response->is_error) {
		if (p.response->error_code_int == kRpcMethodNotFound) {
			EndpointReady(); /* no tools/list to check against: the call will tell */
			return;
		}
		CallOutcome e = RpcErrorOutcome(*p.response);
		e.message = "MCP tools/list failed: " + e.message;
		FailEndpoint(std::move(e));
		return;
	}
	std::string cursor, error;
	if (config_.tool.empty()) { /* list_tools */
		if (!ParseToolsPage(p.response->result, &session_.listed, &cursor, &error))
			FailEndpoint(ErrorOutcome(ErrorCode::McpError, "malformed tools/list result: " + error));
		else if (!cursor.empty() && ++list_pages_ < 100)
			StartToolsList(cursor);
		else
			EndpointReady();
		return;
	}
	ToolEntry entry;
	if (!ParseToolsList(p.response->result, config_.tool, &entry, &cursor, &error)) {
		FailEndpoint(ErrorOutcome(ErrorCode::McpError, "malformed tools/list result: " + error));
		return;
	}
	if (entry.found && session_.era == Era::Modern && !entry.invalid.empty()) {
		/* The transport page: a client MUST exclude a tool whose x-mcp-header annotations are invalid. */
		session_.tool_checked = true;
		FailEndpoint(ConfigError("the MCP server's tool \"" + config_.tool + "\" is unusable: " + entry.invalid));
		return;
	}
	if (entry.found) {
		session_.tool = entry;
		session_.tool_checked = true;
		EndpointReady();
	} else if (!cursor.empty() && ++list_pages_ < 100)
		StartToolsList(cursor);
	else {
		session_.tool_checked = true;
		session_.tool = ToolEntry();
		FailEndpoint(ConfigError("the MCP server does not offer tool \"" + config_.tool + "\" (tools/list)"));
	}
}

} // namespace client_detail
} // namespace pgdiag
