/*-------------------------------------------------------------------------
 * sql_api.cpp
 *		The SQL-callable C functions of the diagnosis schema.
 *
 * Privileged entry points (enqueue_diagnosis, cancel_diagnosis, purge_runs and the row-level-security helpers)
 * share one trampoline, pgdiag_call_as_owner: it records the calling role, switches to the owner of the
 * diagnosis schema exactly as a SECURITY DEFINER function would, and calls diagnosis._<name>_impl(caller, ...) (a leading underscore is not doubled)
 * written in SQL. A SECURITY DEFINER function cannot know who called it (current_user is already the owner);
 * the trampoline can, so audit rows and access checks name the real caller, and application roles need no
 * write privilege on runs, artifacts or audit_log at all.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker.hpp"
#include "pg_diagnosis/pg/xact.hpp"
#include "pg_diagnosis/core/run_status.hpp"

extern "C" {
#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "access/detoast.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(pgdiag_call_as_owner);
PG_FUNCTION_INFO_V1(pgdiag_is_worker);
PG_FUNCTION_INFO_V1(pgdiag_is_superuser);
PG_FUNCTION_INFO_V1(pgdiag_wake_at_commit);
PG_FUNCTION_INFO_V1(pgdiag_begin_purge);
PG_FUNCTION_INFO_V1(pgdiag_purging);
PG_FUNCTION_INFO_V1(pgdiag_wait_for_run);
PG_FUNCTION_INFO_V1(pgdiag_worker_status);
PG_FUNCTION_INFO_V1(pgdiag_warn_outside_worker_database);
PG_FUNCTION_INFO_V1(pgdiag_raw_size);
}

#include "pg_diagnosis/pg/guc.hpp"

#define DIAGNOSIS_SCHEMA "diagnosis"
#define MAX_TRAMPOLINE_ARGS 16

/* One prepared call of an _impl function per trampoline function, kept for the backend's life. */
typedef struct ImplPlan {
	Oid fn_oid;
	SPIPlanPtr plan;
	int nargs;
	bool read_only;
	int16 ret_typlen;
	bool ret_typbyval;
	struct ImplPlan *next;
} ImplPlan;

static ImplPlan *impl_plans = NULL;

