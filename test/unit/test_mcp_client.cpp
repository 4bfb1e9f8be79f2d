// McpClient against a scripted handshake-era (legacy) server: the era fallback, the session, the 0.1 behaviour, SSE
// resumption, server requests, cancellation, shutdown and configuration errors.
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

TEST_F(ClientTest, JsonReplyAndHeaders)
{
	TestServer server(
	    [](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : Session(r); });
	ClientConfig config;
	config.auth_token = "s3cret";
	auto client = Make(server.Url(), config);
	ASSERT_TRUE(client->Submit(Call(7)));
	EXPECT_EQ(client->InFlight(), 1u);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].tag, 7u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(out[0].mcp_run_id, "srv-1");
	EXPECT_NE(out[0].result_json.find("\"risk_level\":\"high\""), std::string::npos);
	EXPECT_NE(out[0].response_json.find("structuredContent"), std::string::npos);
	EXPECT_EQ(out[0].http_status, 200);
	EXPECT_EQ(client->InFlight(), 0u);

	// Modern first: server/discover got a 400 without a modern error body, so the client fell back to initialize.
	auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 5u);
	EXPECT_TRUE(requests[0].IsMethod("server/discover"));
	EXPECT_EQ(requests[0].Get("mcp-protocol-version"), "2026-07-28");
	EXPECT_EQ(requests[0].Get("mcp-method"), "server/discover");
	EXPECT_TRUE(requests[1].IsMethod("initialize"));
	EXPECT_NE(requests[1].body.find("\"protocolVersion\":\"2025-11-25\""), std::string::npos) << requests[1].body;
	EXPECT_FALSE(requests[1].Has("mcp-protocol-version"));
	EXPECT_FALSE(requests[1].Has("mcp-session-id"));
	EXPECT_TRUE(requests[2].IsMethod("notifications/initialized"));
	EXPECT_EQ(requests[2].Get("mcp-session-id"), "sess-1");
	EXPECT_TRUE(requests[3].IsMethod("tools/list"));
	EXPECT_EQ(requests[3].Get("mcp-session-id"), "sess-1");
	const Request &call = requests[4];
	EXPECT_EQ(call.Get("mcp-session-id"), "sess-1");
	EXPECT_EQ(call.Get("mcp-protocol-version"), "2025-06-18");
	EXPECT_EQ(call.Get("accept"), "application/json, text/event-stream");
	EXPECT_EQ(call.Get("authorization"), "Bearer s3cret");
	EXPECT_EQ(call.Get("idempotency-key"), "run-1:1");
	EXPECT_FALSE(call.Has("expect"));
	EXPECT_NE(call.body.find("\"id\":\"run-1:1\""), std::string::npos);
	EXPECT_NE(call.body.find(
	              "\"arguments\":{\"run_id\":\"run-1\",\"patient_id\":\"patient-1\",\"attempt\":1,"
	              "\"schema_version\":\"v1\",\"inputs\":{\"reason\":\"test\"},\"context_pack\":{\"observations\":[]}}"),
	          std::string::npos)
	    << call.body;
	EXPECT_NE(call.body.find("\"_meta\":{\"progressToken\":\"run-1:1\"}"), std::string::npos);
	EXPECT_FALSE(call.Has("mcp-method")); // the modern headers belong to the modern era
	EXPECT_EQ(call.body.find("io.modelcontextprotocol/protocolVersion"), std::string::npos);
	EXPECT_EQ(call.body.find("\"task\""), std::string::npos); // the server offers no tasks

	EndpointInfo info = client->Endpoint();
	EXPECT_EQ(info.era, "legacy");
	EXPECT_EQ(info.protocol_version, "2025-06-18");
	EXPECT_FALSE(info.tasks);
	EXPECT_EQ(info.tool_offered, 1);
	EXPECT_EQ(info.session_id, "sess-1");
}

