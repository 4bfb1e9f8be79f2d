/*
 * mcp_session.cpp: era detection (modern first, legacy fallback), version negotiation and the legacy session.
 */
#include <algorithm>

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
			return ChooseVersion(SupportedVersions(error), requested);
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
			return ChooseVersion(SupportedVersions(*response), requested);
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

} // namespace pgdiag
