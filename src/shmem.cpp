/*-------------------------------------------------------------------------
 * shmem.cpp
 *		Shared memory for worker slots, wake-ups and the run-finished condition variable.
 *
 * Requested in shmem_request_hook (PostgreSQL 15) and initialized in shmem_startup_hook under
 * AddinShmemInitLock, chaining the previous hooks, as pg_stat_statements does.
 *-------------------------------------------------------------------------
 */
#include <csignal>
#include <cerrno>

#include "pg_diagnosis/pg/shmem.hpp"

extern "C" {
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
}

static pgdiag::SharedState *shared_state = nullptr;
static shmem_request_hook_type prev_shmem_request_hook = nullptr;
static shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

pgdiag::SharedState *
pgdiag::Shared()
{
	return shared_state;
}

static void
ShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(pgdiag::SharedState)));
}

static void
ShmemStartup(void)
{
	bool found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_state = (pgdiag::SharedState *) ShmemInitStruct("pg_diagnosis", sizeof(pgdiag::SharedState), &found);
	if (!found) {
		memset(shared_state, 0, sizeof(pgdiag::SharedState));
		SpinLockInit(&shared_state->mutex);
		pg_atomic_init_u64(&shared_state->enqueue_generation, 0);
		pg_atomic_init_u64(&shared_state->exit_generation, 0);
		ConditionVariableInit(&shared_state->run_finished);
		shared_state->nslots = pgdiag::kMaxWorkers;
	}
	LWLockRelease(AddinShmemInitLock);
}

void
pgdiag::InitShmemHooks()
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ShmemStartup;
}

/* Reads the latches under the spinlock and sets them after releasing it (spin.h: a few instructions only). */
void
pgdiag::WakeWorkers()
{
	Latch *latches[kMaxWorkers];
	int n = 0;

	if (!shared_state)
		return;
	SpinLockAcquire(&shared_state->mutex);
	for (int i = 0; i < shared_state->nslots; i++)
		if (shared_state->slots[i].pid != 0 && shared_state->slots[i].latch)
			latches[n++] = shared_state->slots[i].latch;
	SpinLockRelease(&shared_state->mutex);
	for (int i = 0; i < n; i++)
		SetLatch(latches[i]);
}

int
pgdiag::LiveWorkerTokens(int64 *tokens, int max)
{
	pid_t pids[kMaxWorkers];
	int64 candidates[kMaxWorkers];
	int n = 0, live = 0;

	if (!shared_state)
		return 0;
	SpinLockAcquire(&shared_state->mutex);
	for (int i = 0; i < shared_state->nslots; i++)
		if (shared_state->slots[i].pid != 0 && shared_state->slots[i].token != 0) {
			pids[n] = shared_state->slots[i].pid;
			candidates[n++] = shared_state->slots[i].token;
		}
	SpinLockRelease(&shared_state->mutex);
	/* A slot whose process is gone (killed before it could clear the slot) is not alive. */
	for (int i = 0; i < n && live < max; i++)
		if (kill(pids[i], 0) == 0 || errno != ESRCH)
			tokens[live++] = candidates[i];
	return live;
}

bool
pgdiag::AnyWorkerBusy()
{
	bool busy = false;

	if (!shared_state)
		return false;
	SpinLockAcquire(&shared_state->mutex);
	for (int i = 0; i < shared_state->nslots; i++)
		if (shared_state->slots[i].pid != 0 && shared_state->slots[i].inflight > 0)
			busy = true;
	SpinLockRelease(&shared_state->mutex);
	return busy;
}
