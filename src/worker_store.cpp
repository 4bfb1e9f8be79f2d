/*-------------------------------------------------------------------------
 * worker_store.cpp
 *		The worker's transactions: claim, context packs, finalize, progress and recovery.
 *
 * PostgreSQL regime throughout: SPI, palloc, PG_TRY, and the C++ side reached only through the plain
 * functions of worker_calls.hpp. What happens to a run is decided in SQL, by the extension's lifecycle functions
 * (sql/pg_diagnosis.sql, "A run's lifecycle"); this file calls each in one line, hands it typed values and reports
 * what came back. The one thing done here is the context pack, built as the pack function's owner, outside those
 * functions. Every unit of work is a short transaction with the full bracket of worker_spi.c; a lock it cannot
 * get within lock_timeout rolls the unit back and leaves it for a later pass. Set-based calls do the work of a
 * whole batch at once; when one fails, the batch is retried one run per subtransaction, so one run's failure never
 * loses another's result.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/pack_builders.hpp"
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker_store.hpp"
#include "pg_diagnosis/cpp_guard.hpp"
#include "pg_diagnosis/worker_calls.hpp"
#include "pg_diagnosis/core/backoff.hpp"
#include "pg_diagnosis/core/error_code.hpp"
#include "pg_diagnosis/core/run_status.hpp"

extern "C" {
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tupdesc.h"
#include "access/xact.h"
#include "access/detoast.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/typcache.h"
#include "utils/uuid.h"
}

/* Margin of the lease beyond the longest a call and its pack may take; the lease is only the backstop of exact
 * recovery. */
#define LEASE_MARGIN_MS 60000

/* ---------------------------------------------------------------- units of work */

/* The worker's loop context, current again after each commit (CommitTransactionCommand leaves TopMemoryContext
 * current, and anything allocated there afterwards would live for the whole process). */
static MemoryContext work_caller_context = NULL;

static void
BeginWork(const char *activity)
{
	work_caller_context = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = activity;
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
EndWork(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(work_caller_context);
	debug_query_string = NULL;
	/* Workers that modify tables flush their own statistics. */
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Runs body(arg) as one unit of work. A lock it could not get within lock_timeout (55P03: a table or a row that
 * someone else holds) rolls the whole unit back and returns false: nothing was written, and the caller leaves the
 * work for a later pass. Any other error goes on to the worker's own handling.
 */
static bool
Work(const char *activity, void (*body)(void *), void *arg)
{
	static bool said_locked = false;
	MemoryContext caller = CurrentMemoryContext;
	volatile bool done = false;

	PG_TRY();
	{
		BeginWork(activity);
		body(arg);
		EndWork();
		done = true;
	}
	PG_CATCH();
	{
		ErrorData *edata;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			PG_RE_THROW();
		HOLD_INTERRUPTS();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller);
		debug_query_string = NULL;
		pgstat_report_activity(STATE_IDLE, NULL);
		RESUME_INTERRUPTS();
		if (!said_locked)
			ereport(LOG, (errmsg("%s: %s; tried again later", activity, edata->message)));
		said_locked = true;
		FreeErrorData(edata);
	}
	PG_END_TRY();
	if (done)
		said_locked = false;
	return done;
}

/*
 * Runs `body(arg)` in a subtransaction (the pattern of plpgsql's exception blocks). Returns NULL on success, or
 * the error message (palloc'd in the caller's context) after rolling the subtransaction back, with its SQLSTATE
 * in *sqlstate when asked. A lock not available is not the batch's failure: unless `keep_lock_errors`, it goes on
 * to the unit of work (Work), which tries again later.
 */
static char *
InSubtransaction(void (*body)(void *), void *arg, bool keep_lock_errors = false, int *sqlstate = NULL)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char *volatile message = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		body(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE && !keep_lock_errors)
			ReThrowError(edata);
		message = pstrdup(edata->message ? edata->message : "unknown error");
		if (sqlstate)
			*sqlstate = edata->sqlerrcode;
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return message;
}

/* ---------------------------------------------------------------- values in and out */

/* Prepares a statement once per process; plancache replans it when what it calls changes. */
static SPIPlanPtr
KeptPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	if (*cache == NULL) {
		SPIPlanPtr plan = SPI_prepare(sql, nargs, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for pg_diagnosis worker statement: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*cache = plan;
	}
	return *cache;
}

static Datum
UuidDatum(const char *text)
{
	return DirectFunctionCall1(uuid_in, CStringGetDatum(text));
}

static char *
UuidText(Datum uuid)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, uuid));
}

/* A one-dimensional array datum of n values of a built-in type; NULL elements where nulls[i] (when given). */
static Datum
ArrayOf(Oid elemtype, Datum *values, bool *nulls, int n)
{
	int16 typlen;
	bool typbyval;
	char typalign;
	int dims[1] = {n};
	int lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, elemtype, typlen, typbyval, typalign));
}

