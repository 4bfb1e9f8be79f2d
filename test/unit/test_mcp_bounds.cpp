// The client against hostile peers (issue 27): server requests, resumption budgets, progress messages, task ids,
// held SSE events and response headers, each attack written out on the wire.
#include "test_server.hpp"

#include "pg_diagnosis/core/http_transport.hpp"
#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"

using namespace pgdiag_test;

namespace {

// A JSON-RPC response of the client to one of the server's requests (it has no method).
bool
IsReply(const Request &r)
{
	return r.method == "POST" && r.body.find("\"method\"") == std::string::npos;
}

int
Replies(TestServer &server)
{
	int n = 0;
	for (const Request &r : server.Requests())
		n += IsReply(r);
	return n;
}

std::string
Ping(const std::string &id)
{
	return "data: {\"jsonrpc\":\"2.0\",\"id\":\"" + id + "\",\"method\":\"ping\"}\n\n";
}

} // namespace

// 20 requests on the call's stream: four answered, sixteen ignored and counted. Every answer is itself answered with
// a stream holding another request (0.2.0 answered those too: a storm that outlived the run): none is answered.
TEST_F(ClientTest, ServerRequestsAFewPerCallOnItsOwnStreamNeverOnOurAnswers)
{
	std::atomic<int> storm{0};
	TestServer server([&](const Request &r, int) {
		if (IsReply(r))
			return Reply{Http(200, "text/event-stream", Ping("storm-" + std::to_string(++storm)))};
		if (!r.IsMethod("tools/call"))
			return Session(r);
		std::string events;
		for (int i = 0; i < 20; i++)
			events += Ping("srv-" + std::to_string(i));
		events += "data: " + ToolResult(IdOf(r)) + "\n\n" + Ping("after-the-response");
		return Reply{Http(200, "text/event-stream", events)};
	});
	auto client = Make(server.Url());
	ASSERT_TRUE(client->Submit(Call(1)));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_TRUE(WaitFor(
	    server, [](const Request &r) { return IsReply(r); }, client.get()));
	DriveFor(*client, 300); // anything the client would still send goes out meanwhile
	EXPECT_EQ(Replies(server), 4);
	for (const Request &r : server.Requests())
		EXPECT_EQ(r.body.find("storm-"), std::string::npos) << r.body;
	EXPECT_EQ(out[0].ignored_server_requests, 17); // 16 past the limit, and the one after the response
}

// SEP-1699 resumption: each stream brings 60 % of max_response_bytes and closes before the response; the first
// resumption gets only what is left of the call's budget, and the call fails instead of resuming for ever.
TEST_F(ClientTest, ResumptionsShareTheCallsResponseBudget)
{
	const size_t max_bytes = 64 << 10;
	std::atomic<int> streams{0};
	TestServer server([&](const Request &r, int) {
		if (r.method != "GET" && !r.IsMethod("tools/call"))
			return Session(r);
		std::string note = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\"" +
		                   std::string(1000, 'n') + "\"}}";
		std::string events;
		int n = ++streams;
		for (int i = 0; events.size() < max_bytes * 6 / 10; i++)
			events += "id: ev-" + std::to_string(n) + "-" + std::to_string(i) + "\nretry: 10\ndata: " + note + "\n\n";
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + events};
		reply.close = true;
		return reply;
	});
	ClientConfig config;
	config.max_response_bytes = max_bytes;
	auto client = Make(server.Url(), config);
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError) << out[0].message;
	EXPECT_NE(out[0].message.find("max_response_bytes"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.CountHttp("GET"), 1);
}

// Progress messages are cut to 1,000 characters, never in the middle of one.
TEST_F(ClientTest, ProgressMessagesAreCutByCharacters)
{
	std::string long_message;
	for (int i = 0; i < 1500; i++)
		long_message += "\xC3\xA9"; // é
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		std::string events = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		                     "{\"progressToken\":\"run-1:1\",\"progress\":1,\"total\":2,\"message\":\"" +
		                     long_message + "\"}}\n\ndata: " + ToolResult(IdOf(r)) + "\n\n";
		return Reply{Http(200, "text/event-stream", events)};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	ASSERT_EQ(progress.size(), 1u);
	EXPECT_EQ(progress[0].message, long_message.substr(0, 2 * kMaxProgressMessageChars));
	EXPECT_EQ(Utf8Prefix("ab\xC3\xA9"
	                     "cd",
	                     3),
	          "ab\xC3\xA9");
	EXPECT_EQ(Utf8Prefix("ab", 3), "ab");
	EXPECT_EQ(Utf8Prefix("\xF0\x9F\x98\x80\xF0\x9F\x98\x80", 1), "\xF0\x9F\x98\x80");
}