TEST_F(ClientTest, SseReplyWithProgressAndPing)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return r.body.find("\"result\":{}") != std::string::npos || r.body.find("\"error\"") != std::string::npos
			           ? Reply{Json("")}
			           : Session(r, "");
		std::string events =
		    "id: 1\ndata:\n\n"
		    ": keep-alive\n\n"
		    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		    "{\"progressToken\":\"run-1:1\",\"progress\":1,\"total\":4,\"message\":\"scoring\"}}\n\n"
		    "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		    "{\"progressToken\":\"someone-else\",\"progress\":3,\"total\":4}}\n\n"
		    "data: {\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"ping\"}\n\n"
		    "data: {\"jsonrpc\":\"2.0\",\"id\":\"s-1\",\"method\":\"sampling/createMessage\",\"params\":{}}\n\n"
		    "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n"
		    "data: " +
		    ToolResult(IdOf(r)) + "\r\n\r\n";
		Reply reply{Http(200, "text/event-stream", events)};
		return reply;
	});
	auto client = Make(server.Url());
	ASSERT_TRUE(client->Submit(Call(1)));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	ASSERT_EQ(progress.size(), 1u);
	EXPECT_EQ(progress[0].tag, 1u);
	EXPECT_DOUBLE_EQ(progress[0].progress, 1);
	EXPECT_DOUBLE_EQ(progress[0].total, 4);
	EXPECT_EQ(progress[0].message, "scoring");
	// The ping was answered with an empty result; no session id was ever sent (stateless server).
	// Every server request is answered: ping with an empty result, anything else with -32601.
	EXPECT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.body == R"({"jsonrpc":"2.0","id":99,"result":{}})"; }, client.get()));
	EXPECT_TRUE(WaitFor(
	    server,
	    [](const Request &r) { return r.body.find(R"("id":"s-1","error":{"code":-32601)") != std::string::npos; },
	    client.get()));
	for (const Request &r : server.Requests())
		EXPECT_FALSE(r.Has("mcp-session-id"));
}

TEST_F(ClientTest, SessionExpiryReinitializesOnceAndRetries)
{
	std::atomic<int> calls{0};
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r, "sess-" + std::to_string(calls.load()));
		if (calls++ == 0)
			return Reply{Http(404, "application/json", "{}")};
		return Reply{Json(ToolResult(IdOf(r)))};
	});
	auto client = Make(server.Url());
	ASSERT_TRUE(client->Submit(Call(1)));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("initialize"), 2);
	EXPECT_EQ(server.Count("tools/call"), 2);
	EXPECT_EQ(server.Requests().back().Get("mcp-session-id"), "sess-1");
}

