/*
 * backoff.cpp: the retry policy and Retry-After parsing.
 */
#include <algorithm>
#include <cctype>
#include <cmath>

#include <curl/curl.h>

#include "pg_diagnosis/core/backoff.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

int64_t
RetryDelayMs(int attempt, int64_t base_ms, int64_t cap_ms, int64_t retry_after_ms, double jitter)
{
	if (attempt < 1)
		attempt = 1;
	base_ms = std::max<int64_t>(base_ms, 0);
	cap_ms = std::max<int64_t>(cap_ms, 0);
	jitter = std::clamp(jitter, 0.0, 1.0);
	/* base * 2^(attempt-1) without overflow: stop doubling once past the cap. */
	int64_t ceiling = base_ms;
	for (int i = 1; i < attempt && ceiling < cap_ms; i++)
		ceiling = ceiling > cap_ms / 2 ? cap_ms : ceiling * 2;
	ceiling = std::min(ceiling, cap_ms);
	int64_t delay = static_cast<int64_t>(std::floor(static_cast<double>(ceiling) * jitter));
	if (delay >= ceiling && ceiling > 0)
		delay = ceiling - 1; /* jitter is in [0, 1) */
	/* The server's Retry-After is honoured up to the same cap: a date in 2058 must not park a run for decades. */
	if (retry_after_ms >= 0)
		delay = std::max(delay, std::min(retry_after_ms, cap_ms));
	return delay;
}

int64_t
ParseRetryAfterMs(const std::string &value, std::time_t now)
{
	size_t begin = value.find_first_not_of(" \t");
	if (begin == std::string::npos)
		return -1;
	size_t end = value.find_last_not_of(" \t\r\n");
	std::string v = value.substr(begin, end - begin + 1);

	if (std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); })) {
		if (v.size() > 9)
			return static_cast<int64_t>(999999999) * 1000; /* absurd but valid: clamp */
		return static_cast<int64_t>(std::stoll(v)) * 1000;
	}
	/* An HTTP-date: libcurl already parses all three formats of RFC 9110. */
	time_t when = curl_getdate(v.c_str(), nullptr);
	if (when == static_cast<time_t>(-1))
		return -1;
	return when <= now ? 0 : static_cast<int64_t>(when - now) * 1000;
}

} // namespace pgdiag
