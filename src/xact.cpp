/*-------------------------------------------------------------------------
 * xact.cpp
 *		Transaction callbacks: wake-at-commit and the purge permission.
 *
 * One callback per backend, registered the first time it is needed (pg_net registers one per call and never
 * unregisters; pg_duckdb keeps a static guard, as here). The callback never raises: an error at COMMIT would
 * turn into a PANIC.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/xact.hpp"

extern "C" {
#include "access/xact.h"
}

static bool callback_registered = false;
static bool wake_at_commit = false;
static bool purging = false;

static void
DiagnosisXactCallback(XactEvent event, void *arg)
{
	switch (event) {
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		if (wake_at_commit) {
			pgdiag::SharedState *shared = pgdiag::Shared();
			if (shared) {
				/* The flag first, then the latches (latch.h). */
				pg_atomic_fetch_add_u64(&shared->enqueue_generation, 1);
				pgdiag::WakeWorkers();
			}
		}
		wake_at_commit = false;
		purging = false;
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
	case XACT_EVENT_PREPARE:
		/* A prepared transaction's runs are seen by the next wake-up or claim. */
		wake_at_commit = false;
		purging = false;
		break;
	default:
		break;
	}
}

static void
EnsureCallback()
{
	if (!callback_registered) {
		RegisterXactCallback(DiagnosisXactCallback, NULL);
		callback_registered = true;
	}
}

void
pgdiag::WakeWorkersAtCommit()
{
	EnsureCallback();
	wake_at_commit = true;
}

void
pgdiag::BeginPurge()
{
	EnsureCallback();
	purging = true;
}

bool
pgdiag::Purging()
{
	return purging;
}
