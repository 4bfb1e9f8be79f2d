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
#include "pg_diagnosis/pg/worker_store.hpp"
#include "pg_diagnosis/pg/cpp_guard.hpp"
#include "pg_diagnosis/worker_calls.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/namespace.h"
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
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
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

static const char *
IntText(long value)
{
	return psprintf("%ld", value);
}

/* Prepares a statement once per process; plancache replans it when the tables change. */
static SPIPlanPtr
KeptPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	if (*cache == NULL) {
		SPIPlanPtr plan = SPI_prepare(sql, nargs, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for pg_diagnosis worker statement: %s",
			     SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*cache = plan;
	}
	return *cache;
}

/*
 * Runs `body(arg)` in a subtransaction (the pattern of plpgsql's exception blocks). Returns NULL on success,
 * or the error message (palloc'd in the caller's context) after rolling the subtransaction back.
 */
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
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return message;
}

/* ---------------------------------------------------------------- extension and schemas */

bool
pgdiag::ExtensionReady()
{
	bool ready;

	MemoryContext caller = CurrentMemoryContext;

	StartTransactionCommand();
	ready = OidIsValid(get_extension_oid("pg_diagnosis", true));
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return ready;
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

static const char *recover_sql =
    "WITH orphans AS ("
    "  SELECT id, worker_pid AS old_pid,"
    "         CASE WHEN lease_expires_at < now() AND worker_pid = ANY($1) THEN 'lease expired'"
    "              WHEN $3 THEN 'worker shut down' ELSE 'worker exited' END AS reason"
    "  FROM diagnosis.runs"
    "  WHERE status = 'running'"
    "    AND CASE WHEN $3 THEN worker_pid = $2"
    "             ELSE worker_pid IS NULL OR worker_pid <> ALL($1) OR lease_expires_at < now() END"
    "  FOR UPDATE SKIP LOCKED"
    "), moved AS ("
    "  UPDATE diagnosis.runs r SET"
    "    status = CASE WHEN r.attempt >= 1 + r.max_retries THEN 'failed' ELSE 'queued' END,"
    "    completed_at = CASE WHEN r.attempt >= 1 + r.max_retries THEN now() END,"
    "    error_code = CASE WHEN r.attempt >= 1 + r.max_retries THEN 'UNKNOWN_ERROR' ELSE r.error_code END,"
    "    error_message = CASE WHEN r.attempt >= 1 + r.max_retries"
    "                    THEN 'the run was interrupted (' || o.reason || ') and its attempts are spent'"
    "                    ELSE r.error_message END,"
    "    run_after = now(), worker_pid = NULL, lease_expires_at = NULL, updated_at = now()"
    "  FROM orphans o WHERE r.id = o.id"
    "  RETURNING r.id, r.organization_id, r.attempt, r.status, o.old_pid, o.reason"
    ")"
    "INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                 worker_pid, details)"
    "SELECT id, organization_id, CASE WHEN status = 'failed' THEN 'FAILED' ELSE 'RECOVERED' END, 'running',"
    "       status, attempt, current_user, $2,"
    "       jsonb_build_object('reason', reason, 'previous_worker_pid', old_pid)"
    "FROM moved";

int
pgdiag::RecoverRuns(bool only_mine)
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[3] = {INT4ARRAYOID, INT4OID, BOOLOID};
	pid_t pids[kMaxWorkers];
	Datum pid_datums[kMaxWorkers];
	Datum values[3];
	int npids = LiveWorkerPids(pids, kMaxWorkers);
	int moved;

	for (int i = 0; i < npids; i++)
		pid_datums[i] = Int32GetDatum(pids[i]);
	BeginWork("pg_diagnosis: recover runs");
	values[0] = PointerGetDatum(construct_array(pid_datums, npids, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[1] = Int32GetDatum(MyProcPid);
	values[2] = BoolGetDatum(only_mine);
	if (SPI_execute_plan(KeptPlan(&plan, recover_sql, 3, argtypes), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "recovering runs failed");
	moved = (int) SPI_processed;
	EndWork();
	if (moved > 0) {
		ereport(LOG, (errmsg("pg_diagnosis: %s %d run(s)", only_mine ? "handed back" : "recovered", moved)));
		if (Shared())
			ConditionVariableBroadcast(&Shared()->run_finished);
	}
	return moved;
}

/* ---------------------------------------------------------------- finalize */

static const char *finalize_sql =
    "WITH input AS ("
    "  SELECT i.id::uuid AS id, i.attempt::int AS attempt, i.outcome, i.error_code, i.error_message,"
    "         i.error_details::jsonb AS error_details, i.context_pack::jsonb AS context_pack,"
    "         i.mcp_response::jsonb AS mcp_response, i.diagnosis::jsonb AS diagnosis,"
    "         i.processing_ms::int AS processing_ms, i.mcp_run_id, i.retry_delay_ms::bigint AS retry_delay_ms"
    "  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    "              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])"
    "       AS i(id, attempt, outcome, error_code, error_message, error_details, context_pack, mcp_response,"
    "            diagnosis, processing_ms, mcp_run_id, retry_delay_ms)"
    "), upd AS ("
    "  UPDATE diagnosis.runs r SET"
    "    status = i.outcome,"
    "    completed_at = CASE WHEN i.outcome = 'queued' THEN NULL ELSE now() END,"
    "    run_after = CASE WHEN i.outcome = 'queued' THEN now() + i.retry_delay_ms * interval '1 millisecond'"
    "                ELSE r.run_after END,"
    "    worker_pid = CASE WHEN i.outcome = 'queued' THEN NULL ELSE r.worker_pid END,"
    "    lease_expires_at = NULL,"
    "    error_code = i.error_code, error_message = i.error_message, error_details = i.error_details,"
    "    mcp_run_id = coalesce(i.mcp_run_id, r.mcp_run_id),"
    "    processing_time_ms = i.processing_ms,"
    "    progress = CASE WHEN i.outcome = 'completed' THEN 1 ELSE r.progress END,"
    "    updated_at = now()"
    "  FROM input i"
    "  WHERE r.id = i.id AND r.status = 'running' AND r.attempt = i.attempt"
    "  RETURNING r.id, r.patient_id, r.organization_id, r.attempt, i.outcome, i.error_code, i.retry_delay_ms,"
    "            i.context_pack, i.mcp_response, i.diagnosis"
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
    "  FROM upd u CROSS JOIN LATERAL (VALUES ('context_pack', u.context_pack, 1),"
    "                                        ('mcp_response', u.mcp_response, 2),"
    "                                        ('diagnosis_json', u.diagnosis, 3)) AS a(artifact_type, data, seq)"
    "  WHERE u.outcome <> 'queued' AND a.data IS NOT NULL"
    "), aud AS ("
    "  INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                   worker_pid, details)"
    "  SELECT u.id, u.organization_id,"
    "         CASE u.outcome WHEN 'completed' THEN 'COMPLETED' WHEN 'failed' THEN 'FAILED'"
    "                        ELSE 'RETRY_SCHEDULED' END,"
    "         'running', u.outcome, u.attempt, current_user, $14,"
    "         jsonb_strip_nulls(jsonb_build_object('error_code', u.error_code, 'retry_delay_ms',"
    "                           CASE WHEN u.outcome = 'queued' THEN u.retry_delay_ms END))"
    "  FROM upd u"
    ")"
    "SELECT count(*) FILTER (WHERE outcome <> 'queued') FROM upd";

/* The rows of one finalize statement, as parallel arrays of C strings. */
typedef struct FinalizeBatch {
	int n;
	const char **id, **attempt, **outcome, **error_code, **error_message, **error_details, **context_pack,
	    **mcp_response, **diagnosis, **processing_ms, **mcp_run_id, **retry_delay_ms;
	int terminal; /* result: runs that reached completed or failed */
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
}

static void
ExecuteFinalize(void *arg)
{
	static SPIPlanPtr plan = NULL;
	FinalizeBatch *b = (FinalizeBatch *) arg;
	Oid argtypes[14];
	Datum values[14];

	for (int i = 0; i < 12; i++)
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
	if (SPI_execute_plan(KeptPlan(&plan, finalize_sql, 14, argtypes), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "finalize statement failed");
	{
		bool isnull;
		Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		b->terminal = isnull ? 0 : (int) DatumGetInt64(d);
	}
}

/* Finalizes one run alone; if even that fails (say its answer is not storable as jsonb), fails the run
 * without the answer. Returns how many runs became terminal. */
static int
FinalizeOne(const pgdiag::calls::Finished *f)
{
	FinalizeBatch *b = NewBatch(1);
	char *error;

	AddToBatch(b, f);
	error = InSubtransaction(ExecuteFinalize, b);
	if (error == NULL)
		return b->terminal;

	ereport(WARNING, (errmsg("pg_diagnosis: storing the result of run %s failed: %s", f->run_id, error)));
	b->outcome[0] = "failed";
	b->error_code[0] = "MCP_ERROR";
	b->error_message[0] = psprintf("the MCP answer could not be stored: %s", error);
	b->error_details[0] = NULL;
	b->mcp_response[0] = NULL;
	b->diagnosis[0] = NULL;
	b->mcp_run_id[0] = NULL;
	error = InSubtransaction(ExecuteFinalize, b);
	if (error == NULL)
		return b->terminal;
	/* Left running: the lease (or this worker's exit) puts it back. */
	ereport(WARNING, (errmsg("pg_diagnosis: failing run %s failed too: %s", f->run_id, error)));
	return 0;
}

int
pgdiag::FinalizeFinishedRuns(TimestampTz *next_retry)
{
	FinalizeBatch *batch;
	int count = 0;
	int terminal = 0;
	long min_delay_ms = -1;
	char *error;

	if (!calls::CollectFinished(&count))
		elog(ERROR, "pg_diagnosis: collecting finished runs failed: %s", cpp_guard_message);
	if (count == 0)
		return 0;

	batch = NewBatch(count);
	for (int i = 0; i < count; i++) {
		const calls::Finished *f = calls::FinishedAt(i);
		AddToBatch(batch, f);
		if (strcmp(f->outcome, "queued") == 0 && (min_delay_ms < 0 || f->retry_delay_ms < min_delay_ms))
			min_delay_ms = f->retry_delay_ms;
	}

	BeginWork("pg_diagnosis: finalize runs");
	error = InSubtransaction(ExecuteFinalize, batch);
	if (error == NULL)
		terminal = batch->terminal;
	else
		for (int i = 0; i < count; i++)
			terminal += FinalizeOne(calls::FinishedAt(i));
	EndWork();
	calls::ClearFinished();
	if (min_delay_ms >= 0) {
		TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), min_delay_ms);
		if (*next_retry == DT_NOEND || due < *next_retry)
			*next_retry = due;
	}

	if (Shared())
		ConditionVariableBroadcast(&Shared()->run_finished);
	return terminal;
}

