/*-------------------------------------------------------------------------
 * pg_diagnosis.cpp
 *		Module entry point: settings, shared memory and the background workers.
 *
 * Loaded outside shared_preload_libraries (a plain CREATE EXTENSION or LOAD), the library still defines its
 * settings and its SQL functions work; it just has no shared memory and no workers, so runs stay queued.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/shmem.hpp"
#include "pg_diagnosis/pg/worker.hpp"

extern "C" {
#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

PGDLLEXPORT void _PG_init(void);
}

void
_PG_init(void)
{
	pgdiag::InitGucs();
	if (!process_shared_preload_libraries_in_progress)
		return;
	pgdiag::InitShmemHooks();
	pgdiag::RegisterWorkers();
}
