// mcp_protocol and mcp_session as pure functions: message building, parsing, era judgement, tasks.
#include <gtest/gtest.h>

#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/mcp_session.hpp"

using namespace pgdiag;

namespace {

HttpExchange
Exchange(long status, const std::string &body, int curl_code = 0)
{
	HttpExchange x;
	x.finished = true;
	x.status = status;
	x.body = body;
	x.curl_code = curl_code;
	return x;
}

RpcMessage
One(const std::string &text)
{
	std::vector<RpcMessage> messages;
	std::string error;
	EXPECT_TRUE(ParseMessages(text, &messages, &error)) << error;
	EXPECT_EQ(messages.size(), 1u);
	return messages.empty() ? RpcMessage() : messages[0];
}

TEST(Protocol, HeaderValueEncoding)
{
	// The transport page's examples.
	EXPECT_EQ(EncodeHeaderValue("us-west1"), "us-west1");
	EXPECT_EQ(EncodeHeaderValue("Hello, 世界"), "=?base64?SGVsbG8sIOS4lueVjA==?=");
	EXPECT_EQ(EncodeHeaderValue(" padded "), "=?base64?IHBhZGRlZCA=?=");
	EXPECT_EQ(EncodeHeaderValue("line1\nline2"), "=?base64?bGluZTEKbGluZTI=?=");
	EXPECT_EQ(EncodeHeaderValue("=?base64?literal?="), "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=");
}

TEST(Protocol, EraHeaders)
{
	RequestContext modern{Era::Modern, "2026-07-28", false};
	auto h = EraHeaders(modern, "tools/call", "run_diagnosis");
	EXPECT_EQ(h, (std::vector<std::string>{"MCP-Protocol-Version: 2026-07-28", "Mcp-Method: tools/call",
	                                       "Mcp-Name: run_diagnosis"}));
	RequestContext legacy{Era::Legacy, "2025-06-18", false};
	EXPECT_EQ(EraHeaders(legacy, "tools/call", "run_diagnosis"),
	          (std::vector<std::string>{"MCP-Protocol-Version: 2025-06-18"}));
	RequestContext initializing{Era::Legacy, "", false};
	EXPECT_TRUE(EraHeaders(initializing, "initialize", "").empty());
}

TEST(Protocol, ToolCallBodies)
{
	CallRequest r;
	r.run_id = "r\"1";
	r.patient_id = "p";
	r.inputs_json = "{}";
	r.context_pack_json = "{\"a\":1}";
	ToolCallParams p;
	p.tool = "run_diagnosis";
	p.progress_token = "r\"1:1";
	p.traceparent = "00-abc-def-01";
	p.call = &r;
	RequestContext modern{Era::Modern, "2026-07-28", true};
	std::string body = BuildToolCall("r\"1:1", modern, p);
	EXPECT_EQ(body, R"({"jsonrpc":"2.0","id":"r\"1:1","method":"tools/call","params":{"name":"run_diagnosis",)"
	                R"("arguments":{"run_id":"r\"1","patient_id":"p","attempt":1,"schema_version":"v1","inputs":{},)"
	                R"("context_pack":{"a":1}},"_meta":{"progressToken":"r\"1:1","traceparent":"00-abc-def-01",)"
	                R"("io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":)"
	                R"({"name":"pg_diagnosis","version":"0.3.0"},"io.modelcontextprotocol/clientCapabilities":)"
	                R"({"extensions":{"io.modelcontextprotocol/tasks":{}}}}}})");
	RequestContext legacy{Era::Legacy, "2025-11-25", false};
	p.legacy_task = true;
	p.traceparent.clear();
	body = BuildToolCall("x", legacy, p);
	EXPECT_NE(body.find(R"("task":{},"_meta":{"progressToken":"r\"1:1"}})"), std::string::npos) << body;
}

