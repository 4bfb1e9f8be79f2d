/*-------------------------------------------------------------------------
 * worker.cpp
 *		The pg_diagnosis background worker: registration, signals, the event loop, shutdown.
 *
 * The skeleton is worker_spi's: handlers, BackgroundWorkerUnblockSignals, connect, then a loop around one wait.
 * The wait covers everything at once: the process latch (wake-at-commit, SIGHUP, SIGTERM), postmaster death,
 * the descriptor that aggregates the MCP client's sockets, and a timeout that is the earliest of the client's
 * timers, the next scheduled run and poll_interval_ms. Idle, the worker issues no query: it claims only when a
 * commit enqueued runs, when a scheduled run comes due, or when its last claim was full.
 *
 * Crash-only: a slot in shared memory records each live worker; its runs are put back by whichever worker
 * next sees that the process is gone (the restarted worker itself, at start), and after a server crash every
 * run left in running is orphaned because no slot survives.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker.hpp"
#include "pg_diagnosis/pg/worker_store.hpp"
#include "pg_diagnosis/worker_calls.hpp"
#include "pg_diagnosis/pg/cpp_guard.hpp"

extern "C" {
#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PGDLLEXPORT void pgdiag_worker_main(Datum main_arg);
}

/* How long SIGTERM lets calls in flight finish before handing the rest back. */
#define SHUTDOWN_GRACE_MS 5000

static bool am_worker = false;
static int my_slot = -1;

bool
pgdiag::AmWorker()
{
	return am_worker;
}

void
pgdiag::RegisterWorkers()
{
	BackgroundWorker worker;

	for (int i = 0; i < pgdiag_workers && i < kMaxWorkers; i++) {
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		/* Never on a hot standby: started once recovery ends (promotion included). */
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 1;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_diagnosis");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "pgdiag_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "pg_diagnosis worker %d", i);
		snprintf(worker.bgw_type, BGW_MAXLEN, "pg_diagnosis worker");
		worker.bgw_main_arg = Int32GetDatum(i);
		worker.bgw_notify_pid = 0;
		RegisterBackgroundWorker(&worker);
	}
}

/* ---------------------------------------------------------------- slot */

static void
SetSlotState(const char *state, int inflight, int finished, const char *error)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot;

	if (!shared || my_slot < 0)
		return;
	slot = &shared->slots[my_slot];
	SpinLockAcquire(&shared->mutex);
	strlcpy(slot->state, state, sizeof(slot->state));
	slot->inflight = inflight;
	slot->runs_done += finished;
	if (error)
		strlcpy(slot->last_error, error, sizeof(slot->last_error));
	SpinLockRelease(&shared->mutex);
}

/* Frees the slot and tells the other workers, so they put back any run this process still held. */
static void
DetachSlot(int code, Datum arg)
{
	pgdiag::SharedState *shared = pgdiag::Shared();

	if (!shared || my_slot < 0)
		return;
	SpinLockAcquire(&shared->mutex);
	shared->slots[my_slot].pid = 0;
	shared->slots[my_slot].latch = NULL;
	SpinLockRelease(&shared->mutex);
	pg_atomic_fetch_add_u64(&shared->exit_generation, 1);
	pgdiag::WakeWorkers();
}

static void
AttachSlot(int slot_index)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot;

	if (!shared)
		elog(ERROR, "pg_diagnosis: shared memory is missing; the worker needs shared_preload_libraries");
	my_slot = slot_index;
	slot = &shared->slots[my_slot];
	SpinLockAcquire(&shared->mutex);
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	slot->started_at = GetCurrentTimestamp();
	strlcpy(slot->state, "starting", sizeof(slot->state));
	slot->last_error[0] = '\0';
	slot->inflight = 0;
	slot->runs_done = 0;
	SpinLockRelease(&shared->mutex);
	before_shmem_exit(DetachSlot, 0);
}

/* ---------------------------------------------------------------- settings */

