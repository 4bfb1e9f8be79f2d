/*-------------------------------------------------------------------------
 * worker.cpp
 *		The pg_diagnosis background worker: registration, signals, the event loop, shutdown.
 *
 * The skeleton is worker_spi's: handlers, BackgroundWorkerUnblockSignals, connect, then a loop around one wait.
 * The wait covers everything at once: the process latch (wake-at-commit, SIGHUP, SIGTERM), postmaster death,
 * the descriptor that aggregates the MCP client's sockets, and a timeout. Each pass then asks one question per
 * step (is the extension there? finished calls to write? a recovery due? a claim due?) from one LoopState, and
 * the same state gives the next timeout, so no step can leave the loop spinning: idle, the worker issues no
 * query; it claims only when a commit enqueued runs, when a scheduled run comes due, or after a claim that found
 * work.
 *
 * Crash-only: a slot in shared memory records each live worker with a per-start token; runs whose token is not
 * a live worker's are put back by whichever worker next looks (at start, when a worker exits, and periodically
 * while runs are in flight, which also catches expired leases). The worker always exits with code 1, so the
 * postmaster restarts it after bgw_restart_time whether it was terminated, lost its database or failed.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/fd_budget.hpp"
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker.hpp"
#include "pg_diagnosis/pg/worker_store.hpp"
#include "pg_diagnosis/pg/pack_builders.hpp"
#include "pg_diagnosis/worker_calls.hpp"
#include "pg_diagnosis/cpp_guard.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "utils/acl.h"
#include "utils/backend_status.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/bgworker_internals.h"
#include "postmaster/interrupt.h"
#include "replication/logicallauncher.h"
#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void pgdiag_worker_main(Datum main_arg);
}

#include <malloc.h>

/* How long SIGTERM lets calls in flight finish before handing the rest back. Short: DROP DATABASE ... WITH
 * (FORCE) waits at most 5 s for the sessions it terminated. */
#define SHUTDOWN_GRACE_MS 3000
/* Progress reports are written about once a second while calls are in flight. */
#define PROGRESS_INTERVAL_MS 1000
/* Backoff of a paused worker (a setting that cannot work) before it tries again, doubling up to the maximum. */
#define PAUSE_MIN_MS 1000
#define PAUSE_MAX_MS 60000

static bool am_worker = false;
static int my_slot = -1;
static int64 my_token = 0;
/* diagnosis.worker_role once this worker acts as it (BecomeWorkerRole); until then it runs no statement. */
static Oid my_role = InvalidOid;

/* One of the extension's worker processes, acting as its role, in its own statements: the session's role (a
 * SECURITY DEFINER function of the extension changes the current user, not the session's), never in code run
 * under SECURITY_RESTRICTED_OPERATION (the context pack, the FHIR source's owner). */
bool
pgdiag::ActsAsWorker()
{
	return am_worker && OidIsValid(my_role) && GetSessionUserId() == my_role && !InSecurityRestrictedOperation();
}

long long
pgdiag::MyWorkerToken()
{
	return my_token;
}

/* Background workers registered so far (ours included), the slots they will take from max_worker_processes. */
static int
RegisteredWorkers(void)
{
	int n = 0;

	/* slist_foreach's type check is C only. */
	for (slist_node *node = BackgroundWorkerList.head.next; node != NULL; node = node->next)
		n++;
	return n;
}

void
pgdiag::RegisterWorkers()
{
	BackgroundWorker worker;
	/* The logical replication launcher registers itself after the preloaded libraries. */
	int room = max_worker_processes - RegisteredWorkers() - (max_logical_replication_workers > 0 ? 1 : 0);
	int wanted = Min(pgdiag_workers, kMaxWorkers);

	if (wanted > room)
		ereport(WARNING,
		        (errmsg("pg_diagnosis: only %d of the %d workers of diagnosis.workers can start", Max(room, 0), wanted),
		         errhint("Raise max_worker_processes (now %d) by at least %d.", max_worker_processes,
		                 wanted - Max(room, 0))));
	for (int i = 0; i < wanted && i < Max(room, 0); i++) {
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

static pgdiag::WorkerSlot *
MySlot(void)
{
	pgdiag::SharedState *shared = pgdiag::Shared();

	return shared && my_slot >= 0 ? &shared->slots[my_slot] : NULL;
}

/* Runs this worker holds: calls in flight, and runs whose pack a builder is making (they hold a slot too). */
static int
RunsInFlight(void)
{
	return pgdiag::calls::InFlight() + pgdiag::packs::Pending();
}

/* Publishes the state, calls in flight and runs finished; `error` (when not NULL) becomes last_error. */
static void
SetSlotState(const char *state, int finished, const char *error)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot = MySlot();

	if (!slot)
		return;
	SpinLockAcquire(&shared->mutex);
	strlcpy(slot->state, state, sizeof(slot->state));
	slot->inflight = RunsInFlight();
	slot->runs_done += finished;
	if (error && error[0])
		strlcpy(slot->last_error, error, sizeof(slot->last_error));
	SpinLockRelease(&shared->mutex);
}

static void
SetSlotBudget(const pgdiag::FdBudget &budget)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot = MySlot();

	if (!slot)
		return;
	SpinLockAcquire(&shared->mutex);
	slot->call_limit = budget.call_limit;
	slot->fd_limit = budget.soft_limit;
	SpinLockRelease(&shared->mutex);
}