TEST(Protocol, RequestIdsAreJsonStrings)
{
	EXPECT_EQ(JsonString("run-1:1"), "\"run-1:1\"");
	EXPECT_EQ(JsonString("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
	// The id that comes back is compared as JSON text: the same escaping on both sides.
	RpcMessage m;
	std::vector<RpcMessage> messages;
	std::string error;
	ASSERT_TRUE(ParseMessages("{\"jsonrpc\":\"2.0\",\"id\":\"x\\ny\",\"result\":{}}", &messages, &error));
	EXPECT_EQ(messages[0].id, JsonString("x\ny"));
}

TEST(Protocol, RepliesAndNotifications)
{
	EXPECT_EQ(BuildEmptyResult("99"), R"({"jsonrpc":"2.0","id":99,"result":{}})");
	RpcMessage m = One(BuildMethodNotFound("\"s-1\"", "sampling/createMessage"));
	EXPECT_TRUE(m.is_error);
	EXPECT_EQ(m.id, "\"s-1\"");
	EXPECT_EQ(m.error_code_int, -32601);
	EXPECT_EQ(
	    BuildCancelled("\"run-1:1\"", "timed out"),
	    R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"run-1:1","reason":"timed out"}})");
	RequestContext legacy{Era::Legacy, "2025-11-25", false};
	EXPECT_EQ(BuildTaskRequest("g-1", legacy, "tasks/get", "t-1", ""),
	          R"({"jsonrpc":"2.0","id":"g-1","method":"tasks/get","params":{"taskId":"t-1"}})");
}

TEST(Protocol, ParsesMessagesOfEveryKind)
{
	std::vector<RpcMessage> messages;
	std::string error;
	ASSERT_TRUE(ParseMessages(
	    R"([{"jsonrpc":"2.0","id":1,"result":{"a":1}},{"jsonrpc":"2.0","id":"x","method":"ping"},)"
	    R"({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":0.5}},)"
	    R"({"jsonrpc":"2.0","id":2,"error":{"code":-32022,"message":"v","data":{"supported":["a","b"]}}},7])",
	    &messages, &error));
	ASSERT_EQ(messages.size(), 4u);
	EXPECT_EQ(messages[0].kind, RpcMessage::Kind::Response);
	EXPECT_EQ(messages[0].result, R"({"a":1})");
	EXPECT_EQ(messages[1].kind, RpcMessage::Kind::Request);
	EXPECT_EQ(messages[1].id, "\"x\"");
	EXPECT_EQ(messages[2].kind, RpcMessage::Kind::Notification);
	CallProgress p;
	EXPECT_TRUE(ProgressOf(messages[2], "\"t\"", &p));
	EXPECT_DOUBLE_EQ(p.progress, 0.5);
	EXPECT_DOUBLE_EQ(p.total, -1);
	EXPECT_FALSE(ProgressOf(messages[2], "\"other\"", &p));
	EXPECT_TRUE(messages[3].is_error);
	EXPECT_EQ(SupportedVersions(messages[3]), (std::vector<std::string>{"a", "b"}));
	EXPECT_FALSE(ParseMessages("{nope", &messages, &error));
}

TEST(Protocol, TransportOutcomeFlags)
{
	EXPECT_EQ(TransportOutcome(Exchange(200, "{}"), false).code, ErrorCode::None);
	CallOutcome o = TransportOutcome(Exchange(401, ""), false);
	EXPECT_TRUE(o.config_error);
	EXPECT_EQ(o.code, ErrorCode::McpError);
	EXPECT_TRUE(TransportOutcome(Exchange(403, ""), false).config_error);
	EXPECT_FALSE(TransportOutcome(Exchange(400, ""), false).config_error);
	HttpExchange emfile = Exchange(0, "", 7 /* CURLE_COULDNT_CONNECT */);
	emfile.os_errno = EMFILE;
	emfile.local_failure = true;
	emfile.error = "socket failed";
	o = TransportOutcome(emfile, false);
	EXPECT_TRUE(o.local_failure);
	EXPECT_EQ(o.code, ErrorCode::NetworkError);
	HttpExchange refused = Exchange(0, "", 7);
	EXPECT_FALSE(TransportOutcome(refused, false).local_failure);
}

