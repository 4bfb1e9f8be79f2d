// Retry policy, Retry-After parsing and error codes.
#include <gtest/gtest.h>

#include "pg_diagnosis/core/backoff.hpp"
#include "pg_diagnosis/core/error_code.hpp"

using namespace pgdiag;

TEST(Backoff, CeilingDoublesPerAttemptUpToTheCap)
{
	// jitter just below 1 gives (almost) the ceiling
	EXPECT_EQ(RetryDelayMs(1, 100, 100000, -1, 0.999999), 99);
	EXPECT_EQ(RetryDelayMs(2, 100, 100000, -1, 0.999999), 199);
	EXPECT_EQ(RetryDelayMs(4, 100, 100000, -1, 0.999999), 799);
	EXPECT_EQ(RetryDelayMs(30, 100, 5000, -1, 0.999999), 4999);
	EXPECT_EQ(RetryDelayMs(1000, 1000, 900000, -1, 0.5), 450000); // no overflow on huge attempts
}

TEST(Backoff, FullJitterSpreadsFromZero)
{
	EXPECT_EQ(RetryDelayMs(3, 100, 100000, -1, 0.0), 0);
	EXPECT_EQ(RetryDelayMs(3, 100, 100000, -1, 0.5), 200);
	EXPECT_EQ(RetryDelayMs(0, 100, 100000, -1, 0.5), 50); // attempt below 1 counts as 1
}

TEST(Backoff, NeverSoonerThanRetryAfter)
{
	EXPECT_EQ(RetryDelayMs(1, 100, 100000, 2000, 0.5), 2000);
	EXPECT_EQ(RetryDelayMs(5, 1000, 100000, 10, 0.999999), 15999);
	EXPECT_EQ(RetryDelayMs(1, 0, 0, 0, 0.3), 0);
}

// Issue 27: runs were parked until 2058 and 9999-12-31 by a Retry-After the worker honoured without a cap.
TEST(Backoff, RetryAfterIsCappedLikeTheBackoff)
{
	const int64_t cap = 15 * 60 * 1000;
	EXPECT_EQ(RetryDelayMs(1, 5000, cap, ParseRetryAfterMs("999999999999", 0), 0.5), cap);
	std::time_t now = 1788000000; // 2026
	EXPECT_EQ(RetryDelayMs(1, 5000, cap, ParseRetryAfterMs("Fri, 31 Dec 9999 23:59:59 GMT", now), 0.5), cap);
	EXPECT_EQ(RetryDelayMs(1, 5000, cap, ParseRetryAfterMs("Mon, 01 Jan 2058 00:00:00 GMT", now), 0.5), cap);
	EXPECT_EQ(RetryDelayMs(1, 5000, cap, 60000, 0.5), 60000); // within the cap it still holds
}

TEST(RetryAfter, DeltaSeconds)
{
	EXPECT_EQ(ParseRetryAfterMs("120", 0), 120000);
	EXPECT_EQ(ParseRetryAfterMs(" 0 ", 0), 0);
	EXPECT_EQ(ParseRetryAfterMs("", 0), -1);
	EXPECT_EQ(ParseRetryAfterMs("soon", 0), -1);
	EXPECT_EQ(ParseRetryAfterMs("-5", 0), -1);
}

TEST(RetryAfter, HttpDates)
{
	// 1994-11-06 08:49:37 UTC = 784111777
	std::time_t now = 784111777 - 30;
	EXPECT_EQ(ParseRetryAfterMs("Sun, 06 Nov 1994 08:49:37 GMT", now), 30000);   // IMF-fixdate
	EXPECT_EQ(ParseRetryAfterMs("Sunday, 06-Nov-94 08:49:37 GMT", now), 30000);  // RFC 850
	EXPECT_EQ(ParseRetryAfterMs("Sun Nov  6 08:49:37 1994", now), 30000);        // asctime
	EXPECT_EQ(ParseRetryAfterMs("Sun, 06 Nov 1994 08:49:37 GMT", now + 100), 0); // in the past
}

TEST(ErrorCodes, NamesAndTransience)
{
	EXPECT_STREQ(ErrorCodeName(ErrorCode::ValidationError), "VALIDATION_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::LlmError), "LLM_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::ContextPackError), "CONTEXT_PACK_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::McpError), "MCP_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::NetworkError), "NETWORK_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::TimeoutError), "TIMEOUT_ERROR");
	EXPECT_STREQ(ErrorCodeName(ErrorCode::UnknownError), "UNKNOWN_ERROR");
	EXPECT_TRUE(IsTransient(ErrorCode::NetworkError));
	EXPECT_TRUE(IsTransient(ErrorCode::TimeoutError));
	for (ErrorCode c : {ErrorCode::ValidationError, ErrorCode::LlmError, ErrorCode::ContextPackError,
	                    ErrorCode::McpError, ErrorCode::UnknownError})
		EXPECT_FALSE(IsTransient(c));
}