/* Frees the slot and tells the other workers, so they put back any run this process still held. */
static void
DetachSlot(int code, Datum arg)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot = MySlot();

	if (!slot)
		return;
	SpinLockAcquire(&shared->mutex);
	slot->pid = 0;
	slot->token = 0;
	slot->latch = NULL;
	SpinLockRelease(&shared->mutex);
	pg_atomic_fetch_add_u64(&shared->exit_generation, 1);
	pgdiag::WakeWorkers();
}

/* A token no earlier start of any worker had: pids repeat (a fresh pid namespace, a restart), 63 random bits
 * in practice do not. */
static int64
NewToken(void)
{
	uint64 token = 0;

	while (token == 0) {
		if (!pg_strong_random(&token, sizeof(token)))
			elog(ERROR, "pg_diagnosis: could not generate a worker token");
		token &= PG_INT64_MAX;
	}
	return (int64) token;
}

static void
AttachSlot(int slot_index)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot;

	if (!shared)
		elog(ERROR, "pg_diagnosis: shared memory is missing; the worker needs shared_preload_libraries");
	my_slot = slot_index;
	my_token = NewToken();
	slot = &shared->slots[my_slot];
	SpinLockAcquire(&shared->mutex);
	slot->pid = MyProcPid;
	slot->token = my_token;
	slot->latch = MyLatch;
	slot->started_at = GetCurrentTimestamp();
	strlcpy(slot->state, "starting", sizeof(slot->state));
	slot->last_error[0] = '\0';
	slot->era[0] = '\0';
	slot->protocol_version[0] = '\0';
	slot->inflight = 0;
	slot->runs_done = 0;
	SpinLockRelease(&shared->mutex);
	before_shmem_exit(DetachSlot, 0);
}

/* ---------------------------------------------------------------- the database */

/* Handles SIGHUP and SIGTERM while the worker has no loop yet; SIGTERM exits (code 1: restart wanted). */
static void
HandleInterruptsBeforeLoop(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ShutdownRequestPending)
		proc_exit(1);
	if (ConfigReloadPending) {
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* Whether a database of that name exists, read the way autovacuum's launcher lists databases: a process connected
 * to no database has the shared catalogs but not their indexes (get_database_oid would need one). */
static bool
DatabaseExists(const char *name)
{
	Relation rel;
	TableScanDesc scan;
	HeapTuple tuple;
	bool found = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && HeapTupleIsValid(tuple = heap_getnext(scan, ForwardScanDirection)))
		found = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tuple))->datname), name) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/*
 * The last start of this slot died while connecting: diagnosis.database is missing (dropped, or not created
 * yet). Rather than a FATAL every second, wait connected to no database (shared catalogs only), look for it
 * with a backoff, say so once, and exit for a restart that connects when it is back.
 */
static void
WaitForDatabase(pgdiag::WorkerSlot *slot)
{
	int wait_ms = pgdiag_poll_interval_ms;

	/* No database, so shared catalogs only: nothing of anyone's can run here. */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	for (;;) {
		if (DatabaseExists(pgdiag_database)) {
			slot->connecting = false;
			proc_exit(1);
		}
		if (!slot->said_database_missing)
			ereport(LOG,
			        (errmsg("pg_diagnosis: database \"%s\" does not exist; the worker waits for it", pgdiag_database),
			         errhint("Create it, or set diagnosis.database and restart the server.")));
		slot->said_database_missing = true;
		SetSlotState("waiting_for_database", 0, NULL);
		/* Nothing wakes the worker at CREATE DATABASE: look again with a backoff up to 10 s. */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms, PG_WAIT_EXTENSION);
		wait_ms = (int) Min((int64) wait_ms * 2, (int64) Max(pgdiag_poll_interval_ms, 10000));
		ResetLatch(MyLatch);
		HandleInterruptsBeforeLoop();
	}
}