TEST_F(ClientTest, SecondNotFoundIsTransientButInitializeNotFoundIsPermanent)
{
	TestServer server([](const Request &r, int) {
		return r.IsMethod("tools/call") ? Reply{Http(404, "application/json", "{}")} : Session(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::NetworkError) << out[0].message;
	EXPECT_EQ(server.Count("initialize"), 2);

	// A wrong path: initialize itself is 404, which no retry can fix.
	TestServer wrong([](const Request &, int) { return Reply{Http(404, "text/plain", "no such path")}; });
	auto client2 = Make(wrong.Url());
	outcomes.clear();
	client2->Submit(Call(2));
	out = RunUntil(*client2, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError) << out[0].message;
	EXPECT_TRUE(out[0].config_error); // a wrong URL pauses the worker rather than failing runs
	EXPECT_EQ(wrong.Count("initialize"), 1);
	EXPECT_EQ(wrong.Count("tools/call"), 0);
	EXPECT_EQ(server.Count("tools/call"), 2);
}

struct StatusCase {
	std::string reply;
	ErrorCode code;
	int64_t retry_after_ms;
	bool config_error = false;
};

TEST_F(ClientTest, HttpStatusClassification)
{
	std::vector<StatusCase> cases = {
	    {Http(503, "text/plain", "busy", "Retry-After: 7\r\n"), ErrorCode::NetworkError, 7000},
	    {Http(500, "text/plain", "oops"), ErrorCode::NetworkError, -1},
	    {Http(429, "text/plain", "slow down", "Retry-After: 2\r\n"), ErrorCode::NetworkError, 2000},
	    {Http(408, "text/plain", "timeout"), ErrorCode::TimeoutError, -1},
	    {Http(400, "text/plain", "bad"), ErrorCode::McpError, -1},
	    {Http(401, "text/plain", "who"), ErrorCode::McpError, -1, true},
	    {Http(403, "text/plain", "no"), ErrorCode::McpError, -1, true},
	    {"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n", ErrorCode::McpError, -1},
	};
	for (const StatusCase &c : cases) {
		TestServer server(
		    [&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{c.reply} : Session(r); });
		auto client = Make(server.Url());
		outcomes.clear();
		client->Submit(Call(1));
		auto out = RunUntil(*client, 1);
		ASSERT_EQ(out.size(), 1u) << c.reply;
		EXPECT_EQ(out[0].code, c.code) << c.reply << " -> " << out[0].message;
		EXPECT_EQ(out[0].retry_after_ms, c.retry_after_ms) << c.reply;
		EXPECT_EQ(out[0].config_error, c.config_error) << c.reply;
		EXPECT_FALSE(out[0].local_failure) << c.reply;
		EXPECT_EQ(server.Count("tools/call"), 1); // never followed a redirect, never retried inside the attempt
	}
}

TEST_F(ClientTest, ProtocolViolationsAndToolErrors)
{
	struct Case {
		std::function<std::string(const Request &)> reply;
		ErrorCode code;
		bool has_response;
	};
	std::vector<Case> cases = {
	    {[](const Request &r) {
		     return Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) + R"(,"error":{"code":-32602,"message":"bad params"}})");
	     },
	     ErrorCode::McpError, false},
	    {[](const Request &) { return Json("{not json"); }, ErrorCode::McpError, false},
	    {[](const Request &) { return Json(R"({"jsonrpc":"2.0","id":"other","result":{}})"); }, ErrorCode::McpError,
	     false},
	    {[](const Request &) { return std::string("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"); },
	     ErrorCode::McpError, false},
	    // A stream that ends before the response is a disconnection (transient); one that answers another id is a
	    // protocol violation.
	    {[](const Request &r) {
		     return Http(200, "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":" + IdOf(r) + ",\"res");
	     },
	     ErrorCode::NetworkError, false},
	    {[](const Request &) {
		     return Http(200, "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":\"other\",\"result\":{}}\n\n");
	     },
	     ErrorCode::McpError, false},
	    {[](const Request &r) {
		     return Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
		                 R"(,"result":{"isError":true,"content":[{"type":"text","text":"no"}]}})");
	     },
	     ErrorCode::LlmError, true},
	    {[](const Request &r) { return Json(ToolResult(IdOf(r), R"({"risk_level":"purple"})")); },
	     ErrorCode::ValidationError, true},
	    {[](const Request &r) {
		     return Json(R"([{"jsonrpc":"2.0","method":"notifications/x"},)" + ToolResult(IdOf(r)) + "]");
	     },
	     ErrorCode::None, true},
	};
	for (size_t i = 0; i < cases.size(); i++) {
		TestServer server(
		    [&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{cases[i].reply(r)} : Session(r); });
		auto client = Make(server.Url());
		outcomes.clear();
		client->Submit(Call(1));
		auto out = RunUntil(*client, 1);
		ASSERT_EQ(out.size(), 1u) << "case " << i;
		EXPECT_EQ(out[0].code, cases[i].code) << "case " << i << ": " << out[0].message;
		EXPECT_EQ(!out[0].response_json.empty(), cases[i].has_response) << "case " << i;
		EXPECT_FALSE(out[0].message.empty() && cases[i].code != ErrorCode::None) << "case " << i;
	}
}