/* The ids of a uuid[] datum as C strings in the worker's loop context (they outlive the transaction). */
static char **
CallerIds(Datum array, int *n)
{
	Datum *elems;
	char **ids;

	deconstruct_array(DatumGetArrayTypeP(array), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &elems, NULL, n);
	ids = (char **) MemoryContextAlloc(work_caller_context, sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		ids[i] = MemoryContextStrdup(work_caller_context, UuidText(elems[i]));
	return ids;
}

/* Column `col` of row `row` of the last SPI result. */
static Datum
ResultValue(uint64 row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

/* The oid of one of the extension's types in schema diagnosis. */
static Oid
ExtensionTypeOid(const char *name)
{
	Oid type = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid, CStringGetDatum(name),
	                           ObjectIdGetDatum(get_namespace_oid("diagnosis", false)));
	if (!OidIsValid(type))
		elog(ERROR, "type diagnosis.%s does not exist", name);
	return type;
}
/* ---------------------------------------------------------------- extension and schemas */

/* The version of the extension's SQL this library drives: the control file's default_version (Makefile). */
#define LIBRARY_EXTENSION_VERSION PGDIAG_EXTVERSION

/* The installed version of the extension in this database, palloc'd in the caller's context, or NULL. */
static char *
InstalledVersion(void)
{
	MemoryContext caller = CurrentMemoryContext;
	char *version = NULL;

	StartTransactionCommand();
	if (OidIsValid(get_extension_oid("pg_diagnosis", true))) {
		/* pg_extension.extversion, through the catalog cache of extension.c's own lookup */
		Relation rel = table_open(ExtensionRelationId, AccessShareLock);
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple tuple;

		ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum("pg_diagnosis"));
		scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
		tuple = systable_getnext(scan);
		if (HeapTupleIsValid(tuple)) {
			bool isnull;
			Datum d = heap_getattr(tuple, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);
			if (!isnull)
				version = MemoryContextStrdup(caller, TextDatumGetCString(d));
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return version;
}

pgdiag::ExtensionState
pgdiag::ExtensionReady()
{
	static bool said_version = false;
	char *version = InstalledVersion();

	if (version == NULL)
		return ExtensionState::Missing;
	if (strcmp(version, LIBRARY_EXTENSION_VERSION) != 0) {
		/* A new library on an old schema (between the package upgrade and ALTER EXTENSION UPDATE): wait. */
		if (!said_version)
			ereport(LOG, (errmsg("pg_diagnosis: the extension is at version %s, this library needs %s; the worker "
			                     "waits for ALTER EXTENSION pg_diagnosis UPDATE",
			                     version, LIBRARY_EXTENSION_VERSION)));
		said_version = true;
		return ExtensionState::OtherVersion;
	}
	said_version = false;
	return ExtensionState::Ready;
}

/* Compiles every result schema into the C++ registry, in the current transaction. */
static void
LoadSchemas(void *arg)
{
	static SPIPlanPtr plan = NULL;

	if (SPI_execute_plan(KeptPlan(&plan, "SELECT version, schema::text FROM diagnosis._result_schemas()", 0, NULL),
	                     NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading diagnosis.result_schemas failed");
	for (uint64 i = 0; i < SPI_processed; i++) {
		char *version = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char *schema = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		/* A broken schema fails the runs that use it (VALIDATION_ERROR), not the worker. */
		if (!pgdiag::calls::SetSchema(version, schema))
			ereport(WARNING, (errmsg("pg_diagnosis: %s", pgdiag::cpp_guard_message)));
	}
}

void
pgdiag::LoadResultSchemas()
{
	(void) Work("pg_diagnosis: load result schemas", LoadSchemas, NULL);
}

/* ---------------------------------------------------------------- recovery */

typedef struct RecoverJob {
	int64 token;
	bool hand_back;
	int moved;
	bool running_left;
} RecoverJob;

static void
RecoverStatement(void *arg)
{
	static SPIPlanPtr plan = NULL;
	RecoverJob *job = (RecoverJob *) arg;
	Oid argtypes[4] = {INT8ARRAYOID, INT8OID, BOOLOID, INT4OID};
	int64 tokens[pgdiag::kMaxWorkers];
	Datum token_datums[pgdiag::kMaxWorkers];
	Datum values[4];
	int ntokens = pgdiag::LiveWorkerTokens(tokens, pgdiag::kMaxWorkers);
	bool isnull;

	for (int i = 0; i < ntokens; i++)
		token_datums[i] = Int64GetDatum(tokens[i]);
	values[0] = ArrayOf(INT8OID, token_datums, NULL, ntokens);
	values[1] = Int64GetDatum(job->token);
	values[2] = BoolGetDatum(job->hand_back);
	values[3] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(KeptPlan(&plan, "SELECT * FROM diagnosis._recover_runs($1, $2, $3, $4)", 4, argtypes), values,
	                     NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "recovering runs failed");
	job->moved = DatumGetInt32(ResultValue(0, 1, &isnull));
	job->running_left = DatumGetBool(ResultValue(0, 2, &isnull));
}

int
pgdiag::RecoverRuns(int64 token, bool hand_back, bool *running_left)
{
	RecoverJob job = {token, hand_back, 0, false};

	if (!Work(hand_back ? "pg_diagnosis: hand back runs" : "pg_diagnosis: recover runs", RecoverStatement, &job))
		job.running_left = true; /* locked out: look again on the next pass */
	if (running_left)
		*running_left = job.running_left;
	if (job.moved > 0) {
		ereport(LOG, (errmsg("pg_diagnosis: %s %d run(s)", hand_back ? "handed back" : "recovered", job.moved)));
		if (Shared())
			ConditionVariableBroadcast(&Shared()->run_finished);
	}
	return job.moved;
}

/* ---------------------------------------------------------------- finalize */

/* The attributes of diagnosis.finished_run, in order: FinishedRunDatum fills them by position. */
static const char *const kFinishedRunAttributes[] = {"id",
                                                     "attempt",
                                                     "outcome",
                                                     "error_code",
                                                     "error_message",
                                                     "error_details",
                                                     "context_pack",
                                                     "mcp_response",
                                                     "diagnosis",
                                                     "processing_ms",
                                                     "mcp_run_id",
                                                     "retry_delay_ms",
                                                     "refund_attempt",
                                                     "task_lost",
                                                     "ignored_server_requests"};
#define FINISHED_RUN_NATTS lengthof(kFinishedRunAttributes)

/* The rows of one finalize call. */
typedef struct FinalizeBatch {
	int n;
	pgdiag::calls::Finished *runs;
	int terminal;    /* result: runs that reached completed, failed or cancelled */
	char **deferred; /* result: ids of runs another transaction held locked, in the caller's context */
	int ndeferred;
} FinalizeBatch;

static FinalizeBatch *
NewBatch(int n)
{
	FinalizeBatch *b = (FinalizeBatch *) palloc0(sizeof(FinalizeBatch));
	b->runs = (pgdiag::calls::Finished *) palloc0(sizeof(pgdiag::calls::Finished) * Max(n, 1));
	return b;
}

static void
AddToBatch(FinalizeBatch *b, const pgdiag::calls::Finished *f)
{
	b->runs[b->n++] = *f;
}

static Datum
TextOrNull(const char *value, bool *isnull)
{
	*isnull = value == NULL;
	return value ? CStringGetTextDatum(value) : (Datum) 0;
}

/* A JSON document as jsonb; an answer that is not valid JSON errors here, in the batch's subtransaction. */
static Datum
JsonbOrNull(const char *value, bool *isnull)
{
	*isnull = value == NULL;
	return value ? DirectFunctionCall1(jsonb_in, CStringGetDatum(value)) : (Datum) 0;
}

static Datum
FinishedRunDatum(TupleDesc desc, const pgdiag::calls::Finished *f)
{
	Datum v[FINISHED_RUN_NATTS];
	bool n[FINISHED_RUN_NATTS] = {false};

	v[0] = UuidDatum(f->run_id);
	v[1] = Int32GetDatum(f->attempt);
	v[2] = CStringGetTextDatum(f->outcome);
	v[3] = TextOrNull(f->error_code, &n[3]);
	v[4] = TextOrNull(f->error_message, &n[4]);
	v[5] = JsonbOrNull(f->error_details_json, &n[5]);
	v[6] = JsonbOrNull(f->context_pack_json, &n[6]);
	v[7] = JsonbOrNull(f->mcp_response_json, &n[7]);
	v[8] = JsonbOrNull(f->diagnosis_json, &n[8]);
	v[9] = Int32GetDatum((int32) Min(f->processing_ms, (long) PG_INT32_MAX));
	v[10] = TextOrNull(f->mcp_run_id, &n[10]);
	v[11] = Int64GetDatum((int64) f->retry_delay_ms);
	v[12] = BoolGetDatum(f->refund_attempt);
	v[13] = BoolGetDatum(f->task_lost);
	v[14] = Int32GetDatum(f->ignored_server_requests);
	return HeapTupleGetDatum(heap_form_tuple(desc, v, n));
}

/* diagnosis.finished_run's row descriptor, checked against the attributes this file fills. */
static TupleDesc
FinishedRunDesc(Oid type)
{
	TupleDesc desc = lookup_rowtype_tupdesc_copy(type, -1);
	bool matches = desc->natts == (int) FINISHED_RUN_NATTS;

	for (int i = 0; matches && i < desc->natts; i++)
		matches = !TupleDescAttr(desc, i)->attisdropped &&
		          strcmp(NameStr(TupleDescAttr(desc, i)->attname), kFinishedRunAttributes[i]) == 0;
	if (!matches)
		elog(ERROR, "diagnosis.finished_run does not have the attributes this library writes");
	return desc;
}

static void
ExecuteFinalize(void *arg)
{
	static SPIPlanPtr plan = NULL;
	static Oid plan_type = InvalidOid;
	FinalizeBatch *b = (FinalizeBatch *) arg;
	Oid type = ExtensionTypeOid("finished_run");
	TupleDesc desc = FinishedRunDesc(type);
	Datum *rows = (Datum *) palloc(sizeof(Datum) * Max(b->n, 1));
	Oid argtypes[3] = {get_array_type(type), FLOAT8OID, INT4OID};
	Datum values[3];
	bool isnull;
	Datum deferred;

	/* The extension dropped and created again has a new type: prepare again. */
	if (plan && plan_type != type) {
		SPI_freeplan(plan);
		plan = NULL;
	}
	plan_type = type;
	for (int i = 0; i < b->n; i++)
		rows[i] = FinishedRunDatum(desc, &b->runs[i]);
	values[0] = ArrayOf(type, rows, NULL, b->n);
	values[1] = Float8GetDatum(pgdiag_min_confidence);
	values[2] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(KeptPlan(&plan, "SELECT * FROM diagnosis._finalize_runs($1, $2, $3)", 3, argtypes), values,
	                     NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "finalize statement failed");
	b->terminal = DatumGetInt32(ResultValue(0, 1, &isnull));
	deferred = ResultValue(0, 2, &isnull);
	b->ndeferred = 0;
	b->deferred = isnull ? NULL : CallerIds(deferred, &b->ndeferred);
}

/* Finalizes one run alone; if even that fails (say its answer is not storable as jsonb), fails the run
 * without the answer. Adds to *terminal; returns false when the row was locked (try again later). */
static bool
FinalizeOne(const pgdiag::calls::Finished *f, int *terminal)
{
	FinalizeBatch *b = NewBatch(1);
	pgdiag::calls::Finished *row = &b->runs[0];
	char *error;

	AddToBatch(b, f);
	error = InSubtransaction(ExecuteFinalize, b);
	if (error == NULL) {
		*terminal += b->terminal;
		return b->ndeferred == 0;
	}

	ereport(WARNING, (errmsg("pg_diagnosis: storing the result of run %s failed: %s", f->run_id, error)));
	row->outcome = "failed";
	row->error_code = "MCP_ERROR";
	row->error_message = psprintf("the MCP answer could not be stored: %s", error);
	row->error_details_json = NULL;
	row->mcp_response_json = NULL;
	row->diagnosis_json = NULL;
	row->mcp_run_id = NULL;
	error = InSubtransaction(ExecuteFinalize, b);
	if (error == NULL) {
		*terminal += b->terminal;
		return b->ndeferred == 0;
	}
	/* Left running: the lease puts it back (live workers recover expired leases). */
	ereport(WARNING, (errmsg("pg_diagnosis: failing run %s failed too: %s", f->run_id, error)));
	return true;
}

/* "CODE: message" of the last failed or retried run in the list, for worker_status().last_error. */
static void
NoteLastError(const pgdiag::calls::Finished *f, pgdiag::FinalizeResult *result)
{
	if (f->error_code)
		snprintf(result->last_error, sizeof(result->last_error), "%s: %s", f->error_code,
		         f->error_message ? f->error_message : "");
}

typedef struct FinalizeChunkJob {
	int start, n;
	int terminal;
	const char **keep; /* ids to finalize again later */
	int nkeep;
} FinalizeChunkJob;

static void
FinalizeChunkBody(void *arg)
{
	FinalizeChunkJob *job = (FinalizeChunkJob *) arg;
	FinalizeBatch *batch = NewBatch(job->n);

	for (int i = job->start; i < job->start + job->n; i++)
		AddToBatch(batch, pgdiag::calls::FinishedAt(i));
	if (InSubtransaction(ExecuteFinalize, batch) == NULL) {
		job->terminal += batch->terminal;
		for (int i = 0; i < batch->ndeferred; i++)
			job->keep[job->nkeep++] = batch->deferred[i];
	} else
		for (int i = job->start; i < job->start + job->n; i++)
			if (!FinalizeOne(pgdiag::calls::FinishedAt(i), &job->terminal))
				job->keep[job->nkeep++] = pgdiag::calls::FinishedAt(i)->run_id;
}

/* Finalizes finished runs [start, start + n) in one transaction; appends the ids of runs to try again later
 * (all of them when a lock was not available). */
static void
FinalizeChunk(int start, int n, pgdiag::FinalizeResult *result, const char **keep, int *nkeep)
{
	FinalizeChunkJob job = {start, n, 0, keep + *nkeep, 0};

	if (Work("pg_diagnosis: finalize runs", FinalizeChunkBody, &job)) {
		result->terminal += job.terminal;
		*nkeep += job.nkeep;
	} else
		for (int i = start; i < start + n; i++)
			keep[(*nkeep)++] = pgdiag::calls::FinishedAt(i)->run_id;
}

void
pgdiag::FinalizeFinishedRuns(FinalizeResult *result)
{
	int count = 0;
	long min_delay_ms = -1;
	const char **keep;
	int nkeep = 0;

	result->terminal = 0;
	result->settled = 0;
	result->next_retry = DT_NOEND;
	result->last_error[0] = '\0';
	if (!calls::CollectFinished(&count))
		elog(ERROR, "pg_diagnosis: collecting finished runs failed: %s", cpp_guard_message);
	if (count == 0)
		return;

	keep = (const char **) palloc(sizeof(char *) * count);
	for (int i = 0; i < count; i++) {
		const calls::Finished *f = calls::FinishedAt(i);
		NoteLastError(f, result);
		if (strcmp(f->outcome, RunStatusName(RunStatus::Queued)) == 0 &&
		    (min_delay_ms < 0 || f->retry_delay_ms < min_delay_ms))
			min_delay_ms = f->retry_delay_ms;
	}
	for (int start = 0; start < count; start += kStatementBatchMax)
		FinalizeChunk(start, Min(kStatementBatchMax, count - start), result, keep, &nkeep);
	result->settled = count - nkeep;
	if (!calls::ClearFinishedExcept(keep, nkeep))
		elog(ERROR, "pg_diagnosis: %s", cpp_guard_message);
	if (min_delay_ms >= 0)
		result->next_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), min_delay_ms);

	if (Shared())
		ConditionVariableBroadcast(&Shared()->run_finished);
}

/* ---------------------------------------------------------------- tasks and cancels */

typedef struct TasksJob {
	int count;
	char **keep; /* ids whose rows were locked */
	int nkeep;
} TasksJob;

static void
RecordTasksStatement(void *arg)
{
	static SPIPlanPtr plan = NULL;
	TasksJob *job = (TasksJob *) arg;
	Oid argtypes[4] = {UUIDARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID};
	Datum *ids = (Datum *) palloc(sizeof(Datum) * job->count);
	Datum *attempts = (Datum *) palloc(sizeof(Datum) * job->count);
	Datum *task_ids = (Datum *) palloc(sizeof(Datum) * job->count);
	Datum *ttls = (Datum *) palloc(sizeof(Datum) * job->count);
	Datum values[4];
	bool isnull;
	Datum locked;

	for (int i = 0; i < job->count; i++) {
		const pgdiag::calls::Task *t = pgdiag::calls::TaskAt(i);
		ids[i] = UuidDatum(t->run_id);
		attempts[i] = Int32GetDatum(t->attempt);
		task_ids[i] = CStringGetTextDatum(t->task_id);
		ttls[i] = Int64GetDatum((int64) t->ttl_ms);
	}
	values[0] = ArrayOf(UUIDOID, ids, NULL, job->count);
	values[1] = ArrayOf(INT4OID, attempts, NULL, job->count);
	values[2] = ArrayOf(TEXTOID, task_ids, NULL, job->count);
	values[3] = ArrayOf(INT8OID, ttls, NULL, job->count);
	if (SPI_execute_plan(KeptPlan(&plan, "SELECT diagnosis._record_tasks($1, $2, $3, $4)", 4, argtypes), values, NULL,
	                     false, 1) != SPI_OK_SELECT)
		elog(ERROR, "recording tasks failed");
	locked = ResultValue(0, 1, &isnull);
	job->keep = isnull ? NULL : CallerIds(locked, &job->nkeep);
}

void
pgdiag::RecordTasks()
{
	TasksJob job = {0, NULL, 0};

	if (!calls::CollectTasks(&job.count))
		elog(ERROR, "pg_diagnosis: collecting tasks failed: %s", cpp_guard_message);
	if (job.count == 0)
		return;
	/* Locked out: every task stays for the next pass. */
	if (!Work("pg_diagnosis: record tasks", RecordTasksStatement, &job))
		return;
	if (!calls::ClearTasksExcept(job.keep, job.nkeep))
		elog(ERROR, "pg_diagnosis: %s", cpp_guard_message);
}

typedef struct CancelsJob {
	int64 token;
	char **run_ids;
	int *attempts;
	int n;
} CancelsJob;

static void
RunsToCancelStatement(void *arg)
{
	static SPIPlanPtr plan = NULL;
	CancelsJob *job = (CancelsJob *) arg;
	Oid argtypes[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(job->token)};

	if (SPI_execute_plan(KeptPlan(&plan, "SELECT id, attempt FROM diagnosis._runs_to_cancel($1)", 1, argtypes), values,
	                     NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "looking for cancel requests failed");
	job->n = (int) SPI_processed;
	job->run_ids = (char **) MemoryContextAlloc(work_caller_context, sizeof(char *) * Max(job->n, 1));
	job->attempts = (int *) MemoryContextAlloc(work_caller_context, sizeof(int) * Max(job->n, 1));
	for (int i = 0; i < job->n; i++) {
		bool isnull;
		job->run_ids[i] = MemoryContextStrdup(work_caller_context, UuidText(ResultValue(i, 1, &isnull)));
		job->attempts[i] = DatumGetInt32(ResultValue(i, 2, &isnull));
	}
}

void
pgdiag::StopCancelledCalls(int64 token)
{
	CancelsJob job = {token, NULL, NULL, 0};

	if (!Work("pg_diagnosis: look for cancel requests", RunsToCancelStatement, &job))
		return;
	for (int i = 0; i < job.n; i++)
		if (!calls::Cancel(job.run_ids[i], job.attempts[i]))
			elog(ERROR, "pg_diagnosis: cancelling the call of run %s failed: %s", job.run_ids[i], cpp_guard_message);
}

/* ---------------------------------------------------------------- progress */

typedef struct ProgressJob {
	int start, n;
} ProgressJob;

/* Writes progress rows [start, start + n) in one call. */
static void
WriteProgressStatement(void *arg)
{
	static SPIPlanPtr plan = NULL;
	ProgressJob *job = (ProgressJob *) arg;
	Oid argtypes[4] = {UUIDARRAYOID, INT4ARRAYOID, FLOAT4ARRAYOID, TEXTARRAYOID};
	Datum *ids = (Datum *) palloc(sizeof(Datum) * job->n);
	Datum *attempts = (Datum *) palloc(sizeof(Datum) * job->n);
	Datum *fractions = (Datum *) palloc(sizeof(Datum) * job->n);
	Datum *messages = (Datum *) palloc(sizeof(Datum) * job->n);
	bool *message_nulls = (bool *) palloc(sizeof(bool) * job->n);
	Datum values[4];

	for (int i = 0; i < job->n; i++) {
		const pgdiag::calls::Progress *p = pgdiag::calls::ProgressAt(job->start + i);
		ids[i] = UuidDatum(p->run_id);
		attempts[i] = Int32GetDatum(p->attempt);
		fractions[i] = Float4GetDatum((float4) p->fraction);
		messages[i] = TextOrNull(p->message && p->message[0] ? p->message : NULL, &message_nulls[i]);
	}
	values[0] = ArrayOf(UUIDOID, ids, NULL, job->n);
	values[1] = ArrayOf(INT4OID, attempts, NULL, job->n);
	values[2] = ArrayOf(FLOAT4OID, fractions, NULL, job->n);
	values[3] = ArrayOf(TEXTOID, messages, message_nulls, job->n);
	if (SPI_execute_plan(KeptPlan(&plan, "SELECT diagnosis._write_progress($1, $2, $3, $4)", 4, argtypes), values, NULL,
	                     false, 1) != SPI_OK_SELECT)
		elog(ERROR, "writing progress failed");
}

void
pgdiag::WriteProgress()
{
	int count = 0;

	if (!calls::CollectProgress(&count))
		elog(ERROR, "pg_diagnosis: collecting progress failed: %s", cpp_guard_message);
	/* Best effort: a chunk locked out is skipped; the next report supersedes it. */
	for (int start = 0; start < count; start += kStatementBatchMax) {
		ProgressJob job = {start, Min(kStatementBatchMax, count - start)};
		(void) Work("pg_diagnosis: write progress", WriteProgressStatement, &job);
	}
	if (count > 0)
		calls::ClearProgress();
}

/* ---------------------------------------------------------------- claim */

using pgdiag::ClaimedRun;

/* The shipped pack function, as LookupPackFunction qualifies it. */
#define DEFAULT_PACK_FUNCTION "diagnosis.build_context_pack"

/* A claim's packs together may hold this many times diagnosis.max_context_pack_bytes; the runs after the one
 * that crosses it go back to the queue (their attempt given back) for the next claim, which follows at once. */
#define CLAIM_PACK_BUDGET_FACTOR 8

Size
pgdiag::PackBudget()
{
	return (Size) pgdiag_max_context_pack_bytes * CLAIM_PACK_BUDGET_FACTOR;
}

/* The context pack function, resolved once per claim: what to call and as whom. */
typedef struct PackFunction {
	char *qualified_name;
	Oid owner;
} PackFunction;

typedef struct PackJob {
	ClaimedRun *runs;
	int n;
	const PackFunction *fn;
	bool set_based; /* the default pack, one statement for the whole claim */
} PackJob;

typedef struct PackLookup {
	PackFunction *fn;
} PackLookup;

/* Resolves diagnosis.context_pack_function (or the default) to a plain function (uuid) returning jsonb. The
 * worker's search_path is pg_catalog, pg_temp: an unqualified name can only mean a built-in. */
static void
LookupPackFunction(void *arg)
{
	PackLookup *lookup = (PackLookup *) arg;
	const char *name = pgdiag_context_pack_function && pgdiag_context_pack_function[0] ? pgdiag_context_pack_function
	                                                                                   : DEFAULT_PACK_FUNCTION;
	Oid argtypes[1] = {UUIDOID};
	Oid fn = LookupFuncName(stringToQualifiedNameList(name), 1, argtypes, true);
	HeapTuple tuple;
	Form_pg_proc proc;

	if (!OidIsValid(fn))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FUNCTION),
		                errmsg("diagnosis.context_pack_function: function %s(uuid) does not exist", name)));
	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset || proc->prorettype != JSONBOID) {
		ReleaseSysCache(tuple);
		ereport(ERROR,
		        (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		         errmsg("diagnosis.context_pack_function: %s(uuid) must be a function returning one jsonb", name)));
	}
	lookup->fn->owner = proc->proowner;
	lookup->fn->qualified_name =
	    MemoryContextStrdup(work_caller_context,
	                        quote_qualified_identifier(get_namespace_name(proc->pronamespace), NameStr(proc->proname)));
	ReleaseSysCache(tuple);
	/* The shipped FHIR pack needs diagnosis.fhir_source too: a source that cannot work pauses like a missing
	 * function, instead of failing every run with CONTEXT_PACK_ERROR. Checked as the pack will run, as the
	 * function's owner (the worker's role may not even see the source's schema). */
	if (strcmp(lookup->fn->qualified_name, "diagnosis.fhir_context_pack") == 0) {
		Oid save_userid;
		int save_sec_context;

		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(lookup->fn->owner, save_sec_context | SECURITY_RESTRICTED_OPERATION);
		if (SPI_execute("SELECT diagnosis._fhir_source()", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "checking diagnosis.fhir_source failed");
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
}

/*
 * The pack statement of a custom function, one run per call, prepared once per function name (the plan cache
 * replans it when the function changes). Prepared like it runs, as the function's owner with search_path pinned.
 */
static SPIPlanPtr
FunctionPackPlan(const char *qualified_name)
{
	static SPIPlanPtr plan = NULL;
	static char *plan_name = NULL;
	Oid argtypes[1] = {UUIDOID};

	if (plan && strcmp(plan_name, qualified_name) != 0) {
		SPI_freeplan(plan);
		pfree(plan_name);
		plan = NULL;
	}
	if (plan == NULL) {
		(void) KeptPlan(&plan, psprintf("SELECT %s($1)", qualified_name), 1, argtypes);
		plan_name = MemoryContextStrdup(TopMemoryContext, qualified_name);
	}
	return plan;
}

/* Copies one built pack into run->pack with the run's inputs merged in, or says in run->pack_error why not: its
 * size is read from the datum's header (toast_raw_datum_size) before anything copies or detoasts it. */
static void
TakePack(ClaimedRun *run, Datum pack, bool isnull, Size *budget_left)
{
	Size size;
	Jsonb *built;
	Jsonb *merged;

	if (isnull) {
		run->pack_error = pstrdup("the context pack function returned NULL instead of a JSON object");
		return;
	}
	size = toast_raw_datum_size(pack) - VARHDRSZ;
	if (size > (Size) pgdiag_max_context_pack_bytes) {
		run->pack_error = psprintf("the context pack is %zu bytes, more than diagnosis.max_context_pack_bytes (%d)",
		                           size, pgdiag_max_context_pack_bytes);
		return;
	}
	if (size > *budget_left) {
		run->handed_back = true;
		return;
	}
	*budget_left -= size;
	built = DatumGetJsonbP(pack);
	if (!JB_ROOT_IS_OBJECT(built)) {
		run->pack_error = pstrdup("the context pack function returned something other than a JSON object");
		return;
	}
	merged = DatumGetJsonbP(
	    DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(built),
	                        DirectFunctionCall1(jsonb_in, CStringGetDatum(psprintf("{\"inputs\": %s}", run->inputs)))));
	run->pack = MemoryContextStrdup(work_caller_context, JsonbToCString(NULL, &merged->root, VARSIZE(merged)));
}

