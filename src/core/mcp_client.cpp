/*
 * mcp_client.cpp: the McpClient facade: calls, their endpoint and their tasks, over HttpTransport.
 *
 * A call waits until the endpoint is ready (era probed, legacy session initialized, tool found in tools/list),
 * then sends tools/call. What comes back on the call's stream is handled as it arrives: progress notifications,
 * server requests (answered in the legacy era), our response. When the response is a task, the call is polled with
 * tasks/get on a timer until the task ends. A legacy SSE stream that closes before the response is resumed with
 * GET + Last-Event-ID after the server's retry interval, within the same call.
 */
#include <algorithm>
#include <map>
#include <set>
#include <optional>
#include <poll.h>
#include <unistd.h>
#include <unordered_map>
#include <utility>

#include "pg_diagnosis/core/http_transport.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/mcp_session.hpp"
#include "pg_diagnosis/core/result.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace {

/* The task poll interval when the server suggests none, and the floor of the ones it suggests (a 0 must not make
 * the owner spin). */
constexpr int64_t kDefaultPollMs = 1000;
constexpr int64_t kMinPollMs = 10;
/* ... and the ceiling: a pollInterval of 10^18 ms must not overflow the clock (the call's deadline ends it anyway). */
constexpr int64_t kMaxPollMs = 3600 * 1000;
/* SEP-1699: the reconnection delay when a closed stream sent no retry: field. */
constexpr long kDefaultRetryMs = 1000;
/* Resumptions in a row that brought no new event before the stream counts as broken. */
constexpr int kMaxIdleResumes = 5;
/* Server requests answered per call (on its own tools/call stream); the rest are ignored and counted. */
constexpr int kMaxServerRequestsPerCall = 4;
/* What a resumption costs the call's response budget besides the bytes it brings: its round trip. */
constexpr size_t kResumeCostBytes = 4096;
/* Our answer to a server request: nothing useful comes back, so little is read and little is waited for. */
constexpr long kReplyTimeoutMs = 5000;
constexpr size_t kReplyMaxBytes = 64u << 10;

int64_t
MillisUntil(Clock::time_point t, Clock::time_point now)
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
}

enum class Purpose {
	Discover,
	Initialize,
	Initialized,
	ToolsList,
	ToolCall, /* tools/call, or the GET that resumes its stream */
	TaskGet,
	TaskResult, /* legacy tasks/result */
	Fire,       /* replies, notifications/cancelled, tasks/cancel, DELETE: nothing to wait for */
	Auth,       /* a request of the OAuth flow (metadata, registration, token) */
};

/* How many times one call (or one set-up of the endpoint) is sent again after authorizing: a step-up that never
 * satisfies the server must not loop (the conformance suite allows three authorization requests in all). */
constexpr int kMaxAuthRetries = 2;

/* An exchange in flight and what the client wants from it. */
struct Pending {
	Purpose purpose = Purpose::Fire;
	uint64_t tag = 0;        /* the call, for ToolCall/TaskGet/TaskResult */
	uint64_t generation = 0; /* the endpoint generation it was sent in */
	std::string rpc_id;      /* JSON text of the request id we wait for */
	std::string progress_token;
	bool sent_session = false;
	bool resumption = false;      /* the GET of a resumed stream */
	uint64_t auth_generation = 0; /* the OAuth token it carried (a 401 to an older one only needs a resend) */
	std::optional<RpcMessage> response;
	bool foreign_response = false;
	size_t events_seen = 0;
};

struct Call {
	CallRequest request;
	Clock::time_point submitted;
	Clock::time_point deadline;
	bool retried = false;   /* the one retry after a lost session or an era that stopped fitting */
	int auth_retries = 0;   /* sent again after authorizing (kMaxAuthRetries) */
	uint64_t exchange = 0;  /* the exchange in flight for this call, 0 if none */
	std::string rpc_id;     /* JSON text of the tools/call id */
	Era era = Era::Unknown; /* the era the tools/call went out in */
	/* A 4xx that did not fit the era: the endpoint is probed again, and if it is still of this era the 4xx was
	 * the call's answer after all (sending the call again would call the tool twice). */
	std::optional<CallOutcome> answer_if_era_holds;

	/* Stream resumption (legacy). */
	std::string last_event_id;
	long retry_ms = -1;
	bool resume_due = false;
	Clock::time_point resume_at;
	int idle_resumes = 0;
	/* The call's response budget (max_response_bytes) is shared by its stream and every resumption of it. */
	size_t response_bytes = 0;
	int resumes = 0;
	bool response_budget_spent = false;

	/* Server requests on the call's stream: answered (at most kMaxServerRequestsPerCall) and ignored. */
	int server_requests_answered = 0;
	int ignored_server_requests = 0;

	/* Task-backed calls. */
	std::string task_id;
	int64_t poll_ms = kDefaultPollMs;
	bool poll_due = false;
	Clock::time_point poll_at;
	std::string last_response; /* the last result seen, for a cancelled outcome */
};

class Client final : public McpClient {
public:
	Client(const ClientConfig &config, const SchemaRegistry *schemas) : config_(config), schemas_(schemas)
	{
		ApplyLimits();
	}

	~Client() override { AbortAll(); }

	void Configure(const ClientConfig &config) override
	{
		bool endpoint_changed =
		    config.url != config_.url || config.auth_token != config_.auth_token || config.tool != config_.tool;
		if (endpoint_changed)
			EndSession(); /* with the old URL and token */
		if (OAuthChanged(config))
			ResetAuth();
		config_ = config;
		ApplyLimits();
		if (!auth_flow_ && !auth_waiting_.empty())
			StartAuth(BearerChallenge(), true); /* calls waiting for a token: ask with the new settings */
		if (endpoint_changed) {
			session_.Reset();
			if (!waiting_.empty())
				EnsureEndpoint();
		}
	}

	bool Submit(CallRequest request) override
	{
		if (static_cast<int>(calls_.size()) >= config_.max_inflight)
			return false;
		auto call = std::make_unique<Call>();
		call->submitted = Clock::now();
		call->deadline = call->submitted + std::chrono::milliseconds(config_.request_timeout_ms);
		call->request = std::move(request);
		call->task_id = call->request.resume_task_id;
		if (!call->task_id.empty())
			ExtendForTask(call.get());
		Call *raw = call.get();
		calls_[raw->request.tag] = std::move(call);
		between_exchanges_.insert(raw->request.tag);
		if (session_.phase == EndpointSession::Phase::Ready)
			Begin(raw);
		else {
			waiting_.push_back(raw);
			EnsureEndpoint();
		}
		return true;
	}

	void Connect() override
	{
		if (session_.phase == EndpointSession::Phase::Idle)
			failed_info_.reset();
		EnsureEndpoint();
	}

	size_t InFlight() const override { return calls_.size(); }
	int EventFd() const override { return transport_.EventFd(); }

