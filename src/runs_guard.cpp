/*-------------------------------------------------------------------------
 * runs_guard.cpp
 *		The state machine of runs (SPEC section 3), as the BEFORE UPDATE OR DELETE trigger of diagnosis.runs,
 *		for every role, superuser included.
 *
 * Every claim, progress report and finalize passes through it, row by row. Written in plpgsql it cost a
 * plpgsql call and a GUC nest level (its pinned search_path) per row; in C it resolves no name at all. The
 * checks, their order, the messages and the SQLSTATEs are the plpgsql guard's; columns compare with their
 * type's equality operator, as `<>` and IS DISTINCT FROM did.
 *-------------------------------------------------------------------------
 */
extern "C" {
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(pgdiag_runs_guard);
}

#include "pg_diagnosis/pg/worker.hpp"
#include "pg_diagnosis/pg/xact.hpp"
#include "pg_diagnosis/core/run_status.hpp"

namespace {

/* The columns the guard reads, by name; their numbers are looked up again whenever one stops matching. */
enum Column {
	COL_ID,
	COL_PATIENT_ID,
	COL_ORGANIZATION_ID,
	COL_INPUTS_HASH,
	COL_INPUTS,
	COL_REQUESTED_BY,
	COL_CREATED_AT,
	COL_SCHEMA_VERSION,
	COL_IDEMPOTENCY_KEY,
	COL_STATUS,
	COL_CANCEL_REQUESTED_AT,
	COL_CANCEL_REQUESTED_BY,
	COL_COUNT
};

const char *const kColumnNames[COL_COUNT] = {"id",
                                             "patient_id",
                                             "organization_id",
                                             "inputs_hash",
                                             "inputs",
                                             "requested_by",
                                             "created_at",
                                             "schema_version",
                                             "idempotency_key",
                                             "status",
                                             "cancel_requested_at",
                                             "cancel_requested_by"};

/* The identity of a run: `NEW.x <> OLD.x` for these (a NULL compares as unchanged, as in the plpgsql guard; the
 * NOT NULL constraint then speaks), IS DISTINCT FROM for the idempotency key. */
const Column kIdentity[] = {COL_ID,     COL_PATIENT_ID,   COL_ORGANIZATION_ID, COL_INPUTS_HASH,
                            COL_INPUTS, COL_REQUESTED_BY, COL_CREATED_AT,      COL_SCHEMA_VERSION};

AttrNumber column_numbers[COL_COUNT];

/* The function is public, like every trigger function: on any other table (whose columns of these names may have
 * other types) it refuses to run instead of reading them as the runs' columns. */
bool
IsRunsTable(Relation rel)
{
	static Oid runs_relid = InvalidOid;
	char *schema;

	if (RelationGetRelid(rel) == runs_relid)
		return true;
	if (strcmp(RelationGetRelationName(rel), "runs") != 0)
		return false;
	schema = get_namespace_name(RelationGetNamespace(rel));
	if (schema == NULL || strcmp(schema, "diagnosis") != 0)
		return false;
	runs_relid = RelationGetRelid(rel);
	return true;
}

bool
ColumnNumbersMatch(TupleDesc desc)
{
	for (int c = 0; c < COL_COUNT; c++) {
		AttrNumber n = column_numbers[c];
		if (n <= 0 || n > desc->natts || TupleDescAttr(desc, n - 1)->attisdropped ||
		    strcmp(NameStr(TupleDescAttr(desc, n - 1)->attname), kColumnNames[c]) != 0)
			return false;
	}
	return true;
}

void
LookUpColumnNumbers(TupleDesc desc)
{
	if (ColumnNumbersMatch(desc))
		return;
	for (int c = 0; c < COL_COUNT; c++) {
		column_numbers[c] = InvalidAttrNumber;
		for (int i = 0; i < desc->natts; i++) {
			Form_pg_attribute att = TupleDescAttr(desc, i);
			if (!att->attisdropped && strcmp(NameStr(att->attname), kColumnNames[c]) == 0)
				column_numbers[c] = att->attnum;
		}
		if (column_numbers[c] == InvalidAttrNumber)
			elog(ERROR, "diagnosis.runs has no column \"%s\"", kColumnNames[c]);
	}
}

/* One column of one row version. */
struct Value {
	Datum datum;
	bool isnull;
};

Value
Get(HeapTuple tuple, TupleDesc desc, AttrNumber attnum)
{
	Value v;
	v.datum = heap_getattr(tuple, attnum, desc, &v.isnull);
	return v;
}

/* Two non-null values of a column, compared with the type's equality operator (its collation for text). */
bool
Equal(TupleDesc desc, AttrNumber attnum, Datum a, Datum b)
{
	Form_pg_attribute att = TupleDescAttr(desc, attnum - 1);
	TypeCacheEntry *type = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR_FINFO);

	if (!OidIsValid(type->eq_opr_finfo.fn_oid))
		return datum_image_eq(a, b, att->attbyval, att->attlen);
	return DatumGetBool(FunctionCall2Coll(&type->eq_opr_finfo, att->attcollation, a, b));
}

bool
NotDistinct(TupleDesc desc, AttrNumber attnum, Value a, Value b)
{
	if (a.isnull || b.isnull)
		return a.isnull && b.isnull;
	return Equal(desc, attnum, a.datum, b.datum);
}

/* `NEW.x <> OLD.x` is true: both non-null and unequal. */
bool
Changed(TupleDesc desc, AttrNumber attnum, Value a, Value b)
{
	return !a.isnull && !b.isnull && !Equal(desc, attnum, a.datum, b.datum);
}

/* The status as plpgsql's RAISE prints it. */
const char *
StatusText(Value status)
{
	return status.isnull ? "<NULL>" : TextDatumGetCString(status.datum);
}

