/*-------------------------------------------------------------------------
 * worker_store.cpp
 *		The worker's SQL: claim, context packs, finalize, progress and recovery.
 *
 * PostgreSQL regime throughout: SPI, palloc, PG_TRY, and the C++ side reached only through the plain
 * functions of worker_calls.hpp. Every unit of work is a short transaction with the full bracket of
 * worker_spi.c. Set-based statements do the work of a whole batch at once; when one fails, the batch is
 * retried one run per subtransaction, so one run's failure never loses another's result.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker.hpp"
#include "pg_diagnosis/pg/worker_store.hpp"
#include "pg_diagnosis/pg/cpp_guard.hpp"
#include "pg_diagnosis/worker_calls.hpp"

extern "C" {
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
}

/* Margin of the lease beyond the longest a call may take; the lease is only the backstop of exact recovery. */
#define LEASE_MARGIN_MS 60000

/* ---------------------------------------------------------------- helpers */

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

/* A text[] datum; NULL elements for NULL pointers. */
static Datum
TextArray(const char *const *items, int n)
{
	Datum *datums = (Datum *) palloc(sizeof(Datum) * Max(n, 1));
	bool *nulls = (bool *) palloc(sizeof(bool) * Max(n, 1));
	int dims[1] = {n};
	int lbs[1] = {1};

	for (int i = 0; i < n; i++) {
		nulls[i] = items[i] == NULL;
		datums[i] = items[i] ? CStringGetTextDatum(items[i]) : (Datum) 0;
	}
	return PointerGetDatum(construct_md_array(datums, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/* The elements of a text[] datum as C strings in the worker's loop context (they outlive SPI_finish). */
static char **
CallerStrings(Datum array, int *n)
{
	Datum *elems;
	char **strings;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, n);
	strings = (char **) MemoryContextAlloc(work_caller_context, sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		strings[i] = MemoryContextStrdup(work_caller_context, TextDatumGetCString(elems[i]));
	return strings;
}

static const char *
IntText(long value)
{
	return psprintf("%ld", value);
}

/* Prepares a statement once per process (SPI_prepare_cursor options); plancache replans it when the tables
 * change. */
static SPIPlanPtr
PreparedPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes, int options)
{
	if (*cache == NULL) {
		SPIPlanPtr plan = SPI_prepare_cursor(sql, nargs, argtypes, options);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for pg_diagnosis worker statement: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*cache = plan;
	}
	return *cache;
}

static SPIPlanPtr
KeptPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return PreparedPlan(cache, sql, nargs, argtypes, 0);
}

/*
 * The statements of every claim and every finished call, held to their generic plan: each of them is written
 * so that every probe is an index or TID scan whatever the parameters and the table's size, and a custom plan
 * (which the plan cache keeps choosing when the generic one's estimates look dearer) would plan the claim's
 * dozen CTEs again at every claim.
 */
static SPIPlanPtr
GenericPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return PreparedPlan(cache, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/*
 * Runs `body(arg)` in a subtransaction (the pattern of plpgsql's exception blocks). Returns NULL on success,
 * or the error message (palloc'd in the caller's context) after rolling the subtransaction back.
 */
/* The SQLSTATE of the last error InSubtransaction caught. */
static int subtransaction_sqlerrcode = 0;

static char *
InSubtransaction(void (*body)(void *), void *arg)
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
		message = pstrdup(edata->message ? edata->message : "unknown error");
		subtransaction_sqlerrcode = edata->sqlerrcode;
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return message;
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

void
pgdiag::LoadResultSchemas()
{
	BeginWork("pg_diagnosis: load result schemas");
	if (SPI_execute("SELECT version, schema::text FROM diagnosis.result_schemas", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading diagnosis.result_schemas failed");
	for (uint64 i = 0; i < SPI_processed; i++) {
		char *version = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char *schema = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		/* A broken schema fails the runs that use it (VALIDATION_ERROR), not the worker. */
		if (!pgdiag::calls::SetSchema(version, schema))
			ereport(WARNING, (errmsg("pg_diagnosis: %s", pgdiag::cpp_guard_message)));
	}
	EndWork();
}

/* ---------------------------------------------------------------- recovery */

/*
 * Runs held by a worker that is gone (its token is not a live worker's), or whose lease expired, are put back
 * (RECOVERED) or, with their attempts spent, failed; a run whose cancel was requested is cancelled instead. A
 * hand-back ($3: this worker's own runs at a clean shutdown) gives the attempt back: the run did not fail.
 */
static const char *recover_sql =
    "WITH orphans AS ("
    "  SELECT id, worker_pid AS old_pid, attempt AS old_attempt, cancel_requested_by,"
    "         CASE WHEN $3 THEN 'worker shut down'"
    "              WHEN worker_token = ANY($1) THEN 'lease expired' ELSE 'worker exited' END AS reason,"
    "         CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'"
    "              WHEN NOT $3 AND attempt >= 1 + max_retries THEN 'failed' ELSE 'queued' END AS new_status"
    "  FROM diagnosis.runs"
    "  WHERE status = 'running'"
    "    AND CASE WHEN $3 THEN worker_token = $2"
    "             ELSE worker_token IS NULL OR worker_token <> ALL($1) OR lease_expires_at < now() END"
    "  FOR NO KEY UPDATE SKIP LOCKED"
    "), moved AS ("
    "  UPDATE diagnosis.runs r SET"
    "    status = o.new_status,"
    "    attempt = CASE WHEN $3 AND o.new_status = 'queued' THEN r.attempt - 1 ELSE r.attempt END,"
    "    completed_at = CASE WHEN o.new_status <> 'queued' THEN now() END,"
    "    error_code = CASE WHEN o.new_status = 'failed' THEN 'UNKNOWN_ERROR' ELSE r.error_code END,"
    "    error_message = CASE WHEN o.new_status = 'failed'"
    "                    THEN 'the run was interrupted (' || o.reason || ') and its attempts are spent'"
    "                    ELSE r.error_message END,"
    "    run_after = now(), worker_pid = NULL, worker_token = NULL, lease_expires_at = NULL, updated_at = now()"
    "  FROM orphans o WHERE r.id = o.id"
    "  RETURNING r.id, r.organization_id, o.old_attempt, o.new_status, o.old_pid, o.reason, o.cancel_requested_by"
    ")"
    "INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                 worker_pid, details)"
    "SELECT id, organization_id,"
    "       CASE new_status WHEN 'failed' THEN 'FAILED' WHEN 'cancelled' THEN 'CANCELLED' ELSE 'RECOVERED' END,"
    "       'running', new_status, old_attempt,"
    "       CASE WHEN new_status = 'cancelled' THEN cancel_requested_by ELSE current_user END, $4,"
    "       jsonb_build_object('reason', reason, 'previous_worker_pid', old_pid,"
    "                          'attempt_kept', $3 AND new_status = 'queued')"
    "FROM moved";

static const char *running_left_sql = "SELECT EXISTS (SELECT 1 FROM diagnosis.runs WHERE status = 'running')";

int
pgdiag::RecoverRuns(bool hand_back, bool *running_left)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr left_plan = NULL;
	Oid argtypes[4] = {INT8ARRAYOID, INT8OID, BOOLOID, INT4OID};
	int64 tokens[kMaxWorkers];
	Datum token_datums[kMaxWorkers];
	Datum values[4];
	int ntokens = LiveWorkerTokens(tokens, kMaxWorkers);
	int moved;

	for (int i = 0; i < ntokens; i++)
		token_datums[i] = Int64GetDatum(tokens[i]);
	BeginWork(hand_back ? "pg_diagnosis: hand back runs" : "pg_diagnosis: recover runs");
	values[0] = PointerGetDatum(
	    construct_array(token_datums, ntokens, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = Int64GetDatum(MyWorkerToken());
	values[2] = BoolGetDatum(hand_back);
	values[3] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(KeptPlan(&plan, recover_sql, 4, argtypes), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "recovering runs failed");
	moved = (int) SPI_processed;
	if (running_left) {
		bool isnull;
		if (SPI_execute_plan(KeptPlan(&left_plan, running_left_sql, 0, NULL), NULL, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "looking for running runs failed");
		*running_left = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	EndWork();
	if (moved > 0) {
		ereport(LOG, (errmsg("pg_diagnosis: %s %d run(s)", hand_back ? "handed back" : "recovered", moved)));
		if (Shared())
			ConditionVariableBroadcast(&Shared()->run_finished);
	}
	return moved;
}

/* ---------------------------------------------------------------- finalize */

/*
 * One statement finalizes a batch. Rows another transaction holds locked (a cancel_diagnosis still open) are
 * skipped, never waited for, and come back in `deferred` to be tried again; a run whose cancel was requested
 * ends cancelled whatever the call's outcome (an answer that still arrived is kept as its mcp_response only).
 * The locking and updating joins use `slim`, the input without its three documents: the executor copies every
 * joined row whole (for rechecks under concurrent updates), and copying the documents cost more than writing them.
 * Each run is looked up by its id alone (LIMIT 1 keeps the status test outside the lookup): with `status =
 * 'running'` inside, a plan made on a small table probed runs_running_idx, which holds an entry for every run that
 * ever ran until vacuum, instead of the primary key.
 */
static const char *finalize_sql =
    "WITH input AS ("
    "  SELECT i.id::uuid AS id, i.attempt::int AS attempt, i.outcome, i.error_code, i.error_message,"
    "         i.error_details::jsonb AS error_details, i.context_pack::jsonb AS context_pack,"
    "         i.mcp_response::jsonb AS mcp_response, i.diagnosis::jsonb AS diagnosis,"
    "         i.processing_ms::int AS processing_ms, i.mcp_run_id, i.retry_delay_ms::bigint AS retry_delay_ms,"
    "         i.refund::bool AS refund, i.task_lost::bool AS task_lost"
    "  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    "              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $15::text[], $16::text[])"
    "       AS i(id, attempt, outcome, error_code, error_message, error_details, context_pack, mcp_response,"
    "            diagnosis, processing_ms, mcp_run_id, retry_delay_ms, refund, task_lost)"
    "), slim AS MATERIALIZED ("
    "  SELECT id, attempt, outcome, error_code, error_message, error_details, processing_ms, mcp_run_id,"
    "         retry_delay_ms, refund, task_lost, mcp_response IS NOT NULL AS answered FROM input"
    "), target AS ("
    "  SELECT r.id, r.row_id, r.cancel_requested_at, r.cancel_requested_by,"
    "         CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE i.outcome END AS outcome"
    "  FROM slim i CROSS JOIN LATERAL (SELECT r.id, r.ctid AS row_id, r.status, r.attempt, r.cancel_requested_at,"
    "                                          r.cancel_requested_by"
    "                                   FROM diagnosis.runs r WHERE r.id = i.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED) "
    "r"
    "  WHERE r.status = 'running' AND r.attempt = i.attempt"
    "), upd AS ("
    "  UPDATE diagnosis.runs r SET"
    "    status = t.outcome,"
    "    attempt = CASE WHEN t.outcome = 'queued' AND i.refund THEN r.attempt - 1 ELSE r.attempt END,"
    "    completed_at = CASE WHEN t.outcome = 'queued' THEN NULL ELSE now() END,"
    "    run_after = CASE WHEN t.outcome = 'queued' THEN now() + i.retry_delay_ms * interval '1 millisecond'"
    "                ELSE r.run_after END,"
    "    worker_pid = CASE WHEN t.outcome = 'queued' THEN NULL ELSE r.worker_pid END,"
    "    worker_token = CASE WHEN t.outcome = 'queued' THEN NULL ELSE r.worker_token END,"
    "    lease_expires_at = NULL,"
    "    error_code = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_code END,"
    "    error_message = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_message END,"
    "    error_details = CASE WHEN t.outcome = 'cancelled' THEN NULL ELSE i.error_details END,"
    "    mcp_run_id = coalesce(i.mcp_run_id, r.mcp_run_id),"
    "    mcp_task_id = CASE WHEN i.task_lost THEN NULL ELSE r.mcp_task_id END,"
    "    mcp_task_expires_at = CASE WHEN i.task_lost THEN NULL ELSE r.mcp_task_expires_at END,"
    "    processing_time_ms = i.processing_ms,"
    "    progress = CASE WHEN t.outcome = 'completed' THEN 1 ELSE r.progress END,"
    "    updated_at = now()"
    "  FROM slim i JOIN target t ON t.id = i.id"
    "  WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM target)) AND r.id = t.id"
    "  RETURNING r.id, r.patient_id, r.organization_id, i.attempt, t.outcome, i.error_code, i.retry_delay_ms,"
    "            i.refund, i.answered, t.cancel_requested_at, t.cancel_requested_by"
    "), art AS ("
    "  INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data,"
    "         content_sha256, risk_level, confidence_score, primary_findings, recommendations_count,"
    "         needs_review, sequence_order)"
    "  SELECT u.id, u.patient_id, u.organization_id, a.artifact_type, a.data,"
    "         encode(sha256(convert_to(a.data::text, 'UTF8')), 'hex'),"
    "         CASE WHEN a.seq = 3 THEN a.data->>'risk_level' END,"
    "         CASE WHEN a.seq = 3 THEN (a.data->>'confidence_score')::real END,"
    "         CASE WHEN a.seq = 3 THEN ARRAY(SELECT jsonb_array_elements_text(a.data->'primary_findings')) END,"
    "         CASE WHEN a.seq = 3 THEN jsonb_array_length(a.data->'recommendations') END,"
    "         CASE WHEN a.seq = 3 THEN (a.data->>'confidence_score')::float8 < $13 END,"
    "         a.seq"
    "  FROM upd u JOIN input i ON i.id = u.id"
    "       CROSS JOIN LATERAL (VALUES ('context_pack', i.context_pack, 1), ('mcp_response', i.mcp_response, 2),"
    "                                  ('diagnosis_json', i.diagnosis, 3)) AS a(artifact_type, data, seq)"
    "  WHERE u.outcome <> 'queued' AND a.data IS NOT NULL AND NOT (u.outcome = 'cancelled' AND a.seq = 3)"
    "), aud AS ("
    "  INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                   worker_pid, details)"
    "  SELECT u.id, u.organization_id,"
    "         CASE u.outcome WHEN 'completed' THEN 'COMPLETED' WHEN 'failed' THEN 'FAILED'"
    "                        WHEN 'cancelled' THEN 'CANCELLED' ELSE 'RETRY_SCHEDULED' END,"
    "         'running', u.outcome, u.attempt,"
    "         CASE WHEN u.outcome = 'cancelled' THEN u.cancel_requested_by ELSE current_user END, $14,"
    "         jsonb_strip_nulls(jsonb_build_object("
    "             'error_code', CASE WHEN u.outcome <> 'cancelled' THEN u.error_code END,"
    "             'retry_delay_ms', CASE WHEN u.outcome = 'queued' THEN u.retry_delay_ms END,"
    "             'attempt_kept', CASE WHEN u.outcome = 'queued' AND u.refund THEN true END,"
    "             'cancel_requested_at', u.cancel_requested_at,"
    "             'answer_arrived', CASE WHEN u.outcome = 'cancelled' THEN u.answered END))"
    "  FROM upd u"
    ")"
    "SELECT (SELECT count(*) FROM upd WHERE outcome <> 'queued'),"
    "       (SELECT array_agg(i.id::text) FROM slim i"
    "         WHERE i.id NOT IN (SELECT id FROM target)"
    "           AND EXISTS (SELECT 1 FROM (SELECT r.status, r.attempt FROM diagnosis.runs r WHERE r.id = i.id LIMIT 1) "
    "r"
    "                        WHERE r.status = 'running' AND r.attempt = i.attempt))";

/* The rows of one finalize statement, as parallel arrays of C strings. */
typedef struct FinalizeBatch {
	int n;
	const char **id, **attempt, **outcome, **error_code, **error_message, **error_details, **context_pack,
	    **mcp_response, **diagnosis, **processing_ms, **mcp_run_id, **retry_delay_ms;
	const char **refund, **task_lost;
	int terminal;    /* result: runs that reached completed, failed or cancelled */
	char **deferred; /* result: ids of runs another transaction held locked, in the caller's context */
	int ndeferred;
} FinalizeBatch;

static FinalizeBatch *
NewBatch(int n)
{
	FinalizeBatch *b = (FinalizeBatch *) palloc0(sizeof(FinalizeBatch));
	b->n = 0;
#define ALLOC_COLUMN(col) b->col = (const char **) palloc0(sizeof(char *) * Max(n, 1))
	ALLOC_COLUMN(id);
	ALLOC_COLUMN(attempt);
	ALLOC_COLUMN(outcome);
	ALLOC_COLUMN(error_code);
	ALLOC_COLUMN(error_message);
	ALLOC_COLUMN(error_details);
	ALLOC_COLUMN(context_pack);
	ALLOC_COLUMN(mcp_response);
	ALLOC_COLUMN(diagnosis);
	ALLOC_COLUMN(processing_ms);
	ALLOC_COLUMN(mcp_run_id);
	ALLOC_COLUMN(retry_delay_ms);
	ALLOC_COLUMN(refund);
	ALLOC_COLUMN(task_lost);
#undef ALLOC_COLUMN
	return b;
}

static void
AddToBatch(FinalizeBatch *b, const pgdiag::calls::Finished *f)
{
	int i = b->n++;
	b->id[i] = f->run_id;
	b->attempt[i] = IntText(f->attempt);
	b->outcome[i] = f->outcome;
	b->error_code[i] = f->error_code;
	b->error_message[i] = f->error_message;
	b->error_details[i] = f->error_details_json;
	b->context_pack[i] = f->context_pack_json;
	b->mcp_response[i] = f->mcp_response_json;
	b->diagnosis[i] = f->diagnosis_json;
	b->processing_ms[i] = IntText(f->processing_ms);
	b->mcp_run_id[i] = f->mcp_run_id;
	b->retry_delay_ms[i] = IntText(f->retry_delay_ms);
	b->refund[i] = f->refund_attempt ? "true" : "false";
	b->task_lost[i] = f->task_lost ? "true" : "false";
}

static void
ExecuteFinalize(void *arg)
{
	static SPIPlanPtr plan = NULL;
	FinalizeBatch *b = (FinalizeBatch *) arg;
	Oid argtypes[16];
	Datum values[16];
	bool isnull;

	for (int i = 0; i < 16; i++)
		argtypes[i] = TEXTARRAYOID;
	argtypes[12] = FLOAT8OID;
	argtypes[13] = INT4OID;
	values[0] = TextArray(b->id, b->n);
	values[1] = TextArray(b->attempt, b->n);
	values[2] = TextArray(b->outcome, b->n);
	values[3] = TextArray(b->error_code, b->n);
	values[4] = TextArray(b->error_message, b->n);
	values[5] = TextArray(b->error_details, b->n);
	values[6] = TextArray(b->context_pack, b->n);
	values[7] = TextArray(b->mcp_response, b->n);
	values[8] = TextArray(b->diagnosis, b->n);
	values[9] = TextArray(b->processing_ms, b->n);
	values[10] = TextArray(b->mcp_run_id, b->n);
	values[11] = TextArray(b->retry_delay_ms, b->n);
	values[12] = Float8GetDatum(pgdiag_min_confidence);
	values[13] = Int32GetDatum(MyProcPid);
	values[14] = TextArray(b->refund, b->n);
	values[15] = TextArray(b->task_lost, b->n);
	if (SPI_execute_plan(GenericPlan(&plan, finalize_sql, 16, argtypes), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "finalize statement failed");
	{
		Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		b->terminal = isnull ? 0 : (int) DatumGetInt64(d);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		b->deferred = isnull ? NULL : CallerStrings(d, &b->ndeferred);
		if (isnull)
			b->ndeferred = 0;
	}
}

/* Finalizes one run alone; if even that fails (say its answer is not storable as jsonb), fails the run
 * without the answer. Adds to *terminal; returns false when the row was locked (try again later). */
static bool
FinalizeOne(const pgdiag::calls::Finished *f, int *terminal)
{
	FinalizeBatch *b = NewBatch(1);
	char *error;

	AddToBatch(b, f);
	error = InSubtransaction(ExecuteFinalize, b);
	if (error == NULL) {
		*terminal += b->terminal;
		return b->ndeferred == 0;
	}
	/* A lock someone holds past lock_timeout (#25): not the answer's fault; store it on a later pass. */
	if (subtransaction_sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE)
		return false;

	ereport(WARNING, (errmsg("pg_diagnosis: storing the result of run %s failed: %s", f->run_id, error)));
	b->outcome[0] = "failed";
	b->error_code[0] = "MCP_ERROR";
	b->error_message[0] = psprintf("the MCP answer could not be stored: %s", error);
	b->error_details[0] = NULL;
	b->mcp_response[0] = NULL;
	b->diagnosis[0] = NULL;
	b->mcp_run_id[0] = NULL;
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

/* Finalizes finished runs [start, start + n) in one transaction; appends the ids of runs to try again later. */
static void
FinalizeChunk(int start, int n, pgdiag::FinalizeResult *result, const char **keep, int *nkeep)
{
	FinalizeBatch *batch = NewBatch(n);
	char *error;

	for (int i = start; i < start + n; i++)
		AddToBatch(batch, pgdiag::calls::FinishedAt(i));
	BeginWork("pg_diagnosis: finalize runs");
	error = InSubtransaction(ExecuteFinalize, batch);
	if (error == NULL) {
		result->terminal += batch->terminal;
		for (int i = 0; i < batch->ndeferred; i++)
			keep[(*nkeep)++] = batch->deferred[i];
	} else
		for (int i = start; i < start + n; i++)
			if (!FinalizeOne(pgdiag::calls::FinishedAt(i), &result->terminal))
				keep[(*nkeep)++] = pgdiag::calls::FinishedAt(i)->run_id;
	EndWork();
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
		if (strcmp(f->outcome, "queued") == 0 && (min_delay_ms < 0 || f->retry_delay_ms < min_delay_ms))
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

/*
 * Commits the tasks the server created, in the runs' own rows, so a recovered run polls its task instead of
 * calling the tool again. Guarded like finalize (running, same attempt); a row another transaction holds locked
 * is skipped and written on a later pass.
 */
static const char *tasks_sql =
    "WITH t AS (SELECT id::uuid AS id, attempt::int AS attempt, task_id, ttl_ms::bigint AS ttl_ms"
    "             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(id, attempt, task_id, ttl_ms)),"
    " target AS (SELECT r.id FROM diagnosis.runs r JOIN t ON r.id = t.id AND r.status = 'running'"
    "                   AND r.attempt = t.attempt FOR NO KEY UPDATE OF r SKIP LOCKED),"
    " upd AS (UPDATE diagnosis.runs r SET mcp_task_id = t.task_id,"
    "                mcp_task_expires_at = CASE WHEN t.ttl_ms >= 0 THEN now() + t.ttl_ms * interval '1 millisecond' END"
    "           FROM t JOIN target USING (id) WHERE r.id = t.id RETURNING r.id)"
    "SELECT array_agg(t.id::text) FROM t JOIN diagnosis.runs r ON r.id = t.id AND r.status = 'running'"
    " AND r.attempt = t.attempt WHERE t.id NOT IN (SELECT id FROM target)";

void
pgdiag::RecordTasks()
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[4] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum values[4];
	const char **ids, **attempts, **task_ids, **ttls;
	char **keep;
	int nkeep = 0;
	int count = 0;
	bool isnull;
	Datum locked;

	if (!calls::CollectTasks(&count))
		elog(ERROR, "pg_diagnosis: collecting tasks failed: %s", cpp_guard_message);
	if (count == 0)
		return;
	ids = (const char **) palloc(sizeof(char *) * count);
	attempts = (const char **) palloc(sizeof(char *) * count);
	task_ids = (const char **) palloc(sizeof(char *) * count);
	ttls = (const char **) palloc(sizeof(char *) * count);
	for (int i = 0; i < count; i++) {
		const calls::Task *t = calls::TaskAt(i);
		ids[i] = t->run_id;
		attempts[i] = IntText(t->attempt);
		task_ids[i] = t->task_id;
		ttls[i] = psprintf("%lld", t->ttl_ms);
	}
	BeginWork("pg_diagnosis: record tasks");
	values[0] = TextArray(ids, count);
	values[1] = TextArray(attempts, count);
	values[2] = TextArray(task_ids, count);
	values[3] = TextArray(ttls, count);
	if (SPI_execute_plan(KeptPlan(&plan, tasks_sql, 4, argtypes), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "recording tasks failed");
	locked = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	keep = isnull ? NULL : CallerStrings(locked, &nkeep);
	EndWork();
	if (!calls::ClearTasksExcept(keep, nkeep))
		elog(ERROR, "pg_diagnosis: %s", cpp_guard_message);
}

/* This worker's runs whose cancel was requested: their calls are stopped (each once; the outcome follows). */
static const char *cancels_sql = "SELECT id::text, attempt FROM diagnosis.runs"
                                 " WHERE status = 'running' AND worker_token = $1 AND cancel_requested_at IS NOT NULL";

void
pgdiag::StopCancelledCalls()
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[1] = {INT8OID};
	Datum values[1];
	char **run_ids;
	int *attempts;
	int n;

	BeginWork("pg_diagnosis: look for cancel requests");
	values[0] = Int64GetDatum(MyWorkerToken());
	if (SPI_execute_plan(KeptPlan(&plan, cancels_sql, 1, argtypes), values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "looking for cancel requests failed");
	n = (int) SPI_processed;
	run_ids = (char **) MemoryContextAlloc(work_caller_context, sizeof(char *) * Max(n, 1));
	attempts = (int *) MemoryContextAlloc(work_caller_context, sizeof(int) * Max(n, 1));
	for (int i = 0; i < n; i++) {
		bool isnull;
		run_ids[i] =
		    MemoryContextStrdup(work_caller_context, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		attempts[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	EndWork();
	for (int i = 0; i < n; i++)
		if (!calls::Cancel(run_ids[i], attempts[i]))
			elog(ERROR, "pg_diagnosis: cancelling the call of run %s failed: %s", run_ids[i], cpp_guard_message);
}

/* ---------------------------------------------------------------- progress */

/* Best effort: a row another transaction holds locked skips this report (a later one supersedes it). */
static const char *progress_sql =
    "WITH i AS (SELECT id::uuid AS id, attempt::int AS attempt, fraction::real AS fraction, message"
    "             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS i(id, attempt, fraction, message)),"
    " target AS (SELECT r.id, r.row_id FROM i CROSS JOIN LATERAL ("
    "              SELECT r.id, r.ctid AS row_id, r.status, r.attempt, r.progress FROM diagnosis.runs r"
    "               WHERE r.id = i.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED) r"
    "            WHERE r.status = 'running' AND r.attempt = i.attempt"
    "              AND (r.progress IS NULL OR r.progress <= i.fraction))"
    "UPDATE diagnosis.runs r SET progress = i.fraction, progress_message = i.message, updated_at = now()"
    "  FROM i JOIN target t ON t.id = i.id"
    " WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM target)) AND r.id = t.id";

/* Writes progress rows [start, start + n) in one transaction. */
static void
WriteProgressChunk(int start, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[4] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum values[4];
	const char **ids = (const char **) palloc(sizeof(char *) * n);
	const char **attempts = (const char **) palloc(sizeof(char *) * n);
	const char **fractions = (const char **) palloc(sizeof(char *) * n);
	const char **messages = (const char **) palloc(sizeof(char *) * n);

	for (int i = 0; i < n; i++) {
		const pgdiag::calls::Progress *p = pgdiag::calls::ProgressAt(start + i);
		ids[i] = p->run_id;
		attempts[i] = IntText(p->attempt);
		fractions[i] = psprintf("%.6f", p->fraction);
		messages[i] = p->message && p->message[0] ? p->message : NULL;
	}
	BeginWork("pg_diagnosis: write progress");
	values[0] = TextArray(ids, n);
	values[1] = TextArray(attempts, n);
	values[2] = TextArray(fractions, n);
	values[3] = TextArray(messages, n);
	if (SPI_execute_plan(GenericPlan(&plan, progress_sql, 4, argtypes), values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "writing progress failed");
	EndWork();
}

void
pgdiag::WriteProgress()
{
	int count = 0;

	if (!calls::CollectProgress(&count))
		elog(ERROR, "pg_diagnosis: collecting progress failed: %s", cpp_guard_message);
	for (int start = 0; start < count; start += kStatementBatchMax)
		WriteProgressChunk(start, Min(kStatementBatchMax, count - start));
	if (count > 0)
		calls::ClearProgress();
}

/* ---------------------------------------------------------------- claim */

/* The distinct (organization, priority) pairs of queued runs, one probe of runs_claim_idx each. */
#define QUEUED_PAIRS_CTE                                                                                               \
	"WITH RECURSIVE pairs AS ("                                                                                        \
	"  (SELECT organization_id, priority FROM diagnosis.runs WHERE status = 'queued'"                                  \
	"   ORDER BY organization_id, priority DESC LIMIT 1)"                                                              \
	"  UNION ALL"                                                                                                      \
	"  SELECT n.organization_id, n.priority FROM pairs p CROSS JOIN LATERAL ("                                         \
	"    (SELECT r.organization_id, r.priority FROM diagnosis.runs r"                                                  \
	"      WHERE r.status = 'queued' AND r.organization_id = p.organization_id AND r.priority < p.priority"            \
	"      ORDER BY r.organization_id, r.priority DESC LIMIT 1)"                                                       \
	"    UNION ALL"                                                                                                    \
	"    (SELECT r.organization_id, r.priority FROM diagnosis.runs r"                                                  \
	"      WHERE r.status = 'queued' AND r.organization_id > p.organization_id"                                        \
	"      ORDER BY r.organization_id, r.priority DESC LIMIT 1)"                                                       \
	"    LIMIT 1) n"                                                                                                   \
	")"

/*
 * The claim takes turns between organizations: a backlog of one organization never delays another's due run
 * by more than one claim. It walks the distinct (organization, priority) pairs that have queued runs (a
 * recursive CTE, each step one probe of runs_claim_idx), takes each pair's due runs in run_after order from the
 * same index (so a million runs scheduled for later cost nothing), gives each organization an equal share of the
 * free slots (less what diagnosis.max_inflight_per_organization leaves it), and picks round by round: every
 * organization's best run, then every organization's second best, and so on. The picked rows are updated by
 * ctid (a TID scan whatever the statistics say): they are locked, so their versions cannot move.
 */
static const char *claim_sql = QUEUED_PAIRS_CTE
    ", orgs AS ("
    "  SELECT o.organization_id,"
    "         CASE WHEN $4 > 0 THEN greatest(0, $4 - (SELECT count(*) FROM diagnosis.runs x"
    "                                                 WHERE x.status = 'running'"
    "                                                   AND x.organization_id = o.organization_id))"
    "              ELSE $1 END AS room"
    "  FROM (SELECT DISTINCT pr.organization_id FROM pairs pr"
    "         CROSS JOIN LATERAL (SELECT 1 FROM diagnosis.runs d WHERE d.status = 'queued'"
    "                               AND d.organization_id = pr.organization_id AND d.priority = pr.priority"
    "                               AND d.run_after <= now() ORDER BY d.run_after LIMIT 1) due) o"
    "), share AS ("
    "  SELECT greatest(1, ceil($1::numeric / greatest(1, count(*))))::int AS per_org FROM orgs WHERE room > 0"
    "), candidates AS ("
    "  SELECT due.row_id, pr.organization_id, pr.priority, due.run_after, o.room"
    "  FROM pairs pr JOIN orgs o ON o.organization_id = pr.organization_id AND o.room > 0 CROSS JOIN share"
    "  CROSS JOIN LATERAL (SELECT r.ctid AS row_id, r.run_after FROM diagnosis.runs r"
    "                      WHERE r.status = 'queued' AND r.organization_id = pr.organization_id"
    "                        AND r.priority = pr.priority AND r.run_after <= now()"
    "                      ORDER BY r.run_after LIMIT least(share.per_org, o.room)"
    "                      FOR NO KEY UPDATE SKIP LOCKED) due"
    "), picked AS ("
    "  SELECT row_id FROM (SELECT row_id, run_after, room, row_number() OVER (PARTITION BY organization_id"
    "                                                        ORDER BY priority DESC, run_after) AS turn"
    "                  FROM candidates) c"
    "  WHERE turn <= room ORDER BY turn, run_after LIMIT $1"
    "), claimed AS ("
    "  UPDATE diagnosis.runs r SET status = 'running', attempt = r.attempt + 1, started_at = now(),"
    "         lease_expires_at = now() + $2 * interval '1 millisecond', worker_pid = $3, worker_token = $5,"
    "         progress = NULL, progress_message = NULL, updated_at = now()"
    "  WHERE r.ctid = ANY (ARRAY(SELECT row_id FROM picked))"
    "  RETURNING r.id, r.patient_id, r.organization_id, r.attempt, r.max_retries, r.schema_version, r.inputs,"
    "            '00-' || replace(r.id::text, '-', '') || '-' || lpad(to_hex(r.attempt), 16, '0') || '-01'"
    "              AS traceparent,"
    "            CASE WHEN r.mcp_task_expires_at IS NULL OR r.mcp_task_expires_at > now() THEN r.mcp_task_id END"
    "              AS resume_task_id"
    "), locked AS ("
    "  INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                   worker_pid, details)"
    "  SELECT id, organization_id, 'LOCKED', 'queued', 'running', attempt, current_user, $3,"
    "         jsonb_build_object('traceparent', traceparent) FROM claimed"
    ")"
    "SELECT id::text, patient_id::text, attempt, max_retries, schema_version, inputs::text, traceparent,"
    "       resume_task_id FROM claimed";

/* The earliest run_after of each pair is its first entry in runs_claim_idx. */
static const char *next_due_sql =
    QUEUED_PAIRS_CTE " SELECT min(f.run_after) FROM pairs p"
                     "   CROSS JOIN LATERAL (SELECT r.run_after FROM diagnosis.runs r"
                     "                        WHERE r.status = 'queued' AND r.organization_id = p.organization_id"
                     "                          AND r.priority = p.priority ORDER BY r.run_after LIMIT 1) f";

typedef struct ClaimedRun {
	char *run_id;
	char *patient_id;
	char *schema_version;
	char *inputs;
	char *traceparent;
	char *resume_task_id; /* NULL: call the tool */
	int attempt;
	int max_retries;
	char *pack;       /* the context pack with the run's inputs merged in */
	char *pack_error; /* why the pack could not be built */
} ClaimedRun;

/* The shipped pack function, as LookupPackFunction qualifies it. */
#define DEFAULT_PACK_FUNCTION "diagnosis.build_context_pack"

/* The context pack function, resolved once per claim: what to call and as whom. */
typedef struct PackFunction {
	char *qualified_name;
	Oid owner;
} PackFunction;

typedef struct PackJob {
	ClaimedRun *runs;
	int n;
	const PackFunction *fn;
	bool one_by_one; /* the retry after an error: call the function itself, whose error names the cause */
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

/* The default packs of a claim: one call of the set-based form of diagnosis.build_context_pack. */
static const char *default_packs_sql =
    "SELECT jsonb_typeof(p.pack), (p.pack || jsonb_build_object('inputs', x.inputs::jsonb))::text"
    "  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(patient_id, inputs, ord)"
    "  LEFT JOIN diagnosis._context_packs($1::text[]::uuid[]) p ON p.ord = x.ord"
    " ORDER BY x.ord";

/*
 * The packs of a claim from the pack function itself, one call per run, prepared once per function name (the
 * plan cache replans it when the function changes). OFFSET 0 keeps the planner from pulling the subquery up,
 * which would call the function once per use of p.pack. Prepared like it runs, as the function's owner with
 * search_path pinned: every unqualified name below is a built-in.
 */
static SPIPlanPtr
FunctionPackPlan(const char *qualified_name)
{
	static SPIPlanPtr plan = NULL;
	static char *plan_name = NULL;
	Oid argtypes[2] = {TEXTARRAYOID, TEXTARRAYOID};

	if (plan && strcmp(plan_name, qualified_name) != 0) {
		SPI_freeplan(plan);
		pfree(plan_name);
		plan = NULL;
	}
	if (plan == NULL) {
		char *sql =
		    psprintf("SELECT jsonb_typeof(p.pack), (p.pack || jsonb_build_object('inputs', x.inputs::jsonb))::text"
		             "  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(patient_id, inputs, ord)"
		             "  CROSS JOIN LATERAL (SELECT %s(x.patient_id::uuid) AS pack OFFSET 0) p"
		             " ORDER BY x.ord",
		             qualified_name);
		(void) KeptPlan(&plan, sql, 2, argtypes);
		plan_name = MemoryContextStrdup(TopMemoryContext, qualified_name);
	}
	return plan;
}

/*
 * Builds the packs of job->runs in one statement, as the pack function's owner under
 * SECURITY_RESTRICTED_OPERATION with search_path pinned (PostgreSQL runs index expressions during maintenance
 * the same way, vacuum.c), so the function has its owner's rights, not the worker's: no superuser, and no
 * worker authority over runs, artifacts or the audit log (diagnosis._is_worker() is false inside). An error
 * leaves the subtransaction to the caller, whose abort restores the user and the settings. The default pack
 * comes from its set-based form, one call per claim; the run-by-run retry after an error calls the function
 * itself, whose error names the cause.
 */
static void
BuildPacks(void *arg)
{
	static SPIPlanPtr default_packs_plan = NULL;
	PackJob *job = (PackJob *) arg;
	const char **patients = (const char **) palloc(sizeof(char *) * job->n);
	const char **inputs = (const char **) palloc(sizeof(char *) * job->n);
	Oid argtypes[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum values[2];
	Oid save_userid;
	int save_sec_context;
	int save_nestlevel;
	bool set_based = !job->one_by_one && strcmp(job->fn->qualified_name, DEFAULT_PACK_FUNCTION) == 0;

	for (int i = 0; i < job->n; i++) {
		patients[i] = job->runs[i].patient_id;
		inputs[i] = job->runs[i].inputs;
	}
	values[0] = TextArray(patients, job->n);
	values[1] = TextArray(inputs, job->n);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(job->fn->owner, save_sec_context | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
	                         false);
	static const char *const planner_settings[] = {"enable_seqscan", "enable_bitmapscan"};
	for (const char *planner_setting : planner_settings)
		(void) set_config_option(planner_setting, GetConfigOptionResetString(planner_setting), PGC_USERSET,
		                         PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_execute_plan(set_based ? GenericPlan(&default_packs_plan, default_packs_sql, 2, argtypes)
	                               : FunctionPackPlan(job->fn->qualified_name),
	                     values, NULL, false, 0) != SPI_OK_SELECT ||
	    SPI_processed != (uint64) job->n)
		elog(ERROR, "building context packs failed");
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	for (int i = 0; i < job->n; i++) {
		char *type = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		if (type == NULL || strcmp(type, "object") != 0)
			ereport(ERROR,
			        (errcode(ERRCODE_DATA_EXCEPTION),
			         errmsg("the context pack function returned %s instead of a JSON object", type ? type : "NULL")));
	}
	for (int i = 0; i < job->n; i++)
		job->runs[i].pack = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
}

/* Runs the claim statement; fills *runs (in the caller's context) and returns how many. */
static int
ClaimStatement(int limit, MemoryContext caller_context, ClaimedRun **runs)
{
	static SPIPlanPtr claim_plan = NULL;
	Oid argtypes[5] = {INT4OID, INT8OID, INT4OID, INT4OID, INT8OID};
	Datum values[5];
	int n;

	values[0] = Int32GetDatum(limit);
	values[1] = Int64GetDatum((int64) pgdiag_request_timeout_ms + LEASE_MARGIN_MS);
	values[2] = Int32GetDatum(MyProcPid);
	values[3] = Int32GetDatum(pgdiag_max_inflight_per_organization);
	values[4] = Int64GetDatum(pgdiag::MyWorkerToken());
	if (SPI_execute_plan(GenericPlan(&claim_plan, claim_sql, 5, argtypes), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "claiming runs failed");
	n = (int) SPI_processed;
	*runs = (ClaimedRun *) MemoryContextAllocZero(caller_context, sizeof(ClaimedRun) * Max(n, 1));
	for (int i = 0; i < n; i++) {
		HeapTuple tuple = SPI_tuptable->vals[i];
		TupleDesc desc = SPI_tuptable->tupdesc;
		ClaimedRun *run = &(*runs)[i];
		bool isnull;
		run->run_id = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 1));
		run->patient_id = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 2));
		run->attempt = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
		run->max_retries = DatumGetInt32(SPI_getbinval(tuple, desc, 4, &isnull));
		run->schema_version = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 5));
		run->inputs = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 6));
		run->traceparent = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 7));
		{
			char *task = SPI_getvalue(tuple, desc, 8);
			run->resume_task_id = task ? MemoryContextStrdup(caller_context, task) : NULL;
		}
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

	if (SPI_execute_plan(GenericPlan(&plan, next_due_sql, 0, NULL), NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the next due run failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/* Builds every pack in one statement; when any fails, one subtransaction per run finds which. */
static void
BuildAllPacks(ClaimedRun *runs, int n, const PackFunction *fn, MemoryContext caller_context)
{
	PackJob job = {runs, n, fn, false};

	if (InSubtransaction(BuildPacks, &job) != NULL)
		for (int i = 0; i < n; i++) {
			PackJob one = {&runs[i], 1, fn, true};
			runs[i].pack = NULL;
			runs[i].pack_error = InSubtransaction(BuildPacks, &one);
		}
	for (int i = 0; i < n; i++)
		if (runs[i].pack)
			runs[i].pack = MemoryContextStrdup(caller_context, runs[i].pack);
}

/* Runs whose pack failed are failed right here, in the claim transaction. Returns how many. */
static int
FailPacklessRuns(ClaimedRun *runs, int n)
{
	FinalizeBatch *failures = NewBatch(n);
	char *error;

	for (int i = 0; i < n; i++) {
		pgdiag::calls::Finished f;
		if (runs[i].pack_error == NULL)
			continue;
		memset(&f, 0, sizeof(f));
		f.run_id = runs[i].run_id;
		f.attempt = runs[i].attempt;
		f.outcome = "failed";
		f.error_code = "CONTEXT_PACK_ERROR";
		f.error_message = psprintf("building the context pack failed: %s", runs[i].pack_error);
		AddToBatch(failures, &f);
	}
	if (failures->n == 0)
		return 0;
	error = InSubtransaction(ExecuteFinalize, failures);
	if (error)
		elog(ERROR, "failing runs whose context pack failed: %s", error);
	return failures->n;
}

static void
SubmitClaimed(ClaimedRun *runs, int n)
{
	for (int i = 0; i < n; i++) {
		pgdiag::calls::Claimed c;
		if (runs[i].pack_error)
			continue;
		c.run_id = runs[i].run_id;
		c.patient_id = runs[i].patient_id;
		c.schema_version = runs[i].schema_version;
		c.inputs_json = runs[i].inputs;
		c.context_pack_json = runs[i].pack;
		c.traceparent = runs[i].traceparent;
		c.resume_task_id = runs[i].resume_task_id;
		c.attempt = runs[i].attempt;
		c.max_retries = runs[i].max_retries;
		if (!pgdiag::calls::Submit(c))
			elog(ERROR, "pg_diagnosis: submitting run %s failed: %s", runs[i].run_id, pgdiag::cpp_guard_message);
	}
}

void
pgdiag::ClaimRuns(int limit, ClaimResult *result)
{
	MemoryContext caller_context = CurrentMemoryContext;
	ClaimedRun *runs = NULL;
	PackFunction fn;
	PackLookup lookup = {&fn};
	int n = 0;
	int failed = 0;

	result->claimed = 0;
	result->next_due = DT_NOEND;
	result->config_error = NULL;
	limit = Min(limit, kStatementBatchMax);
	BeginWork("pg_diagnosis: claim runs");
	/* A setting that cannot work pauses claiming; it never fails the backlog run by run. */
	{
		char *error = InSubtransaction(LookupPackFunction, &lookup);
		if (error)
			result->config_error = MemoryContextStrdup(caller_context, error);
	}
	if (result->config_error == NULL) {
		n = ClaimStatement(limit, caller_context, &runs);
		/* A claim that got runs is followed by another at once (ClaimStep); only an empty one needs the time. */
		if (n == 0)
			result->next_due = NextDue();
	}
	if (n > 0) {
		/* Unknown schema versions may have been added since the worker started. */
		for (int i = 0; i < n; i++)
			if (!calls::HasSchema(runs[i].schema_version)) {
				EndWork();
				LoadResultSchemas();
				BeginWork("pg_diagnosis: claim runs");
				break;
			}
		BuildAllPacks(runs, n, &fn, caller_context);
		failed = FailPacklessRuns(runs, n);
	}
	EndWork();

	SubmitClaimed(runs, n);
	if (failed > 0 && Shared())
		ConditionVariableBroadcast(&Shared()->run_finished);
	result->claimed = n;
}
