/*
 * mcp_session.hpp: the protocol era of an endpoint and, in the legacy era, its session.
 *
 * The specification's backward-compatibility rules for Streamable HTTP: try the modern revision first
 * (server/discover); a 4xx without a recognized modern JSON-RPC error, or a discover the server does not know,
 * identifies a legacy server, which gets initialize (asking for 2025-11-25; 2025-03-26 .. 2025-11-25 accepted). The
 * verdict is cached per origin for the client's life and re-probed when it stops fitting. The judges below turn one
 * finished exchange into the next step; the client performs the steps.
 */
#pragma once

#include <map>
#include <string>

#include "pg_diagnosis/core/mcp_protocol.hpp"

namespace pgdiag {

/* "scheme://host:port" of a URL, lower case, the port made explicit; "" when the URL has no scheme. */
std::string OriginOf(const std::string &url);

/* Era verdicts by origin. */
class EraCache {
public:
	Era Get(const std::string &origin) const;
	void Set(const std::string &origin, Era era) { eras_[origin] = era; }
	void Forget(const std::string &origin) { eras_.erase(origin); }

private:
	std::map<std::string, Era> eras_;
};

/* What to do after a probe (server/discover) or initialize exchange. */
struct ProbeStep {
	enum class Next {
		Modern,      /* speak `version`, statelessly */
		RetryModern, /* discover again with `version` (the server listed it as supported) */
		Legacy,      /* send initialize */
		LegacyReady, /* initialize succeeded: send notifications/initialized */
		Fail,        /* `failure` ends every call waiting for the endpoint */
	};
	Next next = Next::Fail;
	std::string version;
	std::string session_id; /* LegacyReady */
	ServerFeatures features;
	CallOutcome failure;
};

/* `response` is our JSON-RPC response when one arrived (null otherwise); `requested` the version discover asked
 * for. */
ProbeStep JudgeDiscover(const HttpExchange &x, const RpcMessage *response, const std::string &requested);
ProbeStep JudgeInitialize(const HttpExchange &x, const RpcMessage *response);

/* An endpoint's era, version, features and legacy session. */
struct EndpointSession {
	enum class Phase { Idle, Discovering, Initializing, Notifying, Listing, Ready };
	Phase phase = Phase::Idle;
	Era era = Era::Unknown;
	std::string version;
	std::string session_id; /* legacy only */
	ServerFeatures features;
	ToolEntry tool;
	bool tool_checked = false;      /* tools/list answered (false when the server has no tools/list) */
	std::vector<ListedTool> listed; /* ClientConfig::list_tools: every tool of every page */
	uint64_t generation = 0;        /* bumped by Reset(): exchanges of an older generation are stale */
	std::string last_error;

	/* Forgets the era, version and session (a new URL, a lost session, an era that stopped fitting). */
	void Reset();
	/* Whether a tools/call of the configured tool may ask for (modern: accept) a task. */
	bool TasksForTool() const;
	RequestContext Context() const;
	/* Headers every request to the endpoint carries: the era's, plus Mcp-Session-Id in a legacy session. */
	std::vector<std::string> Headers(const std::string &method, const std::string &name) const;
};

} // namespace pgdiag
