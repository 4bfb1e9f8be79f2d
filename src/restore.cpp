/*-------------------------------------------------------------------------
 * restore.cpp
 *		Recognises a restore, so the artifacts insert guard lets pg_restore and psql through.
 *
 * pg_dump writes the rows of extension configuration tables as "COPY diagnosis.<table> (...) FROM stdin", which
 * pg_restore and psql send as the session's top-level statement. A restore is therefore a superuser whose active
 * portal runs exactly COPY <the guarded table> FROM. A superuser's INSERT, a COPY into another table whose
 * triggers write artifacts, and COPY (INSERT ... RETURNING) TO stay refused. A superuser could disable the
 * triggers anyway: the guard stops mistakes, and this check keeps it from stopping backups.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/restore.hpp"

extern "C" {
#include "catalog/namespace.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "tcop/pquery.h"

PG_FUNCTION_INFO_V1(pgdiag_restoring);
}

/* RestoringInto looks at the top-level portal, not the current statement, because a COPY FROM run by a function
 * (or a trigger of another table's COPY) is no restore. */
bool
pgdiag::RestoringInto(Oid relid)
{
	PlannedStmt *stmt;
	CopyStmt *copy;

	if (!superuser() || ActivePortal == NULL || list_length(ActivePortal->stmts) != 1)
		return false;
	stmt = (PlannedStmt *) linitial(ActivePortal->stmts);
	if (!IsA(stmt, PlannedStmt) || stmt->commandType != CMD_UTILITY || !IsA(stmt->utilityStmt, CopyStmt))
		return false;
	copy = (CopyStmt *) stmt->utilityStmt;
	/* pg_dump qualifies the table, so the guard's pinned search_path resolves it as the session did. */
	return copy->is_from && copy->relation != NULL && RangeVarGetRelid(copy->relation, NoLock, true) == relid;
}

/* diagnosis._restoring(target oid): for the insert guards (sql/pg_diagnosis.sql, "Backup and restore"). */
Datum
pgdiag_restoring(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(pgdiag::RestoringInto(PG_GETARG_OID(0)));
}