/* ---------------------------------------------------------------- progress */

static const char *progress_sql =
    "UPDATE diagnosis.runs r SET progress = i.fraction::real, progress_message = i.message, updated_at = now()"
    "  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS i(id, attempt, fraction, message)"
    " WHERE r.id = i.id::uuid AND r.status = 'running' AND r.attempt = i.attempt::int"
    "   AND (r.progress IS NULL OR r.progress <= i.fraction::real)";

void
pgdiag::WriteProgress()
{
	static SPIPlanPtr plan = NULL;
	Oid argtypes[4] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum values[4];
	const char **ids, **attempts, **fractions, **messages;
	int count = 0;

	if (!calls::CollectProgress(&count))
		elog(ERROR, "pg_diagnosis: collecting progress failed: %s", cpp_guard_message);
	if (count == 0)
		return;
	ids = (const char **) palloc(sizeof(char *) * count);
	attempts = (const char **) palloc(sizeof(char *) * count);
	fractions = (const char **) palloc(sizeof(char *) * count);
	messages = (const char **) palloc(sizeof(char *) * count);
	for (int i = 0; i < count; i++) {
		const calls::Progress *p = calls::ProgressAt(i);
		ids[i] = p->run_id;
		attempts[i] = IntText(p->attempt);
		fractions[i] = psprintf("%.6f", p->fraction);
		messages[i] = p->message && p->message[0] ? p->message : NULL;
	}
	BeginWork("pg_diagnosis: write progress");
	values[0] = TextArray(ids, count);
	values[1] = TextArray(attempts, count);
	values[2] = TextArray(fractions, count);
	values[3] = TextArray(messages, count);
	if (SPI_execute_plan(KeptPlan(&plan, progress_sql, 4, argtypes), values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "writing progress failed");
	EndWork();
	calls::ClearProgress();
}

/* ---------------------------------------------------------------- claim */

/*
 * Claim order is priority, then run_after. A plain ORDER BY over an index on (priority DESC, run_after) would walk
 * every future-scheduled run when none is due, so the claim skips from one distinct priority to the next (a
 * recursive CTE, each step one index probe) and, per priority, takes the due runs in run_after order from the
 * same index: flat whether a million runs are due or scheduled for later.
 */
static const char *claim_sql =
    "WITH RECURSIVE priorities AS ("
    "  (SELECT priority FROM diagnosis.runs WHERE status = 'queued' ORDER BY priority DESC LIMIT 1)"
    "  UNION ALL"
    "  SELECT (SELECT r.priority FROM diagnosis.runs r"
    "          WHERE r.status = 'queued' AND r.priority < p.priority ORDER BY r.priority DESC LIMIT 1)"
    "  FROM priorities p WHERE p.priority IS NOT NULL"
    "), picked AS ("
    "  SELECT due.id FROM priorities p"
    "  CROSS JOIN LATERAL (SELECT r.id FROM diagnosis.runs r"
    "                      WHERE r.status = 'queued' AND r.priority = p.priority AND r.run_after <= now()"
    "                      ORDER BY r.run_after LIMIT $1 FOR UPDATE SKIP LOCKED) due"
    "  LIMIT $1"
    "), claimed AS ("
    "  UPDATE diagnosis.runs r SET status = 'running', attempt = r.attempt + 1, started_at = now(),"
    "         lease_expires_at = now() + $2 * interval '1 millisecond', worker_pid = $3,"
    "         progress = NULL, progress_message = NULL, updated_at = now()"
    "  FROM picked p WHERE r.id = p.id"
    "  RETURNING r.id, r.patient_id, r.organization_id, r.attempt, r.max_retries, r.schema_version, r.inputs"
    "), locked AS ("
    "  INSERT INTO diagnosis.audit_log (run_id, organization_id, event, status_from, status_to, attempt, actor,"
    "                                   worker_pid)"
    "  SELECT id, organization_id, 'LOCKED', 'queued', 'running', attempt, current_user, $3 FROM claimed"
    ")"
    "SELECT id::text, patient_id::text, attempt, max_retries, schema_version, inputs::text FROM claimed";

static const char *next_due_sql = "SELECT min(run_after) FROM diagnosis.runs WHERE status = 'queued'";

typedef struct ClaimedRun {
	char *run_id;
	char *patient_id;
	char *schema_version;
	char *inputs;
	int attempt;
	int max_retries;
	char *pack;       /* the context pack with the run's inputs merged in */
	char *pack_error; /* why the pack could not be built */
} ClaimedRun;

typedef struct PackJob {
	ClaimedRun *runs;
	int n;
} PackJob;

/* The qualified name of the context pack function: diagnosis.context_pack_function or the default. */
static char *
ContextPackFunction(void)
{
	const char *name = pgdiag_context_pack_function && pgdiag_context_pack_function[0]
	                       ? pgdiag_context_pack_function
	                       : "diagnosis.build_context_pack";
	Oid argtypes[1] = {UUIDOID};
	Oid fn = LookupFuncName(stringToQualifiedNameList(name), 1, argtypes, false);

	if (get_func_rettype(fn) != JSONBOID)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("context pack function %s must return jsonb", name)));
	return quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)), get_func_name(fn));
}

