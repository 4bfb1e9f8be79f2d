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

/* This worker's per-start token, recorded with the runs it claims (0 outside a worker). */
long long MyWorkerToken();
} // namespace pgdiag
