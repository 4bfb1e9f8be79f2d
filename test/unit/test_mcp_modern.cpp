// McpClient against a scripted 2026-07-28 server: per-request metadata, no sessions, version negotiation, re-probing
// when the era stops fitting, cancellation by closing the stream, trace context.
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

const char *const kTrace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

TEST_F(ClientTest, ModernCallCarriesMetadataHeadersAndTraceContext)
{
	ModernServer modern;
	TestServer server(
	    [&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : modern(r); });
	auto client = Make(server.Url());
	CallRequest call = Call(3);
	call.traceparent = kTrace;
	ASSERT_TRUE(client->Submit(call));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;

	auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 3u);
	EXPECT_TRUE(requests[0].IsMethod("server/discover"));
	EXPECT_TRUE(requests[1].IsMethod("tools/list"));
	EXPECT_EQ(server.Count("initialize"), 0);
	for (const Request &r : requests) {
		EXPECT_EQ(r.Get("mcp-protocol-version"), "2026-07-28") << r.body;
		EXPECT_FALSE(r.Has("mcp-session-id"));
		EXPECT_NE(r.body.find(R"("io.modelcontextprotocol/protocolVersion":"2026-07-28")"), std::string::npos)
		    << r.body;
		EXPECT_NE(r.body.find(R"("io.modelcontextprotocol/clientInfo":{"name":"pg_diagnosis")"), std::string::npos);
	}
	EXPECT_EQ(requests[0].Get("mcp-method"), "server/discover");
	EXPECT_FALSE(requests[0].Has("mcp-name"));
	EXPECT_EQ(requests[1].Get("mcp-method"), "tools/list");
	const Request &c = requests[2];
	EXPECT_EQ(c.Get("mcp-method"), "tools/call");
	EXPECT_EQ(c.Get("mcp-name"), "run_diagnosis");
	EXPECT_EQ(c.Get("traceparent"), kTrace);
	EXPECT_NE(c.body.find(std::string(R"("traceparent":")") + kTrace + "\""), std::string::npos) << c.body;
	EXPECT_NE(c.body.find(R"("progressToken":"run-1:1")"), std::string::npos);
	// The server offers no tasks: the client does not declare the extension.
	EXPECT_EQ(c.body.find("io.modelcontextprotocol/tasks"), std::string::npos) << c.body;

	EndpointInfo info = client->Endpoint();
	EXPECT_EQ(info.era, "modern");
	EXPECT_EQ(info.protocol_version, "2026-07-28");
	EXPECT_EQ(info.server_name, "m 2");
	EXPECT_EQ(info.capabilities_json, R"({"tools":{}})");
	EXPECT_TRUE(info.session_id.empty());
}

TEST_F(ClientTest, LegacyCallCarriesTraceContextToo)
{
	TestServer server(
	    [](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : Session(r); });
	auto client = Make(server.Url());
	CallRequest call = Call(3);
	call.traceparent = kTrace;
	client->Submit(call);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	Request c = server.First("tools/call");
	EXPECT_EQ(c.Get("traceparent"), kTrace);
	EXPECT_NE(c.body.find(std::string(R"("_meta":{"progressToken":"run-1:1","traceparent":")") + kTrace + "\"}"),
	          std::string::npos)
	    << c.body;
}

// A dual-era server that rejects our modern version with UnsupportedProtocolVersionError listing only handshake
// revisions: the client initializes instead of failing.
TEST_F(ClientTest, UnsupportedModernVersionFallsBackToAListedLegacyVersion)
{
	TestServer server([](const Request &r, int) {
		if (r.IsMethod("server/discover"))
			return Reply{Http(
			    400, "application/json",
			    R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
			        R"(,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2025-11-25"],"requested":"2026-07-28"}}})")};
		if (r.IsMethod("tools/call"))
			return Reply{Json(ToolResult(IdOf(r)))};
		LegacyServer legacy;
		legacy.version = "2025-11-25";
		return legacy(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("initialize"), 1);
	EXPECT_EQ(client->Endpoint().era, "legacy");
	EXPECT_EQ(client->Endpoint().protocol_version, "2025-11-25");
	EXPECT_EQ(server.First("tools/call").Get("mcp-protocol-version"), "2025-11-25");
}

