/*
 * mcp_client_impl.hpp: the Client behind the McpClient facade, shared by the units that implement it (internal to
 * src/core, not part of the core's interface).
 *
 *   mcp_client.cpp   the facade and the call state machine: tools/call, its stream (progress, server requests,
 *                    resumption), its response, cancellation, timers
 *   mcp_session.cpp  endpoint set-up: era detection (server/discover, initialize), version, tools/list, the legacy
 *                    session's end
 *   mcp_tasks.cpp    task-backed calls: tasks/get polling, tasks/result, tasks/cancel
 *
 * The message rules they apply are pure functions in mcp_protocol and mcp_session (the judges).
 */
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pg_diagnosis/core/http_transport.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/mcp_session.hpp"

namespace pgdiag {
namespace client_detail {

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
/* MRTR: input_required answers a call gives before a server that keeps asking fails it (a worker only declines). */
constexpr int kMaxInputRounds = 3;

inline int64_t
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
	Auth,       /* a request of the OAuth flow (metadata, registration, token): mcp_auth.cpp */
};

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

	/* MRTR: answers given so far, and what the next tools/call of this call carries. */
	int input_rounds = 0;
	std::string input_responses;
	bool has_request_state = false;
	std::string request_state;
};

/* How many times one call (or one set-up of the endpoint) is sent again after authorizing: a step-up that never
 * satisfies the server must not loop (the conformance suite allows three authorization requests in all). */
constexpr int kMaxAuthRetries = 2;

/* An OAuth access token of one origin. */
struct CachedToken {
	std::string access_token;
	std::string scope;
	Clock::time_point renew_at = Clock::time_point::max();
};

class Client final : public McpClient {
public:
	Client(const ClientConfig &config, const SchemaRegistry *schemas) : config_(config), schemas_(schemas)
	{
		ApplyLimits();
	}
	~Client() override { AbortAll(); }
	void Configure(const ClientConfig &config) override;
	bool Submit(CallRequest request) override;
	void Connect() override;
	size_t InFlight() const override { return calls_.size(); }
	int EventFd() const override { return transport_.EventFd(); }
	long TimeoutMs() const override;
	void Drive() override;
	std::vector<CallProgress> TakeProgress() override { return std::exchange(progress_, {}); }
	std::vector<CallOutcome> TakeOutcomes() override { return std::exchange(outcomes_, {}); }
	std::vector<CallTask> TakeTasks() override { return std::exchange(tasks_, {}); }
	void Cancel(uint64_t tag) override;
	EndpointInfo Endpoint() const override;
	void Shutdown() override;
	std::vector<uint64_t> AbortAll() override;

private:
	/* mcp_client.cpp: requests, calls and what arrives on their streams */
	void ApplyLimits();
	HttpRequest BaseRequest(HttpMethod method, long timeout_ms) const;
	HttpRequest Post(const std::string &method, const std::string &name, std::string body, long timeout_ms,
	                 Pending *p) const;
	uint64_t Send(HttpRequest request, Pending p);
	std::string NextId(const char *what) { return std::string("pg_diagnosis-") + what + "-" + std::to_string(++ids_); }
	long RemainingMs(const Call *c) const;
	void Begin(Call *c);
	void StartToolCall(Call *c);
	void StartResume(Call *c);
	void SendCancelled(Call *c, const std::string &reason);
	void OnServerRequest(const Pending &p, const RpcMessage &m);
	void AnswerServerRequest(const RpcMessage &m);
	void AbortExchange(Call *c);
	void GiveUp(Call *c, const std::string &reason);
	void GiveUpAttempt(Call *c, const std::string &reason);
	void Finish(Call *c, CallOutcome outcome);
	void SetExchange(Call *c, uint64_t exchange);
	Call *CallOf(const Pending &p);
	void Requeue(Call *c, bool forget_era);
	bool NeedsReprobe(const HttpExchange &x, Era era) const;
	void CompleteToolCall(Call *c, const HttpExchange &x, Pending &p);
	bool ResumeIfPossible(Call *c, const HttpExchange &x, const Pending &p);
	void HandleResponse(Call *c, const RpcMessage &response, long status, Purpose purpose);
	void AnswerInputRequired(Call *c, const InputRequired &input, const std::string &result);
	static bool SessionLost(const Call *c, const HttpExchange &x, const Pending &p);
	void RetryInNewSession(Call *c, const Pending &p);
	void Absorb(HttpExchange *x);
	void Messages(Pending &p, const std::string &text);
	void Complete(HttpExchange &x);
	void RunTimers();

	/* mcp_session.cpp: the endpoint's era, version, tools and session */
	void EndSession();
	void EnsureEndpoint();
	void StartDiscover();
	void StartInitialize();
	void StartToolsList(const std::string &cursor);
	void FailEndpoint(CallOutcome why);
	void EndpointReady();
	CallOutcome ConfigError(const std::string &message);
	void AfterFeatures();
	void CompleteDiscover(const HttpExchange &x, const Pending &p);
	void CompleteInitialize(const HttpExchange &x, const Pending &p);
	void CompleteInitialized(const HttpExchange &x);
	void CompleteToolsList(const HttpExchange &x, const Pending &p);

	/* mcp_auth.cpp: authorization (OAuth) on a 401 or a 403 insufficient_scope */
	bool OAuthChanged(const ClientConfig &c) const;
	void ResetAuth();
	void DropAuthFlow();
	bool OAuthUsable() const;
	const CachedToken *RenewableToken() const;
	static bool Challenged(const HttpExchange &x, const Pending &p);
	bool OnChallenge(const HttpExchange &x, const Pending &p, bool stale);
	void StartAuth(const BearerChallenge &challenge, bool rediscover);
	void PumpAuth();
	void FeedAuth(const HttpExchange &x);
	void AuthDone();
	void FailAuth(const std::string &why, bool renewal);
	void ResumeAfterAuth();

	/* mcp_tasks.cpp: task-backed calls */
	void StartTaskRequest(Call *c, Purpose purpose);
	void SchedulePoll(Call *c, int64_t delay_ms);
	void SendTaskCancel(Call *c);
	void ExtendForTask(Call *c) const;
	void TaskCreated(Call *c, const TaskInfo &task);
	void CompleteTaskGet(Call *c, const HttpExchange &x, Pending &p);
	void CompleteTaskResult(Call *c, const HttpExchange &x, Pending &p);

	ClientConfig config_;
	const SchemaRegistry *schemas_;
	HttpTransport transport_;
	EndpointSession session_;
	EraCache era_cache_;
	std::optional<EndpointInfo> failed_info_;
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
};

} // namespace client_detail
} // namespace pgdiag