/*
 * Settings a database's or a role's owner can attach (ALTER DATABASE / ALTER ROLE ... SET), which the connection
 * has just applied, replaced by the worker's own. Session values, not overrides: a statement of the worker may
 * still nest its own (GUC_ACTION_SAVE), and what a context pack function sets rolls back with its nest level.
 * lock_timeout is short: a statement of the worker never waits long for a lock someone else holds (the run is
 * taken on a later pass). default_transaction_read_only is left alone: it is how a failover manager keeps a
 * promoted primary from writing (WritableStep).
 */
static void
PinSettings(void)
{
	static const char *const settings[][2] = {
	    {"statement_timeout", "0"},
	    {"lock_timeout", "1s"},
	    {"idle_in_transaction_session_timeout", "0"},
	    {"idle_session_timeout", "0"},
	    {"default_transaction_isolation", "read committed"},
	    {"default_transaction_deferrable", "off"},
	    {"session_replication_role", "origin"},
	    {"row_security", "on"},
	    {"force_parallel_mode", "off"},
	    {"DateStyle", "ISO, MDY"},
	    {"IntervalStyle", "postgres"},
	    {"extra_float_digits", "1"},
	    {"bytea_output", "hex"},
	};

	for (const auto &setting : settings)
		SetConfigOption(setting[0], setting[1], PGC_SUSET, PGC_S_SESSION);
}

/* True when `role` is a superuser or a member (SET ROLE would reach it) of one. */
static bool
HasSuperuserRights(Oid role)
{
	static const char *sql = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r"
	                         "  WHERE r.rolsuper AND pg_catalog.pg_has_role($1, r.oid, 'MEMBER'))";
	Oid argtypes[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(role)};
	bool isnull;
	bool result;

	if (superuser_arg(role))
		return true;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking diagnosis.worker_role failed");
	result = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	PopActiveSnapshot();
	SPI_finish();
	return result;
}

/* pg_stat_activity shows the role the connection was made as: show the worker's. */
static void
ReportSessionRole(Oid role)
{
	volatile PgBackendStatus *entry = MyBEEntry;

	if (entry == NULL)
		return;
	PGSTAT_BEGIN_WRITE_ACTIVITY(entry);
	entry->st_userid = role;
	PGSTAT_END_WRITE_ACTIVITY(entry);
}

/*
 * The worker connects as the bootstrap superuser (a background worker of PostgreSQL 15 cannot connect as a NOLOGIN
 * role, and the role does not exist before CREATE EXTENSION) and, before its first statement, becomes
 * diagnosis.worker_role for good: SET SESSION AUTHORIZATION and RESET ROLE as overrides no later SET can change
 * (both are refused to SECURITY DEFINER functions and security-restricted operations anyway). A role that is a
 * superuser or a member of one is refused. Returns NULL once the worker acts as its role, else why not (and
 * *state: waiting_for_role or config_error).
 */
const char *
pgdiag::BecomeWorkerRole(const char **state)
{
	static char reason[pgdiag::kLastErrorLen];
	Oid role;

	if (OidIsValid(my_role))
		return NULL;
	StartTransactionCommand();
	role = get_role_oid(pgdiag_worker_role, true);
	if (!OidIsValid(role)) {
		snprintf(reason, sizeof(reason),
		         "diagnosis.worker_role \"%s\" does not exist (CREATE EXTENSION pg_diagnosis creates "
		         "diagnosis_worker)",
		         pgdiag_worker_role);
		*state = "waiting_for_role";
	} else if (HasSuperuserRights(role)) {
		snprintf(reason, sizeof(reason),
		         "diagnosis.worker_role \"%s\" is a superuser or a member of one; the worker refuses to work as it",
		         pgdiag_worker_role);
		*state = "config_error";
	} else {
		SetConfigOption("role", "none", PGC_SUSET, PGC_S_OVERRIDE);
		SetConfigOption("session_authorization", pgdiag_worker_role, PGC_SUSET, PGC_S_OVERRIDE);
		if (GetSessionUserId() != role || GetUserId() != role || superuser())
			elog(ERROR, "pg_diagnosis: the worker could not become diagnosis.worker_role \"%s\"", pgdiag_worker_role);
		my_role = role;
	}
	CommitTransactionCommand();
	if (!OidIsValid(my_role))
		return reason;
	ReportSessionRole(my_role);
	if (am_worker)
		ereport(LOG, (errmsg("pg_diagnosis worker %d acts as role \"%s\"", my_slot, pgdiag_worker_role)));
	return NULL;
}