static Oid
DiagnosisSchemaOwner(void)
{
	Oid nsp = get_namespace_oid(DIAGNOSIS_SCHEMA, false);
	HeapTuple tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for schema %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Prepares "SELECT diagnosis._<name>_impl($1::name, $2, ...)" for the calling function. Must run inside SPI. */
static ImplPlan *
GetImplPlan(Oid fn_oid)
{
	ImplPlan *entry;
	Oid *argtypes;
	int nargs;
	Oid impl_argtypes[MAX_TRAMPOLINE_ARGS + 1];
	StringInfoData sql;
	SPIPlanPtr plan;
	Oid rettype;
	char *name;

	for (entry = impl_plans; entry; entry = entry->next)
		if (entry->fn_oid == fn_oid)
			return entry;

	rettype = get_func_signature(fn_oid, &argtypes, &nargs);
	if (nargs > MAX_TRAMPOLINE_ARGS)
		elog(ERROR, "pg_diagnosis trampoline supports at most %d arguments", MAX_TRAMPOLINE_ARGS);

	/* enqueue_diagnosis -> _enqueue_diagnosis_impl; _member_orgs -> _member_orgs_impl */
	name = get_func_name(fn_oid);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s.%s($1", DIAGNOSIS_SCHEMA,
	                 quote_identifier(psprintf("%s%s_impl", name[0] == '_' ? "" : "_", name)));
	impl_argtypes[0] = NAMEOID;
	for (int i = 0; i < nargs; i++) {
		impl_argtypes[i + 1] = argtypes[i];
		appendStringInfo(&sql, ", $%d", i + 2);
	}
	appendStringInfoChar(&sql, ')');

	plan = SPI_prepare(sql.data, nargs + 1, impl_argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare(\"%s\") failed: %s", sql.data, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");

	entry = (ImplPlan *) MemoryContextAllocZero(TopMemoryContext, sizeof(ImplPlan));
	entry->fn_oid = fn_oid;
	entry->plan = plan;
	entry->nargs = nargs;
	entry->read_only = func_volatile(fn_oid) != PROVOLATILE_VOLATILE;
	get_typlenbyval(rettype, &entry->ret_typlen, &entry->ret_typbyval);
	entry->next = impl_plans;
	impl_plans = entry;
	return entry;
}

/*
 * pgdiag_call_as_owner calls diagnosis._<name>_impl(current_user, args...) as the schema's owner because a
 * SECURITY DEFINER function could not tell the impl who called it. The user switch is the one
 * fmgr_security_definer makes; an error unwinds it through transaction or subtransaction abort.
 */
Datum
pgdiag_call_as_owner(PG_FUNCTION_ARGS)
{
	Oid caller = GetUserId();
	Datum values[MAX_TRAMPOLINE_ARGS + 1];
	char nulls[MAX_TRAMPOLINE_ARGS + 1];
	Oid save_userid;
	int save_sec_context;
	ImplPlan *impl;
	Datum result;
	bool isnull;
	int rc;

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(caller, false)));
	nulls[0] = ' ';
	for (int i = 0; i < PG_NARGS() && i < MAX_TRAMPOLINE_ARGS; i++) {
		values[i + 1] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i + 1] = PG_ARGISNULL(i) ? 'n' : ' ';
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(DiagnosisSchemaOwner(), save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	impl = GetImplPlan(fcinfo->flinfo->fn_oid);
	if (impl->nargs != PG_NARGS())
		elog(ERROR, "pg_diagnosis trampoline called with %d arguments, expected %d", PG_NARGS(), impl->nargs);
	rc = SPI_execute_plan(impl->plan, values, nulls, impl->read_only, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pg_diagnosis: calling the implementation of %s failed: %s", get_func_name(impl->fn_oid),
		     SPI_result_code_string(rc));
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		result = SPI_datumTransfer(result, impl->ret_typbyval, impl->ret_typlen);
	SPI_finish();

	SetUserIdAndSecContext(save_userid, save_sec_context);

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* True only inside a pg_diagnosis worker's own statements (pgdiag::ActsAsWorker): the library says, not a
 * setting. */
Datum
pgdiag_is_worker(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(pgdiag::ActsAsWorker());
}

/* diagnosis._is_superuser(role): pg_roles.rolsuper of a role by name, false for an unknown role or NULL. On
 * every enqueue's path (the access check) and in cancel and purge: the syscache answers it without a statement. */
Datum
pgdiag_is_superuser(PG_FUNCTION_ARGS)
{
	Oid role;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	role = get_role_oid(NameStr(*PG_GETARG_NAME(0)), true);
	PG_RETURN_BOOL(OidIsValid(role) && superuser_arg(role));
}

/* diagnosis._raw_size(jsonb or text): the value's size once decompressed, read from its header without
 * detoasting it (pg_column_size gives the stored, compressed size). What the default pack checks before it copies
 * a patient's data anywhere. */
Datum
pgdiag_raw_size(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) (toast_raw_datum_size(PG_GETARG_DATUM(0)) - VARHDRSZ));
}

Datum
pgdiag_wake_at_commit(PG_FUNCTION_ARGS)
{
	pgdiag::WakeWorkersAtCommit();
	PG_RETURN_VOID();
}

/* Only purge_runs' implementation (running as the superuser owner) may open the insert-only guards. */
Datum
pgdiag_begin_purge(PG_FUNCTION_ARGS)
{
	if (!superuser())
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
		                errmsg("only diagnosis.purge_runs may delete runs, artifacts or audit rows")));
	pgdiag::BeginPurge();
	PG_RETURN_VOID();
}

Datum
pgdiag_purging(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(pgdiag::Purging());
}

/* The longest wait_for_run waits: a century, so that now() plus it stays a valid timestamp. */
static const int64 kMaxWaitUs = (int64) 100 * 366 * USECS_PER_DAY;

/*
 * wait_for_run sleeps on the condition variable that every finalize broadcasts, re-reading the run's status
 * (as the caller, under row-level security) after each wake-up. The sleep is capped at a second because a
 * cancellation by another backend does not broadcast. Without shared memory it polls the latch instead.
 */
