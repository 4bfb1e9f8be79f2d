// The incremental SSE parser.
#include <gtest/gtest.h>

#include "pg_diagnosis/core/sse_parser.hpp"

using namespace pgdiag;

static std::vector<SseEvent>
ParseChunks(const std::vector<std::string> &chunks, bool *ok = nullptr)
{
	SseParser parser;
	std::vector<SseEvent> events;
	bool all = true;
	for (const std::string &c : chunks)
		all = parser.Feed(c.data(), c.size(), events) && all;
	if (ok)
		*ok = all;
	return events;
}

static std::vector<SseEvent>
ParseByteByByte(const std::string &s)
{
	std::vector<std::string> chunks;
	for (char c : s)
		chunks.emplace_back(1, c);
	return ParseChunks(chunks);
}

TEST(Sse, SimpleEventAndDefaultType)
{
	auto events = ParseChunks({"data: {\"a\":1}\n\n"});
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].type, "message");
	EXPECT_EQ(events[0].data, "{\"a\":1}");
}

TEST(Sse, LineEndingsLfCrCrlfAndSplitCrlf)
{
	for (const std::string &s : {std::string("event: message\ndata: x\n\n"), std::string("event: message\rdata: x\r\r"),
	                             std::string("event: message\r\ndata: x\r\n\r\n")}) {
		auto events = ParseByteByByte(s);
		ASSERT_EQ(events.size(), 1u) << s;
		EXPECT_EQ(events[0].data, "x");
	}
	// CR at the end of one chunk, LF at the start of the next: one line end, not two.
	auto events = ParseChunks({"data: a\r", "\ndata: b\r", "\n\r", "\n"});
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].data, "a\nb");
}

TEST(Sse, MultiLineDataCommentsIdsAndUnknownFields)
{
	auto events = ParseChunks(
	    {": keep-alive\n", "id: 7\nevent: update\nretry: 100\nfoo: bar\n", "data: line1\ndata:line2\ndata\n\n"});
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].type, "update");
	EXPECT_EQ(events[0].id, "7");
	EXPECT_EQ(events[0].data, "line1\nline2\n"); // "data" with no colon appends an empty line
}

TEST(Sse, PrimingEventWithEmptyDataAndEventsWithoutData)
{
	auto events = ParseChunks({"id: 1\ndata:\n\n", "event: x\n\n", "data: real\n\n"});
	ASSERT_EQ(events.size(), 2u);
	EXPECT_EQ(events[0].data, "");
	EXPECT_EQ(events[0].id, "1");
	EXPECT_EQ(events[1].data, "real");
	EXPECT_EQ(events[1].id, "1"); // the last event id persists
}

TEST(Sse, LeadingBomSplitAcrossChunks)
{
	auto events = ParseChunks({"\xEF", "\xBB",
	                           "\xBF"
	                           "data: x\n\n"});
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].data, "x");
	auto no_bom = ParseChunks({"\xEF"
	                           "data: y\n\n"}); // not a BOM: kept as text of an unknown field
	EXPECT_TRUE(no_bom.empty());
}

TEST(Sse, IncompleteEventAtEndIsNotDispatched)
{
	auto events = ParseChunks({"data: partial"});
	EXPECT_TRUE(events.empty());
}

TEST(Sse, CapOnPendingEvent)
{
	SseParser parser(16);
	std::vector<SseEvent> events;
	EXPECT_TRUE(parser.Feed("data: 0123\n", 11, events));
	EXPECT_FALSE(parser.Feed("data: 0123456789abcdef\n\n", 25, events));
	EXPECT_TRUE(parser.Failed());
	EXPECT_FALSE(parser.Feed("data: x\n\n", 9, events));
	EXPECT_TRUE(events.empty());
}

TEST(Sse, ChunkingNeverChangesTheEvents)
{
	std::string stream = ": hi\r\nid: 3\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\"}\r\n\r\ndata: a\rdata: b\r\r"
	                     "data: {\"x\":[1,2,3]}\n\n";
	auto whole = ParseChunks({stream});
	auto bytes = ParseByteByByte(stream);
	ASSERT_EQ(whole.size(), 3u);
	ASSERT_EQ(whole.size(), bytes.size());
	for (size_t i = 0; i < whole.size(); i++) {
		EXPECT_EQ(whole[i].data, bytes[i].data);
		EXPECT_EQ(whole[i].type, bytes[i].type);
		EXPECT_EQ(whole[i].id, bytes[i].id);
	}
}

// SEP-1699 needs the reconnection time and the last event id of a stream, kept across events.
TEST(Sse, RetryAndLastEventIdAreKept)
{
	SseParser parser;
	std::vector<SseEvent> events;
	EXPECT_EQ(parser.RetryMs(), -1);
	ASSERT_TRUE(parser.Feed("id: e-1\nretry: 500\ndata:\n\n", 26, events));
	EXPECT_EQ(parser.RetryMs(), 500);
	EXPECT_EQ(parser.LastEventId(), "e-1");
	std::string more = "retry: 5x\nretry:\nid: e-2\n\nretry: 99999999999\n";
	ASSERT_TRUE(parser.Feed(more.data(), more.size(), events));
	EXPECT_EQ(parser.LastEventId(), "e-2"); // an id without data still counts
	EXPECT_EQ(parser.RetryMs(), 999999999); // non-digits ignored, huge values capped
	EXPECT_EQ(events.size(), 1u);
}