TEST_F(ClientTest, DroppedConnectionIsTransient)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"jsonrpc\":"};
		reply.close = true;
		return reply;
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::NetworkError) << out[0].message;
}

TEST_F(ClientTest, ConnectRefusedIsTransient)
{
	int port;
	{
		TestServer probe([](const Request &r, int) { return Session(r); });
		port = probe.Port();
	}
	auto client = Make("http://127.0.0.1:" + std::to_string(port) + "/mcp");
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::NetworkError) << out[0].message;
}

TEST_F(ClientTest, ResponseSizeCap)
{
	TestServer server([](const Request &r, int) {
		return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)) + std::string(200000, ' '))} : Session(r);
	});
	ClientConfig config;
	config.max_response_bytes = 100000;
	auto client = Make(server.Url(), config);
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_NE(out[0].message.find("max_response_bytes"), std::string::npos) << out[0].message;
}

TEST_F(ClientTest, TotalAndInactivityTimeouts)
{
	TestServer hang([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{""};
		reply.hang_ms = 20000;
		return reply;
	});
	ClientConfig config;
	config.request_timeout_ms = 400;
	auto client = Make(hang.Url(), config);
	auto started = std::chrono::steady_clock::now();
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::TimeoutError) << out[0].message;
	EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(3));

	// A trickle that keeps the total alive but goes quiet for longer than the inactivity limit.
	TestServer trickle([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"};
		reply.trickle = {{50, " "}, {50, " "}, {2000, " "}};
		return reply;
	});
	ClientConfig config2;
	config2.request_timeout_ms = 8000;
	config2.inactivity_timeout_ms = 300;
	client = Make(trickle.Url(), config2);
	outcomes.clear();
	started = std::chrono::steady_clock::now();
	client->Submit(Call(2));
	out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::TimeoutError) << out[0].message;
	EXPECT_NE(out[0].message.find("no data"), std::string::npos) << out[0].message;
	EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

TEST_F(ClientTest, ManyConcurrentCallsShareOneSessionAndConnections)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{Json(ToolResult(IdOf(r)))};
		reply.hang_ms = 30;
		return reply;
	});
	ClientConfig config;
	config.max_inflight = 20;
	auto client = Make(server.Url(), config);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 20; i++)
			ASSERT_TRUE(client->Submit(Call(round * 100 + i, "run-" + std::to_string(round * 100 + i))));
		EXPECT_FALSE(client->Submit(Call(999))); // bounded
		RunUntil(*client, static_cast<size_t>((round + 1) * 20));
	}
	ASSERT_EQ(outcomes.size(), 60u);
	for (const CallOutcome &o : outcomes)
		EXPECT_EQ(o.code, ErrorCode::None) << o.message;
	EXPECT_EQ(server.Count("initialize"), 1);
	EXPECT_EQ(server.Count("tools/call"), 60);
	EXPECT_LE(server.Connections(), 22); // connections were reused across rounds
}

