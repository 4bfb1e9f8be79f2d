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
#include <chrono>
#include <poll.h>
#include <utility>

#include "pg_diagnosis/core/result.hpp"

#include "mcp_client_impl.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace client_detail {

void
Client::Configure(const ClientConfig &config)
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

bool
Client::Submit(CallRequest request)
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

void
Client::Connect()
{
	if (session_.phase == EndpointSession::Phase::Idle)
		failed_info_.reset();
	EnsureEndpoint();
}

long
Client::TimeoutMs() const
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

void
Client::Drive()
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

void
Client::Cancel(uint64_t tag)
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

EndpointInfo
Client::Endpoint() const
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
	info.tools = session_.listed;
	return info;
}

void
Client::Shutdown()
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

std::vector<uint64_t>
Client::AbortAll()
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

void
Client::ApplyLimits()
{
	transport_.SetConnectionLimits(config_.max_connections, static_cast<long>(config_.max_inflight + 8));
}

HttpRequest
Client::BaseRequest(HttpMethod method, long timeout_ms) const
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
HttpRequest
Client::Post(const std::string &method, const std::string &name, std::string body, long timeout_ms, Pending *p) const
{
	HttpRequest r = BaseRequest(HttpMethod::Post, timeout_ms);
	for (std::string &h : session_.Headers(method, name))
		r.headers.push_back(std::move(h));
	r.body = std::move(body);
	if (p)
		p->sent_session = session_.era == Era::Legacy && !session_.session_id.empty();
	return r;
}

uint64_t
Client::Send(HttpRequest request, Pending p)
{
	p.generation = session_.generation;
	p.auth_generation = auth_generation_;
	HttpExchange *x = transport_.Start(std::move(request));
	pending_[x->id] = std::move(p);
	return x->id;
}

long
Client::RemainingMs(const Call *c) const
{
	return static_cast<long>(std::max<int64_t>(1, MillisUntil(c->deadline, Clock::now())));
}

/* The endpoint is ready: call the tool, or poll the task being resumed. */
void
Client::Begin(Call *c)
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

/* MRTR: the tool asks for input. Within the same attempt the call is sent again, under a new id, with the answers
 * a worker can give (elicitation declined: it has no user) and the requestState echoed; a server that still asks
 * after kMaxInputRounds answers, or asks for what no worker can give (sampling), fails the call with what it asked. */
void
Client::AnswerInputRequired(Call *c, const InputRequired &input, const std::string &result)
{
	std::string responses, refused, message;
	if (c->era != Era::Modern)
		message = "the MCP server answered tools/call with input_required, which its protocol version does not have";
	else if (c->input_rounds >= kMaxInputRounds)
		message = "the MCP server still asks for input (input_required) after " + std::to_string(c->input_rounds) +
		          " declined rounds: " + DescribeInputRequests(input);
	else if (!BuildInputResponses(input, &responses, &refused))
		message = "the MCP server asks for input pg_diagnosis cannot give (input_required, " + refused +
		          "): " + DescribeInputRequests(input);
	if (!message.empty()) {
		CallOutcome o = ErrorOutcome(ErrorCode::McpError, message);
		o.response_json = result;
		Finish(c, std::move(o));
		return;
	}
	c->input_rounds++;
	c->input_responses = std::move(responses);
	c->has_request_state = input.has_request_state;
	c->request_state = input.request_state;
	StartToolCall(c);
}