// A task id of 2 KB: the task is malformed; it is neither handed to the owner (to be stored) nor polled.
TEST_F(ClientTest, AnOverlongTaskIdIsRefused)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}})";
	legacy.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]})";
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call"))
			return Reply{Json(Result(r, R"({"task":{"taskId":")" + std::string(kMaxTaskIdBytes + 1, 't') +
			                                R"(","status":"working","ttl":30000,"pollInterval":40}})"))};
		return legacy(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError) << out[0].message;
	EXPECT_NE(out[0].message.find("malformed task"), std::string::npos) << out[0].message;
	EXPECT_TRUE(tasks.empty());
	EXPECT_EQ(server.Count("tasks/get"), 0);
}

// Response headers past 64 KiB fail the call with a message that says so (libcurl's own limit is 300 KB).
TEST_F(ClientTest, HugeResponseHeadersFailTheCall)
{
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		std::string junk;
		for (int i = 0; i < 20; i++)
			junk += "X-Junk-" + std::to_string(i) + ": " + std::string(8000, 'h') + "\r\n";
		return Reply{Json(ToolResult(IdOf(r)), junk)};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError) << out[0].message;
	EXPECT_NE(out[0].message.find("response headers exceed"), std::string::npos) << out[0].message;
}

// The events of one exchange are counted while they wait to be taken: 0.2.0 turned a 64 KiB id and 20,000 events
// (184 KB) into 1.3 GB. Now the id line fails the stream, and tiny events cannot pile up past the budget.
TEST(TransportBounds, EventsNotYetTakenCountAgainstTheBudget)
{
	TestServer server([&](const Request &, int) {
		std::string events = "id: " + std::string(1000, 'i') + "\n";
		for (int i = 0; i < 200000; i++)
			events += "data\n\n";
		return Reply{Http(200, "text/event-stream", events)};
	});
	HttpTransport transport;
	HttpRequest request;
	request.url = server.Url();
	request.max_bytes = 2 << 20;
	request.max_held_bytes = 256 << 10; /* what 200,000 events of 6 bytes (1.2 MB) cost is far more than this */
	HttpExchange *x = transport.Start(request);
	uint64_t id = x->id;
	std::vector<std::unique_ptr<HttpExchange>> done;
	for (int i = 0; i < 500 && done.empty(); i++) {
		pollfd p{transport.EventFd(), POLLIN, 0};
		poll(&p, 1, 10);
		transport.Drive(); // the owner never takes the events here
		/* Checked after each write callback: one callback's chunk (16 KiB, ~2,700 events) may overshoot. */
		if (HttpExchange *live = transport.Find(id)) {
			EXPECT_LE(live->HeldBytes(), request.max_held_bytes + (512 << 10));
		}
		done = transport.TakeFinished();
	}
	ASSERT_EQ(done.size(), 1u);
	EXPECT_TRUE(done[0]->held_too_much);
	EXPECT_LE(done[0]->HeldBytes(), request.max_held_bytes + (512 << 10));
}

// A pollInterval of 10^18 ms: the poll is scheduled within the clock's range and the call's deadline ends it.
TEST_F(ClientTest, AnAbsurdPollIntervalIsClampedAndTheDeadlineHolds)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}})";
	legacy.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]})";
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call"))
			return Reply{Json(Result(
			    r, R"({"task":{"taskId":"t-1","status":"working","ttl":30000,"pollInterval":1000000000000000000}})"))};
		return legacy(r);
	});
	ClientConfig config;
	config.request_timeout_ms = 500;
	auto client = Make(server.Url(), config);
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1, 5);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::TimeoutError) << out[0].message;
	EXPECT_EQ(server.Count("tasks/get"), 0);
}
