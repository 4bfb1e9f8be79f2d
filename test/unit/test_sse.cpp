// The incremental SSE parser.
#include <gtest/gtest.h>

#include "pg_diagnosis/core/sse_parser.hpp"

using namespace pgdiag;

static std::vector<SseEvent>
ParseChunks(const std::vector<std::string> &chunks, bool *ok = nullptr, std::string *last_id = nullptr)
{
	SseParser parser;
	std::vector<SseEvent> events;
	bool all = true;
	for (const std::string &c : chunks)
		all = parser.Feed(c.data(), c.size(), events) && all;
	if (ok)
		*ok = all;
	if (last_id)
		*last_id = parser.LastEventId();
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
	std::string last_id;
	auto events = ParseChunks(
	    {": keep-alive\n", "id: 7\nevent: update\nretry: 100\nfoo: bar\n", "data: line1\ndata:line2\ndata\n\n"},
	    nullptr, &last_id);
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].type, "update");
	EXPECT_EQ(last_id, "7");
	EXPECT_EQ(events[0].data, "line1\nline2\n"); // "data" with no colon appends an empty line
}

TEST(Sse, PrimingEventWithEmptyDataAndEventsWithoutData)
{
	std::string last_id;
	auto events = ParseChunks({"id: 1\ndata:\n\n", "event: x\n\n", "data: real\n\n"}, nullptr, &last_id);
	ASSERT_EQ(events.size(), 2u);
	EXPECT_EQ(events[0].data, "");
	EXPECT_EQ(events[1].data, "real");
	EXPECT_EQ(last_id, "1"); // the last event id persists
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

// Issue 27: what a stream costs is what it sent, however it is framed. Each framing below is written out; the
// bytes the parser and its events hold are measured with the accounting the transport charges to its budget.
static size_t
Held(const SseParser &parser, const std::vector<SseEvent> &events)
{
	size_t held = parser.HeldBytes() + (events.capacity() - events.size()) * sizeof(SseEvent);
	for (const SseEvent &e : events)
		held += SseEventBytes(e);
	return held;
}

TEST(SseBounds, A64KiBIdIsKeptOnceNotCopiedIntoEveryEvent)
{
	// 0.2.0 copied the id into each of these 20,000 events: 1.3 GB from 184 KB.
	std::string id(kMaxSseFieldBytes - 4, 'i'); // "id: " + the id: the longest id line accepted
	std::string stream = "id: " + id + "\n";
	for (int i = 0; i < 20000; i++)
		stream += "data:\n\n";
	SseParser parser;
	std::vector<SseEvent> events;
	ASSERT_TRUE(parser.Feed(stream.data(), stream.size(), events));
	EXPECT_EQ(events.size(), 20000u);
	EXPECT_EQ(parser.LastEventId(), id);
	EXPECT_LT(Held(parser, events), 20 * stream.size());
}

TEST(SseBounds, OverlongIdOrEventLineFailsTheStream)
{
	for (const char *field : {"id", "event"}) {
		SseParser parser;
		std::vector<SseEvent> events;
		std::string line = std::string(field) + ": " + std::string(64 << 10, 'x') + "\n";
		// Fed in small chunks: the line is refused while it arrives, not once it is all buffered.
		bool ok = true;
		for (size_t i = 0; i < line.size() && ok; i += 100) {
			ok = parser.Feed(line.data() + i, std::min<size_t>(100, line.size() - i), events);
			EXPECT_LE(parser.HeldBytes(), 4 * kMaxSseFieldBytes);
		}
		EXPECT_FALSE(ok) << field;
		EXPECT_NE(parser.FailureReason().find(std::string("SSE ") + field + ": line exceeds"), std::string::npos)
		    << parser.FailureReason();
	}
}

TEST(SseBounds, OverlongCommentsRetryAndUnknownFieldsAreSkippedUnbuffered)
{
	SseParser parser;
	std::vector<SseEvent> events;
	std::string big(1 << 20, 'c');
	for (const std::string &line : {": " + big, "retry: " + std::string(1 << 20, '9'), "x-junk: " + big}) {
		for (size_t i = 0; i < line.size(); i += 4096)
			ASSERT_TRUE(parser.Feed(line.data() + i, std::min<size_t>(4096, line.size() - i), events));
		EXPECT_LE(parser.HeldBytes(), 4 * kMaxSseFieldBytes);
		ASSERT_TRUE(parser.Feed("\n", 1, events));
	}
	ASSERT_TRUE(parser.Feed("data: after\n\n", 13, events));
	ASSERT_EQ(events.size(), 1u); // a skipped line ends cleanly: no stray dispatch, the next event intact
	EXPECT_EQ(events[0].data, "after");
	EXPECT_EQ(parser.RetryMs(), -1);
}

TEST(SseBounds, ManyTinyEventsCostAFixedOverheadEach)
{
	// The smallest event a stream can send is 6 bytes ("data\n\n"); CR-only line ends too.
	for (const char *framing : {"data\n\n", "data\r\r", "data:\r\n\r\n", "event:message\ndata\n\n"}) {
		std::string stream;
		while (stream.size() < (1u << 20))
			stream += framing;
		SseParser parser;
		std::vector<SseEvent> events;
		ASSERT_TRUE(parser.Feed(stream.data(), stream.size(), events));
		size_t per_event = sizeof(SseEvent) + 2 * 15 + 1; /* the struct and two inline buffers */
		EXPECT_LE(Held(parser, events), 2 * events.size() * per_event + 4096) << framing;
		// What the transport's budget of 2 * max_bytes + 64 KiB admits of this before failing the exchange is
		// therefore a fixed number of events, whatever the framing; memory stays within that budget.
	}
}

TEST(SseBounds, ALargeDataLineIsNotHeldThreeTimes)
{
	std::string payload(4 << 20, 'd');
	std::string stream = "data: " + payload + "\n\n";
	SseParser parser;
	std::vector<SseEvent> events;
	size_t peak = 0;
	for (size_t i = 0; i < stream.size(); i += 16384) {
		ASSERT_TRUE(parser.Feed(stream.data() + i, std::min<size_t>(16384, stream.size() - i), events));
		peak = std::max(peak, Held(parser, events));
	}
	ASSERT_EQ(events.size(), 1u);
	EXPECT_EQ(events[0].data.size(), payload.size());
	EXPECT_LE(events[0].data.capacity(), payload.size() + 1); // not doubled by its line end
	EXPECT_LE(peak, 4 * payload.size() + 65536);          // while the line arrives: the line's growth, then the data
	EXPECT_LE(parser.HeldBytes(), 4 * kMaxSseFieldBytes); // the line's buffer is not kept after it
}