TEST_F(ClientTest, UnsupportedProtocolVersionFailsTheCall)
{
	LegacyServer legacy;
	legacy.version = "1999-01-01";
	TestServer server([&](const Request &r, int) { return legacy(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_TRUE(out[0].config_error);
	EXPECT_NE(out[0].message.find("protocol version"), std::string::npos) << out[0].message;
}

TEST_F(ClientTest, AbortAllEndsCallsWithoutOutcomes)
{
	TestServer server([](const Request &r, int) {
		Reply reply = r.IsMethod("tools/call") ? Reply{""} : Session(r);
		if (r.IsMethod("tools/call"))
			reply.hang_ms = 20000;
		return reply;
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	client->Submit(Call(2));
	RunUntil(*client, 0);
	for (int i = 0; i < 20; i++) {
		client->Drive();
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	}
	auto tags = client->AbortAll();
	EXPECT_EQ(tags.size(), 2u);
	EXPECT_EQ(client->InFlight(), 0u);
	client->Drive();
	EXPECT_TRUE(client->TakeOutcomes().empty());
}

TEST_F(ClientTest, BadUrlIsPermanent)
{
	auto client = Make("ftp://127.0.0.1/mcp");
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError) << out[0].message;
	EXPECT_TRUE(out[0].config_error) << out[0].message;
}

// SEP-1699: the server closes the call's SSE stream early after an event id and a retry interval; the client
// resumes with GET + Last-Event-ID after that interval, within the same call, and gets the response there.
TEST_F(ClientTest, ClosedStreamIsResumedWithLastEventId)
{
	TestServer server([](const Request &r, int) {
		if (r.method == "GET") {
			if (r.Get("last-event-id") != "ev-2")
				return Reply{Http(400, "text/plain", "bad Last-Event-ID")};
			Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
			            "id: ev-3\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
			            "{\"progressToken\":\"run-1:1\",\"progress\":2,\"total\":2}}\n\n"
			            "id: ev-4\ndata: " +
			            ToolResult("\"run-1:1\"") + "\n\n"};
			reply.close = true;
			return reply;
		}
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
		            "id: ev-1\nretry: 300\ndata:\n\n"
		            "id: ev-2\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		            "{\"progressToken\":\"run-1:1\",\"progress\":1,\"total\":2}}\n\n"};
		reply.close = true; // the server disconnects on purpose (SSE polling)
		return reply;
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 1);
	ASSERT_EQ(server.CountHttp("GET"), 1);
	Request call = server.First("tools/call"), get;
	for (const Request &r : server.Requests())
		if (r.method == "GET")
			get = r;
	EXPECT_EQ(get.Get("mcp-session-id"), "sess-1");
	EXPECT_EQ(get.Get("mcp-protocol-version"), "2025-06-18");
	EXPECT_EQ(get.Get("accept"), "text/event-stream");
	EXPECT_GE(get.at - call.at, std::chrono::milliseconds(290)); // honoured retry: 300
	ASSERT_EQ(progress.size(), 2u);
	EXPECT_DOUBLE_EQ(progress[1].progress, 2);
}

TEST_F(ClientTest, StreamClosedWithoutEventIdIsADisconnection)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata:\n\n"};
		reply.close = true;
		return reply;
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::NetworkError) << out[0].message;
	EXPECT_EQ(server.CountHttp("GET"), 0);
}

// The response arrived but the server keeps the stream open: the call completes without waiting for the end.
TEST_F(ClientTest, ResponseOnAStreamLeftOpenCompletesTheCall)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: " + ToolResult(IdOf(r)) + "\n\n"};
		reply.trickle = {{20000, ": still open\n\n"}};
		return reply;
	});
	auto client = Make(server.Url());
	auto started = std::chrono::steady_clock::now();
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

Reply
Hang(const Request &r)
{
	if (!r.IsMethod("tools/call"))
		return Session(r);
	Reply reply{""};
	reply.hang_ms = 20000;
	return reply;
}

bool
IsCancelledFor(const Request &r, const std::string &request_id)
{
	return r.IsMethod("notifications/cancelled") &&
	       r.body.find("\"requestId\":\"" + request_id + "\"") != std::string::npos;
}

TEST_F(ClientTest, CancelSendsNotificationsCancelled)
{
	TestServer server([](const Request &r, int) { return Hang(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	client->Submit(Call(2, "run-2"));
	ASSERT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.IsMethod("tools/call"); }, client.get()));
	DriveFor(*client, 100);
	client->Cancel(1);
	client->Cancel(42); // unknown: ignored
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].tag, 1u);
	EXPECT_TRUE(out[0].cancelled);
	EXPECT_NE(out[0].code, ErrorCode::None);
	EXPECT_EQ(client->InFlight(), 1u);
	EXPECT_TRUE(WaitFor(
	    server, [](const Request &r) { return IsCancelledFor(r, "run-1:1"); }, client.get()));
	Request cancelled;
	for (const Request &r : server.Requests())
		if (r.IsMethod("notifications/cancelled"))
			cancelled = r;
	EXPECT_EQ(cancelled.Get("mcp-session-id"), "sess-1");
	EXPECT_EQ(server.Count("notifications/cancelled"), 1);
}