	long TimeoutMs() const override
	{
		Clock::time_point now = Clock::now();
		long timeout = transport_.TimeoutMs();
		auto consider = [&](Clock::time_point t) {
			long ms = static_cast<long>(std::max<int64_t>(0, MillisUntil(t, now)));
			if (timeout < 0 || ms < timeout)
				timeout = ms;
		};
		for (uint64_t tag : between_exchanges_) {
			auto it = calls_.find(tag); /* find, not at: a tag without its call is skipped, never thrown on */
			if (it == calls_.end())
				continue;
			const Call &c = *it->second;
			if (c.poll_due)
				consider(c.poll_at);
			if (c.resume_due)
				consider(c.resume_at);
			consider(c.deadline);
		}
		if (const CachedToken *t = RenewableToken())
			consider(t->renew_at);
		return timeout;
	}

	void Drive() override
	{
		transport_.Drive();
		std::vector<uint64_t> answered;
		for (HttpExchange *x : transport_.Touched()) {
			Absorb(x);
			auto it = pending_.find(x->id);
			if (it != pending_.end() && it->second.response && it->second.purpose != Purpose::Fire)
				answered.push_back(x->id);
		}
		for (std::unique_ptr<HttpExchange> &x : transport_.TakeFinished())
			Complete(*x);
		/* The final response SHOULD end its stream; a server that keeps it open is not waited for. */
		for (uint64_t id : answered)
			if (std::unique_ptr<HttpExchange> x = transport_.Detach(id))
				Complete(*x);
		RunTimers();
		/* Exchanges started meanwhile may have failed at once (no memory): deliver those now. */
		for (std::unique_ptr<HttpExchange> &x : transport_.TakeFinished())
			Complete(*x);
	}

	std::vector<CallProgress> TakeProgress() override { return std::exchange(progress_, {}); }
	std::vector<CallOutcome> TakeOutcomes() override { return std::exchange(outcomes_, {}); }
	std::vector<CallTask> TakeTasks() override { return std::exchange(tasks_, {}); }

	void Cancel(uint64_t tag) override
	{
		auto it = calls_.find(tag);
		if (it == calls_.end())
			return;
		Call *c = it->second.get();
		CallOutcome o = ErrorOutcome(ErrorCode::McpError, "call cancelled");
		o.cancelled = true;
		if (c->exchange) {
			Pending &p = pending_[c->exchange];
			if (p.response && !p.response->is_error)
				c->last_response = p.response->result;
		}
		o.response_json = c->last_response;
		GiveUp(c, "cancelled by pg_diagnosis");
		Finish(c, std::move(o));
	}

	EndpointInfo Endpoint() const override
	{
		if (session_.phase == EndpointSession::Phase::Idle && failed_info_)
			return *failed_info_; /* what the last, failed, set-up learned */
		EndpointInfo info;
		info.state = session_.phase == EndpointSession::Phase::Ready  ? "ready"
		             : session_.phase == EndpointSession::Phase::Idle ? "idle"
		                                                              : "probing";
		info.era = EraName(session_.era);
		info.protocol_version = session_.version;
		info.tasks = session_.phase == EndpointSession::Phase::Ready && session_.TasksForTool();
		info.last_error = session_.last_error;
		info.session_id = session_.session_id;
		info.capabilities_json = session_.features.capabilities_json;
		info.server_name = session_.features.server_name;
		info.tool_offered = session_.tool_checked ? (session_.tool.found ? 1 : 0) : -1;
		info.tool_task_support = session_.tool.task_support;
		info.oauth_tokens = oauth_tokens_;
		return info;
	}

	void Shutdown() override
	{
		for (auto &entry : calls_) {
			Call *c = entry.second.get();
			if (c->task_id.empty() && c->era == Era::Legacy && !c->rpc_id.empty())
				SendCancelled(c, "pg_diagnosis is shutting down");
			AbortExchange(c);
		}
		calls_.clear();
		between_exchanges_.clear();
		waiting_.clear();
		for (auto it = pending_.begin(); it != pending_.end();) {
			if (it->second.purpose != Purpose::Fire) {
				transport_.Abort(it->first);
				it = pending_.erase(it);
			} else
				++it;
		}
		EndSession();
		session_.Reset();
		Clock::time_point end = Clock::now() + std::chrono::milliseconds(std::max(0L, config_.shutdown_timeout_ms));
		while (transport_.Count() > 0 && Clock::now() < end) {
			long wait = std::min<long>(transport_.TimeoutMs() < 0 ? 50 : transport_.TimeoutMs(),
			                           static_cast<long>(std::max<int64_t>(0, MillisUntil(end, Clock::now()))));
			pollfd p{transport_.EventFd(), POLLIN, 0};
			poll(&p, 1, static_cast<int>(std::min(wait, 50L)));
			transport_.Drive();
			transport_.TakeFinished();
		}
		transport_.AbortAll();
		transport_.TakeFinished();
		pending_.clear();
		outcomes_.clear();
		progress_.clear();
		DropAuthFlow();
	}

	std::vector<uint64_t> AbortAll() override
	{
		std::vector<uint64_t> tags;
		transport_.AbortAll();
		transport_.TakeFinished();
		pending_.clear();
		for (auto &entry : calls_)
			tags.push_back(entry.first);
		calls_.clear();
		between_exchanges_.clear();
		waiting_.clear();
		session_.Reset();
		DropAuthFlow();
		return tags;
	}

private:
	void ApplyLimits()
	{
		transport_.SetConnectionLimits(config_.max_connections, static_cast<long>(config_.max_inflight + 8));
	}

	/* ------------------------------------------------------------ sending */

	HttpRequest BaseRequest(HttpMethod method, long timeout_ms) const
	{
		HttpRequest r;
		r.method = method;
		r.url = config_.url;
		r.timeout_ms = std::max(1L, timeout_ms);
		r.connect_timeout_ms = config_.connect_timeout_ms;
		r.inactivity_ms = config_.inactivity_timeout_ms > 0 ? config_.inactivity_timeout_ms : 0;
		r.max_bytes = config_.max_response_bytes;
		r.ca_file = config_.ca_file;
		r.client_cert = config_.client_cert;
		r.client_key = config_.client_key;
		r.user_agent = config_.user_agent;
		if (method == HttpMethod::Post) {
			r.headers.push_back("Content-Type: application/json");
			r.headers.push_back("Accept: application/json, text/event-stream");
		} else if (method == HttpMethod::Get)
			r.headers.push_back("Accept: text/event-stream");
		r.headers.push_back("Expect:");
		/* An OAuth token goes only to the origin it was issued for. */
		auto token = tokens_.find(OriginOf(r.url));
		if (token != tokens_.end())
			r.headers.push_back("Authorization: Bearer " + token->second.access_token);
		else if (!config_.auth_token.empty())
			r.headers.push_back("Authorization: Bearer " + config_.auth_token);
		return r;
	}

