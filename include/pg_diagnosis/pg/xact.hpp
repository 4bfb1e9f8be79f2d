/*
 * xact.hpp: per-transaction state of a backend: wake the workers at commit, and the purge permission.
 */
#pragma once

namespace pgdiag {
/* The workers are woken when the current transaction commits; nothing happens if it aborts. */
void WakeWorkersAtCommit();
/* Until the end of the current transaction, the insert-only guards let purge_runs delete. */
void BeginPurge();
bool Purging();
} // namespace pgdiag
