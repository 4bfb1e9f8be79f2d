/*
 * cpp_guard.hpp: the PostgreSQL -> C++ boundary.
 *
 * Code that PostgreSQL calls (SQL functions, the worker body) runs in the PostgreSQL regime: palloc, ereport,
 * no C++ object with a destructor on its stack. When it needs the C++ core it calls CppGuard(), which runs the
 * lambda, catches every exception, copies the message into a static buffer and returns false, so the caller
 * can ereport AFTER all C++ frames and the exception object are gone (pg_duckdb's InvokeCPPFunc, plus the
 * catch (...) it lacks). An ereport must never be raised inside the lambda. The worker's bridge
 * (worker_calls.hpp) wraps every entry in it and reports failure as false.
 */
#pragma once

#include <cstdio>
#include <exception>
#include <new>

namespace pgdiag {

/* The last error caught by CppGuard; static storage so nothing needs freeing after a longjmp. */
extern char cpp_guard_message[512];

template <typename F>
bool
CppGuard(F &&func) noexcept
{
	try {
		func();
		return true;
	} catch (const std::bad_alloc &) {
		std::snprintf(cpp_guard_message, sizeof(cpp_guard_message), "out of memory in the C++ core");
	} catch (const std::exception &e) {
		std::snprintf(cpp_guard_message, sizeof(cpp_guard_message), "%s", e.what());
	} catch (...) {
		std::snprintf(cpp_guard_message, sizeof(cpp_guard_message), "unknown C++ exception");
	}
	return false;
}

} // namespace pgdiag
