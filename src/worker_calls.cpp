/*-------------------------------------------------------------------------
 * worker_calls.cpp
 *		The worker's C++ side: the MCP client, compiled schemas, runs in flight and their outcomes.
 *
 * Everything here is C++ regime: no PostgreSQL header, state in static storage so an ereport in the worker
 * never skips a destructor, and every entry point wrapped in CppGuard so no exception reaches PostgreSQL.
 *-------------------------------------------------------------------------
 */
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "pg_diagnosis/core/backoff.hpp"
#include "pg_diagnosis/core/error_code.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/result.hpp"
#include "pg_diagnosis/core/run_status.hpp"
#include "pg_diagnosis/cpp_guard.hpp"
#include "pg_diagnosis/worker_calls.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

char pgdiag::cpp_guard_message[512];

namespace pgdiag {
namespace calls {
namespace {

using Clock = std::chrono::steady_clock;

/* Progress is written at most this often per run. */
constexpr int64_t kProgressIntervalMs = 1000;
/* A run requeued for a reason that is not its own (no descriptor, no memory) waits this long. */
constexpr long kLocalRetryDelayMs = 1000;

struct InflightRun {
	std::string run_id;
	int attempt = 0;
	int max_retries = 0;
	std::string context_pack_json;
	Clock::time_point claimed_at;
	bool cancel_sent = false;
	/* Progress: the newest reported, and what was last handed to the worker for writing (written only when one of
	 * them changed). */
	double reported = -1;
	std::string reported_message;
	double written = -1;
	std::string written_message;
	Clock::time_point written_at;
};

struct FinishedRun {
	std::string run_id, outcome, error_code, error_message, error_details, context_pack, mcp_response, diagnosis,
	    mcp_run_id;
	int attempt = 0;
	long processing_ms = 0;
	long retry_delay_ms = 0;
	bool refund_attempt = false;
	bool task_lost = false;
	int ignored_server_requests = 0;
};

struct TaskRow {
	std::string run_id, task_id;
	int attempt = 0;
	int64_t ttl_ms = -1;
};

struct ProgressRow {
	std::string run_id, message;
	int attempt = 0;
	double fraction = 0;
};

struct State {
	SchemaRegistry schemas;
	std::unique_ptr<McpClient> client;
	ClientConfig config;
	long retry_base_delay_ms = 5000;
	uint64_t next_tag = 1;
	std::unordered_map<uint64_t, InflightRun> inflight;
	std::vector<FinishedRun> finished;
	std::vector<Finished> finished_views;
	std::vector<ProgressRow> progress;
	std::vector<Progress> progress_views;
	std::vector<TaskRow> tasks;
	std::vector<Task> task_views;
	std::string config_error; /* the last outcome that said a setting cannot work, until taken */
	std::mt19937_64 rng{std::random_device{}()};
	/* Tags of runs whose reported progress is not written yet: CollectProgress looks at these alone, not at every
	 * run in flight. A run that ended meanwhile is dropped there. */
	std::unordered_set<uint64_t> progress_unwritten;
};

State *state = nullptr;

const char *
NullIfEmpty(const std::string &s)
{
	return s.empty() ? nullptr : s.c_str();
}

int64_t
MillisSince(Clock::time_point t)
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

/* Keeps the rows of the listed runs (their database rows were locked: they are written on a later pass). */
template <typename Row>
void
KeepOnlyRuns(std::vector<Row> &rows, const char *const *run_ids, int n)
{
	std::vector<std::string> keep(run_ids, run_ids + n);
	std::vector<Row> kept;
	for (Row &row : rows)
		if (std::find(keep.begin(), keep.end(), row.run_id) != keep.end())
			kept.push_back(std::move(row));
	rows = std::move(kept);
}

/* A retry, when attempts are left: the backoff, never sooner than Retry-After (-1: none). */
bool
ScheduleRetry(int attempt, int max_retries, int64_t retry_after_ms, FinishedRun &f)
{
	std::uniform_real_distribution<double> jitter(0.0, 1.0);

	if (AttemptsSpent(attempt, max_retries))
		return false;
	f.outcome = RunStatusName(RunStatus::Queued);
	f.retry_delay_ms = static_cast<long>(
	    RetryDelayMs(attempt, state->retry_base_delay_ms, kMaxRetryDelayMs, retry_after_ms, jitter(state->rng)));
	return true;
}

/* Turns a call's outcome into what finalize writes: completed, failed, a retry, or back to the queue without
 * spending the attempt when the cause is not the run's (a setting that cannot work, a local shortage). A call
 * ended by Cancel() is written as failed; finalize makes it cancelled, since its cancel was requested. */
void
RecordOutcome(InflightRun &run, const CallOutcome &outcome)
{
	FinishedRun f;
	f.run_id = run.run_id;
	f.attempt = run.attempt;
	f.context_pack = std::move(run.context_pack_json);
	f.processing_ms = static_cast<long>(MillisSince(run.claimed_at));
	f.mcp_response = outcome.response_json;
	f.mcp_run_id = outcome.mcp_run_id;
	f.task_lost = outcome.task_lost;
	f.ignored_server_requests = outcome.ignored_server_requests;
	if (outcome.code == ErrorCode::None && !outcome.cancelled) {
		f.outcome = RunStatusName(RunStatus::Completed);
		f.diagnosis = outcome.result_json;
		state->finished.push_back(std::move(f));
		return;
	}
	f.error_code = ErrorCodeName(outcome.code == ErrorCode::None ? ErrorCode::McpError : outcome.code);
	f.error_message = outcome.message.empty() ? f.error_code : outcome.message;
	f.error_details = outcome.details_json;
	if (outcome.config_error || outcome.local_failure) {
		f.outcome = RunStatusName(RunStatus::Queued);
		f.refund_attempt = true;
		f.retry_delay_ms = kLocalRetryDelayMs;
		if (outcome.config_error)
			state->config_error = f.error_message;
	} else if (outcome.task_lost && !outcome.cancelled && !AttemptsSpent(run.attempt, run.max_retries)) {
		/* The server no longer knows the task (expired, or lost with its store): a new attempt calls again. */
		f.outcome = RunStatusName(RunStatus::Queued);
		f.retry_delay_ms = 0;
	} else if (outcome.cancelled || !IsTransient(outcome.code) ||
	           !ScheduleRetry(run.attempt, run.max_retries, outcome.retry_after_ms, f))
		f.outcome = RunStatusName(RunStatus::Failed);
	state->finished.push_back(std::move(f));
}

} // namespace

bool
Init()
{
	return CppGuard([] {
		if (!state)
			state = new State(); /* lives until the process exits */
	});
}

bool
Configure(const Settings &s)
{
	return CppGuard([&] {
		ClientConfig c;
		c.url = s.url ? s.url : "";
		c.tool = s.tool && s.tool[0] ? s.tool : "run_diagnosis";
		c.auth_token = s.auth_token ? s.auth_token : "";
		c.oauth.client_id = s.oauth_client_id ? s.oauth_client_id : "";
		c.oauth.client_secret = s.oauth_client_secret ? s.oauth_client_secret : "";
		c.oauth.private_key_pem = s.oauth_private_key_pem ? s.oauth_private_key_pem : "";
		c.oauth.scope = s.oauth_scope ? s.oauth_scope : "";
		c.oauth_store = s.oauth_store ? s.oauth_store : "";
		c.ca_file = s.ca_file ? s.ca_file : "";
		c.client_cert = s.client_cert ? s.client_cert : "";
		c.client_key = s.client_key ? s.client_key : "";
		c.connect_timeout_ms = s.connect_timeout_ms;
		c.request_timeout_ms = s.request_timeout_ms;
		c.max_response_bytes = s.max_response_bytes;
		c.max_inflight = s.max_inflight;
		c.max_connections = s.max_inflight; /* one socket per call at most: the descriptor budget holds */
		state->retry_base_delay_ms = s.retry_base_delay_ms;
		state->config = c;
		if (!state->client)
			state->client = McpClient::Create(c, &state->schemas);
		else
			state->client->Configure(c);
	});
}

bool
SetSchema(const char *version, const char *schema_json)
{
	return CppGuard([&] {
		std::string error;
		if (!state->schemas.Add(version, schema_json, &error))
			throw std::runtime_error("result schema \"" + std::string(version) + "\" is not usable: " + error);
	});
}

bool
HasSchema(const char *version)
{
	bool has = false;
	CppGuard([&] { has = state->schemas.Has(version); });
	return has;
}

bool
Submit(const Claimed &run)
{
	return CppGuard([&] {
		uint64_t tag = state->next_tag++;
		InflightRun &r = state->inflight[tag];
		r.run_id = run.run_id;
		r.attempt = run.attempt;
		r.max_retries = run.max_retries;
		r.context_pack_json = run.context_pack_json;
		r.claimed_at = Clock::now();

		CallRequest req;
		req.tag = tag;
		req.run_id = run.run_id;
		req.patient_id = run.patient_id;
		req.attempt = run.attempt;
		req.schema_version = run.schema_version;
		req.inputs_json = run.inputs_json;
		req.context_pack_json = run.context_pack_json;
		req.traceparent = run.traceparent ? run.traceparent : "";
		req.resume_task_id = run.resume_task_id ? run.resume_task_id : "";
		if (!state->client->Submit(std::move(req))) {
			/* The worker never claims more than the free slots, so this is a bug; fail it visibly. */
			CallOutcome refused;
			refused.tag = tag;
			refused.code = ErrorCode::UnknownError;
			refused.message = "the MCP client refused the call: too many in flight";
			RecordOutcome(r, refused);
			state->inflight.erase(tag);
		}
	});
}

bool
EndWithoutCall(const char *run_id, int attempt, int max_retries, NoCall how, const char *message)
{
	return CppGuard([&] {
		FinishedRun f;
		f.run_id = run_id;
		f.attempt = attempt;
		if (how == NoCall::HandedBack) {
			f.outcome = RunStatusName(RunStatus::Queued);
			f.refund_attempt = true;
		} else {
			f.error_code = ErrorCodeName(ErrorCode::ContextPackError);
			f.error_message = std::string("building the context pack failed: ") + message;
			if (how == NoCall::Failed || !ScheduleRetry(attempt, max_retries, -1, f))
				f.outcome = RunStatusName(RunStatus::Failed);
		}
		state->finished.push_back(std::move(f));
	});
}

int
InFlight()
{
	return state ? static_cast<int>(state->inflight.size()) : 0;
}

int
EventFd()
{
	return state && state->client ? state->client->EventFd() : -1;
}

long
TimeoutMs()
{
	return state && state->client ? state->client->TimeoutMs() : -1;
}

bool
Drive()
{
	return CppGuard([] {
		if (!state->client)
			return;
		state->client->Drive();
		for (CallProgress &p : state->client->TakeProgress()) {
			auto it = state->inflight.find(p.tag);
			if (it == state->inflight.end())
				continue;
			double fraction = p.total > 0 ? p.progress / p.total : p.progress;
			if (!(fraction >= 0 && fraction <= 1))
				continue; /* without a total the value is not a fraction (NaN included) */
			/* At the precision it is written with: a change below it is no change. */
			fraction = std::round(fraction * 1e6) / 1e6;
			InflightRun &r = it->second;
			if (fraction > r.reported || (fraction == r.reported && p.message != r.reported_message)) {
				r.reported = fraction;
				r.reported_message = std::move(p.message);
				state->progress_unwritten.insert(p.tag);
			}
		}
		for (CallOutcome &o : state->client->TakeOutcomes()) {
			auto it = state->inflight.find(o.tag);
			if (it == state->inflight.end())
				continue;
			RecordOutcome(it->second, o);
			state->inflight.erase(it);
		}
	});
}

bool
CollectFinished(int *count)
{
	return CppGuard([&] {
		state->finished_views.clear();
		for (const FinishedRun &f : state->finished) {
			Finished v;
			v.run_id = f.run_id.c_str();
			v.attempt = f.attempt;
			v.outcome = f.outcome.c_str();
			v.error_code = NullIfEmpty(f.error_code);
			v.error_message = NullIfEmpty(f.error_message);
			v.error_details_json = NullIfEmpty(f.error_details);
			v.context_pack_json = NullIfEmpty(f.context_pack);
			v.mcp_response_json = NullIfEmpty(f.mcp_response);
			v.diagnosis_json = NullIfEmpty(f.diagnosis);
			v.mcp_run_id = NullIfEmpty(f.mcp_run_id);
			v.processing_ms = f.processing_ms;
			v.retry_delay_ms = f.retry_delay_ms;
			v.refund_attempt = f.refund_attempt;
			v.task_lost = f.task_lost;
			v.ignored_server_requests = f.ignored_server_requests;
			state->finished_views.push_back(v);
		}
		*count = static_cast<int>(state->finished_views.size());
	});
}

const Finished *
FinishedAt(int i)
{
	return &state->finished_views[i];
}

bool
ClearFinishedExcept(const char *const *run_ids, int n)
{
	return CppGuard([&] {
		state->finished_views.clear();
		KeepOnlyRuns(state->finished, run_ids, n);
	});
}
bool
CollectProgress(int *count)
{
	return CppGuard([&] {
		state->progress.clear();
		state->progress_views.clear();
		Clock::time_point now = Clock::now();
		*count = 0;
		for (auto tag = state->progress_unwritten.begin(); tag != state->progress_unwritten.end();) {
			auto it = state->inflight.find(*tag);
			if (it == state->inflight.end() || (it->second.reported == it->second.written &&
			                                    it->second.reported_message == it->second.written_message)) {
				tag = state->progress_unwritten.erase(tag);
				continue;
			}
			InflightRun &r = it->second;
			if (r.written >= 0 && now - r.written_at < std::chrono::milliseconds(kProgressIntervalMs)) {
				++tag; /* written at a later turn */
				continue;
			}
			r.written = r.reported;
			r.written_message = r.reported_message;
			r.written_at = now;
			state->progress.push_back(ProgressRow{r.run_id, r.reported_message, r.attempt, r.reported});
			tag = state->progress_unwritten.erase(tag);
		}
		for (const ProgressRow &p : state->progress)
			state->progress_views.push_back(Progress{p.run_id.c_str(), p.attempt, p.fraction, p.message.c_str()});
		*count = static_cast<int>(state->progress_views.size());
	});
}

const Progress *
ProgressAt(int i)
{
	return &state->progress_views[i];
}

void
ClearProgress()
{
	state->progress_views.clear();
	state->progress.clear();
}

bool
CollectTasks(int *count)
{
	return CppGuard([&] {
		for (CallTask &t : state->client->TakeTasks()) {
			auto it = state->inflight.find(t.tag);
			if (it != state->inflight.end())
				state->tasks.push_back(TaskRow{it->second.run_id, t.task_id, it->second.attempt, t.ttl_ms});
		}
		state->task_views.clear();
		for (const TaskRow &t : state->tasks)
			state->task_views.push_back(Task{t.run_id.c_str(), t.task_id.c_str(), t.attempt, t.ttl_ms});
		*count = static_cast<int>(state->task_views.size());
	});
}

const Task *
TaskAt(int i)
{
	return &state->task_views[i];
}

bool
ClearTasksExcept(const char *const *run_ids, int n)
{
	return CppGuard([&] {
		state->task_views.clear();
		KeepOnlyRuns(state->tasks, run_ids, n);
	});
}

bool
Cancel(const char *run_id, int attempt)
{
	return CppGuard([&] {
		for (auto &entry : state->inflight)
			if (entry.second.run_id == run_id && entry.second.attempt == attempt && !entry.second.cancel_sent) {
				entry.second.cancel_sent = true;
				state->client->Cancel(entry.first);
			}
	});
}

bool
TakeConfigError(char *buffer, size_t size)
{
	bool had = false;
	CppGuard([&] {
		had = !state->config_error.empty();
		if (had)
			std::snprintf(buffer, size, "%s", state->config_error.c_str());
		state->config_error.clear();
	});
	return had;
}

void
Endpoint(char *era, size_t era_size, char *version, size_t version_size)
{
	if (!CppGuard([&] {
		    EndpointInfo info = state->client ? state->client->Endpoint() : EndpointInfo();
		    std::snprintf(era, era_size, "%s", info.era.c_str());
		    std::snprintf(version, version_size, "%s", info.protocol_version.c_str());
	    })) {
		era[0] = '\0';
		version[0] = '\0';
	}
}

bool
Shutdown(int *count)
{
	return CppGuard([&] {
		*count = static_cast<int>(state->inflight.size());
		if (state->client)
			state->client->Shutdown();
		state->inflight.clear();
	});
}

} // namespace calls
} // namespace pgdiag
