/*
 * run_status.hpp: the statuses of a run (SPEC section 3) and the retry rule, named once for C++.
 *
 * Header-only and free of PostgreSQL and of exceptions, so both regimes use it: the core and the bridge
 * (worker_calls.cpp), the state machine's guard (runs_guard.cpp), wait_for_run (sql_api.cpp) and the worker's
 * store. SQL names the same statuses in the CHECK of diagnosis.runs.status and the retry rule in
 * diagnosis._attempts_spent; test/unit/test_run_status.cpp ties the lists to sql/pg_diagnosis.sql.
 */
#pragma once

#include <cstring>

namespace pgdiag {

enum class RunStatus { Queued, Running, Completed, Failed, Cancelled };

/* In enum order: the values of runs.status. */
constexpr const char *kRunStatusNames[] = {"queued", "running", "completed", "failed", "cancelled"};
constexpr int kRunStatusCount = sizeof(kRunStatusNames) / sizeof(kRunStatusNames[0]);

constexpr const char *
RunStatusName(RunStatus status)
{
	return kRunStatusNames[static_cast<int>(status)];
}

/* Completed, failed and cancelled runs never change again. */
constexpr bool
IsTerminal(RunStatus status)
{
	return status == RunStatus::Completed || status == RunStatus::Failed || status == RunStatus::Cancelled;
}

/* The terminal test on a status as stored; false for anything that is not a status. */
inline bool
IsTerminalStatusName(const char *name)
{
	for (int i = 0; i < kRunStatusCount; i++)
		if (std::strcmp(name, kRunStatusNames[i]) == 0)
			return IsTerminal(static_cast<RunStatus>(i));
	return false;
}

/* The retry rule: attempt counts claims, and a run gets at most 1 + max_retries of them. */
constexpr bool
AttemptsSpent(int attempt, int max_retries)
{
	return attempt >= 1 + max_retries;
}

} // namespace pgdiag