static void
ConnectToDatabase(void)
{
	pgdiag::WorkerSlot *slot = MySlot();

	if (slot->connecting)
		WaitForDatabase(slot);
	slot->connecting = true;
	/* As the bootstrap superuser, on purpose: PostgreSQL 15 lets no background worker log in as a NOLOGIN role (the
	 * bypass comes in 17), and diagnosis.worker_role may not exist before CREATE EXTENSION. Nothing of the worker's
	 * own runs before BecomeWorkerRole switches to that role for good (docs/SECURITY.md, "The worker's role"). */
	BackgroundWorkerInitializeConnection(pgdiag_database, NULL, 0);
	slot->connecting = false;
	slot->said_database_missing = false;
	pgdiag::SetUpWorkerSession();
}

void
pgdiag::SetUpWorkerSession()
{
	PinSettings();
	/* No name the worker resolves may come from a schema someone else can write. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/* Its statements touch a few rows each: compiling one with LLVM (a plan estimated on stale statistics
	 * crosses jit_above_cost) costs more than running it a thousand times. */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* Its generic plans are made once, maybe while the tables are small, and kept until the next ANALYZE: every
	 * probe must stay an index or TID scan when the table has grown, so no plan may choose to read it whole.
	 * Session values, not overrides: their reset values stay the server's, which BuildPacks gives back to the
	 * context pack function (the tenant's code). */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION);
}

/* ---------------------------------------------------------------- settings */

/* Reads a whole file; errors (with the path, never the contents) if it cannot. */
static char *
ReadTokenFile(const char *path, const char *setting)
{
	FILE *file = AllocateFile(path, "r");
	StringInfoData buffer;
	char chunk[1024];
	size_t n;

	if (file == NULL)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not open %s file \"%s\": %m", setting, path)));
	initStringInfo(&buffer);
	while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0)
		appendBinaryStringInfo(&buffer, chunk, (int) n);
	FreeFile(file);
	return buffer.data;
}

/* A secret setting's value: itself, or with "file:/path" that file's first line (`first_line`) or all of it.
 * PostgreSQL logs the raw new value of every setting changed at reload ("parameter ... changed to ..."), so the file
 * form is the way to keep a secret out of the server log. */
static char *
SecretSetting(const char *value, const char *setting, bool first_line)
{
	char *contents;

	if (value == NULL || strncmp(value, "file:", 5) != 0)
		return pstrdup(value ? value : "");
	contents = ReadTokenFile(value + 5, setting);
	if (first_line)
		contents[strcspn(contents, "\r\n")] = '\0';
	return contents;
}

/* Sizes the call budget to the file descriptors (raising the soft limit as far as max_inflight needs) and
 * configures the client; says the effective limit once, and again whenever it changes. Returns the limit. */
static int
ApplySettings(void)
{
	static int said_limit = 0;
	pgdiag::FdBudget budget = pgdiag::PlanFdBudget(pgdiag_max_inflight);
	pgdiag::calls::Settings s;

	if (budget.call_limit != said_limit)
		ereport(budget.call_limit < pgdiag_max_inflight ? WARNING : LOG,
		        (errmsg("pg_diagnosis worker %d: up to %d calls in flight (diagnosis.max_inflight = %d; file "
		                "descriptor limit %d, hard limit %d)",
		                my_slot, budget.call_limit, pgdiag_max_inflight, budget.soft_limit, budget.hard_limit)));
	said_limit = budget.call_limit;
	SetSlotBudget(budget);

	s.url = pgdiag_mcp_url;
	s.tool = pgdiag_mcp_tool;
	s.auth_token = SecretSetting(pgdiag_mcp_auth_token, "diagnosis.mcp_auth_token", true);
	s.oauth_client_id = pgdiag_mcp_oauth_client_id;
	s.oauth_client_secret = SecretSetting(pgdiag_mcp_oauth_client_secret, "diagnosis.mcp_oauth_client_secret", true);
	s.oauth_private_key_pem = SecretSetting(pgdiag_mcp_oauth_private_key, "diagnosis.mcp_oauth_private_key", false);
	s.oauth_scope = pgdiag_mcp_oauth_scope;
	s.oauth_store = psprintf("%s/pg_diagnosis_oauth.json", DataDir);
	s.ca_file = pgdiag_mcp_ca_file;
	s.client_cert = pgdiag_mcp_client_cert;
	s.client_key = pgdiag_mcp_client_key;
	s.connect_timeout_ms = pgdiag_connect_timeout_ms;
	s.request_timeout_ms = pgdiag_request_timeout_ms;
	s.max_response_bytes = (size_t) pgdiag_max_response_bytes;
	s.max_inflight = budget.call_limit;
	s.retry_base_delay_ms = pgdiag_retry_base_delay_ms;
	if (!pgdiag::calls::Configure(s))
		elog(ERROR, "pg_diagnosis: configuring the MCP client failed: %s", pgdiag::cpp_guard_message);
	return budget.call_limit;
}

