/*
 * worker_store.hpp: the worker's transactions. Each function is one short transaction (or none), never open
 * across network I/O: claim and commit, call over HTTP, then finalize in a new transaction.
 */
#pragma once

extern "C" {
#include "postgres.h"

#include "utils/timestamp.h"
#include "utils/uuid.h"
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

/* A run the claim took, in the worker's memory until its call is submitted or it ends without one. */
struct ClaimedRun {
	char *run_id;
	pg_uuid_t patient;
	pg_uuid_t organization;
	char *schema_version;
	char *inputs;
	char *traceparent;
	char *resume_task_id; /* NULL: call the tool */
	int attempt;
	int max_retries;
	char *pack;          /* the context pack with the run's inputs merged in */
	char *pack_error;    /* why the pack could not be built */
	bool pack_transient; /* the pack timed out or waited for a lock: tried again with backoff */
	bool handed_back; /* not built for a cause not the run's (the byte budget): back to the queue, attempt given back */
};

struct ClaimResult {
	int claimed;
	TimestampTz next_due; /* earliest run_after of a queued run when none was claimed */
	char *config_error;   /* a setting that cannot work (the context pack function): nothing was claimed */
	ClaimedRun *awaiting; /* runs whose pack a pack builder makes (pack_builders.hpp), in the caller's context */
	int n_awaiting;
};

/*
 * Claims up to `limit` due runs, at most kStatementBatchMax (FOR NO KEY UPDATE SKIP LOCKED, taking turns between
 * organizations; within one, priority then run_after) and writes LOCKED, in one transaction. The shipped default
 * pack (the extension's own bounded query) is built in that transaction, for the whole claim in one statement;
 * any other pack function's runs (code others own: a replacement pack, the FHIR pack over the hospital's source)
 * come back in result->awaiting, for a pack builder to build off the worker's loop. Runs with a pack are
 * submitted to the MCP client; runs whose pack failed are handed to finalize (DeliverClaimed).
 */
void ClaimRuns(int limit, int64 token, ClaimResult *result);

/*
 * Builds the pack of one claimed run as the pack function's owner, under diagnosis.context_pack_timeout_ms, in
 * its own transaction, within *budget_left bytes: sets run->pack, or run->pack_error (and pack_transient), or
 * run->handed_back. Used by a pack builder process and by the worker when no builder could start.
 */
void BuildPackOfRun(ClaimedRun *run, Size *budget_left);

/* The byte budget of one claim's (or one builder's) packs: 8 times diagnosis.max_context_pack_bytes. */
Size PackBudget();

/* Submits the runs that have a pack to the MCP client and records the others as ended without a call. */
void DeliverClaimed(ClaimedRun *runs, int n);

/* A deep copy of `run` in `context` (runs outlive the worker's loop context while their pack is built). */
void CopyClaimedRun(MemoryContext context, const ClaimedRun *from, ClaimedRun *to);

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
