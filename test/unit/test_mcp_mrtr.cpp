// MRTR (2026-07-28, basic/patterns/mrtr): a tools/call answered with input_required is called again within the same
// attempt, under a new id, with every elicitation declined and requestState echoed exactly; a server that keeps
// asking, or asks for what a worker cannot give (sampling), fails the call with MCP_ERROR saying what it asked for.
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

const char *const kAsk =
    R"({"resultType":"input_required","inputRequests":{"confirm":{"method":"elicitation/create","params":{"message":"Please confirm the ward","requestedSchema":{"type":"object","properties":{"ok":{"type":"boolean"}}}}}}})";

std::string
Ask(const std::string &state_member = "")
{
	std::string ask = kAsk;
	return ask.substr(0, ask.size() - 1) + state_member + "}";
}

bool
Carries(const Request &r, const std::string &text)
{
	return r.body.find(text) != std::string::npos;
}

TEST(Mrtr, ParsesTheRequestsAndTheOpaqueState)
{
	InputRequired input;
	ASSERT_TRUE(ParseInputRequired(Ask(R"(,"requestState":"a\"b=c")"), &input));
	ASSERT_EQ(input.requests.size(), 1u);
	EXPECT_EQ(input.requests[0].key, "confirm");
	EXPECT_EQ(input.requests[0].method, "elicitation/create");
	EXPECT_EQ(input.requests[0].message, "Please confirm the ward");
	EXPECT_TRUE(input.has_request_state);
	EXPECT_EQ(input.request_state, "a\"b=c");
	std::string responses, refused;
	ASSERT_TRUE(BuildInputResponses(input, &responses, &refused));
	EXPECT_EQ(responses, R"({"confirm":{"action":"decline"}})");

	// No resultType, or "complete": not an input_required result.
	EXPECT_FALSE(ParseInputRequired(R"({"content":[],"inputRequests":{}})", &input));
	EXPECT_FALSE(ParseInputRequired(R"({"resultType":"complete"})", &input));
	// State only: no responses to send, nothing refused.
	ASSERT_TRUE(ParseInputRequired(R"({"resultType":"input_required","requestState":"s"})", &input));
	ASSERT_TRUE(BuildInputResponses(input, &responses, &refused));
	EXPECT_EQ(responses, "");
	// Roots: an empty list. Sampling: refused.
	ASSERT_TRUE(ParseInputRequired(
	    R"({"resultType":"input_required","inputRequests":{"r":{"method":"roots/list"},"s":{"method":"sampling/createMessage","params":{}}}})",
	    &input));
	EXPECT_FALSE(BuildInputResponses(input, &responses, &refused));
	EXPECT_EQ(refused, "sampling/createMessage");
}

TEST_F(ClientTest, InputRequiredIsDeclinedAndTheStateEchoed)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return modern(r);
		if (!Carries(r, "inputResponses"))
			return Reply{Json(Result(r, Ask(R"(,"requestState":"opaque:\"x\"/1")")))};
		return Reply{Json(ToolResult(IdOf(r)))};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	std::vector<Request> calls;
	for (const Request &r : server.Requests())
		if (r.IsMethod("tools/call"))
			calls.push_back(r);
	ASSERT_EQ(calls.size(), 2u);
	EXPECT_NE(IdOf(calls[0]), IdOf(calls[1]));
	EXPECT_NE(calls[0].Get("idempotency-key"), calls[1].Get("idempotency-key"));
	EXPECT_FALSE(Carries(calls[0], "requestState"));
	EXPECT_TRUE(Carries(calls[1], R"("inputResponses":{"confirm":{"action":"decline"}})")) << calls[1].body;
	EXPECT_TRUE(Carries(calls[1], R"("requestState":"opaque:\"x\"/1")")) << calls[1].body;
	// The same call: the worker's arguments and progress token again.
	EXPECT_TRUE(Carries(calls[1], R"("run_id":"run-1")"));
	EXPECT_TRUE(Carries(calls[1], R"("progressToken":"run-1:1")"));
}

TEST_F(ClientTest, InputRequiredWithoutStateIsRetriedWithoutOne)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return modern(r);
		return Carries(r, "inputResponses") ? Reply{Json(ToolResult(IdOf(r)))} : Reply{Json(Result(r, Ask()))};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	ASSERT_EQ(server.Count("tools/call"), 2);
	for (const Request &r : server.Requests())
		EXPECT_FALSE(Carries(r, "requestState")) << r.body;
}

TEST_F(ClientTest, AToolThatInsistsFailsTheCallSayingWhatItAsked)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		return r.IsMethod("tools/call") ? Reply{Json(Result(r, Ask(R"(,"requestState":"s")")))} : modern(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_FALSE(out[0].config_error);
	EXPECT_NE(out[0].message.find("input_required"), std::string::npos) << out[0].message;
	EXPECT_NE(out[0].message.find("elicitation/create \"Please confirm the ward\""), std::string::npos)
	    << out[0].message;
	EXPECT_NE(out[0].response_json.find("input_required"), std::string::npos);
	EXPECT_EQ(server.Count("tools/call"), 4); // the call and three declined rounds
}

TEST_F(ClientTest, SamplingCannotBeGivenAndFailsAtOnce)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		return r.IsMethod("tools/call")
		           ? Reply{Json(Result(
		                 r,
		                 R"({"resultType":"input_required","inputRequests":{"q":{"method":"sampling/createMessage","params":{"messages":[],"maxTokens":9}}}})"))}
		           : modern(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_NE(out[0].message.find("sampling/createMessage"), std::string::npos) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 1);
}

} // namespace
