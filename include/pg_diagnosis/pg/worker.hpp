/*
 * worker.hpp: the pg_diagnosis background workers.
 */
#pragma once

namespace pgdiag {
/* Registers diagnosis.workers static workers; only while shared_preload_libraries is being processed. */
void RegisterWorkers();
/* True in a pg_diagnosis worker's own statements, the authority the state machine (src/runs_guard.cpp) and
 * diagnosis._is_worker() check. Code the worker runs on someone else's behalf (the context pack function, as its
 * owner under SECURITY_RESTRICTED_OPERATION) does not get it. */
bool ActsAsWorker();

/* The settings every process of the worker's sets for its session right after connecting (its own, whatever the
 * database's or a role's owner attached), and search_path pinned to pg_catalog, pg_temp. */
void SetUpWorkerSession();
/* Becomes diagnosis.worker_role for the rest of the session (refusing a superuser role); NULL once done, else
 * why not, with the worker's state in *state. */
const char *BecomeWorkerRole(const char **state);
/* This worker's per-start token, recorded with the runs it claims (0 outside a worker). */
long long MyWorkerToken();
} // namespace pgdiag