char *
RunId(HeapTuple tuple, TupleDesc desc)
{
	Value id = Get(tuple, desc, column_numbers[COL_ID]);
	return id.isnull ? pstrdup("<NULL>") : DatumGetCString(DirectFunctionCall1(uuid_out, id.datum));
}

void
RefuseTransition(const char *format, HeapTuple old_row, TupleDesc desc, const char *from, const char *to)
{
	ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg(format, RunId(old_row, desc), from, to)));
}

/* A running run whose only change is a first cancel request (cancel_diagnosis): every other column, and the
 * request's time and role both set. */
bool
IsCancelRequestOnly(HeapTuple old_row, HeapTuple new_row, TupleDesc desc)
{
	Value old_at = Get(old_row, desc, column_numbers[COL_CANCEL_REQUESTED_AT]);
	Value new_at = Get(new_row, desc, column_numbers[COL_CANCEL_REQUESTED_AT]);
	Value new_by = Get(new_row, desc, column_numbers[COL_CANCEL_REQUESTED_BY]);

	if (!old_at.isnull || new_at.isnull || new_by.isnull)
		return false;
	for (int i = 0; i < desc->natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);
		if (att->attisdropped || att->attnum == column_numbers[COL_CANCEL_REQUESTED_AT] ||
		    att->attnum == column_numbers[COL_CANCEL_REQUESTED_BY])
			continue;
		if (!NotDistinct(desc, att->attnum, Get(old_row, desc, att->attnum), Get(new_row, desc, att->attnum)))
			return false;
	}
	return true;
}

Datum
GuardDelete(TriggerData *trigger, TupleDesc desc)
{
	HeapTuple old_row = trigger->tg_trigtuple;
	Value status = Get(old_row, desc, column_numbers[COL_STATUS]);

	if (pgdiag::Purging() && !status.isnull && pgdiag::IsTerminalStatusName(StatusText(status)))
		return PointerGetDatum(old_row);
	ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
	                errmsg("run %s cannot be deleted", RunId(old_row, desc)),
	                errhint("Terminal runs are deleted by diagnosis.purge_runs().")));
	return (Datum) 0;
}

Datum
GuardUpdate(TriggerData *trigger, TupleDesc desc)
{
	HeapTuple old_row = trigger->tg_trigtuple;
	HeapTuple new_row = trigger->tg_newtuple;
	Value old_status_value = Get(old_row, desc, column_numbers[COL_STATUS]);
	Value new_status_value = Get(new_row, desc, column_numbers[COL_STATUS]);
	const char *from = StatusText(old_status_value);
	const char *to = StatusText(new_status_value);

	if (!old_status_value.isnull && pgdiag::IsTerminalStatusName(from))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("run %s is %s: a terminal run cannot change", RunId(old_row, desc), from)));
	for (Column c : kIdentity)
		if (Changed(desc, column_numbers[c], Get(new_row, desc, column_numbers[c]),
		            Get(old_row, desc, column_numbers[c])))
			ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			                errmsg("the identity of run %s cannot change", RunId(old_row, desc))));
	if (!NotDistinct(desc, column_numbers[COL_IDEMPOTENCY_KEY], Get(new_row, desc, column_numbers[COL_IDEMPOTENCY_KEY]),
	                 Get(old_row, desc, column_numbers[COL_IDEMPOTENCY_KEY])))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("the identity of run %s cannot change", RunId(old_row, desc))));

	if (!old_status_value.isnull && !new_status_value.isnull && strcmp(from, to) == 0) {
		/* cancel_diagnosis records a cancel request, and changes nothing else; the worker ends the call. */
		if (strcmp(from, "running") == 0 && !pgdiag::ActsAsWorker() && !IsCancelRequestOnly(old_row, new_row, desc))
			ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			                errmsg("only a pg_diagnosis worker may change running run %s", RunId(old_row, desc))));
		return PointerGetDatum(new_row);
	}
	if ((strcmp(from, "queued") == 0 && strcmp(to, "running") == 0) ||
	    (strcmp(from, "running") == 0 && !new_status_value.isnull &&
	     (pgdiag::IsTerminalStatusName(to) || strcmp(to, "queued") == 0))) {
		if (!pgdiag::ActsAsWorker())
			RefuseTransition("only a pg_diagnosis worker may move run %s from %s to %s", old_row, desc, from, to);
		return PointerGetDatum(new_row);
	}
	if (strcmp(from, "queued") == 0 && strcmp(to, "cancelled") == 0)
		return PointerGetDatum(new_row);
	RefuseTransition("run %s cannot move from %s to %s", old_row, desc, from, to);
	return (Datum) 0;
}

} // namespace

/* Only ever raises PostgreSQL errors: no C++ object with a destructor is alive across an ereport. */
extern "C" Datum
pgdiag_runs_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	TupleDesc desc;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigger->tg_event) ||
	    !TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
		elog(ERROR, "diagnosis._runs_guard() must be a BEFORE ... FOR EACH ROW trigger");
	if (!IsRunsTable(trigger->tg_relation))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
		                errmsg("diagnosis._runs_guard() guards diagnosis.runs only, not \"%s\"",
		                       RelationGetRelationName(trigger->tg_relation))));
	desc = RelationGetDescr(trigger->tg_relation);
	LookUpColumnNumbers(desc);
	if (TRIGGER_FIRED_BY_DELETE(trigger->tg_event))
		return GuardDelete(trigger, desc);
	if (TRIGGER_FIRED_BY_UPDATE(trigger->tg_event))
		return GuardUpdate(trigger, desc);
	elog(ERROR, "diagnosis._runs_guard() guards UPDATE and DELETE only");
	return (Datum) 0;
}
