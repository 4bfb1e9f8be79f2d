// What pg_diagnosis_mcp_check uses to call other tools than the worker's (the conformance suite's): every tool of a
// paged tools/list (ClientConfig::list_tools), arguments built from an inputSchema, CallRequest::arguments_json
// sent in place of the worker's arguments; and a failed set-up that settles as "idle".
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

TEST(ExampleArguments, FollowTheSchemasShape)
{
	EXPECT_EQ(
	    ExampleArguments(
	        R"({"type":"object","properties":{"a":{"type":"number"},"b":{"type":"integer"},"c":{"type":"string"}},"required":["a","b"]})"),
	    R"({"a":1,"b":1})");
	EXPECT_EQ(
	    ExampleArguments(
	        R"({"type":"object","properties":{"s":{"type":"string","enum":["x","y"]},"d":{"type":"boolean","default":false},"o":{"type":"object","properties":{"n":{"type":"string"}}},"l":{"type":"array"}}})"),
	    R"({"s":"x","d":false,"o":{"n":"example"},"l":[]})");
	EXPECT_EQ(ExampleArguments(R"({"type":"object"})"), "{}");
	EXPECT_EQ(ExampleArguments(""), "{}");
	EXPECT_EQ(ExampleArguments("not json"), "{}");
	EXPECT_EQ(ExampleArguments(R"({"properties":{"r":{"$ref":"#/$defs/x"}},"required":["r"]})"), R"({"r":null})");
}

TEST(ParseToolsPage, ListsEveryToolAndWhyOneIsUnusable)
{
	std::vector<ListedTool> tools;
	std::string cursor, error;
	ASSERT_TRUE(ParseToolsPage(
	    R"({"tools":[{"name":"ok","inputSchema":{"type":"object","properties":{"r":{"type":"string","x-mcp-header":"Region"}}}},{"name":"bad","inputSchema":{"type":"object","properties":{"r":{"type":"string","x-mcp-header":"Bad Name"}}}},{"inputSchema":{}}],"nextCursor":"p2"})",
	    &tools, &cursor, &error))
	    << error;
	ASSERT_EQ(tools.size(), 2u);
	EXPECT_EQ(tools[0].name, "ok");
	EXPECT_EQ(tools[0].invalid, "");
	EXPECT_NE(tools[0].input_schema_json.find("x-mcp-header"), std::string::npos);
	EXPECT_EQ(tools[1].name, "bad");
	EXPECT_NE(tools[1].invalid, "");
	EXPECT_EQ(cursor, "p2");
}

TEST_F(ClientTest, ListToolsReadsEveryPage)
{
	ModernServer modern;
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/list"))
			return Reply{Json(Result(r, r.body.find("\"cursor\":\"p2\"") != std::string::npos
			                                ? R"({"tools":[{"name":"second","inputSchema":{"type":"object"}}]})"
			                                : R"({"tools":[{"name":"first"}],"nextCursor":"p2"})"))};
		return modern(r);
	});
	ClientConfig config;
	config.tool = "";
	config.list_tools = true;
	auto client = Make(server.Url(), config);
	client->Connect();
	for (int i = 0; i < 200 && client->Endpoint().state != "ready"; i++)
		DriveFor(*client, 10);
	EndpointInfo info = client->Endpoint();
	ASSERT_EQ(info.state, "ready") << info.last_error;
	ASSERT_EQ(info.tools.size(), 2u);
	EXPECT_EQ(info.tools[0].name, "first");
	EXPECT_EQ(info.tools[1].name, "second");
	EXPECT_EQ(server.Count("tools/list"), 2);
}

TEST_F(ClientTest, ArgumentsJsonReplacesTheWorkersArguments)
{
	ModernServer modern;
	modern.tools = R"({"tools":[{"name":"add","inputSchema":{"type":"object"}}]})";
	TestServer server(
	    [&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : modern(r); });
	ClientConfig config;
	config.tool = "add";
	auto client = Make(server.Url(), config);
	CallRequest call = Call(1);
	call.arguments_json = R"({"a":1,"b":2})";
	client->Submit(call);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	Request sent = server.First("tools/call");
	EXPECT_NE(sent.body.find(R"("arguments":{"a":1,"b":2})"), std::string::npos) << sent.body;
	EXPECT_EQ(sent.body.find("run_id"), std::string::npos) << sent.body;
}

TEST_F(ClientTest, AFailedSetUpSettlesAsIdleWithItsError)
{
	TestServer server([&](const Request &, int) { return Reply{Http(401, "application/json", "{}")}; });
	ClientConfig config;
	config.tool = "";
	auto client = Make(server.Url(), config);
	client->Connect();
	for (int i = 0; i < 200 && client->Endpoint().last_error.empty(); i++)
		DriveFor(*client, 10);
	EndpointInfo info = client->Endpoint();
	EXPECT_EQ(info.state, "idle");
	EXPECT_NE(info.last_error.find("401"), std::string::npos) << info.last_error;
}

} // namespace