/*
 * Builds the packs of job->runs in one statement, as the pack function's owner under
 * SECURITY_RESTRICTED_OPERATION with search_path pinned (PostgreSQL runs index expressions during maintenance
 * the same way, vacuum.c), so the function has its owner's rights, not the worker's: no worker authority over
 * runs, artifacts or the audit log (diagnosis._is_worker() is false inside), and none of the lifecycle functions'.
 * The statement runs under diagnosis.context_pack_timeout_ms (the caller disarms it). An error leaves the
 * subtransaction to the caller, whose abort restores the user and the settings.
 */
static void
BuildPacks(void *arg)
{
	static SPIPlanPtr default_packs_plan = NULL;
	PackJob *job = (PackJob *) arg;
	Oid argtypes[1] = {UUIDARRAYOID};
	Datum values[1];
	Datum *patients = (Datum *) palloc(sizeof(Datum) * job->n);
	Oid save_userid;
	int save_sec_context;
	int save_nestlevel;
	int ret;

	for (int i = 0; i < job->n; i++)
		patients[i] = UUIDPGetDatum(&job->runs[i].patient);
	values[0] = job->set_based ? ArrayOf(UUIDOID, patients, NULL, job->n) : patients[0];

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(job->fn->owner, save_sec_context | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
	                         false);
	static const char *const planner_settings[] = {"enable_seqscan", "enable_bitmapscan"};
	for (const char *planner_setting : planner_settings)
		(void) set_config_option(planner_setting, GetConfigOptionResetString(planner_setting), PGC_USERSET,
		                         PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	enable_timeout_after(STATEMENT_TIMEOUT, pgdiag_context_pack_timeout_ms);
	if (job->set_based)
		ret = SPI_execute_plan(KeptPlan(&default_packs_plan,
		                                "SELECT pack, oversized_bytes FROM diagnosis._context_packs($1) ORDER BY ord",
		                                1, argtypes),
		                       values, NULL, false, 0);
	else
		ret = SPI_execute_plan(FunctionPackPlan(job->fn->qualified_name), values, NULL, false, 0);
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (ret != SPI_OK_SELECT || SPI_processed != (uint64) job->n)
		elog(ERROR, "building context packs failed");
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/* Takes the packs BuildPacks left in SPI_tuptable, in claim order, within the claim's byte budget. The default
 * packs' statement says in its second column which packs it did not build for their size. */
static void
TakePacks(PackJob *job, Size *budget_left)
{
	for (int i = 0; i < job->n; i++) {
		bool isnull;
		bool fits = true;
		Datum pack = ResultValue(i, 1, &isnull);

		if (job->set_based) {
			bool fits_null;
			Datum oversized = ResultValue(i, 2, &fits_null);
			fits = fits_null;
			if (!fits)
				job->runs[i].pack_error =
				    psprintf("the context pack is at least %lld bytes, more than diagnosis.max_context_pack_bytes (%d)",
				             (long long) DatumGetInt64(oversized), pgdiag_max_context_pack_bytes);
		}
		if (!fits)
			continue;
		if (*budget_left == 0 || job->runs[i].handed_back)
			job->runs[i].handed_back = true;
		else
			TakePack(&job->runs[i], pack, isnull, budget_left);
	}
}

/* Builds job's packs in a subtransaction; returns the error (and its transience) when the statement failed. */
static char *
BuildPacksSafely(PackJob *job, bool *transient, Size *budget_left)
{
	int sqlstate = 0;
	char *error = InSubtransaction(BuildPacks, job, true, &sqlstate);

	/* Whatever happened, no timeout may fire later in the claim, nor one that fired after the statement's last
	 * interrupt check cancel the claim's next statement. */
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (get_timeout_indicator(STATEMENT_TIMEOUT, true))
		QueryCancelPending = false;
	if (error == NULL) {
		TakePacks(job, budget_left);
		return NULL;
	}
	*transient = sqlstate == ERRCODE_QUERY_CANCELED || sqlstate == ERRCODE_LOCK_NOT_AVAILABLE;
	if (sqlstate == ERRCODE_QUERY_CANCELED)
		error = psprintf("building the context pack took longer than diagnosis.context_pack_timeout_ms (%d ms)",
		                 pgdiag_context_pack_timeout_ms);
	return error;
}

static bool
IsDefaultPack(const PackFunction *fn)
{
	return strcmp(fn->qualified_name, DEFAULT_PACK_FUNCTION) == 0;
}

/*
 * Builds every pack of a claim: the default one in one statement (when it fails, one run at a time finds which),
 * a custom function's one run at a time, each under its own timeout, so a pack that is slow or stuck costs the
 * claim at most diagnosis.context_pack_timeout_ms and fails only its own run.
 */
static void
BuildAllPacks(ClaimedRun *runs, int n, const PackFunction *fn)
{
	Size budget_left = pgdiag::PackBudget();
	bool transient = false;

	if (IsDefaultPack(fn)) {
		PackJob all = {runs, n, fn, true};
		if (BuildPacksSafely(&all, &transient, &budget_left) == NULL)
			return;
	}
	for (int i = 0; i < n; i++) {
		PackJob one = {&runs[i], 1, fn, false};
		if (budget_left == 0) {
			runs[i].handed_back = true;
			continue;
		}
		transient = false;
		runs[i].pack_error = BuildPacksSafely(&one, &transient, &budget_left);
		runs[i].pack_transient = transient;
	}
}

/* A pack error's message is the pack function's to choose (RAISE with megabytes): kept to this many bytes. */
#define MAX_PACK_ERROR_BYTES 1000

/* Pack errors were written in the transaction's memory: they are reported after it ends, cut to
 * MAX_PACK_ERROR_BYTES on a character boundary. */
static void
KeepPackErrors(ClaimedRun *runs, int n)
{
	for (int i = 0; i < n; i++)
		if (runs[i].pack_error) {
			int len = (int) strnlen(runs[i].pack_error, MAX_PACK_ERROR_BYTES + 1);
			runs[i].pack_error = MemoryContextStrdup(
			    work_caller_context,
			    pnstrdup(runs[i].pack_error, pg_mbcliplen(runs[i].pack_error, len, MAX_PACK_ERROR_BYTES)));
		}
}

typedef struct OnePack {
	ClaimedRun *run;
	Size *budget_left;
} OnePack;

static void
BuildPackOfRunBody(void *arg)
{
	OnePack *one = (OnePack *) arg;
	PackFunction fn;
	PackLookup lookup = {&fn};
	PackJob job = {one->run, 1, &fn, false};
	bool transient = false;

	/* The setting changed since the claim and cannot work now: the next claim pauses on it. */
	if (InSubtransaction(LookupPackFunction, &lookup) != NULL) {
		one->run->handed_back = true;
		return;
	}
	one->run->pack_error = BuildPacksSafely(&job, &transient, one->budget_left);
	one->run->pack_transient = transient;
	KeepPackErrors(one->run, 1);
}

void
pgdiag::BuildPackOfRun(ClaimedRun *run, Size *budget_left)
{
	OnePack one = {run, budget_left};

	if (*budget_left == 0 || !Work("pg_diagnosis: build a context pack", BuildPackOfRunBody, &one))
		run->handed_back = true;
}

void
pgdiag::DeliverClaimed(ClaimedRun *runs, int n)
{
	for (int i = 0; i < n; i++) {
		pgdiag::calls::Claimed c;
		bool ok = true;

		if (runs[i].handed_back)
			ok = pgdiag::calls::EndWithoutCall(runs[i].run_id, runs[i].attempt, runs[i].max_retries,
			                                   pgdiag::calls::NoCall::HandedBack, "");
		else if (runs[i].pack_error)
			ok = pgdiag::calls::EndWithoutCall(runs[i].run_id, runs[i].attempt, runs[i].max_retries,
			                                   runs[i].pack_transient ? pgdiag::calls::NoCall::Retry
			                                                          : pgdiag::calls::NoCall::Failed,
			                                   runs[i].pack_error);
		else if (runs[i].pack) {
			c.run_id = runs[i].run_id;
			c.patient_id = UuidText(UUIDPGetDatum(&runs[i].patient));
			c.schema_version = runs[i].schema_version;
			c.inputs_json = runs[i].inputs;
			c.context_pack_json = runs[i].pack;
			c.traceparent = runs[i].traceparent;
			c.resume_task_id = runs[i].resume_task_id;
			c.attempt = runs[i].attempt;
			c.max_retries = runs[i].max_retries;
			ok = pgdiag::calls::Submit(c);
		}
		if (!ok)
			elog(ERROR, "pg_diagnosis: handing run %s to the MCP client failed: %s", runs[i].run_id,
			     pgdiag::cpp_guard_message);
	}
}

static char *
CopyOrNull(MemoryContext context, const char *s)
{
	return s ? MemoryContextStrdup(context, s) : NULL;
}

void
pgdiag::CopyClaimedRun(MemoryContext context, const ClaimedRun *from, ClaimedRun *to)
{
	*to = *from;
	to->run_id = CopyOrNull(context, from->run_id);
	to->schema_version = CopyOrNull(context, from->schema_version);
	to->inputs = CopyOrNull(context, from->inputs);
	to->traceparent = CopyOrNull(context, from->traceparent);
	to->resume_task_id = CopyOrNull(context, from->resume_task_id);
	to->pack = CopyOrNull(context, from->pack);
	to->pack_error = CopyOrNull(context, from->pack_error);
}

/* Runs the claim; fills job->runs (in the worker's loop context) and returns how many. */
static int
ClaimStatement(int limit, int64 token, ClaimedRun **runs)
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[5] = {INT4OID, INT8OID, INT4OID, INT4OID, INT8OID};
	Datum values[5];
	int n;

	values[0] = Int32GetDatum(limit);
	values[1] = Int64GetDatum((int64) pgdiag_request_timeout_ms + LEASE_MARGIN_MS + pgdiag::packs::MaxPackMs());
	values[2] = Int32GetDatum(MyProcPid);
	values[3] = Int32GetDatum(pgdiag_max_inflight_per_organization);
	values[4] = Int64GetDatum(token);
	if (SPI_execute_plan(KeptPlan(&plan, "SELECT * FROM diagnosis._claim_runs($1, $2, $3, $4, $5)", 5, argtypes),
	                     values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "claiming runs failed");
	n = (int) SPI_processed;
	*runs = (ClaimedRun *) MemoryContextAllocZero(work_caller_context, sizeof(ClaimedRun) * Max(n, 1));
	for (int i = 0; i < n; i++) {
		HeapTuple tuple = SPI_tuptable->vals[i];
		TupleDesc desc = SPI_tuptable->tupdesc;
		ClaimedRun *run = &(*runs)[i];
		bool isnull;
		char *task;

		run->run_id = MemoryContextStrdup(work_caller_context, UuidText(ResultValue(i, 1, &isnull)));
		run->patient = *DatumGetUUIDP(ResultValue(i, 2, &isnull));
		run->organization = *DatumGetUUIDP(ResultValue(i, 9, &isnull));
		run->attempt = DatumGetInt32(ResultValue(i, 3, &isnull));
		run->max_retries = DatumGetInt32(ResultValue(i, 4, &isnull));
		run->schema_version = MemoryContextStrdup(work_caller_context, SPI_getvalue(tuple, desc, 5));
		run->inputs = MemoryContextStrdup(work_caller_context, SPI_getvalue(tuple, desc, 6));
		run->traceparent = MemoryContextStrdup(work_caller_context, SPI_getvalue(tuple, desc, 7));
		task = SPI_getvalue(tuple, desc, 8);
		run->resume_task_id = task ? MemoryContextStrdup(work_caller_context, task) : NULL;
	}
	return n;
}

/* The earliest run_after of a queued run, or DT_NOEND. */
static TimestampTz
NextDue(void)
{
	static SPIPlanPtr plan = NULL;
	bool isnull;
	Datum d;

	if (SPI_execute_plan(KeptPlan(&plan, "SELECT diagnosis._next_due()", 0, NULL), NULL, NULL, false, 1) !=
	    SPI_OK_SELECT)
		elog(ERROR, "reading the next due run failed");
	d = ResultValue(0, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

typedef struct ClaimJob {
	int limit;
	int64 token;
	ClaimedRun *runs;
	int n;
	bool off_loop; /* a pack function others own: its packs are built by pack builders */
	TimestampTz next_due;
	char *config_error;
} ClaimJob;

static void
ClaimBody(void *arg)
{
	ClaimJob *job = (ClaimJob *) arg;
	PackFunction fn;
	PackLookup lookup = {&fn};
	char *error;

	/* A setting that cannot work pauses claiming; it never fails the backlog run by run. */
	error = InSubtransaction(LookupPackFunction, &lookup);
	if (error) {
		job->config_error = MemoryContextStrdup(work_caller_context, error);
		return;
	}
	job->n = ClaimStatement(job->limit, job->token, &job->runs);
	/* A claim that got runs is followed by another at once (ClaimStep); only an empty one needs the time. */
	if (job->n == 0) {
		job->next_due = NextDue();
		return;
	}
	/* Unknown schema versions may have been added since the worker started: read them in this transaction. */
	for (int i = 0; i < job->n; i++)
		if (!pgdiag::calls::HasSchema(job->runs[i].schema_version)) {
			LoadSchemas(NULL);
			break;
		}
	job->off_loop = !IsDefaultPack(&fn);
	if (job->off_loop)
		return;
	BuildAllPacks(job->runs, job->n, &fn);
	KeepPackErrors(job->runs, job->n);
}

void
pgdiag::ClaimRuns(int limit, int64 token, ClaimResult *result)
{
	ClaimJob job = {Min(limit, kStatementBatchMax), token, NULL, 0, false, DT_NOEND, NULL};

	result->claimed = 0;
	result->next_due = DT_NOEND;
	result->config_error = NULL;
	result->awaiting = NULL;
	result->n_awaiting = 0;
	if (!Work("pg_diagnosis: claim runs", ClaimBody, &job)) {
		/* Locked out: nothing was claimed; look again on the next pass. */
		result->next_due = GetCurrentTimestamp();
		return;
	}
	result->config_error = job.config_error;
	result->next_due = job.next_due;
	DeliverClaimed(job.runs, job.n);
	if (job.off_loop) {
		result->awaiting = job.runs;
		result->n_awaiting = job.n;
	}
	result->claimed = job.n;
}