Datum
pgdiag_wait_for_run(PG_FUNCTION_ARGS)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	pg_uuid_t *run_id;
	int64 timeout_us;
	TimestampTz deadline;
	SPIPlanPtr plan;
	Oid argtypes[1] = {UUIDOID};
	char *status = NULL;
	text *result;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("run_id must not be null")));
	run_id = PG_GETARG_UUID_P(0);
	if (PG_ARGISNULL(1))
		timeout_us = 30 * USECS_PER_SEC;
	else {
		Interval *timeout = PG_GETARG_INTERVAL_P(1);
		/* In 128 bits: '178000000 years' overflows int64 microseconds (and a wrapped sum could look negative). */
		int128 us = (int128) timeout->time + (int128) timeout->day * USECS_PER_DAY +
		            (int128) timeout->month * DAYS_PER_MONTH * USECS_PER_DAY;
		if (us < 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("timeout must not be negative")));
		timeout_us = (int64) Min(us, (int128) kMaxWaitUs);
	}
	deadline = GetCurrentTimestamp() + timeout_us;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare("SELECT status FROM diagnosis.runs WHERE id = $1", 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));

	if (shared)
		ConditionVariablePrepareToSleep(&shared->run_finished);
	for (;;) {
		Datum values[1] = {UUIDPGetDatum(run_id)};
		TimestampTz now;
		long remaining_ms;

		/* read_only = false: each read takes a fresh snapshot, so commits by the worker become visible. */
		if (SPI_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading the run's status failed");
		if (SPI_processed == 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("run \"%s\" does not exist",
			                       DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(run_id))))));
		status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		now = GetCurrentTimestamp();
		if (pgdiag::IsTerminalStatusName(status) || now >= deadline)
			break;
		remaining_ms = (long) Min((deadline - now + 999) / 1000, 1000);
		if (shared)
			(void) ConditionVariableTimedSleep(&shared->run_finished, remaining_ms, PG_WAIT_EXTENSION);
		else {
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Min(remaining_ms, 100),
			                 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	if (shared)
		ConditionVariableCancelSleep();

	result = cstring_to_text(status); /* palloc'd in SPI's context: copy out before SPI_finish */
	result = (text *) SPI_datumTransfer(PointerGetDatum(result), false, -1);
	SPI_finish();
	PG_RETURN_TEXT_P(result);
}

/* One row per live worker slot; tenants' activity is not everyone's to see. */
Datum
pgdiag_worker_status(PG_FUNCTION_ARGS)
{
	pgdiag::SharedState *shared = pgdiag::Shared();
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pgdiag::WorkerSlot slots[pgdiag::kMaxWorkers];
	int n = 0;

	if (!superuser() && !has_privs_of_role(GetUserId(), ROLE_PG_MONITOR))
		ereport(ERROR,
		        (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied for diagnosis.worker_status()"),
		         errhint("Only superusers and members of pg_monitor may see the workers.")));
	InitMaterializedSRF(fcinfo, 0);
	if (!shared)
		return (Datum) 0;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < shared->nslots; i++)
		if (shared->slots[i].pid != 0)
			slots[n++] = shared->slots[i];
	SpinLockRelease(&shared->mutex);

	for (int i = 0; i < n; i++) {
		Datum values[10];
		bool nulls[10] = {false};

		values[0] = Int32GetDatum(slots[i].pid);
		values[1] = CStringGetTextDatum(slots[i].state);
		values[2] = Int32GetDatum(slots[i].inflight);
		values[3] = Int64GetDatum((int64) slots[i].runs_done);
		values[4] = slots[i].last_error[0] ? CStringGetTextDatum(slots[i].last_error) : (Datum) 0;
		nulls[4] = !slots[i].last_error[0];
		values[5] = TimestampTzGetDatum(slots[i].started_at);
		values[6] = slots[i].era[0] ? CStringGetTextDatum(slots[i].era) : (Datum) 0;
		nulls[6] = !slots[i].era[0];
		values[7] = slots[i].protocol_version[0] ? CStringGetTextDatum(slots[i].protocol_version) : (Datum) 0;
		nulls[7] = !slots[i].protocol_version[0];
		values[8] = Int32GetDatum(slots[i].call_limit);
		nulls[8] = slots[i].call_limit == 0;
		values[9] = Int32GetDatum(slots[i].fd_limit);
		nulls[9] = slots[i].fd_limit == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* CREATE EXTENSION outside diagnosis.database succeeds, but no worker will ever claim its runs: say so. */
Datum
pgdiag_warn_outside_worker_database(PG_FUNCTION_ARGS)
{
	const char *here = get_database_name(MyDatabaseId);

	if (here && pgdiag_database && strcmp(here, pgdiag_database) != 0)
		ereport(WARNING,
		        (errmsg("pg_diagnosis workers run in database \"%s\", not in \"%s\"", pgdiag_database, here),
		         errdetail("Runs enqueued in this database stay queued."),
		         errhint("Set diagnosis.database = '%s' in postgresql.conf and restart the server, or create the "
		                 "extension in \"%s\".",
		                 here, pgdiag_database)));
	PG_RETURN_VOID();
}