/* Reads a whole file; errors (with the path, never the contents) if it cannot. */
static char *
ReadTokenFile(const char *path)
{
	FILE *file = AllocateFile(path, "r");
	StringInfoData buffer;
	char chunk[1024];
	size_t n;

	if (file == NULL)
		ereport(ERROR, (errcode_for_file_access(),
		                errmsg("could not open diagnosis.mcp_auth_token file \"%s\": %m", path)));
	initStringInfo(&buffer);
	while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0)
		appendBinaryStringInfo(&buffer, chunk, (int) n);
	FreeFile(file);
	return buffer.data;
}

/*
 * The bearer token: the setting itself, or with "file:/path" the first line of that file. PostgreSQL logs the raw
 * new value of every setting changed at reload ("parameter ... changed to ..."), so the file form is the way to
 * keep the token out of the server log.
 */
static char *
AuthToken(void)
{
	const char *value = pgdiag_mcp_auth_token ? pgdiag_mcp_auth_token : "";
	char *contents;
	char *end;

	if (strncmp(value, "file:", 5) != 0)
		return pstrdup(value);
	contents = ReadTokenFile(value + 5);
	end = contents + strcspn(contents, "\r\n");
	*end = '\0';
	return contents;
}

static void
ApplySettings(void)
{
	pgdiag::calls::Settings s;

	s.url = pgdiag_mcp_url;
	s.tool = pgdiag_mcp_tool;
	s.auth_token = AuthToken();
	s.connect_timeout_ms = pgdiag_connect_timeout_ms;
	s.request_timeout_ms = pgdiag_request_timeout_ms;
	s.max_response_bytes = (size_t) pgdiag_max_response_bytes;
	s.max_inflight = pgdiag_max_inflight;
	s.retry_base_delay_ms = pgdiag_retry_base_delay_ms;
	if (!pgdiag::calls::Configure(s))
		elog(ERROR, "pg_diagnosis: configuring the MCP client failed: %s", pgdiag::cpp_guard_message);
}

static bool
EndpointConfigured(void)
{
	return pgdiag_mcp_url && pgdiag_mcp_url[0];
}

/* ---------------------------------------------------------------- main */

static void
DriveClient(void)
{
	if (!pgdiag::calls::Drive())
		elog(ERROR, "pg_diagnosis: driving the MCP client failed: %s", pgdiag::cpp_guard_message);
}

/* SIGTERM: no new claims; calls in flight get a bounded grace period; the rest go back to the queue. */
static void
ShutDown(WaitEventSet *wait_set)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), SHUTDOWN_GRACE_MS);
	int aborted = 0;

	SetSlotState("stopping", pgdiag::calls::InFlight(), 0, NULL);
	while (pgdiag::calls::InFlight() > 0 && GetCurrentTimestamp() < deadline) {
		WaitEvent event;
		long timeout = pgdiag::calls::TimeoutMs();
		long remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);

		if (timeout < 0 || timeout > remaining)
			timeout = Max(remaining, 0);
		(void) WaitEventSetWait(wait_set, timeout, &event, 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		DriveClient();
		{
			TimestampTz ignored = DT_NOEND;
			SetSlotState("stopping", pgdiag::calls::InFlight(), pgdiag::FinalizeFinishedRuns(&ignored), NULL);
		}
	}
	if (!pgdiag::calls::AbortAll(&aborted))
		elog(ERROR, "pg_diagnosis: aborting calls failed: %s", pgdiag::cpp_guard_message);
	if (aborted > 0)
		(void) pgdiag::RecoverRuns(true);
	ereport(LOG, (errmsg("pg_diagnosis worker %d stopping; %d call(s) handed back", my_slot, aborted)));
}