/* Builds the packs of job->runs in one statement; an error leaves the subtransaction to the caller. */
static void
BuildPacks(void *arg)
{
	PackJob *job = (PackJob *) arg;
	const char **patients = (const char **) palloc(sizeof(char *) * job->n);
	const char **inputs = (const char **) palloc(sizeof(char *) * job->n);
	Oid argtypes[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum values[2];
	char *sql;

	for (int i = 0; i < job->n; i++) {
		patients[i] = job->runs[i].patient_id;
		inputs[i] = job->runs[i].inputs;
	}
	sql = psprintf("SELECT jsonb_typeof(p.pack), (p.pack || jsonb_build_object('inputs', x.inputs::jsonb))::text"
	               "  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(patient_id, inputs, ord)"
	               "  CROSS JOIN LATERAL (SELECT %s(x.patient_id::uuid) AS pack) p"
	               " ORDER BY x.ord",
	               ContextPackFunction());
	values[0] = TextArray(patients, job->n);
	values[1] = TextArray(inputs, job->n);
	if (SPI_execute_with_args(sql, 2, argtypes, values, NULL, false, 0) != SPI_OK_SELECT ||
	    SPI_processed != (uint64) job->n)
		elog(ERROR, "building context packs failed");
	for (int i = 0; i < job->n; i++) {
		char *type = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		if (type == NULL || strcmp(type, "object") != 0)
			ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
			                errmsg("the context pack function returned %s instead of a JSON object",
			                       type ? type : "NULL")));
	}
	for (int i = 0; i < job->n; i++)
		job->runs[i].pack = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
}