	/* A POST of `body` for `method` with the endpoint's headers. */
	HttpRequest Post(const std::string &method, const std::string &name, std::string body, long timeout_ms,
	                 Pending *p) const
	{
		HttpRequest r = BaseRequest(HttpMethod::Post, timeout_ms);
		for (std::string &h : session_.Headers(method, name))
			r.headers.push_back(std::move(h));
		r.body = std::move(body);
		if (p)
			p->sent_session = session_.era == Era::Legacy && !session_.session_id.empty();
		return r;
	}

	/* DELETE of the legacy session, if there is one: the server may free it at once (a 405 is fine too). */
	void EndSession()
	{
		if (session_.era != Era::Legacy || session_.session_id.empty())
			return;
		HttpRequest r = BaseRequest(HttpMethod::Delete, std::max(1L, config_.shutdown_timeout_ms));
		for (std::string &h : session_.Headers("DELETE", ""))
			r.headers.push_back(std::move(h));
		Send(std::move(r), Pending());
	}

	uint64_t Send(HttpRequest request, Pending p)
	{
		p.generation = session_.generation;
		p.auth_generation = auth_generation_;
		HttpExchange *x = transport_.Start(std::move(request));
		pending_[x->id] = std::move(p);
		return x->id;
	}

	std::string NextId(const char *what) { return std::string("pg_diagnosis-") + what + "-" + std::to_string(++ids_); }

	long RemainingMs(const Call *c) const
	{
		return static_cast<long>(std::max<int64_t>(1, MillisUntil(c->deadline, Clock::now())));
	}

	/* ------------------------------------------------------------ the endpoint */

	void EnsureEndpoint()
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

	void StartDiscover()
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

	void StartInitialize()
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

	void StartToolsList(const std::string &cursor)
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
	void FailEndpoint(CallOutcome why)
	{
		session_.last_error = why.message;
		failed_info_ = Endpoint();
		failed_info_->last_error = why.message;
		Era era = session_.era;
		session_.Reset();
		if (era == Era::Legacy && why.config_error)
			era_cache_.Forget(OriginOf(config_.url)); /* a cached verdict may be what no longer fits */
		std::vector<Call *> waiting(waiting_.begin(), waiting_.end());
		for (Call *c : waiting)
			Finish(c, why);
	}

	void EndpointReady()
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

	CallOutcome ConfigError(const std::string &message)
	{
		CallOutcome o = ErrorOutcome(ErrorCode::McpError, message);
		o.config_error = true;
		return o;
	}

	void AfterFeatures()
	{
		if (config_.tool.empty()) {
			EndpointReady(); /* no tool to look for */
			return;
		}
		if (!session_.features.capabilities_json.empty() && !session_.features.tools) {
			FailEndpoint(ConfigError("the MCP server declares no tools capability"));
			return;
		}
		StartToolsList("");
	}

	void CompleteDiscover(const HttpExchange &x, const Pending &p)
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

	void CompleteInitialize(const HttpExchange &x, const Pending &p)
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

	void CompleteInitialized(const HttpExchange &x)
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