static bool
EndpointConfigured(void)
{
	return pgdiag_mcp_url && pgdiag_mcp_url[0];
}

/* ---------------------------------------------------------------- the loop */

/* Everything one pass decides from, and the next timeout is computed from. */
typedef struct LoopState {
	bool extension_ready;
	TimestampTz extension_check_at; /* when to look for CREATE EXTENSION again */
	TimestampTz recovery_at;        /* next recovery pass; DT_NOEND: none until a worker exits or a claim */
	TimestampTz claim_at;           /* when a claim may find work; DT_NOEND: only a wake-up brings work */
	TimestampTz cancel_check_at;    /* when to look for cancel requests of this worker's runs */
	TimestampTz paused_until;       /* a setting that cannot work: no claim before this */
	int pause_ms;                   /* the pause's current backoff; 0 when not paused */
	int call_limit;                 /* calls in flight that fit in the descriptor budget */
	uint64 seen_enqueues;
	uint64 seen_exits;
	bool said_no_endpoint;
	const char *pause_reason; /* kept in the slot's last_error; NULL when not paused */
} LoopState;

static void
DriveClient(void)
{
	if (!pgdiag::calls::Drive())
		elog(ERROR, "pg_diagnosis: driving the MCP client failed: %s", pgdiag::cpp_guard_message);
}

static TimestampTz
Later(TimestampTz now, int ms)
{
	return TimestampTzPlusMilliseconds(now, ms);
}

/* The claim's preconditions other than time; names the state the worker is in when one fails. */
static bool
CanClaim(const LoopState *st, TimestampTz now, const char **state)
{
	if (!EndpointConfigured())
		*state = "no_endpoint";
	else if (!pgdiag_enabled)
		*state = "paused";
	else if (st->pause_reason && now < st->paused_until)
		*state = "config_error";
	else {
		*state = RunsInFlight() > 0 ? "working" : "idle";
		return RunsInFlight() < st->call_limit;
	}
	return false;
}

/* Milliseconds until the earliest thing this state waits for; the client's timers and poll_interval_ms cap it. */
static long
NextTimeoutMs(const LoopState *st)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz wake = Later(now, pgdiag_poll_interval_ms);
	long client_ms = pgdiag::calls::TimeoutMs();
	long packs_ms = pgdiag::packs::TimeoutMs();
	const char *state;

	if (!st->extension_ready)
		wake = Min(wake, st->extension_check_at);
	else {
		wake = Min(wake, st->recovery_at);
		if (pgdiag::calls::InFlight() > 0)
			wake = Min(wake, st->cancel_check_at);
		if (CanClaim(st, now, &state))
			wake = Min(wake, st->claim_at);
		else if (st->pause_reason && EndpointConfigured() && pgdiag_enabled)
			wake = Min(wake, st->paused_until);
		if (pgdiag::calls::InFlight() > 0)
			wake = Min(wake, Later(now, PROGRESS_INTERVAL_MS));
	}
	if (client_ms >= 0)
		wake = Min(wake, Later(now, (int) Min(client_ms, (long) INT_MAX)));
	if (packs_ms >= 0)
		wake = Min(wake, Later(now, (int) Min(packs_ms, (long) INT_MAX)));
	return wake <= now ? 0 : (long) ((wake - now + 999) / 1000);
}