int
pgdiag::ClaimRuns(int limit, TimestampTz *next_due)
{
	static SPIPlanPtr claim_plan = NULL;
	static SPIPlanPtr next_due_plan = NULL;
	Oid argtypes[3] = {INT4OID, INT8OID, INT4OID};
	Datum values[3];
	MemoryContext caller_context = CurrentMemoryContext;
	ClaimedRun *runs;
	PackJob job;
	int n;
	int failed = 0;

	*next_due = DT_NOEND;
	BeginWork("pg_diagnosis: claim runs");
	values[0] = Int32GetDatum(limit);
	values[1] = Int64GetDatum((int64) pgdiag_request_timeout_ms + LEASE_MARGIN_MS);
	values[2] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(KeptPlan(&claim_plan, claim_sql, 3, argtypes), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "claiming runs failed");
	n = (int) SPI_processed;
	runs = (ClaimedRun *) MemoryContextAllocZero(caller_context, sizeof(ClaimedRun) * Max(n, 1));
	for (int i = 0; i < n; i++) {
		HeapTuple tuple = SPI_tuptable->vals[i];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;
		runs[i].run_id = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 1));
		runs[i].patient_id = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 2));
		runs[i].attempt = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
		runs[i].max_retries = DatumGetInt32(SPI_getbinval(tuple, desc, 4, &isnull));
		runs[i].schema_version = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 5));
		runs[i].inputs = MemoryContextStrdup(caller_context, SPI_getvalue(tuple, desc, 6));
	}

	if (n < limit) {
		bool isnull;
		if (SPI_execute_plan(KeptPlan(&next_due_plan, next_due_sql, 0, NULL), NULL, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading the next due run failed");
		Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*next_due = DatumGetTimestampTz(d);
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

		/* All packs in one statement; when any fails, one subtransaction per run finds which. */
		job.runs = runs;
		job.n = n;
		if (InSubtransaction(BuildPacks, &job) != NULL)
			for (int i = 0; i < n; i++) {
				PackJob one = {&runs[i], 1};
				runs[i].pack = NULL;
				runs[i].pack_error = InSubtransaction(BuildPacks, &one);
			}
		for (int i = 0; i < n; i++)
			if (runs[i].pack)
				runs[i].pack = MemoryContextStrdup(caller_context, runs[i].pack);

		/* Runs whose pack failed are failed right here, in the claim transaction. */
		FinalizeBatch *failures = NewBatch(n);
		for (int i = 0; i < n; i++) {
			if (runs[i].pack_error == NULL)
				continue;
			pgdiag::calls::Finished f;
			memset(&f, 0, sizeof(f));
			f.run_id = runs[i].run_id;
			f.attempt = runs[i].attempt;
			f.outcome = "failed";
			f.error_code = "CONTEXT_PACK_ERROR";
			f.error_message = psprintf("building the context pack failed: %s", runs[i].pack_error);
			AddToBatch(failures, &f);
		}
		if (failures->n > 0) {
			char *error = InSubtransaction(ExecuteFinalize, failures);
			if (error)
				elog(ERROR, "failing runs whose context pack failed: %s", error);
			failed = failures->n;
		}
	}
	EndWork();

	for (int i = 0; i < n; i++) {
		calls::Claimed c;
		if (runs[i].pack_error)
			continue;
		c.run_id = runs[i].run_id;
		c.patient_id = runs[i].patient_id;
		c.schema_version = runs[i].schema_version;
		c.inputs_json = runs[i].inputs;
		c.context_pack_json = runs[i].pack;
		c.attempt = runs[i].attempt;
		c.max_retries = runs[i].max_retries;
		if (!calls::Submit(c))
			elog(ERROR, "pg_diagnosis: submitting run %s failed: %s", runs[i].run_id, cpp_guard_message);
	}
	if (failed > 0 && Shared())
		ConditionVariableBroadcast(&Shared()->run_finished);
	return n;
}