void
Client::StartToolCall(Call *c)
{
	const CallRequest &r = c->request;
	std::string token = r.run_id + ":" + std::to_string(r.attempt);
	/* An MRTR retry is an independent request: a new id (and idempotency key), the same progress token. */
	std::string id = c->input_rounds ? token + ":input-" + std::to_string(c->input_rounds) : token;
	ToolCallParams params;
	params.tool = config_.tool;
	params.progress_token = token;
	params.traceparent = r.traceparent;
	params.legacy_task = session_.era == Era::Legacy && session_.TasksForTool();
	params.call = &r;
	params.input_responses_json = c->input_responses;
	params.has_request_state = c->has_request_state;
	params.request_state = c->request_state;
	Pending p;
	p.purpose = Purpose::ToolCall;
	p.tag = r.tag;
	p.rpc_id = JsonString(id);
	p.progress_token = JsonString(token);
	HttpRequest req =
	    Post("tools/call", config_.tool, BuildToolCall(id, session_.Context(), params), RemainingMs(c), &p);
	req.headers.push_back("Idempotency-Key: " + id);
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
void
Client::StartResume(Call *c)
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

/* Fire-and-forget messages. */
void
Client::SendCancelled(Call *c, const std::string &reason)
{
	if (c->rpc_id.empty())
		return;
	Send(Post("notifications/cancelled", "", BuildCancelled(c->rpc_id, reason), 2000, nullptr), Pending());
}

/* A server request is answered only on the stream of a call's own tools/call, before the call's response, at
 * most kMaxServerRequestsPerCall times per call; any other (on the streams of our own answers, of set-up or
 * task requests, or past the limit) is ignored and counted for the call it came with. 0.2.0 answered them all:
 * a storm of answers to answers that outlived the run. */
void
Client::OnServerRequest(const Pending &p, const RpcMessage &m)
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

void
Client::AnswerServerRequest(const RpcMessage &m)
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

void
Client::AbortExchange(Call *c)
{
	if (c->exchange) {
		transport_.Abort(c->exchange);
		pending_.erase(c->exchange);
		SetExchange(c, 0);
	}
}

/* Stops the call's work on the server: tasks/cancel for a task, notifications/cancelled for a legacy request;
 * for a modern request closing its stream (the abort) is the cancellation. */
void
Client::GiveUp(Call *c, const std::string &reason)
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
void
Client::GiveUpAttempt(Call *c, const std::string &reason)
{
	if (!c->task_id.empty()) {
		AbortExchange(c);
		return;
	}
	GiveUp(c, reason);
}

void
Client::Finish(Call *c, CallOutcome outcome)
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
void
Client::SetExchange(Call *c, uint64_t exchange)
{
	c->exchange = exchange;
	if (exchange)
		between_exchanges_.erase(c->request.tag);
	else
		between_exchanges_.insert(c->request.tag);
}

Call *
Client::CallOf(const Pending &p)
{
	auto it = calls_.find(p.tag);
	return it == calls_.end() ? nullptr : it->second.get();
}

/* The call goes back to wait for the endpoint, which is probed (or initialized) anew. */
void
Client::Requeue(Call *c, bool forget_era)
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
bool
Client::NeedsReprobe(const HttpExchange &x, Era era) const
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

void
Client::CompleteToolCall(Call *c, const HttpExchange &x, Pending &p)
{
	bool answered = p.response.has_value();
	if (SessionLost(c, x, p)) {
		if (c->retried) {
			/* The server accepted a new initialize and lost that session too: churn on its side, which a later
			 * attempt with backoff can outlast. */
			Finish(c, ErrorOutcome(ErrorCode::NetworkError, "MCP session lost again (HTTP 404) after re-initializing",
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
		                                                " bytes) across its stream and " + std::to_string(c->resumes) +
		                                                " resumption(s) of it"));
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
			Finish(c, ErrorOutcome(ErrorCode::McpError, x.body.empty() && !x.is_sse
			                                                ? "HTTP " + std::to_string(x.status) +
			                                                      " without a JSON-RPC response (protocol violation)"
			                                                : "no JSON-RPC response with the request's id"));
		else
			/* MCP treats a closed stream as a disconnection, not as the end of the request: try again later. */
			Finish(c,
			       ErrorOutcome(ErrorCode::NetworkError, "the event stream ended before the response (disconnected)"));
		return;
	}
	HandleResponse(c, *p.response, x.status, p.purpose);
}

/* A legacy SSE stream closed (or broke) before our response after giving an event id: resume it after the
 * server's retry interval, within the same call. */
bool
Client::ResumeIfPossible(Call *c, const HttpExchange &x, const Pending &p)
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
void
Client::HandleResponse(Call *c, const RpcMessage &response, long status, Purpose purpose)
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
	InputRequired input;
	if (ParseInputRequired(response.result, &input)) {
		AnswerInputRequired(c, input, response.result);
		return;
	}
	CallOutcome done = ToolResultOutcome(response.result, c->request.schema_version, *schemas_);
	done.http_status = status;
	Finish(c, std::move(done));
}

/* A 404 to a request that carried the legacy session id: the session expired. */
bool
Client::SessionLost(const Call *c, const HttpExchange &x, const Pending &p)
{
	return !p.response && x.curl_code == 0 && x.status == 404 && p.sent_session && c->era == Era::Legacy;
}

/* Sets the session up again (once for every call that noticed) and sends the call's request again. */
void
Client::RetryInNewSession(Call *c, const Pending &p)
{
	if (p.generation == session_.generation)
		session_.Reset();
	Requeue(c, false);
}

/* Takes the SSE events (and, once finished, the JSON body) of an exchange: our response, progress, server
 * requests. */
void
Client::Absorb(HttpExchange *x)
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

void
Client::Messages(Pending &p, const std::string &text)
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

void
Client::Complete(HttpExchange &x)
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
void
Client::RunTimers()
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

} // namespace client_detail

std::unique_ptr<McpClient>
McpClient::Create(const ClientConfig &config, const SchemaRegistry *schemas)
{
	return std::make_unique<client_detail::Client>(config, schemas);
}

} // namespace pgdiag