TEST(Session, DiscoverJudgement)
{
	RpcMessage ok = One(
	    R"({"jsonrpc":"2.0","id":"d","result":{"supportedVersions":["2026-07-28"],"capabilities":{"tools":{},"extensions":{"io.modelcontextprotocol/tasks":{}}}}})");
	ProbeStep step = JudgeDiscover(Exchange(200, ""), &ok, "2026-07-28");
	EXPECT_EQ(step.next, ProbeStep::Next::Modern);
	EXPECT_TRUE(step.features.tools);
	EXPECT_TRUE(step.features.tasks_extension);

	// A legacy server: a 4xx without a modern body, or a JSON-RPC error to a method every modern server has.
	EXPECT_EQ(
	    JudgeDiscover(Exchange(400, R"({"jsonrpc":"2.0","error":{"code":-32000,"message":"no session"},"id":null})"),
	                  nullptr, "2026-07-28")
	        .next,
	    ProbeStep::Next::Legacy);
	EXPECT_EQ(JudgeDiscover(Exchange(404, "Not Found"), nullptr, "2026-07-28").next, ProbeStep::Next::Legacy);
	EXPECT_EQ(JudgeDiscover(Exchange(405, ""), nullptr, "2026-07-28").next, ProbeStep::Next::Legacy);
	RpcMessage generic = One(R"({"jsonrpc":"2.0","id":"d","result":{}})"); // answers any method with {}
	EXPECT_EQ(JudgeDiscover(Exchange(200, ""), &generic, "2026-07-28").next, ProbeStep::Next::Legacy);
	RpcMessage unknown = One(R"({"jsonrpc":"2.0","id":"d","error":{"code":-32601,"message":"Method not found"}})");
	EXPECT_EQ(JudgeDiscover(Exchange(200, ""), &unknown, "2026-07-28").next, ProbeStep::Next::Legacy);

	// A modern server rejecting the version: retry with a listed modern one, fall back to a listed legacy one, or
	// give up as a configuration error.
	auto unsupported = [](const std::string &supported) {
		return Exchange(
		    400, R"({"jsonrpc":"2.0","id":"d","error":{"code":-32022,"message":"Unsupported","data":{"supported":)" +
		             supported + "}}}");
	};
	step = JudgeDiscover(unsupported(R"(["2026-07-28"])"), nullptr, "2026-01-01");
	EXPECT_EQ(step.next, ProbeStep::Next::RetryModern);
	EXPECT_EQ(step.version, "2026-07-28");
	// Our version rejected although listed: ask again with it (the rejection carried no features).
	step = JudgeDiscover(unsupported(R"(["2026-07-28"])"), nullptr, "2026-07-28");
	EXPECT_EQ(step.next, ProbeStep::Next::RetryModern);
	EXPECT_EQ(step.version, "2026-07-28");
	EXPECT_EQ(JudgeDiscover(unsupported(R"(["2025-06-18"])"), nullptr, "2026-07-28").next, ProbeStep::Next::Legacy);
	step = JudgeDiscover(unsupported(R"(["2030-01-01"])"), nullptr, "2026-07-28");
	EXPECT_EQ(step.next, ProbeStep::Next::Fail);
	EXPECT_TRUE(step.failure.config_error);

	// Transient trouble says nothing about the era.
	step = JudgeDiscover(Exchange(503, ""), nullptr, "2026-07-28");
	EXPECT_EQ(step.next, ProbeStep::Next::Fail);
	EXPECT_EQ(step.failure.code, ErrorCode::NetworkError);
	step = JudgeDiscover(Exchange(401, ""), nullptr, "2026-07-28");
	EXPECT_EQ(step.next, ProbeStep::Next::Fail);
	EXPECT_TRUE(step.failure.config_error);
}