TEST_F(ClientTest, NoMutualVersionIsAConfigurationError)
{
	ModernServer modern;
	modern.versions = R"(["2099-01-01"])";
	TestServer server([&](const Request &r, int) { return modern(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].config_error) << out[0].message;
	EXPECT_NE(out[0].message.find("2099-01-01"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 0);
}

TEST_F(ClientTest, ModernUnauthorizedIsAConfigurationError)
{
	TestServer server([](const Request &, int) { return Reply{Http(401, "application/json", "{}")}; });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].config_error) << out[0].message;
	EXPECT_EQ(out[0].http_status, 401);
	EXPECT_EQ(server.Count("initialize"), 0); // 401 says nothing about the era
}

TEST_F(ClientTest, ModernServerWithoutToolsIsAConfigurationError)
{
	ModernServer modern;
	modern.capabilities = R"({"resources":{}})";
	TestServer server([&](const Request &r, int) { return modern(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].config_error) << out[0].message;
	EXPECT_EQ(server.Count("tools/list"), 0);
}

// The endpoint was modern, then a legacy server took its place: the first modern tools/call gets a 400 without a
// modern error body, the client re-probes, initializes, and the same call succeeds once.
TEST_F(ClientTest, EraIsReprobedWhenItStopsFitting)
{
	std::atomic<bool> legacy_now{false};
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (!legacy_now)
			return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : modern(r);
		if (r.IsMethod("tools/call")) {
			if (!r.Has("mcp-session-id"))
				return Reply{Http(
				    400, "application/json",
				    R"({"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null})")};
			return Reply{Json(ToolResult(IdOf(r)))};
		}
		return Session(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	RunUntil(*client, 1);
	ASSERT_EQ(outcomes.size(), 1u);
	EXPECT_EQ(client->Endpoint().era, "modern");
	legacy_now = true;
	client->Submit(Call(2, "run-2"));
	auto out = RunUntil(*client, 2);
	ASSERT_EQ(out.size(), 2u);
	EXPECT_EQ(out[1].code, ErrorCode::None) << out[1].message;
	EXPECT_EQ(client->Endpoint().era, "legacy");
	EXPECT_EQ(server.Count("server/discover"), 2);
	EXPECT_EQ(server.Count("initialize"), 1);
	EXPECT_EQ(server.Count("tools/call"), 3); // run-1, run-2 rejected unprocessed, run-2 again
}

// A modern server that stops supporting our version mid-life answers UnsupportedProtocolVersionError: the client
// re-probes (server/discover) instead of failing the call, and the call is retried once.
TEST_F(ClientTest, UnsupportedVersionOnACallReprobes)
{
	std::atomic<int> calls{0};
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call") && calls++ == 0)
			return Reply{Http(
			    400, "application/json",
			    R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
			        R"(,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2026-07-28"]}}})")};
		return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : modern(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("server/discover"), 2);
	EXPECT_EQ(server.Count("tools/call"), 2);
	EXPECT_EQ(client->Endpoint().era, "modern");
}

// The first server/discover is rejected with UnsupportedProtocolVersion although our version is listed: the client
// asks again with it and the call goes through; a server that keeps rejecting it fails the set-up after two probes.
TEST_F(ClientTest, RejectedDiscoverIsAskedAgainWithTheListedVersion)
{
	const std::string rejection =
	    R"(,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2026-07-28"]}}})";
	for (bool keeps_rejecting : {false, true}) {
		outcomes.clear();
		std::atomic<int> discovers{0};
		ModernServer modern;
		TestServer server([&](const Request &r, int) {
			if (r.IsMethod("server/discover") && (discovers++ == 0 || keeps_rejecting))
				return Reply{Http(400, "application/json", R"({"jsonrpc":"2.0","id":)" + IdOf(r) + rejection)};
			return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : modern(r);
		});
		auto client = Make(server.Url());
		client->Submit(Call(1));
		auto out = RunUntil(*client, 1);
		ASSERT_EQ(out.size(), 1u);
		EXPECT_EQ(server.Count("server/discover"), 2);
		if (keeps_rejecting) {
			EXPECT_EQ(out[0].code, ErrorCode::McpError);
			EXPECT_TRUE(out[0].config_error) << out[0].message;
			EXPECT_EQ(server.Count("tools/call"), 0);
		} else {
			EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
			EXPECT_EQ(server.Count("tools/list"), 1);
			for (const Request &r : server.Requests())
				EXPECT_EQ(r.Get("mcp-protocol-version"), "2026-07-28");
		}
	}
}

