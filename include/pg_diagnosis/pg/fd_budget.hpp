/*
 * fd_budget.hpp: how many MCP calls fit in the file descriptors a worker may open.
 */
#pragma once

namespace pgdiag {

struct FdBudget {
	int soft_limit; /* RLIMIT_NOFILE after raising it */
	int hard_limit;
	int call_limit; /* calls in flight that fit beside PostgreSQL's own descriptors (at least 1) */
};

/* Raises the soft RLIMIT_NOFILE towards the hard limit as far as `wanted_calls` need, and returns what fits. */
FdBudget PlanFdBudget(int wanted_calls);

} // namespace pgdiag