void
pgdiag_worker_main(Datum main_arg)
{
	pgdiag::SharedState *shared;
	MemoryContext loop_context;
	WaitEventSet *wait_set;
	uint64 seen_enqueues;
	uint64 seen_exits;
	bool extension_ready = false;
	bool queue_may_have_more = true; /* claim once at start */
	bool said_no_endpoint = false;
	bool need_recovery = true;
	TimestampTz next_due = DT_NOEND;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	am_worker = true;
	AttachSlot(DatumGetInt32(main_arg));
	shared = pgdiag::Shared();

	BackgroundWorkerInitializeConnection(pgdiag_database, NULL, 0);
	pgstat_report_appname(psprintf("pg_diagnosis worker %d", my_slot));

	if (!pgdiag::calls::Init())
		elog(ERROR, "pg_diagnosis: %s", pgdiag::cpp_guard_message);
	ApplySettings();

	wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, pgdiag::calls::EventFd(), NULL, NULL);

	loop_context = AllocSetContextCreate(TopMemoryContext, "pg_diagnosis worker loop", ALLOCSET_DEFAULT_SIZES);
	seen_exits = pg_atomic_read_u64(&shared->exit_generation);
	seen_enqueues = pg_atomic_read_u64(&shared->enqueue_generation);
	ereport(LOG, (errmsg("pg_diagnosis worker %d started in database \"%s\"", my_slot, pgdiag_database)));

	while (!ShutdownRequestPending) {
		WaitEvent events[3];
		long timeout = pgdiag_poll_interval_ms;
		long client_timeout = pgdiag::calls::TimeoutMs();
		TimestampTz now = GetCurrentTimestamp();
		int inflight;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);

		if (client_timeout >= 0 && client_timeout < timeout)
			timeout = client_timeout;
		if (pgdiag::calls::InFlight() > 0 && timeout > 1000)
			timeout = 1000; /* progress reports are written about once a second */
		if (next_due != DT_NOEND) {
			long until_due = next_due <= now ? 0 : (long) ((next_due - now + 999) / 1000);
			if (until_due < timeout)
				timeout = until_due;
		}
		if (queue_may_have_more && pgdiag::calls::InFlight() < pgdiag_max_inflight && EndpointConfigured() &&
		    pgdiag_enabled)
			timeout = 0;

		(void) WaitEventSetWait(wait_set, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
		/* Reset before looking for work (latch.h). */
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			ApplySettings();
			said_no_endpoint = false;
			queue_may_have_more = true;
			if (extension_ready)
				pgdiag::LoadResultSchemas();
		}

		DriveClient();

		if (!extension_ready) {
			/* Enqueues (which need the extension) wake us; until then check on each wake or poll. */
			extension_ready = pgdiag::ExtensionReady();
			if (!extension_ready) {
				SetSlotState("waiting_for_extension", 0, 0, NULL);
				continue;
			}
			pgdiag::LoadResultSchemas();
			need_recovery = true;
		}

		if (pg_atomic_read_u64(&shared->exit_generation) != seen_exits) {
			seen_exits = pg_atomic_read_u64(&shared->exit_generation);
			need_recovery = true;
		}
		if (need_recovery) {
			need_recovery = false;
			if (pgdiag::RecoverRuns(false) > 0) {
				queue_may_have_more = true;
				pgdiag::WakeWorkers();
			}
		}

		pgdiag::WriteProgress();
		SetSlotState("working", pgdiag::calls::InFlight(), pgdiag::FinalizeFinishedRuns(&next_due), NULL);

		if (!EndpointConfigured()) {
			if (!said_no_endpoint)
				ereport(LOG, (errmsg("pg_diagnosis: diagnosis.mcp_url is not set; runs stay queued until it is")));
			said_no_endpoint = true;
			SetSlotState("no_endpoint", pgdiag::calls::InFlight(), 0, NULL);
			continue;
		}
		if (!pgdiag_enabled) {
			SetSlotState("paused", pgdiag::calls::InFlight(), 0, NULL);
			continue;
		}

		inflight = pgdiag::calls::InFlight();
		now = GetCurrentTimestamp();
		if (inflight < pgdiag_max_inflight &&
		    (queue_may_have_more || pg_atomic_read_u64(&shared->enqueue_generation) != seen_enqueues ||
		     (next_due != DT_NOEND && next_due <= now))) {
			int limit = pgdiag_max_inflight - inflight;
			int claimed;

			/* Read before claiming: a commit that lands during the claim triggers another. */
			seen_enqueues = pg_atomic_read_u64(&shared->enqueue_generation);
			claimed = pgdiag::ClaimRuns(limit, &next_due);
			queue_may_have_more = claimed == limit;
			if (claimed > 0)
				DriveClient();
		}
		SetSlotState(pgdiag::calls::InFlight() > 0 ? "working" : "idle", pgdiag::calls::InFlight(), 0, NULL);
	}

	ShutDown(wait_set);
	proc_exit(0);
}