TEST(Session, InitializeJudgement)
{
	HttpExchange x = Exchange(200, "");
	x.session_id = "s-1";
	RpcMessage ok = One(
	    R"({"jsonrpc":"2.0","id":"i","result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}}}})");
	ProbeStep step = JudgeInitialize(x, &ok);
	EXPECT_EQ(step.next, ProbeStep::Next::LegacyReady);
	EXPECT_EQ(step.version, "2025-11-25");
	EXPECT_EQ(step.session_id, "s-1");
	EXPECT_TRUE(step.features.legacy_task_tools);
	EXPECT_TRUE(step.features.legacy_task_cancel);
	RpcMessage old = One(R"({"jsonrpc":"2.0","id":"i","result":{"protocolVersion":"2024-11-05","capabilities":{}}})");
	step = JudgeInitialize(x, &old);
	EXPECT_EQ(step.next, ProbeStep::Next::Fail);
	EXPECT_TRUE(step.failure.config_error);
}

TEST(Session, OriginsAndEraCache)
{
	EXPECT_EQ(OriginOf("http://Example.com/mcp"), "http://example.com:80");
	EXPECT_EQ(OriginOf("https://user:pw@h:8443/a?b"), "https://h:8443");
	EXPECT_EQ(OriginOf("http://[::1]/mcp"), "http://[::1]:80");
	EXPECT_EQ(OriginOf("nonsense"), "");
	EraCache cache;
	EXPECT_EQ(cache.Get("http://h:80"), Era::Unknown);
	cache.Set("http://h:80", Era::Legacy);
	EXPECT_EQ(cache.Get("http://h:80"), Era::Legacy);
	cache.Forget("http://h:80");
	EXPECT_EQ(cache.Get("http://h:80"), Era::Unknown);
}

TEST(Session, TasksForTool)
{
	EndpointSession s;
	s.era = Era::Modern;
	EXPECT_FALSE(s.TasksForTool());
	s.features.tasks_extension = true;
	EXPECT_TRUE(s.TasksForTool());
	s.tool.task_support = "forbidden";
	EXPECT_FALSE(s.TasksForTool());
	s.era = Era::Legacy;
	s.features.legacy_task_tools = true;
	s.tool.task_support = "";
	EXPECT_FALSE(s.TasksForTool()); // the default is forbidden
	s.tool.task_support = "optional";
	EXPECT_TRUE(s.TasksForTool());
	s.session_id = "abc";
	auto h = s.Headers("tools/call", "run_diagnosis");
	EXPECT_NE(std::find(h.begin(), h.end(), "Mcp-Session-Id: abc"), h.end());
}

TEST(Tasks, CreateAndStatusInBothEras)
{
	TaskInfo t;
	EXPECT_EQ(
	    ParseCreateTask(R"({"resultType":"task","taskId":"a","status":"working","ttlMs":null,"pollIntervalMs":250})",
	                    Era::Modern, &t),
	    TaskParse::Task);
	EXPECT_EQ(t.task_id, "a");
	EXPECT_EQ(t.ttl_ms, -1);
	EXPECT_EQ(t.poll_ms, 250);
	EXPECT_EQ(ParseCreateTask(R"({"content":[],"structuredContent":{}})", Era::Modern, &t), TaskParse::NotATask);
	EXPECT_EQ(ParseCreateTask(R"({"resultType":"task","status":"working"})", Era::Modern, &t), TaskParse::Invalid);
	TaskInfo l;
	EXPECT_EQ(ParseCreateTask(R"({"task":{"taskId":"b","status":"working","ttl":60000,"pollInterval":5000}})",
	                          Era::Legacy, &l),
	          TaskParse::Task);
	EXPECT_EQ(l.ttl_ms, 60000);
	EXPECT_EQ(l.poll_ms, 5000);
	/* The official SDK adds an empty content to a 2025-11-25 CreateTaskResult; content with items is a tool result. */
	EXPECT_EQ(
	    ParseCreateTask(R"({"content":[],"task":{"taskId":"c","status":"working","ttl":1000,"pollInterval":250}})",
	                    Era::Legacy, &l),
	    TaskParse::Task);
	EXPECT_EQ(ParseCreateTask(R"({"content":[{"type":"text","text":"{}"}],"task":{"taskId":"d","status":"working"}})",
	                          Era::Legacy, &l),
	          TaskParse::NotATask);
	TaskInfo done;
	ASSERT_TRUE(ParseTaskStatus(
	    R"({"resultType":"complete","taskId":"a","status":"completed","result":{"content":[]}})", Era::Modern, &done));
	EXPECT_EQ(done.result, R"({"content":[]})");
	EXPECT_TRUE(IsTerminalTaskStatus(done.status));
	EXPECT_FALSE(IsTerminalTaskStatus("working"));
	EXPECT_FALSE(IsTerminalTaskStatus("input_required"));
}