/* A commit that enqueued runs asks for a claim; a worker that exited leaves runs to recover. */
static void
ObserveWakeups(LoopState *st)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	uint64 enqueues = pg_atomic_read_u64(&shared->enqueue_generation);
	uint64 exits = pg_atomic_read_u64(&shared->exit_generation);
	TimestampTz now = GetCurrentTimestamp();

	if (enqueues != st->seen_enqueues) {
		/* Enqueues and cancel requests both wake the workers at commit. */
		st->seen_enqueues = enqueues;
		st->claim_at = now;
		st->cancel_check_at = now;
		/* An enqueue proves the extension is there: no need to wait for the next look. */
		st->extension_check_at = now;
	}
	if (exits != st->seen_exits) {
		st->seen_exits = exits;
		st->recovery_at = now;
	}
}

static void
OnReload(LoopState *st)
{
	ProcessConfigFile(PGC_SIGHUP);
	st->call_limit = ApplySettings();
	st->said_no_endpoint = false;
	st->claim_at = GetCurrentTimestamp();
	st->paused_until = 0; /* a new setting deserves a try now */
	st->pause_ms = 0;
	if (st->extension_ready)
		pgdiag::LoadResultSchemas();
}

/* True once the worker acts as its role; until then one look per poll interval, one log line per reason. */
static bool
RoleStep(LoopState *st, TimestampTz now)
{
	static char said[pgdiag::kLastErrorLen] = "";
	const char *state = NULL;
	const char *reason = pgdiag::BecomeWorkerRole(&state);

	if (reason == NULL)
		return true;
	if (strcmp(said, reason) != 0)
		ereport(LOG, (errmsg("pg_diagnosis: %s", reason)));
	strlcpy(said, reason, sizeof(said));
	st->extension_check_at = Later(now, pgdiag_poll_interval_ms);
	SetSlotState(state, 0, reason);
	return false;
}

/* True once CREATE EXTENSION has run and the worker acts as its role; until then one cheap look per poll
 * interval. */
static bool
ExtensionStep(LoopState *st, TimestampTz now)
{
	pgdiag::ExtensionState extension;

	if (st->extension_ready)
		return true;
	if (now < st->extension_check_at)
		return false;
	extension = pgdiag::ExtensionReady();
	if (extension != pgdiag::ExtensionState::Ready) {
		st->extension_check_at = Later(now, pgdiag_poll_interval_ms);
		SetSlotState(extension == pgdiag::ExtensionState::Missing ? "waiting_for_extension" : "waiting_for_update", 0,
		             NULL);
		return false;
	}
	if (!RoleStep(st, now))
		return false;
	st->extension_ready = true;
	pgdiag::LoadResultSchemas();
	st->recovery_at = now;
	st->claim_at = now;
	return true;
}

/* Copies the endpoint's era and negotiated version into the slot for worker_status(). */
static void
PublishEndpoint(void)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pgdiag::WorkerSlot *slot = MySlot();
	char era[pgdiag::kEraLen];
	char version[pgdiag::kVersionLen];

	if (!slot)
		return;
	pgdiag::calls::Endpoint(era, sizeof(era), version, sizeof(version));
	SpinLockAcquire(&shared->mutex);
	strlcpy(slot->era, era, sizeof(slot->era));
	strlcpy(slot->protocol_version, version, sizeof(slot->protocol_version));
	SpinLockRelease(&shared->mutex);
}

static void Pause(LoopState *st, TimestampTz now, const char *reason);

/*
 * False while the server refuses writes (default_transaction_read_only: a failover manager such as
 * pg_auto_failover keeps a just-promoted primary read-only until the old one is surely fenced). The worker then
 * waits instead of failing its first write and restarting every second; the reload that lifts it wakes the worker.
 * Finished calls stay pending meanwhile.
 */
static bool
WritableStep(void)
{
	static bool said = false;

	if (!DefaultXactReadOnly) {
		if (said)
			ereport(LOG, (errmsg("pg_diagnosis: the server accepts writes again; the worker resumes")));
		said = false;
		return true;
	}
	if (!said)
		ereport(LOG, (errmsg("pg_diagnosis: default_transaction_read_only is on; the worker waits until writes are "
		                     "allowed")));
	said = true;
	SetSlotState("read_only", 0, NULL);
	return false;
}

/* Writes progress, new tasks and finished calls; a finished call frees a slot, so a claim may follow at once. A
 * call that said a setting cannot work (its run went back to the queue unspent) pauses claiming. */