// x-mcp-header: the annotated parameters travel as Mcp-Param-* headers; a HeaderMismatch makes the client list
// the tools again and retry once.
TEST_F(ClientTest, AnnotatedParametersAreMirroredIntoHeaders)
{
	std::atomic<bool> annotated{false};
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/list") && annotated)
			return Reply{Json(Result(
			    r,
			    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object","properties":{)"
			    R"("patient_id":{"type":"string","x-mcp-header":"Patient"},"attempt":{"type":"integer","x-mcp-header":"Attempt"}}}}]})"))};
		if (r.IsMethod("tools/call")) {
			if (annotated && r.Get("mcp-param-patient") != "patient-1")
				return Reply{Http(400, "application/json",
				                  R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
				                      R"(,"error":{"code":-32020,"message":"Header mismatch"}})")};
			return Reply{Json(ToolResult(IdOf(r)))};
		}
		return modern(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	RunUntil(*client, 1);
	ASSERT_EQ(outcomes.size(), 1u);
	EXPECT_FALSE(server.First("tools/call").Has("mcp-param-patient"));
	// The server's tool definition changes: the first call after it is rejected, re-listed, and retried with headers.
	annotated = true;
	client->Submit(Call(2, "run-2"));
	auto out = RunUntil(*client, 2);
	ASSERT_EQ(out.size(), 2u);
	EXPECT_EQ(out[1].code, ErrorCode::None) << out[1].message;
	EXPECT_EQ(server.Count("tools/list"), 2);
	Request last = server.Requests().back();
	EXPECT_EQ(last.Get("mcp-param-patient"), "patient-1");
	EXPECT_EQ(last.Get("mcp-param-attempt"), "1");
}

TEST_F(ClientTest, InvalidParamAnnotationMakesTheToolUnusable)
{
	ModernServer modern;
	modern.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object","properties":{"attempt":{"type":"number","x-mcp-header":"Attempt"}}}}]})";
	TestServer server([&](const Request &r, int) { return modern(r); });
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].config_error) << out[0].message;
	EXPECT_NE(out[0].message.find("x-mcp-header"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 0);
}

TEST_F(ClientTest, PlainClientErrorOnACallIsTheAnswerWhenTheEraHolds)
{
	/* A 400 without a modern error body does not fit the era, so the endpoint is probed again; it is still modern,
	 * so the 400 was the call's answer: the tool is not called a second time. */
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call"))
			return Reply{Http(400, "text/plain", "injected fault")};
		return modern(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_EQ(out[0].http_status, 400);
	EXPECT_EQ(server.Count("server/discover"), 2);
	EXPECT_EQ(server.Count("tools/call"), 1);
	EXPECT_EQ(client->Endpoint().era, "modern");
}

TEST_F(ClientTest, ModernCancelClosesTheStreamWithoutNotifications)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return modern(r);
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: working\n\n"};
		reply.trickle = {{20000, ": still\n\n"}};
		return reply;
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	ASSERT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.IsMethod("tools/call"); }, client.get()));
	DriveFor(*client, 100);
	client->Cancel(1);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].cancelled);
	DriveFor(*client, 200);
	EXPECT_EQ(server.Count("notifications/cancelled"), 0);
	EXPECT_EQ(client->InFlight(), 0u);
}

// A modern server never gets JSON-RPC responses from the client, even if it (wrongly) sends a request.
TEST_F(ClientTest, ModernServerRequestsAreNotAnswered)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return modern(r);
		return Reply{
		    Http(200, "text/event-stream",
		         "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}\n\ndata: " + ToolResult(IdOf(r)) + "\n\n")};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	DriveFor(*client, 200);
	EXPECT_EQ(server.Requests().size(), 3u);
}

} // namespace
