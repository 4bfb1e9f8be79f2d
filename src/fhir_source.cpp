/*-------------------------------------------------------------------------
 * fhir_source.cpp
 *		diagnosis._fhir_source_resources: the raw read of the relation diagnosis.fhir_source names, as its owner.
 *
 * Planning and running a query on a relation runs code its owner chose: index predicates and expressions
 * (the planner evaluates constant IMMUTABLE functions in them), partition keys, extended-statistics
 * expressions, a view's functions. The worker builds FHIR packs as the pack function's owner, so before this
 * read ran as that role (a superuser) and a hospital's loader could make it run anything. Here the read runs as
 * the relation's owner under SECURITY_RESTRICTED_OPERATION with search_path pinned, the bracket PostgreSQL uses
 * for index expressions during maintenance (vacuum.c): its code gets its owner's rights and nothing more.
 *-------------------------------------------------------------------------
 */
extern "C" {
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(pgdiag_fhir_source_resources);
}

static Oid
RelationOwner(Oid relid)
{
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* The relation diagnosis.fhir_source names, validated by diagnosis._fhir_source(). Must run inside SPI. */
static Oid
FhirSource(void)
{
	bool isnull;
	Datum d;

	if (SPI_execute("SELECT diagnosis._fhir_source()::pg_catalog.oid", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading diagnosis.fhir_source failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		elog(ERROR, "diagnosis._fhir_source() returned NULL");
	return DatumGetObjectId(d);
}

/*
 * The caller reads no more than it could itself: it needs SELECT on the relation, and no row-level security may
 * apply to it there (the owner reads past its policies).
 */
static void
CheckCallerMayRead(Oid relid)
{
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
		                errmsg("permission denied for table %s", get_rel_name(relid))));
	if (check_enable_rls(relid, GetUserId(), true) == RLS_ENABLED)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
		                errmsg("diagnosis.fhir_source \"%s\" has row-level security for %s", get_rel_name(relid),
		                       GetUserNameFromId(GetUserId(), false)),
		                errhint("Its owner reads it for the pack; let the pack's caller read it whole.")));
}

/*
 * diagnosis._fhir_source_resources(subject text, max int) returns jsonb: a JSON array of the Observation
 * resources whose subject reference is `subject`, newest first by their effective time as text (the order the
 * index README documents serves), at most `max`; every status. The user switch is the one BuildPacks
 * (worker_store.cpp) makes for the pack function; an error unwinds it through (sub)transaction abort.
 */
Datum
pgdiag_fhir_source_resources(PG_FUNCTION_ARGS)
{
	Oid argtypes[2] = {TEXTOID, INT4OID};
	Datum values[2] = {PG_GETARG_DATUM(0), PG_GETARG_DATUM(1)};
	Oid relid;
	char *sql;
	Oid save_userid;
	int save_sec_context;
	int save_nestlevel;
	Datum result;
	bool isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	relid = FhirSource();
	CheckCallerMayRead(relid);
	sql = psprintf("SELECT coalesce(pg_catalog.jsonb_agg(r.resource), '[]'::pg_catalog.jsonb)"
	               "  FROM (SELECT s.resource FROM %s s"
	               "         WHERE (s.resource -> 'subject' ->> 'reference') = $1"
	               "           AND (s.resource ->> 'resourceType') = 'Observation'"
	               "         ORDER BY (coalesce(s.resource ->> 'effectiveDateTime',"
	               "                            s.resource -> 'effectivePeriod' ->> 'end',"
	               "                            s.resource -> 'effectivePeriod' ->> 'start',"
	               "                            s.resource ->> 'effectiveInstant')) DESC NULLS LAST"
	               "         LIMIT $2) r",
	               quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid)));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(RelationOwner(relid), save_sec_context | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
	                         false);
	if (SPI_execute_with_args(sql, 2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading diagnosis.fhir_source failed");
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	result = SPI_datumTransfer(result, false, -1);
	SPI_finish();
	PG_RETURN_DATUM(result);
}