TEST_F(ClientTest, TimeoutSendsNotificationsCancelled)
{
	TestServer server([](const Request &r, int) { return Hang(r); });
	ClientConfig config;
	config.request_timeout_ms = 500;
	auto client = Make(server.Url(), config);
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::TimeoutError) << out[0].message;
	EXPECT_TRUE(WaitFor(
	    server, [](const Request &r) { return IsCancelledFor(r, "run-1:1"); }, client.get()));
}

TEST_F(ClientTest, ShutdownCancelsCallsAndDeletesTheSession)
{
	TestServer server([](const Request &r, int) {
		if (r.method == "DELETE")
			return Reply{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"};
		return Hang(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	ASSERT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.IsMethod("tools/call"); }, client.get()));
	DriveFor(*client, 50);
	auto started = std::chrono::steady_clock::now();
	client->Shutdown();
	EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(1500)); // bounded
	EXPECT_EQ(client->InFlight(), 0u);
	EXPECT_TRUE(client->TakeOutcomes().empty());
	EXPECT_TRUE(WaitFor(server, [](const Request &r) { return IsCancelledFor(r, "run-1:1"); }));
	EXPECT_TRUE(
	    WaitFor(server, [](const Request &r) { return r.method == "DELETE" && r.Get("mcp-session-id") == "sess-1"; }));
}

TEST_F(ClientTest, NoToolsCapabilityIsAConfigurationError)
{
	LegacyServer legacy;
	legacy.capabilities = R"({"prompts":{}})";
	TestServer server([&](const Request &r, int) { return legacy(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_TRUE(out[0].config_error);
	EXPECT_NE(out[0].message.find("tools capability"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 0);
	EXPECT_NE(client->Endpoint().last_error.find("tools capability"), std::string::npos);
}

TEST_F(ClientTest, ToolNotOfferedIsAConfigurationError)
{
	LegacyServer legacy;
	legacy.tools = R"({"tools":[{"name":"a"}],"nextCursor":"page-2"})";
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/list") && r.body.find("page-2") != std::string::npos)
			return Reply{Json(Result(r, R"({"tools":[{"name":"b"}]})"))};
		return legacy(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].config_error) << out[0].message;
	EXPECT_NE(out[0].message.find("run_diagnosis"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.Count("tools/list"), 2); // followed nextCursor
	EXPECT_EQ(server.Count("tools/call"), 0);
	EXPECT_EQ(client->Endpoint().tool_offered, 0);
}

TEST_F(ClientTest, LegacyEraIsCachedForTheClientsLife)
{
	TestServer server(
	    [](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : Session(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	RunUntil(*client, 1);
	// A new URL on the same origin (the session is dropped), then calls again: no second probe.
	ClientConfig config;
	config.url = server.Url() + "?v=2";
	config.request_timeout_ms = 5000;
	client->Configure(config);
	client->Submit(Call(2, "run-2"));
	auto out = RunUntil(*client, 2);
	ASSERT_EQ(out.size(), 2u);
	EXPECT_EQ(out[1].code, ErrorCode::None) << out[1].message;
	EXPECT_EQ(server.Count("server/discover"), 1);
	EXPECT_EQ(server.Count("initialize"), 2);
	// The session of the old URL was ended, not abandoned.
	EXPECT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.method == "DELETE" && r.Get("mcp-session-id") == "sess-1"; },
	    client.get()));
}

} // namespace