static void
SettleStep(LoopState *st, TimestampTz now)
{
	pgdiag::FinalizeResult result;
	char config_error[pgdiag::kLastErrorLen];
	const char *state;

	pgdiag::WriteProgress();
	pgdiag::RecordTasks();
	pgdiag::FinalizeFinishedRuns(&result);
	PublishEndpoint();
	if (result.settled > 0)
		st->claim_at = now;
	st->claim_at = Min(st->claim_at, result.next_retry);
	if (pgdiag::calls::TakeConfigError(config_error, sizeof(config_error)))
		Pause(st, now, config_error);
	(void) CanClaim(st, now, &state);
	SetSlotState(state, result.terminal, st->pause_reason ? st->pause_reason : result.last_error);
}

/* Stops the calls whose cancel was requested: at the wake-up of the cancelling commit, and every poll interval
 * while calls are in flight (no query otherwise). */
static void
CancelStep(LoopState *st, TimestampTz now)
{
	if (pgdiag::calls::InFlight() == 0) {
		st->cancel_check_at = DT_NOEND;
		return;
	}
	if (now < st->cancel_check_at)
		return;
	pgdiag::StopCancelledCalls(my_token);
	st->cancel_check_at = Later(now, pgdiag_poll_interval_ms);
}

/* Puts back runs of dead workers and expired leases: when due, then every poll interval while runs are
 * running anywhere, and not at all (no query) once nothing is. */
static void
RecoveryStep(LoopState *st, TimestampTz now)
{
	bool running_left = false;

	if (now < st->recovery_at)
		return;
	if (pgdiag::RecoverRuns(my_token, false, &running_left) > 0) {
		st->claim_at = now;
		pgdiag::WakeWorkers();
	}
	st->recovery_at = (running_left || pgdiag::AnyWorkerBusy()) ? Later(now, pgdiag_poll_interval_ms) : DT_NOEND;
}

/* Pauses claiming for a setting that cannot work: one log line per distinct reason, backoff between tries. */
static void
Pause(LoopState *st, TimestampTz now, const char *reason)
{
	static char last_reason[pgdiag::kLastErrorLen] = "";

	if (strcmp(last_reason, reason) != 0)
		ereport(LOG, (errmsg("pg_diagnosis: claiming paused: %s", reason)));
	strlcpy(last_reason, reason, sizeof(last_reason));
	st->pause_reason = last_reason;
	st->pause_ms = st->pause_ms == 0 ? PAUSE_MIN_MS : Min(st->pause_ms * 2, PAUSE_MAX_MS);
	st->paused_until = Later(now, st->pause_ms);
	SetSlotState("config_error", 0, reason);
}

static void
Unpause(LoopState *st)
{
	if (st->pause_reason)
		ereport(LOG, (errmsg("pg_diagnosis: claiming resumed")));
	st->pause_reason = NULL;
	st->pause_ms = 0;
}

static void
ClaimStep(LoopState *st, TimestampTz now)
{
	pgdiag::ClaimResult result;
	const char *state;

	if (!CanClaim(st, now, &state)) {
		if (strcmp(state, "no_endpoint") == 0 && !st->said_no_endpoint)
			ereport(LOG, (errmsg("pg_diagnosis: diagnosis.mcp_url is not set; runs stay queued until it is")));
		st->said_no_endpoint = strcmp(state, "no_endpoint") == 0;
		SetSlotState(state, 0, NULL);
		return;
	}
	if (now < st->claim_at)
		return;

	pgdiag::ClaimRuns(st->call_limit - RunsInFlight(), my_token, &result);
	if (result.config_error) {
		Pause(st, now, result.config_error);
		return;
	}
	Unpause(st);
	pgdiag::packs::Hand(result.awaiting, result.n_awaiting);
	if (result.claimed > 0) {
		/* Claim again at once: more may be due (each organization got a share of the free slots). */
		st->claim_at = now;
		st->recovery_at = Min(st->recovery_at, Later(now, pgdiag_poll_interval_ms));
		DriveClient();
	} else if (result.next_due != DT_NOEND && result.next_due <= now)
		/* Due runs that another transaction holds locked, or organizations at their cap: look again later. */
		st->claim_at = Later(now, pgdiag_poll_interval_ms);
	else
		st->claim_at = result.next_due;
	(void) CanClaim(st, now, &state);
	SetSlotState(state, 0, NULL);
}

/* SIGTERM: no new claims; calls in flight get a bounded grace period; the rest go back to the queue with their
 * attempt given back (a clean shutdown is not the run's failure). */
