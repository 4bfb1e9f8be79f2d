/*
 * pack_builders.hpp: context packs of code others own, built off the worker's loop (src/pack_builders.cpp).
 */
#pragma once

#include "pg_diagnosis/pg/worker_store.hpp"

namespace pgdiag {
namespace packs {

/* At most this many pack builders run for one worker at once (one per organization). */
constexpr int kMaxPackBuilders = 4;

/* Takes claimed runs whose pack a builder makes (ClaimResult.awaiting); they are copied. */
void Hand(const ClaimedRun *runs, int n);

/* One pass: takes the packs builders sent (each run submitted or ended as its pack says), ends builders that are
 * done, gone or overdue, and starts builders for the organizations that wait. Returns how many runs it
 * submitted or ended. */
int Step();

/* Runs handed over whose call has not started yet (they hold a slot of diagnosis.max_inflight). */
int Pending();

/* Milliseconds until a builder's deadline or a waiting run's limit, or -1 when nothing waits. */
long TimeoutMs();

/* The longest a claimed run may wait for its pack from a builder (counted into the claim's lease). */
int64 MaxPackMs();

/* At shutdown: stops every builder; the runs stay running under the worker's token, for RecoverRuns to hand
 * back. */
void StopAll();

} // namespace packs
} // namespace pgdiag

extern "C" {
PGDLLEXPORT void pgdiag_pack_builder_main(Datum main_arg);
}
