/*-------------------------------------------------------------------------
 * fd_budget.cpp
 *		The worker's file-descriptor budget: PostgreSQL's own descriptors first, MCP sockets in what is left.
 *
 * A service manager starts the server with a soft RLIMIT_NOFILE of 1024. PostgreSQL's fd.c may keep up to
 * max_safe_fds descriptors open for relation files (computed by the postmaster from the limit it had) plus a
 * few reserved ones, so without care every socket libcurl opens competes with them: pg_net is known for calls
 * failing with EMFILE and "out of file descriptors" in its own SQL. The worker raises its soft limit towards the
 * hard one as far as max_inflight needs, and never submits more calls than fit beside PostgreSQL's share.
 *-------------------------------------------------------------------------
 */
#include <climits>
#include <dirent.h>
#include <sys/resource.h>

#include "pg_diagnosis/pg/fd_budget.hpp"

extern "C" {
#include "postgres.h"

#include "storage/fd.h"
}

/* fd.c's NUM_RESERVED_FDS (not exported), plus what the client holds besides its connections: its epoll
 * descriptor, libcurl's wake-up socket pair and up to 8 idle cached connections. */
#define RESERVED_FOR_POSTGRES 10
#define CLIENT_OVERHEAD 16
/* One socket per connection, and a socket pair while libcurl's threaded resolver looks a name up. */
#define DESCRIPTORS_PER_CALL 2

/* Descriptors open in this process right now (the directory stream's own one not counted). */
static int
OpenDescriptors(void)
{
	DIR *dir = opendir("/proc/self/fd");
	int count = 0;

	if (dir == NULL)
		return 64; /* no /proc: a generous guess */
	while (readdir(dir) != NULL)
		count++;
	closedir(dir);
	return count - 3; /* ".", ".." and the directory's own descriptor */
}

pgdiag::FdBudget
pgdiag::PlanFdBudget(int wanted_calls)
{
	struct rlimit limit;
	FdBudget budget;
	long postgres_share = (long) OpenDescriptors() + max_safe_fds + RESERVED_FOR_POSTGRES + CLIENT_OVERHEAD;
	long wanted = postgres_share + (long) wanted_calls * DESCRIPTORS_PER_CALL;
	long fit;

	if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
		ereport(WARNING, (errmsg("pg_diagnosis: getrlimit(RLIMIT_NOFILE) failed: %m")));
		limit.rlim_cur = limit.rlim_max = 1024;
	}
	if ((long) limit.rlim_cur < wanted && limit.rlim_cur != RLIM_INFINITY) {
		struct rlimit raised = limit;
		raised.rlim_cur =
		    (limit.rlim_max == RLIM_INFINITY || (long) limit.rlim_max > wanted) ? (rlim_t) wanted : limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
			limit = raised;
		else
			ereport(WARNING, (errmsg("pg_diagnosis: raising RLIMIT_NOFILE to %ld failed: %m", (long) raised.rlim_cur)));
	}
	budget.soft_limit = limit.rlim_cur == RLIM_INFINITY ? INT_MAX : (int) Min((long) limit.rlim_cur, (long) INT_MAX);
	budget.hard_limit = limit.rlim_max == RLIM_INFINITY ? INT_MAX : (int) Min((long) limit.rlim_max, (long) INT_MAX);
	fit = ((long) budget.soft_limit - postgres_share) / DESCRIPTORS_PER_CALL;
	budget.call_limit = (int) Max(1L, Min(fit, (long) wanted_calls));
	return budget;
}