static void
ShutDown(WaitEventSet *wait_set, bool extension_ready)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), SHUTDOWN_GRACE_MS);
	int aborted = 0;

	SetSlotState("stopping", 0, NULL);
	while (pgdiag::calls::InFlight() > 0 && GetCurrentTimestamp() < deadline) {
		WaitEvent event;
		pgdiag::FinalizeResult result;
		long timeout = pgdiag::calls::TimeoutMs();
		long remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);

		if (timeout < 0 || timeout > remaining)
			timeout = Max(remaining, 0);
		(void) WaitEventSetWait(wait_set, timeout, &event, 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		DriveClient();
		pgdiag::FinalizeFinishedRuns(&result);
		SetSlotState("stopping", result.terminal, NULL);
	}
	/* Legacy calls get notifications/cancelled, the session its DELETE; tasks keep running for the next start. */
	if (!pgdiag::calls::Shutdown(&aborted))
		elog(ERROR, "pg_diagnosis: ending the calls failed: %s", pgdiag::cpp_guard_message);
	pgdiag::packs::StopAll();
	if (extension_ready)
		(void) pgdiag::RecoverRuns(my_token, true, NULL);
	ereport(LOG, (errmsg("pg_diagnosis worker %d stopping; %d call(s) handed back", my_slot, aborted)));
}

/*
 * Every pass allocates and frees blocks of a few hundred kB (a finalize batch's array and the executor's copies of
 * it, the claim's packs, response buffers). With glibc's defaults each such block is mapped and unmapped, or the
 * heap trimmed under it, and faulted in again page by page on the next pass: page faults were 5 to 10 % of the
 * worker's CPU in a drain (docs/BENCHMARKS.md, issue 26). Blocks up to 4 MB come from the heap, and up to 16 MB of
 * free heap is kept for the next pass; larger blocks (a pack near diagnosis.max_context_pack_bytes) still go back.
 */
static void
KeepFreedMemory(void)
{
	(void) mallopt(M_MMAP_THRESHOLD, 4 << 20);
	(void) mallopt(M_TRIM_THRESHOLD, 16 << 20);
}

void
pgdiag_worker_main(Datum main_arg)
{
	pgdiag::SharedState *shared;
	MemoryContext loop_context;
	WaitEventSet *wait_set;
	LoopState st;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	am_worker = true;
	KeepFreedMemory();
	AttachSlot(DatumGetInt32(main_arg));
	shared = pgdiag::Shared();
	ConnectToDatabase();
	pgstat_report_appname(psprintf("pg_diagnosis worker %d", my_slot));

	if (!pgdiag::calls::Init())
		elog(ERROR, "pg_diagnosis: %s", pgdiag::cpp_guard_message);

	memset(&st, 0, sizeof(st));
	st.call_limit = ApplySettings();
	st.extension_check_at = GetCurrentTimestamp();
	st.recovery_at = DT_NOEND;
	st.claim_at = DT_NOEND;
	st.cancel_check_at = DT_NOEND;
	st.seen_exits = pg_atomic_read_u64(&shared->exit_generation);
	st.seen_enqueues = pg_atomic_read_u64(&shared->enqueue_generation);

	wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, pgdiag::calls::EventFd(), NULL, NULL);

	loop_context = AllocSetContextCreate(TopMemoryContext, "pg_diagnosis worker loop", ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("pg_diagnosis worker %d started in database \"%s\"", my_slot, pgdiag_database)));

	while (!ShutdownRequestPending) {
		WaitEvent events[3];
		TimestampTz now;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);

		/* A wake-up whose latch was consumed by a wait inside a step (a lock, a condition variable) still shows
		 * in the generation counters: look at them before sleeping, not only after. */
		ObserveWakeups(&st);
		(void) WaitEventSetWait(wait_set, NextTimeoutMs(&st), events, lengthof(events), PG_WAIT_EXTENSION);
		/* Reset before looking for work (latch.h). */
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending) {
			ConfigReloadPending = false;
			OnReload(&st);
		}
		ObserveWakeups(&st);
		DriveClient();

		now = GetCurrentTimestamp();
		if (!ExtensionStep(&st, now) || !WritableStep())
			continue;
		if (pgdiag::packs::Step() > 0)
			DriveClient(); /* the calls of packs that came in start now */
		SettleStep(&st, now);
		CancelStep(&st, now);
		RecoveryStep(&st, now);
		ClaimStep(&st, now);
	}

	ShutDown(wait_set, st.extension_ready);
	/* Code 1: the postmaster restarts a worker that was terminated; at server shutdown it restarts nothing. */
	proc_exit(1);
}
