/*
 * backoff.hpp: the retry policy: exponential backoff with full jitter, capped, never sooner than Retry-After.
 */
#pragma once

#include <cstdint>
#include <ctime>
#include <string>

namespace pgdiag {

/* The longest backoff between attempts, whatever the attempt count (docs/SECURITY.md promises it). */
constexpr int64_t kMaxRetryDelayMs = 15 * 60 * 1000;

/*
 * Delay before the next attempt after `attempt` claims (attempt >= 1) have failed transiently.
 * The ceiling is min(cap_ms, base_ms * 2^(attempt-1)); the delay is ceiling * jitter with jitter in [0, 1)
 * (full jitter, so a burst of failures spreads out); and never less than retry_after_ms when that is >= 0, which
 * is itself capped at cap_ms (the server's wish does not outrank the promised 15 minutes).
 */
int64_t RetryDelayMs(int attempt, int64_t base_ms, int64_t cap_ms, int64_t retry_after_ms, double jitter);

/*
 * Parses an HTTP Retry-After value: delta-seconds or an HTTP-date (RFC 9110 section 10.2.3).
 * Returns milliseconds from `now` (0 when the date is past), or -1 when the value is absent or malformed.
 */
int64_t ParseRetryAfterMs(const std::string &value, std::time_t now);

} // namespace pgdiag
