/*
 * worker.hpp: the pg_diagnosis background workers.
 */
#pragma once

namespace pgdiag {
/* Registers diagnosis.workers static workers; only while shared_preload_libraries is being processed. */
void RegisterWorkers();
/* True in a pg_diagnosis worker process: the state-machine trigger lets only workers move runs out of running. */
bool AmWorker();

/* This worker's per-start token, recorded with the runs it claims (0 outside a worker). */
long long MyWorkerToken();
} // namespace pgdiag
