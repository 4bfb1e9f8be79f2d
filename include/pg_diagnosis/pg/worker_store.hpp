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

/* The most rows one claim, finalize or progress statement takes; more go in several short transactions. One
 * statement of thousands of rows cost more per row, and held every call back until it committed. */
constexpr int kStatementBatchMax = 256;

enum class ExtensionState { Missing, OtherVersion, Ready };

/* Whether CREATE EXTENSION pg_diagnosis has run in this database, at the version this library drives. */
ExtensionState ExtensionReady();

/* Compiles every result schema into the C++ registry. */
void LoadResultSchemas();

/*
 * Puts back runs left in `running` by workers that are not alive (their token is not a live worker's), or whose
 * lease expired (RECOVERED; FAILED when their attempts are spent; CANCELLED when a cancel was requested). With
 * hand_back, hands back this worker's own runs at a clean shutdown, giving their attempt back. Returns how many
 * runs moved; *running_left (when not NULL) says whether any run is still running anywhere. `token` is this
 * worker's per-start token. Like every function here, a lock not available within lock_timeout leaves the work
 * for a later pass (nothing written, nothing lost).
 */
int RecoverRuns(int64 token, bool hand_back, bool *running_left);

struct ClaimResult {
	int claimed;
	TimestampTz next_due; /* earliest run_after of a queued run when none was claimed */
	char *config_error;   /* a setting that cannot work (the context pack function): nothing was claimed */
};

/*
 * Claims up to `limit` due runs, at most kStatementBatchMax (FOR NO KEY UPDATE SKIP LOCKED, taking turns between
 * organizations; within one, priority then run_after), writes LOCKED, builds their context packs as the pack
 * function's owner (a pack that fails, or is over diagnosis.max_context_pack_bytes, fails its run with
 * CONTEXT_PACK_ERROR; one over diagnosis.context_pack_timeout_ms is retried with backoff; runs past the claim's
 * byte budget go back to the queue) and submits them to the MCP client, all in one transaction.
 */
void ClaimRuns(int limit, int64 token, ClaimResult *result);

struct FinalizeResult {
	int terminal;           /* runs that reached completed, failed or cancelled */
	int settled;            /* runs written (terminal or queued again); the rest were locked and stay pending */
	TimestampTz next_retry; /* earliest run_after of a retry it scheduled, or DT_NOEND */
	char last_error[256];   /* "CODE: message" of the last failed or retried run, or "" */
};

/* Writes every finished run: artifacts, status and audit row, guarded by status and attempt, kStatementBatchMax
 * runs per transaction; rows another transaction holds locked are kept for the next pass, never waited for. */
void FinalizeFinishedRuns(FinalizeResult *result);

/* Commits the tasks the server created for calls in flight (task id and expiry in the run's row). */
void RecordTasks();

/* Stops the calls of this worker's runs (by its token) whose cancel was requested. */
void StopCancelledCalls(int64 token);

/* Writes due progress reports of runs in flight. */
void WriteProgress();

} // namespace pgdiag