TEST(Tasks, ToolsListTaskSupport)
{
	ToolEntry e;
	std::string cursor, error;
	ASSERT_TRUE(ParseToolsList(
	    R"({"tools":[{"name":"run_diagnosis","execution":{"taskSupport":"required"}}],"nextCursor":"n"})",
	    "run_diagnosis", &e, &cursor, &error));
	EXPECT_TRUE(e.found);
	EXPECT_EQ(e.task_support, "required");
	EXPECT_EQ(cursor, "n");
	EXPECT_FALSE(ParseToolsList(R"({"nope":1})", "x", &e, &cursor, &error));
}

TEST(Tools, ParamHeadersFromTheInputSchema)
{
	ToolEntry e;
	std::string cursor, error;
	ASSERT_TRUE(ParseToolsList(
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object","properties":{)"
	    R"("run_id":{"type":"string","x-mcp-header":"Run-Id"},"attempt":{"type":"integer","x-mcp-header":"Attempt"},)"
	    R"("inputs":{"type":"object","properties":{"urgent":{"type":"boolean","x-mcp-header":"Urgent"},)"
	    R"("ward":{"type":"string","x-mcp-header":"Ward"}}}}}}]})",
	    "run_diagnosis", &e, &cursor, &error));
	EXPECT_TRUE(e.invalid.empty()) << e.invalid;
	ASSERT_EQ(e.param_headers.size(), 4u);
	CallRequest r;
	r.run_id = "r-1";
	r.patient_id = "p";
	r.attempt = 2;
	r.inputs_json = R"({"urgent":true,"ward":"Station 3 – Nord"})";
	auto lines = ParamHeaderLines(e.param_headers, BuildToolArguments(r));
	EXPECT_EQ(lines,
	          (std::vector<std::string>{"Mcp-Param-Run-Id: r-1", "Mcp-Param-Attempt: 2", "Mcp-Param-Urgent: true",
	                                    "Mcp-Param-Ward: " + EncodeHeaderValue("Station 3 – Nord")}));
	// Absent or null values are omitted.
	r.inputs_json = R"({"urgent":null})";
	lines = ParamHeaderLines(e.param_headers, BuildToolArguments(r));
	EXPECT_EQ(lines.size(), 2u);
}

TEST(Tools, InvalidParamHeadersMakeTheToolUnusable)
{
	auto invalid = [](const std::string &schema) {
		ToolEntry e;
		std::string cursor, error;
		EXPECT_TRUE(
		    ParseToolsList(R"({"tools":[{"name":"t","inputSchema":)" + schema + "}]}", "t", &e, &cursor, &error));
		return e.invalid;
	};
	EXPECT_EQ(invalid(R"({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A"}}})"), "");
	EXPECT_NE(invalid(R"({"type":"object","properties":{"a":{"type":"number","x-mcp-header":"A"}}})"), "");
	EXPECT_NE(invalid(R"({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A B"}}})"), "");
	EXPECT_NE(invalid(R"({"type":"object","properties":{"a":{"type":"string","x-mcp-header":""}}})"), "");
	EXPECT_NE(invalid(R"({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"X"},)"
	                  R"("b":{"type":"string","x-mcp-header":"x"}}})"),
	          "");
	EXPECT_NE(
	    invalid(
	        R"({"type":"object","properties":{"a":{"type":"array","items":{"type":"string","x-mcp-header":"A"}}}})"),
	    "");
	EXPECT_NE(invalid(R"({"type":"object","properties":{"a":{"oneOf":[{"type":"string","x-mcp-header":"A"}]}}})"), "");
	EXPECT_NE(invalid(R"({"type":"object","x-mcp-header":"Root"})"), "");
}

} // namespace
