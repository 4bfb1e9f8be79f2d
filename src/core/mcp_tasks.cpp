/*
 * mcp_tasks.cpp: task-backed calls (the tasks extension io.modelcontextprotocol/tasks, and the 2025-11-25
 * experimental form): a tools/call answered with a task is polled with tasks/get at the server's interval until the
 * task ends; 2025-11-25 fetches the result with tasks/result; tasks/cancel gives one up. A task outlives the
 * attempt: a resumed run polls it again instead of calling the tool twice.
 */
#include <algorithm>
#include <chrono>

#include "mcp_client_impl.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace client_detail {

void
Client::StartTaskRequest(Call *c, Purpose purpose)
{
	c->poll_due = false;
	const char *method = purpose == Purpose::TaskGet ? "tasks/get" : "tasks/result";
	std::string id = NextId(purpose == Purpose::TaskGet ? "tasks-get" : "tasks-result");
	Pending p;
	p.purpose = purpose;
	p.tag = c->request.tag;
	p.rpc_id = JsonString(id);
	HttpRequest r =
	    Post(method, c->task_id, BuildTaskRequest(id, session_.Context(), method, c->task_id, c->request.traceparent),
	         RemainingMs(c), &p);
	if (!c->request.traceparent.empty())
		r.headers.push_back("traceparent: " + c->request.traceparent);
	SetExchange(c, Send(std::move(r), std::move(p)));
}

void
Client::SchedulePoll(Call *c, int64_t delay_ms)
{
	SetExchange(c, 0);
	c->poll_due = true;
	c->poll_at = Clock::now() + std::chrono::milliseconds(delay_ms);
}

void
Client::SendTaskCancel(Call *c)
{
	std::string id = NextId("tasks-cancel");
	Send(Post("tasks/cancel", c->task_id,
	          BuildTaskRequest(id, session_.Context(), "tasks/cancel", c->task_id, c->request.traceparent), 5000,
	          nullptr),
	     Pending());
}

/* A task may take longer than a direct call: task_timeout_ms, when set, replaces the call's deadline. */
void
Client::ExtendForTask(Call *c) const
{
	if (config_.task_timeout_ms > 0)
		c->deadline = c->submitted + std::chrono::milliseconds(config_.task_timeout_ms);
}

void
Client::TaskCreated(Call *c, const TaskInfo &task)
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

void
Client::CompleteTaskGet(Call *c, const HttpExchange &x, Pending &p)
{
	if (SessionLost(c, x, p) && !c->retried) {
		RetryInNewSession(c, p); /* then poll the same task again */
		return;
	}
	bool answered = p.response.has_value();
	/* An unknown task id: 404, a modern error, or the 2025-11-25 form, Invalid params (-32602) with a 400. */
	RpcMessage error;
	bool lost = !answered && x.curl_code == 0 &&
	            (x.status == 404 || IsModernErrorBody(x, &error) ||
	             (x.status == 400 && ErrorBodyOf(x, &error) && error.error_code_int == kRpcInvalidParams));
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
	Finish(c, ErrorOutcome(ErrorCode::McpError, "task " + c->task_id + " ended as \"" + task.status +
	                                                "\" on the MCP server" +
	                                                (task.status_message.empty() ? "" : ": " + task.status_message)));
}

void
Client::CompleteTaskResult(Call *c, const HttpExchange &x, Pending &p)
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

} // namespace client_detail

} // namespace pgdiag
