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

struct WorkerSlot {
	/* Protected by SharedState::mutex. */
	pid_t pid;             /* 0: free */
	Latch *latch;
	TimestampTz started_at;
	char state[kStateLen]; /* starting, idle, working, paused, no_endpoint, waiting_for_extension, stopping */
	char last_error[kLastErrorLen];
	int inflight;
	uint64 runs_done;
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

/* pids of live workers (their slots are set and the processes exist); returns how many. */
int LiveWorkerPids(pid_t *pids, int max);

} // namespace pgdiag
