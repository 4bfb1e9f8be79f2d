/*
 * worker_calls.hpp: the bridge between the worker (PostgreSQL regime) and the core (C++ regime).
 *
 * The worker's C++ state (the McpClient, the compiled schemas, the runs in flight and the finished ones) lives
 * in static storage on the C++ side. The worker sees it only through these functions, which take and return
 * plain C types, never throw (they return false and leave the message in pgdiag::cpp_guard_message), and never
 * call PostgreSQL. The `const char *` views they return stay valid until the matching Clear call.
 */
#pragma once

#include <cstddef>
#include <cstdint>

namespace pgdiag {
namespace calls {

struct Settings {
	const char *url;
	const char *tool;
	const char *auth_token;
	const char *oauth_client_id;
	const char *oauth_client_secret;
	const char *oauth_private_key_pem;
	const char *oauth_scope;
	const char *oauth_store; /* the operator's login file */
	const char *ca_file;
	const char *client_cert;
	const char *client_key;
	long connect_timeout_ms;
	long request_timeout_ms;
	size_t max_response_bytes;
	int max_inflight;
	long retry_base_delay_ms;
};

/* A run the worker claimed, with its context pack. */
struct Claimed {
	const char *run_id;
	const char *patient_id;
	const char *schema_version;
	const char *inputs_json;
	const char *context_pack_json;
	const char *traceparent;    /* W3C trace context of this attempt, sent with the call */
	const char *resume_task_id; /* a task an earlier attempt created: poll it instead of calling again; or NULL */
	int attempt;
	int max_retries;
};

/* What finalize writes for one run. */
struct Finished {
	const char *run_id;
	int attempt;
	const char *outcome;            /* "completed", "failed" or "queued" (a retry) */
	const char *error_code;         /* NULL on success */
	const char *error_message;      /* NULL on success */
	const char *error_details_json; /* NULL when none */
	const char *context_pack_json;
	const char *mcp_response_json; /* NULL when no answer arrived */
	const char *diagnosis_json;    /* NULL unless completed */
	const char *mcp_run_id;        /* NULL when none */
	long processing_ms;
	long retry_delay_ms;             /* for "queued" */
	bool refund_attempt;             /* "queued" for a reason not the run's (a setting, no descriptor, no memory) */
	bool task_lost;                  /* the run's task is unknown or expired on the server: forget it */
	int ignored_server_requests = 0; /* server requests of the call that were not answered (client side) */
};

/* A task the server created for a call, to be committed with the run so a restart resumes polling it. */
struct Task {
	const char *run_id;
	const char *task_id;
	int attempt;
	long long ttl_ms; /* -1: unknown */
};

struct Progress {
	const char *run_id;
	int attempt;
	double fraction; /* 0..1 */
	const char *message;
};

bool Init();
bool Configure(const Settings &settings);
bool SetSchema(const char *version, const char *schema_json);
bool HasSchema(const char *version);

bool Submit(const Claimed &run);
/* How a claimed run ends when no call is made for it (its context pack could not be built). */
enum class NoCall {
	Failed,    /* the pack failed for a reason of its own: CONTEXT_PACK_ERROR, no retry */
	Retry,     /* the pack timed out or waited for a lock: CONTEXT_PACK_ERROR, retried with backoff */
	HandedBack /* not built for a cause not the run's (the claim's byte budget, no builder): queued, attempt given back */
};
/* Records such a run among the finished ones, for finalize to write like any other. */
bool EndWithoutCall(const char *run_id, int attempt, int max_retries, NoCall how, const char *message);
int InFlight();
int EventFd();
long TimeoutMs();
bool Drive();

/* Finished runs since the last ClearFinished(). */
bool CollectFinished(int *count);
const Finished *FinishedAt(int i);
/* Forgets the finished runs except those listed (their rows were locked: finalize them again later). */
bool ClearFinishedExcept(const char *const *run_ids, int n);

/* Progress worth writing now: at most one per run per second, never backwards. */
bool CollectProgress(int *count);
const Progress *ProgressAt(int i);
void ClearProgress();

/* Tasks created since they were last committed; those whose rows were locked are kept for the next pass. */
bool CollectTasks(int *count);
const Task *TaskAt(int i);
bool ClearTasksExcept(const char *const *run_ids, int n);

/* Stops the call of a run whose cancel was requested (tasks/cancel, notifications/cancelled or closing the
 * stream); its outcome follows. Once per call. */
bool Cancel(const char *run_id, int attempt);

/* The last outcome that said a setting cannot work (copied into buffer); false when none since the last call. */
bool TakeConfigError(char *buffer, size_t size);

/* The endpoint's protocol era and negotiated version ("" until known). Never fails. */
void Endpoint(char *era, size_t era_size, char *version, size_t version_size);

/* Orderly end of every call in flight (legacy notifications/cancelled, session DELETE; tasks left to resume);
 * *count is how many calls it ended (their runs are handed back in SQL, RecoverRuns). */
bool Shutdown(int *count);

} // namespace calls
} // namespace pgdiag
