/*
 * shmem.hpp: state shared by the workers and the backends.
 *
 * Worker slots (pid, latch, live counters) let every process know exactly which workers are alive, so runs
 * held by a dead worker are put back at once instead of after a lease. The enqueue counter and the worker
 * latches implement wake-at-commit; the condition variable lets wait_for_run sleep until a finalize commits.
 * Everything is absent (Shared() == NULL) when the library was not preloaded: enqueueing still works then,
 * runs just wait for a server that runs the workers.
 */
#pragma once

extern "C" {
#include "postgres.h"

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"
}

namespace pgdiag {

constexpr int kMaxWorkers = 64;
constexpr int kLastErrorLen = 256;
constexpr int kStateLen = 32;

constexpr int kEraLen = 16;
constexpr int kVersionLen = 32;

struct WorkerSlot {
	/* Protected by SharedState::mutex. */
	pid_t pid;   /* 0: free */
	int64 token; /* this start's identity, recorded with the runs it claims (pids repeat); 0: free */
	Latch *latch;
	TimestampTz started_at;
	/* starting, idle, working, paused, no_endpoint, waiting_for_extension, waiting_for_update,
	 * waiting_for_database, read_only, config_error, stopping */
	char state[kStateLen];
	char last_error[kLastErrorLen];
	char era[kEraLen]; /* the endpoint's protocol era: modern, legacy, or empty until known */
	char protocol_version[kVersionLen];
	int inflight;
	int call_limit; /* calls in flight that fit in the file descriptors this worker may open */
	int fd_limit;   /* its soft RLIMIT_NOFILE */
	uint64 runs_done;
	/* Kept across restarts of this slot's worker (not cleared by attach or detach). */
	/* Set while connecting to diagnosis.database: still set at the next start means the last attempt died
	 * there (the database is missing). */
	bool connecting;
	bool said_database_missing;
};

struct SharedState {
	slock_t mutex;
	/* Bumped at every commit that enqueued runs; a worker claims when it differs from what it last saw. */
	pg_atomic_uint64 enqueue_generation;
	/* Bumped when a worker exits, so the survivors recover its runs. */
	pg_atomic_uint64 exit_generation;
	ConditionVariable run_finished;
	int nslots;
	WorkerSlot slots[kMaxWorkers];
};

/* NULL when the library was not loaded by shared_preload_libraries. */
SharedState *Shared();

void InitShmemHooks();

/* Sets the latch of every live worker. Never called with the spinlock held. */
void WakeWorkers();

/* Tokens of live workers (their slots are set and the processes exist); returns how many. */
int LiveWorkerTokens(int64 *tokens, int max);

/* True when some live worker has calls in flight (runs in running that a lease may outlive). */
bool AnyWorkerBusy();

} // namespace pgdiag