	void CompleteToolsList(const HttpExchange &x, const Pending &p)
	{
		CallOutcome o = TransportOutcome(x, p.response.has_value());
		if (o.code != ErrorCode::None) {
			o.message = "MCP tools/list failed: " + o.message;
			FailEndpoint(std::move(o));
			return;
		}
		if (!p.response) {
			FailEndpoint(
			    ErrorOutcome(ErrorCode::McpError, "MCP tools/list: no JSON-RPC response with the request's id"));
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
		ToolEntry entry;
		std::string cursor, error;
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

	/* ------------------------------------------------------------ authorization (OAuth) */

	struct CachedToken {
		std::string access_token;
		std::string scope;
		Clock::time_point renew_at = Clock::time_point::max();
	};

	bool OAuthChanged(const ClientConfig &c) const
	{
		const OAuthSettings &a = c.oauth, &b = config_.oauth;
		return a.client_id != b.client_id || a.client_secret != b.client_secret ||
		       a.private_key_pem != b.private_key_pem || a.scope != b.scope || c.oauth_store != config_.oauth_store;
	}

	/* New credentials: tokens and registrations obtained with the old ones are not used again. */
	void ResetAuth()
	{
		DropAuthFlow();
		tokens_.clear();
		discovery_ = OAuthDiscovery();
	}

	void DropAuthFlow()
	{
		if (auth_exchange_) {
			transport_.Abort(auth_exchange_);
			pending_.erase(auth_exchange_);
		}
		auth_exchange_ = 0;
		auth_flow_.reset();
		endpoint_after_auth_ = false;
	}

	bool OAuthUsable() const
	{
		return config_.oauth.CanAuthorize() ||
		       (!config_.oauth_store.empty() && access(config_.oauth_store.c_str(), R_OK) == 0);
	}

	/* The token of this endpoint's origin when it is due for renewal at some point and calls would use it. */
	const CachedToken *RenewableToken() const
	{
		if (auth_flow_ || calls_.empty())
			return nullptr;
		auto it = tokens_.find(OriginOf(config_.url));
		if (it == tokens_.end() || it->second.renew_at == Clock::time_point::max())
			return nullptr;
		return &it->second;
	}

	/* A 401, or a 403 that asks for more scope: the request never reached the tool. */
	static bool Challenged(const HttpExchange &x, const Pending &p)
	{
		if (p.purpose == Purpose::Fire || p.response || p.resumption || x.curl_code != 0)
			return false;
		if (x.status == 401)
			return true;
		BearerChallenge c;
		return x.status == 403 && ParseBearerChallenge(x.www_authenticate, &c) && c.error == "insufficient_scope";
	}

	/* Authorizes and sends the request again (the endpoint's set-up, or the call), within kMaxAuthRetries. False
	 * when OAuth cannot help: the 401/403 then stands as a setting that cannot work. */
	bool OnChallenge(const HttpExchange &x, const Pending &p, bool stale)
	{
		if (!OAuthUsable())
			return false;
		BearerChallenge challenge;
		ParseBearerChallenge(x.www_authenticate, &challenge);
		bool step_up = challenge.error == "insufficient_scope";
		if (p.purpose == Purpose::ToolCall || p.purpose == Purpose::TaskGet || p.purpose == Purpose::TaskResult) {
			Call *c = CallOf(p);
			if (!c)
				return true; /* finished meanwhile */
			if (c->auth_retries >= kMaxAuthRetries)
				return false;
			c->auth_retries++;
			SetExchange(c, 0);
			auth_waiting_.push_back(c->request.tag);
		} else {
			if (stale)
				return false; /* the endpoint changed meanwhile: the usual path starts over */
			if (endpoint_auth_retries_ >= kMaxAuthRetries)
				return false;
			endpoint_auth_retries_++;
			session_.Reset();
			endpoint_after_auth_ = true;
		}
		if (auth_flow_) {
			if (step_up)
				pending_step_up_ = challenge; /* asked for once the running flow ends */
			return true;
		}
		if (p.auth_generation != auth_generation_ && !step_up) {
			ResumeAfterAuth(); /* a newer token came after this request left: send it again with that one */
			return true;
		}
		StartAuth(challenge, true);
		return true;
	}

	void StartAuth(const BearerChallenge &challenge, bool rediscover)
	{
		if (auth_flow_)
			return;
		OAuthSettings s = config_.oauth;
		s.ca_file = config_.ca_file;
		s.client_cert = config_.client_cert;
		s.client_key = config_.client_key;
		s.user_agent = config_.user_agent;
		s.timeout_ms = std::max(1000L, std::min(config_.request_timeout_ms, 30000L));
		std::string error;
		if (!config_.oauth_store.empty() && !LoadTokenStore(config_.oauth_store, &s, &error) && !error.empty()) {
			FailAuth(error, !rediscover);
			return;
		}
		auto token = tokens_.find(OriginOf(config_.url));
		std::string previous_scope = token != tokens_.end() ? token->second.scope : "";
		auth_settings_ = s;
		auth_renewal_ = !rediscover;
		auth_flow_ = std::make_unique<OAuthFlow>(s, config_.url, challenge, discovery_, previous_scope, rediscover);
		PumpAuth();
	}

	void PumpAuth()
	{
		HttpRequest r;
		switch (auth_flow_->Next(&r)) {
		case OAuthFlow::Step::Http: {
			Pending p;
			p.purpose = Purpose::Auth;
			auth_exchange_ = Send(std::move(r), std::move(p));
			return;
		}
		case OAuthFlow::Step::Done:
			AuthDone();
			return;
		case OAuthFlow::Step::Authorize:
			FailAuth("the authorization server offers no grant that works without a person: an operator logs in "
			         "once with pg_diagnosis_mcp_check --login",
			         auth_renewal_);
			return;
		case OAuthFlow::Step::Failed:
			FailAuth(auth_flow_->Error(), auth_renewal_);
			return;
		}
	}

	void FeedAuth(const HttpExchange &x)
	{
		if (!auth_flow_ || x.id != auth_exchange_)
			return;
		auth_exchange_ = 0;
		auth_flow_->Feed(x);
		PumpAuth();
	}

	void AuthDone()
	{
		const OAuthToken &t = auth_flow_->Token();
		CachedToken cached;
		cached.access_token = t.access_token;
		cached.scope = t.scope;
		if (t.expires_in_s > 0) {
			int64_t lifetime_ms = t.expires_in_s * 1000;
			cached.renew_at = Clock::now() + std::chrono::milliseconds(lifetime_ms - RenewalMarginMs(lifetime_ms));
		}
		tokens_[OriginOf(config_.url)] = std::move(cached);
		discovery_ = auth_flow_->Discovery();
		auth_generation_++;
		oauth_tokens_++;
		if (!config_.oauth_store.empty() && !t.refresh_token.empty() &&
		    t.refresh_token != auth_settings_.refresh_token) {
			/* The server rotated the refresh token: the old one may already be void. */
			OAuthSettings store = auth_settings_;
			store.refresh_token = t.refresh_token;
			store.refresh_client_id = auth_flow_->ClientId();
			store.refresh_client_secret = auth_flow_->ClientSecret();
			store.refresh_issuer = discovery_.issuer;
			std::string error;
			if (!SaveTokenStore(config_.oauth_store, store, &error))
				session_.last_error = error;
		}
		auth_flow_.reset();
		if (pending_step_up_.bearer) {
			BearerChallenge step_up = std::exchange(pending_step_up_, BearerChallenge());
			StartAuth(step_up, true);
			return;
		}
		ResumeAfterAuth();
	}

	/* A renewal that fails leaves the current token in use (until a 401 asks for a new one); a flow that calls
	 * or the endpoint wait for fails them as a setting that cannot work. */
	void FailAuth(const std::string &why, bool renewal)
	{
		auth_flow_.reset();
		auth_exchange_ = 0;
		pending_step_up_ = BearerChallenge();
		if (renewal) {
			auto token = tokens_.find(OriginOf(config_.url));
			if (token != tokens_.end())
				token->second.renew_at = Clock::time_point::max();
			ResumeAfterAuth();
			return;
		}
		CallOutcome o = ConfigError("OAuth authorization failed: " + why);
		std::vector<uint64_t> tags = std::exchange(auth_waiting_, {});
		for (uint64_t tag : tags) {
			auto it = calls_.find(tag);
			if (it != calls_.end())
				Finish(it->second.get(), o);
		}
		if (std::exchange(endpoint_after_auth_, false))
			FailEndpoint(o);
	}

	/* The token is there: calls that met a 401 go again, the endpoint's set-up starts over. */
	void ResumeAfterAuth()
	{
		std::vector<uint64_t> tags = std::exchange(auth_waiting_, {});
		for (uint64_t tag : tags) {
			auto it = calls_.find(tag);
			if (it == calls_.end())
				continue;
			Call *c = it->second.get();
			if (session_.phase != EndpointSession::Phase::Ready)
				waiting_.push_back(c);
			else if (c->task_id.empty())
				StartToolCall(c);
			else
				StartTaskRequest(c, Purpose::TaskGet);
		}
		if (std::exchange(endpoint_after_auth_, false) || (!waiting_.empty() && !tags.empty()))
			EnsureEndpoint();
	}

	/* ------------------------------------------------------------ calls */

	/* The endpoint is ready: call the tool, or poll the task being resumed. */
	void Begin(Call *c)
	{
		if (c->answer_if_era_holds && session_.era == c->era) {
			CallOutcome answer = std::move(*c->answer_if_era_holds);
			c->answer_if_era_holds.reset();
			Finish(c, std::move(answer));
			return;
		}
		c->answer_if_era_holds.reset();
		if (!c->task_id.empty()) {
			/* A resumed task is polled in the endpoint's era (2025-11-25 fetches the result with tasks/result). */
			c->era = session_.era;
			SchedulePoll(c, 0);
			return;
		}
		StartToolCall(c);
	}

	void StartToolCall(Call *c)
	{
		const CallRequest &r = c->request;
		std::string token = r.run_id + ":" + std::to_string(r.attempt);
		ToolCallParams params;
		params.tool = config_.tool;
		params.progress_token = token;
		params.traceparent = r.traceparent;
		params.legacy_task = session_.era == Era::Legacy && session_.TasksForTool();
		params.call = &r;
		Pending p;
		p.purpose = Purpose::ToolCall;
		p.tag = r.tag;
		p.rpc_id = JsonString(token);
		p.progress_token = p.rpc_id;
		HttpRequest req =
		    Post("tools/call", config_.tool, BuildToolCall(token, session_.Context(), params), RemainingMs(c), &p);
		req.headers.push_back("Idempotency-Key: " + token);
		if (session_.era == Era::Modern && !session_.tool.param_headers.empty())
			for (std::string &h : ParamHeaderLines(session_.tool.param_headers, BuildToolArguments(r)))
				req.headers.push_back(std::move(h));
		if (!r.traceparent.empty())
			req.headers.push_back("traceparent: " + r.traceparent);
		c->rpc_id = p.rpc_id;
		c->era = session_.era;
		c->resume_due = false;
		c->last_event_id.clear();
		c->retry_ms = -1;
		c->idle_resumes = 0;
		c->response_bytes = 0;
		c->resumes = 0;
		c->response_budget_spent = false;
		SetExchange(c, Send(std::move(req), std::move(p)));
	}

	/* GET + Last-Event-ID: the legacy way to pick up a stream the server closed. */
	void StartResume(Call *c)
	{
		c->resume_due = false;
		c->resumes++;
		HttpRequest r = BaseRequest(HttpMethod::Get, RemainingMs(c));
		r.max_bytes = config_.max_response_bytes - c->response_bytes; /* what is left of the call's budget */
		for (std::string &h : session_.Headers("GET", ""))
			r.headers.push_back(std::move(h));
		r.headers.push_back("Last-Event-ID: " + c->last_event_id);
		Pending p;
		p.purpose = Purpose::ToolCall;
		p.tag = c->request.tag;
		p.rpc_id = c->rpc_id;
		p.progress_token = c->rpc_id;
		p.resumption = true;
		p.sent_session = !session_.session_id.empty();
		SetExchange(c, Send(std::move(r), std::move(p)));
	}

	void StartTaskRequest(Call *c, Purpose purpose)
	{
		c->poll_due = false;
		const char *method = purpose == Purpose::TaskGet ? "tasks/get" : "tasks/result";
		std::string id = NextId(purpose == Purpose::TaskGet ? "tasks-get" : "tasks-result");
		Pending p;
		p.purpose = purpose;
		p.tag = c->request.tag;
		p.rpc_id = JsonString(id);
		HttpRequest r = Post(method, c->task_id,
		                     BuildTaskRequest(id, session_.Context(), method, c->task_id, c->request.traceparent),
		                     RemainingMs(c), &p);
		if (!c->request.traceparent.empty())
			r.headers.push_back("traceparent: " + c->request.traceparent);
		SetExchange(c, Send(std::move(r), std::move(p)));
	}

	void SchedulePoll(Call *c, int64_t delay_ms)
	{
		SetExchange(c, 0);
		c->poll_due = true;
		c->poll_at = Clock::now() + std::chrono::milliseconds(delay_ms);
	}

	/* Fire-and-forget messages. */
	void SendCancelled(Call *c, const std::string &reason)
	{
		if (c->rpc_id.empty())
			return;
		Send(Post("notifications/cancelled", "", BuildCancelled(c->rpc_id, reason), 2000, nullptr), Pending());
	}

	void SendTaskCancel(Call *c)
	{
		std::string id = NextId("tasks-cancel");
		Send(Post("tasks/cancel", c->task_id,
		          BuildTaskRequest(id, session_.Context(), "tasks/cancel", c->task_id, c->request.traceparent), 5000,
		          nullptr),
		     Pending());
	}

	/* A server request is answered only on the stream of a call's own tools/call, before the call's response, at
	 * most kMaxServerRequestsPerCall times per call; any other (on the streams of our own answers, of set-up or
	 * task requests, or past the limit) is ignored and counted for the call it came with. 0.2.0 answered them all:
	 * a storm of answers to answers that outlived the run. */
	void OnServerRequest(const Pending &p, const RpcMessage &m)
	{
		Call *c = p.purpose == Purpose::ToolCall || p.purpose == Purpose::TaskGet || p.purpose == Purpose::TaskResult
		              ? CallOf(p)
		              : nullptr;
		if (!c)
			return; /* not a call's exchange, or the call has ended */
		if (p.purpose != Purpose::ToolCall || p.response || c->server_requests_answered >= kMaxServerRequestsPerCall) {
			c->ignored_server_requests++;
			return;
		}
		c->server_requests_answered++;
		AnswerServerRequest(m);
	}

	void AnswerServerRequest(const RpcMessage &m)
	{
		/* Modern servers send no requests, and modern clients send no responses. */
		if (session_.era != Era::Legacy)
			return;
		std::string body = m.method == "ping" ? BuildEmptyResult(m.id) : BuildMethodNotFound(m.id, m.method);
		HttpRequest r = BaseRequest(HttpMethod::Post, kReplyTimeoutMs);
		r.max_bytes = kReplyMaxBytes;
		for (std::string &h : session_.Headers("", ""))
			r.headers.push_back(std::move(h));
		r.body = std::move(body);
		Send(std::move(r), Pending());
	}

	void AbortExchange(Call *c)
	{
		if (c->exchange) {
			transport_.Abort(c->exchange);
			pending_.erase(c->exchange);
			SetExchange(c, 0);
		}
	}

	/* Stops the call's work on the server: tasks/cancel for a task, notifications/cancelled for a legacy request;
	 * for a modern request closing its stream (the abort) is the cancellation. */
	void GiveUp(Call *c, const std::string &reason)
	{
		if (!c->task_id.empty() && session_.phase == EndpointSession::Phase::Ready &&
		    (c->era == Era::Modern || session_.features.legacy_task_cancel))
			SendTaskCancel(c); /* 2025-11-25 servers declare tasks.cancel when they take it */
		else if (c->task_id.empty() && c->era == Era::Legacy && !c->rpc_id.empty())
			SendCancelled(c, reason); /* the tools/call went out: the server may still be working on it */
		AbortExchange(c);
	}

	/* Ends this attempt at a call on our side (its deadline passed). A task is left running: it is durable on the
	 * server and the run's next attempt polls it again instead of calling the tool twice. A direct call is given
	 * up as above. */
	void GiveUpAttempt(Call *c, const std::string &reason)
	{
		if (!c->task_id.empty()) {
			AbortExchange(c);
			return;
		}
		GiveUp(c, reason);
	}

	void Finish(Call *c, CallOutcome outcome)
	{
		outcome.tag = c->request.tag;
		outcome.elapsed_ms = std::max<int64_t>(0, -MillisUntil(c->submitted, Clock::now()));
		outcome.ignored_server_requests = c->ignored_server_requests;
		if (outcome.task_id.empty())
			outcome.task_id = c->task_id;
		AbortExchange(c);
		waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), c), waiting_.end());
		outcomes_.push_back(std::move(outcome));
		between_exchanges_.erase(c->request.tag);
		calls_.erase(c->request.tag);
	}

	/* The exchange in flight for the call (0: none), and whether the call's own timers apply. */
	void SetExchange(Call *c, uint64_t exchange)
	{
		c->exchange = exchange;
		if (exchange)
			between_exchanges_.erase(c->request.tag);
		else
			between_exchanges_.insert(c->request.tag);
	}

	Call *CallOf(const Pending &p)
	{
		auto it = calls_.find(p.tag);
		return it == calls_.end() ? nullptr : it->second.get();
	}

	/* The call goes back to wait for the endpoint, which is probed (or initialized) anew. */
	void Requeue(Call *c, bool forget_era)
	{
		c->retried = true;
		SetExchange(c, 0);
		if (forget_era) {
			era_cache_.Forget(OriginOf(config_.url));
			if (session_.phase == EndpointSession::Phase::Ready)
				session_.Reset();
		}
		if (session_.phase == EndpointSession::Phase::Ready)
			Begin(c); /* another call already set the endpoint up again */
		else {
			waiting_.push_back(c);
			EnsureEndpoint();
		}
	}

	/* A 4xx answer that a new probe may fix: a modern server rejecting our version or our Mcp-Param headers (the
	 * tool's definition changed: the probe lists the tools again), a legacy one rejecting a modern request, or the
	 * reverse after a server change. */
	bool NeedsReprobe(const HttpExchange &x, Era era) const
	{
		if (x.curl_code != 0 || x.status < 400 || x.status >= 500 || x.status == 401 || x.status == 403 ||
		    x.status == 408 || x.status == 429 || x.status == 404)
			return false;
		RpcMessage error;
		bool modern_body = IsModernErrorBody(x, &error);
		if (era == Era::Modern)
			return !modern_body || error.error_code_int == kRpcUnsupportedVersion ||
			       error.error_code_int == kRpcHeaderMismatch;
		return modern_body;
	}

	void CompleteToolCall(Call *c, const HttpExchange &x, Pending &p)
	{
		bool answered = p.response.has_value();
		if (SessionLost(c, x, p)) {
			if (c->retried) {
				/* The server accepted a new initialize and lost that session too: churn on its side, which a later
				 * attempt with backoff can outlast. */
				Finish(c,
				       ErrorOutcome(ErrorCode::NetworkError, "MCP session lost again (HTTP 404) after re-initializing",
				                    "{\"http_status\":404}"));
				return;
			}
			RetryInNewSession(c, p);
			return;
		}
		if (!answered && !p.resumption && NeedsReprobe(x, c->era) && !c->retried) {
			/* A rejected protocol version or Mcp-Param header never reached the tool: send again in whatever is
			 * negotiated. Any other 4xx may be the tool's own answer: it stands if the endpoint turns out to be of
			 * the same era. */
			RpcMessage error;
			bool unprocessed = IsModernErrorBody(x, &error) && (error.error_code_int == kRpcUnsupportedVersion ||
			                                                    error.error_code_int == kRpcHeaderMismatch);
			if (!unprocessed)
				c->answer_if_era_holds = TransportOutcome(x, answered);
			Requeue(c, true);
			return;
		}
		if (p.resumption && !answered && x.curl_code == 0 && x.status == 405) {
			Finish(c, ErrorOutcome(ErrorCode::NetworkError, "the event stream ended before the response and the "
			                                                "server does not resume streams (HTTP 405 to GET)"));
			return;
		}
		if (!answered && p.resumption && x.too_big) {
			c->response_bytes += x.bytes;
			c->response_budget_spent = true; /* the resumed stream was cut at what was left of the budget */
		}
		if (!answered && ResumeIfPossible(c, x, p))
			return;
		if (c->response_budget_spent) {
			Finish(c, ErrorOutcome(ErrorCode::McpError, "the response exceeds diagnosis.max_response_bytes (" +
			                                                std::to_string(config_.max_response_bytes) +
			                                                " bytes) across its stream and " +
			                                                std::to_string(c->resumes) + " resumption(s) of it"));
			return;
		}

		CallOutcome o = TransportOutcome(x, answered);
		if (o.code != ErrorCode::None) {
			if (x.timed_out)
				GiveUpAttempt(c, "timed out");
			Finish(c, std::move(o));
			return;
		}
		if (!answered) {
			if (p.foreign_response || !x.is_sse)
				Finish(c,
				       ErrorOutcome(ErrorCode::McpError, x.body.empty() && !x.is_sse
				                                             ? "HTTP " + std::to_string(x.status) +
				                                                   " without a JSON-RPC response (protocol violation)"
				                                             : "no JSON-RPC response with the request's id"));
			else
				/* MCP treats a closed stream as a disconnection, not as the end of the request: try again later. */
				Finish(c, ErrorOutcome(ErrorCode::NetworkError,
				                       "the event stream ended before the response (disconnected)"));
			return;
		}
		HandleResponse(c, *p.response, x.status, p.purpose);
	}

	/* A legacy SSE stream closed (or broke) before our response after giving an event id: resume it after the
	 * server's retry interval, within the same call. */
	bool ResumeIfPossible(Call *c, const HttpExchange &x, const Pending &p)
	{
		if (c->era != Era::Legacy || !x.is_sse || x.too_big || x.sse_failed || x.held_too_much || x.headers_too_big ||
		    !x.callback_error.empty() || x.timed_out || x.local_failure)
			return false;
		if (!x.sse.LastEventId().empty())
			c->last_event_id = x.sse.LastEventId();
		if (x.sse.RetryMs() >= 0)
			c->retry_ms = x.sse.RetryMs();
		if (c->last_event_id.empty())
			return false;
		c->response_bytes += x.bytes + kResumeCostBytes;
		if (c->response_bytes >= config_.max_response_bytes) {
			c->response_budget_spent = true; /* a resumption does not grant a fresh budget */
			return false;
		}
		c->idle_resumes = p.events_seen > 0 ? 0 : c->idle_resumes + 1;
		if (c->idle_resumes > kMaxIdleResumes)
			return false;
		long delay = c->retry_ms >= 0 ? c->retry_ms : kDefaultRetryMs;
		if (Clock::now() + std::chrono::milliseconds(delay) >= c->deadline)
			return false;
		c->resume_due = true;
		c->resume_at = Clock::now() + std::chrono::milliseconds(delay);
		return true;
	}

	/* Our JSON-RPC response to tools/call or tasks/result. */
	void HandleResponse(Call *c, const RpcMessage &response, long status, Purpose purpose)
	{
		if (response.is_error) {
			CallOutcome o = RpcErrorOutcome(response);
			o.http_status = status;
			Finish(c, std::move(o));
			return;
		}
		c->last_response = response.result;
		if (purpose == Purpose::ToolCall && c->task_id.empty()) {
			TaskInfo task;
			switch (ParseCreateTask(response.result, c->era, &task)) {
			case TaskParse::Task:
				TaskCreated(c, task);
				return;
			case TaskParse::Invalid: {
				CallOutcome o = ErrorOutcome(ErrorCode::McpError, "malformed task in the tools/call result (a taskId "
				                                                  "and a status are required, the taskId at most " +
				                                                      std::to_string(kMaxTaskIdBytes) + " bytes)");
				o.response_json = response.result;
				Finish(c, std::move(o));
				return;
			}
			case TaskParse::NotATask:
				break;
			}
		}
		if (response.result.find("\"resultType\":\"input_required\"") != std::string::npos) {
			CallOutcome o = ErrorOutcome(ErrorCode::McpError, "the MCP server asked for input (input_required), "
			                                                  "which pg_diagnosis cannot give");
			o.response_json = response.result;
			Finish(c, std::move(o));
			return;
		}
		CallOutcome done = ToolResultOutcome(response.result, c->request.schema_version, *schemas_);
		done.http_status = status;
		Finish(c, std::move(done));
	}

	/* A task may take longer than a direct call: task_timeout_ms, when set, replaces the call's deadline. */
	void ExtendForTask(Call *c) const
	{
		if (config_.task_timeout_ms > 0)
			c->deadline = c->submitted + std::chrono::milliseconds(config_.task_timeout_ms);
	}

	void TaskCreated(Call *c, const TaskInfo &task)
	{
		c->task_id = task.task_id;
		ExtendForTask(c);
		CallTask t;
		t.tag = c->request.tag;
		t.task_id = task.task_id;
		t.ttl_ms = task.ttl_ms;
		tasks_.push_back(std::move(t));
		if (task.poll_ms >= 0)
			c->poll_ms = std::clamp(task.poll_ms, kMinPollMs, kMaxPollMs);
		SchedulePoll(c, c->poll_ms);
	}

	/* A 404 to a request that carried the legacy session id: the session expired. */
	static bool SessionLost(const Call *c, const HttpExchange &x, const Pending &p)
	{
		return !p.response && x.curl_code == 0 && x.status == 404 && p.sent_session && c->era == Era::Legacy;
	}

	/* Sets the session up again (once for every call that noticed) and sends the call's request again. */
	void RetryInNewSession(Call *c, const Pending &p)
	{
		if (p.generation == session_.generation)
			session_.Reset();
		Requeue(c, false);
	}

	void CompleteTaskGet(Call *c, const HttpExchange &x, Pending &p)
	{
		if (SessionLost(c, x, p) && !c->retried) {
			RetryInNewSession(c, p); /* then poll the same task again */
			return;
		}
		bool answered = p.response.has_value();
		RpcMessage error;
		bool lost = !answered && x.curl_code == 0 &&
		            (x.status == 404 || (x.status >= 400 && x.status < 500 && IsModernErrorBody(x, &error)) ||
		             (x.status == 400 && x.body.find("-32602") != std::string::npos));
		if (!lost && answered && p.response->is_error)
			lost = true;
		if (lost) {
			CallOutcome o = answered ? RpcErrorOutcome(*p.response)
			                         : ErrorOutcome(ErrorCode::McpError, "HTTP " + std::to_string(x.status));
			o.message = "task " + c->task_id + " is unknown to the MCP server (expired or lost): " + o.message;
			o.task_lost = true;
			Finish(c, std::move(o));
			return;
		}
		CallOutcome o = TransportOutcome(x, answered);
		if (o.code != ErrorCode::None || !answered) {
			if (o.config_error || o.local_failure) {
				Finish(c, std::move(o));
				return;
			}
			/* The task lives on the server: a failed poll is retried at the next interval, until the deadline. */
			SchedulePoll(c, c->poll_ms);
			return;
		}
		TaskInfo task;
		if (!ParseTaskStatus(p.response->result, c->era, &task)) {
			CallOutcome bad = ErrorOutcome(ErrorCode::McpError, "malformed tasks/get result");
			bad.response_json = p.response->result;
			Finish(c, std::move(bad));
			return;
		}
		if (task.poll_ms >= 0)
			c->poll_ms = std::clamp(task.poll_ms, kMinPollMs, kMaxPollMs);
		if (task.status == "working") {
			SchedulePoll(c, c->poll_ms);
			return;
		}
		if (task.status == "input_required" && c->era == Era::Modern) {
			GiveUp(c, "input required");
			Finish(c, ErrorOutcome(ErrorCode::McpError, "task " + c->task_id +
			                                                " asks for input (input_required), "
			                                                "which pg_diagnosis cannot give"));
			return;
		}
		if (c->era == Era::Legacy &&
		    (task.status == "completed" || task.status == "failed" || task.status == "input_required")) {
			/* 2025-11-25: the result (or the JSON-RPC error) comes from tasks/result. */
			StartTaskRequest(c, Purpose::TaskResult);
			return;
		}
		if (task.status == "completed") {
			if (task.result.empty()) {
				Finish(c, ErrorOutcome(ErrorCode::McpError, "completed task " + c->task_id + " carries no result"));
				return;
			}
			RpcMessage response;
			response.kind = RpcMessage::Kind::Response;
			response.result = task.result;
			HandleResponse(c, response, x.status, Purpose::TaskResult);
			return;
		}
		if (task.status == "failed") {
			std::vector<RpcMessage> wrapped;
			std::string parse_error;
			RpcMessage failure;
			failure.kind = RpcMessage::Kind::Response;
			failure.is_error = true;
			failure.error_code = "null";
			failure.error_message = task.status_message.empty() ? "task failed" : task.status_message;
			if (!task.error.empty() &&
			    ParseMessages("{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":" + task.error + "}", &wrapped, &parse_error) &&
			    wrapped.size() == 1)
				failure = wrapped[0];
			HandleResponse(c, failure, x.status, Purpose::TaskResult);
			return;
		}
		/* cancelled, or a status this client does not know */
		Finish(c, ErrorOutcome(ErrorCode::McpError,
		                       "task " + c->task_id + " ended as \"" + task.status + "\" on the MCP server" +
		                           (task.status_message.empty() ? "" : ": " + task.status_message)));
	}

	void CompleteTaskResult(Call *c, const HttpExchange &x, Pending &p)
	{
		if (SessionLost(c, x, p) && !c->retried) {
			RetryInNewSession(c, p);
			return;
		}
		bool answered = p.response.has_value();
		CallOutcome o = TransportOutcome(x, answered);
		if (o.code != ErrorCode::None || !answered) {
			if (o.config_error || o.local_failure) {
				Finish(c, std::move(o));
				return;
			}
			SchedulePoll(c, c->poll_ms); /* ask again; the task keeps its result */
			return;
		}
		HandleResponse(c, *p.response, x.status, Purpose::TaskResult);
	}

	/* ------------------------------------------------------------ what arrives */

	/* Takes the SSE events (and, once finished, the JSON body) of an exchange: our response, progress, server
	 * requests. */
	void Absorb(HttpExchange *x)
	{
		auto it = pending_.find(x->id);
		if (it == pending_.end()) {
			x->TakeEvents();
			return;
		}
		Pending &p = it->second;
		std::vector<SseEvent> events = x->TakeEvents();
		p.events_seen += events.size();
		for (const SseEvent &e : events)
			Messages(p, e.data);
		/* A body cut short (size cap, reset) may still parse: only a complete one counts. */
		if (x->finished && x->curl_code == 0 && !x->is_sse && x->status >= 200 && x->status < 300 && !x->body.empty())
			Messages(p, x->body);
	}

	void Messages(Pending &p, const std::string &text)
	{
		if (text.find_first_not_of(" \t\r\n") == std::string::npos)
			return; /* priming event */
		std::vector<RpcMessage> messages;
		std::string error;
		if (!ParseMessages(text, &messages, &error))
			return; /* not a message for us; the stream still has to deliver our response */
		for (RpcMessage &m : messages) {
			switch (m.kind) {
			case RpcMessage::Kind::Response:
				if (m.id == p.rpc_id) {
					if (!p.response)
						p.response = std::move(m);
				} else
					p.foreign_response = true;
				break;
			case RpcMessage::Kind::Request:
				OnServerRequest(p, m);
				break;
			case RpcMessage::Kind::Notification: {
				CallProgress progress;
				if (ProgressOf(m, p.progress_token, &progress)) {
					progress.tag = p.tag;
					progress_.push_back(std::move(progress));
				}
				break;
			}
			}
		}
	}

	void Complete(HttpExchange &x)
	{
		Absorb(&x);
		auto it = pending_.find(x.id);
		if (it == pending_.end())
			return;
		Pending p = std::move(it->second);
		pending_.erase(it);
		bool stale = p.generation != session_.generation;
		if (p.purpose == Purpose::Auth) {
			FeedAuth(x);
			return;
		}
		if (Challenged(x, p) && OnChallenge(x, p, stale))
			return;
		switch (p.purpose) {
		case Purpose::Fire:
		case Purpose::Auth:
			return;
		case Purpose::Discover:
		case Purpose::Initialize:
		case Purpose::Initialized:
		case Purpose::ToolsList:
			if (stale) {
				/* The endpoint changed meanwhile (new URL or token): start over for the calls still waiting. */
				if (session_.phase == EndpointSession::Phase::Idle && !waiting_.empty())
					EnsureEndpoint();
				return;
			}
			if (p.purpose == Purpose::Discover)
				CompleteDiscover(x, p);
			else if (p.purpose == Purpose::Initialize)
				CompleteInitialize(x, p);
			else if (p.purpose == Purpose::Initialized)
				CompleteInitialized(x);
			else
				CompleteToolsList(x, p);
			return;
		case Purpose::ToolCall:
		case Purpose::TaskGet:
		case Purpose::TaskResult:
			break;
		}
		Call *c = CallOf(p);
		if (!c)
			return; /* finished meanwhile (cancelled, timed out) */
		SetExchange(c, 0);
		if (p.purpose == Purpose::ToolCall)
			CompleteToolCall(c, x, p);
		else if (p.purpose == Purpose::TaskGet)
			CompleteTaskGet(c, x, p);
		else
			CompleteTaskResult(c, x, p);
	}

	/* Due polls and resumptions; calls past their deadline while no exchange of theirs is open. Only calls
	 * between exchanges have timers: the transport times out the others. */
	void RunTimers()
	{
		Clock::time_point now = Clock::now();
		if (const CachedToken *t = RenewableToken())
			if (now >= t->renew_at)
				StartAuth(BearerChallenge(), false); /* ahead of expiry, while calls go on with the current one */
		std::vector<Call *> expired;
		/* A copy: starting a request takes its call out of the set. */
		std::vector<uint64_t> tags(between_exchanges_.begin(), between_exchanges_.end());
		for (uint64_t tag : tags) {
			auto it = calls_.find(tag); /* find, not at: a tag without its call is skipped, never thrown on */
			if (it == calls_.end())
				continue;
			Call *c = it->second.get();
			if (now >= c->deadline) {
				expired.push_back(c);
				continue;
			}
			bool due = (c->poll_due && now >= c->poll_at) || (c->resume_due && now >= c->resume_at);
			if (session_.phase != EndpointSession::Phase::Ready) {
				/* The endpoint is being set up again (a lost session): the call waits for it, then starts over
				 * (a task is polled again; a stream that belonged to the old session cannot be resumed). */
				if (due && std::find(waiting_.begin(), waiting_.end(), c) == waiting_.end()) {
					c->poll_due = c->resume_due = false;
					waiting_.push_back(c);
					EnsureEndpoint();
				}
				continue;
			}
			if (c->poll_due && now >= c->poll_at)
				StartTaskRequest(c, Purpose::TaskGet);
			else if (c->resume_due && now >= c->resume_at)
				StartResume(c);
		}
		for (Call *c : expired) {
			bool waiting = std::find(waiting_.begin(), waiting_.end(), c) != waiting_.end();
			GiveUpAttempt(c, "timed out");
			Finish(c, ErrorOutcome(ErrorCode::TimeoutError,
			                       waiting ? "timed out waiting for the MCP endpoint" : "MCP call timed out"));
		}
	}

	ClientConfig config_;
	const SchemaRegistry *schemas_;
	HttpTransport transport_;
	EndpointSession session_;
	EraCache era_cache_;
	std::optional<EndpointInfo> failed_info_;

	/* OAuth: tokens per origin, what discovery learned, the one flow in flight and who waits for it. */
	std::map<std::string, CachedToken> tokens_;
	OAuthDiscovery discovery_;
	std::unique_ptr<OAuthFlow> auth_flow_;
	OAuthSettings auth_settings_; /* what the flow in flight started from */
	bool auth_renewal_ = false;
	uint64_t auth_exchange_ = 0;
	uint64_t auth_generation_ = 0; /* bumped with every new token */
	int64_t oauth_tokens_ = 0;
	std::vector<uint64_t> auth_waiting_;
	bool endpoint_after_auth_ = false;
	int endpoint_auth_retries_ = 0;
	BearerChallenge pending_step_up_;
	int probes_ = 0;
	int list_pages_ = 0;
	uint64_t ids_ = 0;

	std::map<uint64_t, std::unique_ptr<Call>> calls_;
	/* Tags of the calls with no exchange open (waiting for the endpoint, a poll or a resumption): the only ones
	 * whose timers TimeoutMs and RunTimers look at, so a turn does not walk every call in flight. */
	std::set<uint64_t> between_exchanges_;
	std::vector<Call *> waiting_;
	std::unordered_map<uint64_t, Pending> pending_;
	std::vector<CallProgress> progress_;
	std::vector<CallOutcome> outcomes_;
	std::vector<CallTask> tasks_;
};

} // namespace

std::unique_ptr<McpClient>
McpClient::Create(const ClientConfig &config, const SchemaRegistry *schemas)
{
	return std::make_unique<Client>(config, schemas);
}

} // namespace pgdiag
