/*
 * worker_store.hpp: the worker's transactions. Each function is one short transaction (or none), never open
 * across network I/O: claim and commit, call over HTTP, then finalize in a new transaction.
 */
#pragma once

extern "C" {
#include "postgres.h"

#include "utils/timestamp.h"
}

namespace pgdiag {

/* True when CREATE EXTENSION pg_diagnosis has run in this database. */
bool ExtensionReady();

/* Compiles every result schema into the C++ registry. */
void LoadResultSchemas();

/*
 * Puts back runs left in `running` by processes that are not live workers, or whose lease expired
 * (RECOVERED; FAILED when their attempts are spent). With only_mine, hands back this worker's own runs
 * (shutdown). Returns how many runs moved.
 */
int RecoverRuns(bool only_mine);

/*
 * Claims up to `limit` due runs (FOR UPDATE SKIP LOCKED, priority then run_after), writes LOCKED, builds their
 * context packs (a pack that fails fails its run with CONTEXT_PACK_ERROR) and submits them to the MCP client.
 * Returns how many were claimed; *next_due is the earliest run_after of a queued run when fewer than `limit`
 * were due (DT_NOEND when none).
 */
int ClaimRuns(int limit, TimestampTz *next_due);

/* Writes every finished run: artifacts, status and audit row, guarded by status and attempt. Returns how many
 * runs reached a terminal status; *next_retry becomes the earliest run_after of a retry it scheduled, if sooner. */
int FinalizeFinishedRuns(TimestampTz *next_retry);

/* Writes due progress reports of runs in flight. */
void WriteProgress();

} // namespace pgdiag
