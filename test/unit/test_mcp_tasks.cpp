// Task-backed calls: the tasks extension (io.modelcontextprotocol/tasks, SEP-2663) in the modern era and the
// experimental 2025-11-25 form (SEP-1686) in the legacy era: create, poll at the server's interval, result, cancel,
// resume after a restart, lost tasks.
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

std::string
TaskIdOf(const Request &r)
{
	size_t p = r.body.find("\"taskId\":\"");
	if (p == std::string::npos)
		return "";
	p += 10;
	return r.body.substr(p, r.body.find('"', p) - p);
}

std::string
Diagnosis()
{
	return std::string(R"({"content":[{"type":"text","text":"x"}],"structuredContent":)") + kValidDiagnosis + "}";
}

// A modern tasks server: every tools/call becomes task "t-<run>", working for `polls` tasks/get, then completed.
struct ModernTasks {
	int polls = 2;
	std::atomic<int> gets{0};
	std::string poll_interval = "50";

	Reply operator()(const Request &r)
	{
		ModernServer modern;
		modern.capabilities = R"({"tools":{},"extensions":{"io.modelcontextprotocol/tasks":{}}})";
		if (r.IsMethod("tools/call")) {
			std::string run = r.body.substr(r.body.find("\"run_id\":\"") + 10);
			run = run.substr(0, run.find('"'));
			return {Json(Result(
			    r,
			    R"({"resultType":"task","taskId":"t-)" + run +
			        R"(","status":"working","createdAt":"2026-08-01T00:00:00Z","lastUpdatedAt":"2026-08-01T00:00:00Z","ttlMs":60000,"pollIntervalMs":)" +
			        poll_interval + "}"))};
		}
		if (r.IsMethod("tasks/get")) {
			std::string id = TaskIdOf(r);
			if (id.rfind("t-", 0) != 0)
				return {Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
				             R"(,"error":{"code":-32602,"message":"unknown task"}})")};
			if (++gets <= polls)
				return {Json(Result(r, R"({"resultType":"complete","taskId":")" + id +
				                           R"(","status":"working","ttlMs":60000,"pollIntervalMs":)" + poll_interval +
				                           "}"))};
			return {Json(Result(r, R"({"resultType":"complete","taskId":")" + id +
			                           R"(","status":"completed","ttlMs":60000,"result":)" + Diagnosis() + "}"))};
		}
		if (r.IsMethod("tasks/cancel"))
			return {Json(Result(r, R"({"resultType":"complete"})"))};
		return modern(r);
	}
};

TEST_F(ClientTest, ModernTaskIsCreatedPolledAndCompleted)
{
	ModernTasks tasks_server;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	auto client = Make(server.Url());
	client->Submit(Call(5));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_NE(out[0].result_json.find("\"risk_level\":\"high\""), std::string::npos);
	EXPECT_EQ(out[0].task_id, "t-run-1");
	ASSERT_EQ(tasks.size(), 1u);
	EXPECT_EQ(tasks[0].tag, 5u);
	EXPECT_EQ(tasks[0].task_id, "t-run-1");
	EXPECT_EQ(tasks[0].ttl_ms, 60000);
	EXPECT_TRUE(client->Endpoint().tasks);

	EXPECT_EQ(server.Count("tools/call"), 1);
	EXPECT_EQ(server.Count("tasks/get"), 3);
	Request call = server.First("tools/call");
	EXPECT_NE(
	    call.body.find(
	        R"("io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}})"),
	    std::string::npos)
	    << call.body;
	std::vector<Request> gets;
	for (const Request &r : server.Requests())
		if (r.IsMethod("tasks/get"))
			gets.push_back(r);
	for (size_t i = 0; i < gets.size(); i++) {
		EXPECT_EQ(gets[i].Get("mcp-method"), "tasks/get");
		EXPECT_EQ(gets[i].Get("mcp-name"), "t-run-1"); // routing header: the task id
		EXPECT_EQ(gets[i].Get("mcp-protocol-version"), "2026-07-28");
		if (i > 0) {
			EXPECT_GE(gets[i].at - gets[i - 1].at, std::chrono::milliseconds(45)); // honours pollIntervalMs
		}
	}
}

TEST_F(ClientTest, ManyTasksArePolledByOneClient)
{
	ModernTasks tasks_server;
	tasks_server.polls = 60;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	ClientConfig config;
	config.max_inflight = 30;
	auto client = Make(server.Url(), config);
	for (int i = 0; i < 30; i++)
		ASSERT_TRUE(client->Submit(Call(i, "run-" + std::to_string(i))));
	auto out = RunUntil(*client, 30, 20);
	ASSERT_EQ(out.size(), 30u);
	for (const CallOutcome &o : out)
		EXPECT_EQ(o.code, ErrorCode::None) << o.message;
	EXPECT_EQ(tasks.size(), 30u);
	EXPECT_EQ(server.Count("tools/call"), 30);
	EXPECT_GE(server.Count("tasks/get"), 61);
}

// task_timeout_ms: a task may outlive request_timeout_ms; past task_timeout_ms the attempt ends with
// TIMEOUT_ERROR and the task is left running on the server for the next attempt to resume (no tasks/cancel).
TEST_F(ClientTest, TaskTimeoutReplacesTheRequestTimeout)
{
	ModernTasks tasks_server;
	tasks_server.polls = 1000;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	ClientConfig config;
	config.request_timeout_ms = 300;
	config.task_timeout_ms = 1200;
	auto client = Make(server.Url(), config);
	auto started = std::chrono::steady_clock::now();
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	auto took = std::chrono::steady_clock::now() - started;
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::TimeoutError) << out[0].message;
	EXPECT_EQ(out[0].task_id, "t-run-1");
	EXPECT_GE(took, std::chrono::milliseconds(1100));
	EXPECT_LT(took, std::chrono::milliseconds(3000));
	DriveFor(*client, 200);
	EXPECT_EQ(server.Count("tasks/cancel"), 0);
}

TEST_F(ClientTest, ResumedTaskIsPolledWithoutCallingTheTool)
{
	ModernTasks tasks_server;
	tasks_server.polls = 1;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	auto client = Make(server.Url());
	CallRequest call = Call(9);
	call.resume_task_id = "t-earlier";
	client->Submit(call);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 0);
	EXPECT_EQ(server.Count("tasks/get"), 2);
	EXPECT_TRUE(tasks.empty()); // nothing new to commit
}

TEST_F(ClientTest, UnknownTaskIsLost)
{
	ModernTasks tasks_server;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	auto client = Make(server.Url());
	CallRequest call = Call(9);
	call.resume_task_id = "expired-1";
	client->Submit(call);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].task_lost) << out[0].message;
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
	EXPECT_EQ(out[0].task_id, "expired-1");
	EXPECT_EQ(server.Count("tools/call"), 0);
}

TEST_F(ClientTest, CancelOfATaskSendsTasksCancel)
{
	ModernTasks tasks_server;
	tasks_server.polls = 1000;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	auto client = Make(server.Url());
	client->Submit(Call(4));
	RunUntil(*client, 0);
	ASSERT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.IsMethod("tasks/get"); }, client.get()));
	client->Cancel(4);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_TRUE(out[0].cancelled);
	EXPECT_EQ(out[0].task_id, "t-run-1");
	EXPECT_TRUE(WaitFor(
	    server,
	    [](const Request &r) {
		    return r.IsMethod("tasks/cancel") && TaskIdOf(r) == "t-run-1" && r.Get("mcp-name") == "t-run-1";
	    },
	    client.get()));
	EXPECT_EQ(server.Count("notifications/cancelled"), 0); // never for tasks
	int gets = server.Count("tasks/get");
	DriveFor(*client, 200);
	EXPECT_EQ(server.Count("tasks/get"), gets); // polling stopped
}

TEST_F(ClientTest, FailedPollIsRetriedAtTheNextInterval)
{
	ModernTasks tasks_server;
	tasks_server.polls = 0;
	std::atomic<int> gets{0};
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tasks/get") && gets++ == 0)
			return Reply{Http(503, "text/plain", "busy")};
		return tasks_server(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("tasks/get"), 2);
	EXPECT_EQ(server.Count("tools/call"), 1);
}

TEST_F(ClientTest, ShutdownLeavesTasksRunning)
{
	ModernTasks tasks_server;
	tasks_server.polls = 1000;
	TestServer server([&](const Request &r, int) { return tasks_server(r); });
	auto client = Make(server.Url());
	client->Submit(Call(4));
	ASSERT_TRUE(WaitFor(
	    server, [](const Request &r) { return r.IsMethod("tasks/get"); }, client.get()));
	client->Shutdown();
	std::this_thread::sleep_for(std::chrono::milliseconds(100));
	EXPECT_EQ(server.Count("tasks/cancel"), 0); // a restart resumes the task
	EXPECT_EQ(client->InFlight(), 0u);
}

// The 2025-11-25 experimental form: tasks capability at initialize, execution.taskSupport in tools/list, a `task`
// request parameter, CreateTaskResult {task: {...}}, tasks/get, then tasks/result for the tool result.
TEST_F(ClientTest, LegacyTaskUsesTasksResult)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}})";
	legacy.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]})";
	std::atomic<int> gets{0};
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call"))
			return Reply{Json(Result(
			    r,
			    R"({"task":{"taskId":"lt-1","status":"working","createdAt":"x","lastUpdatedAt":"x","ttl":30000,"pollInterval":40}})"))};
		if (r.IsMethod("tasks/get"))
			return Reply{
			    Json(Result(r, std::string(R"({"taskId":"lt-1","status":")") + (gets++ ? "completed" : "working") +
			                       R"(","ttl":30000,"pollInterval":40})"))};
		if (r.IsMethod("tasks/result"))
			return Reply{Http(200, "text/event-stream", "id: 1\ndata: " + Result(r, Diagnosis()) + "\n\n")};
		return legacy(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(2));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	ASSERT_EQ(tasks.size(), 1u);
	EXPECT_EQ(tasks[0].task_id, "lt-1");
	EXPECT_EQ(tasks[0].ttl_ms, 30000);
	Request call = server.First("tools/call");
	EXPECT_NE(call.body.find(R"("task":{})"), std::string::npos) << call.body;
	EXPECT_EQ(server.Count("tasks/get"), 2);
	EXPECT_EQ(server.Count("tasks/result"), 1);
	Request result = server.First("tasks/result");
	EXPECT_EQ(result.Get("mcp-session-id"), "sess-1");
	EXPECT_EQ(TaskIdOf(result), "lt-1");
	EXPECT_TRUE(client->Endpoint().tasks);
}

// A 2025-11-25 task resumed after a crash: polled, and its result fetched with tasks/result; the tool is not called.
TEST_F(ClientTest, ResumedLegacyTaskFetchesItsResult)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}})";
	legacy.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]})";
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tasks/get"))
			return Reply{Json(Result(r, R"({"taskId":"lt-9","status":"completed","ttl":30000,"pollInterval":40})"))};
		if (r.IsMethod("tasks/result"))
			return Reply{Json(Result(r, Diagnosis()))};
		return legacy(r);
	});
	auto client = Make(server.Url());
	CallRequest call = Call(3);
	call.resume_task_id = "lt-9";
	client->Submit(call);
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("tools/call"), 0);
	EXPECT_EQ(server.Count("tasks/result"), 1);
}

// The legacy session expires while a task is polled: the client initializes again and polls the same task; the
// tool is not called again.
TEST_F(ClientTest, LegacySessionLostUnderATaskPollsAgain)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"requests":{"tools":{"call":{}}}}})";
	legacy.tools = R"({"tools":[{"name":"run_diagnosis","execution":{"taskSupport":"required"}}]})";
	std::atomic<int> gets{0};
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tools/call"))
			return Reply{
			    Json(Result(r, R"({"task":{"taskId":"lt-2","status":"working","ttl":null,"pollInterval":20}})"))};
		if (r.IsMethod("tasks/get")) {
			if (gets++ == 0)
				return Reply{Http(404, "application/json", "{}")}; // the session expired
			return Reply{Json(Result(r, R"({"taskId":"lt-2","status":"completed","ttl":null})"))};
		}
		if (r.IsMethod("tasks/result"))
			return Reply{Json(Result(r, Diagnosis()))};
		return legacy(r);
	});
	auto client = Make(server.Url());
	client->Submit(Call(2));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.Count("initialize"), 2);
	EXPECT_EQ(server.Count("tools/call"), 1);
	EXPECT_EQ(server.Count("tasks/get"), 2);
	ASSERT_EQ(tasks.size(), 1u);
	EXPECT_EQ(tasks[0].ttl_ms, -1); // ttl null: unlimited
}

TEST_F(ClientTest, LegacyToolWithoutTaskSupportIsCalledDirectly)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"requests":{"tools":{"call":{}}}}})";
	TestServer server(
	    [&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : legacy(r); });
	auto client = Make(server.Url());
	client->Submit(Call(2));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::None) << out[0].message;
	EXPECT_EQ(server.First("tools/call").body.find("\"task\""), std::string::npos);
	EXPECT_FALSE(client->Endpoint().tasks);
}

} // namespace

// 2025-11-25: an unknown task id is Invalid params (-32602), read from the parsed JSON-RPC error of a 400; another
// error whose text merely mentions -32602 is a failed poll, polled again, and the task completes.
TEST_F(ClientTest, LegacyUnknownTaskIsReadFromTheErrorCode)
{
	LegacyServer legacy;
	legacy.version = "2025-11-25";
	legacy.capabilities = R"({"tools":{},"tasks":{"cancel":{},"requests":{"tools":{"call":{}}}}})";
	legacy.tools =
	    R"({"tools":[{"name":"run_diagnosis","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]})";
	std::atomic<int> gets{0};
	TestServer server([&](const Request &r, int) {
		if (r.IsMethod("tasks/get") && TaskIdOf(r) == "gone")
			return Reply{Http(400, "application/json",
			                  R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
			                      R"(,"error":{"code":-32602,"message":"Failed to retrieve task: Task not found"}})")};
		if (r.IsMethod("tasks/get") && gets++ == 0)
			return Reply{Http(400, "application/json",
			                  R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
			                      R"(,"error":{"code":-32603,"message":"store busy, not -32602"}})")};
		if (r.IsMethod("tasks/get"))
			return Reply{Json(Result(r, R"({"taskId":"lt-5","status":"completed","ttl":30000,"pollInterval":40})"))};
		if (r.IsMethod("tasks/result"))
			return Reply{Json(Result(r, Diagnosis()))};
		return legacy(r);
	});
	auto client = Make(server.Url());
	CallRequest lost = Call(1, "run-lost");
	lost.resume_task_id = "gone";
	CallRequest busy = Call(2, "run-busy");
	busy.resume_task_id = "lt-5";
	client->Submit(lost);
	client->Submit(busy);
	auto out = RunUntil(*client, 2);
	ASSERT_EQ(out.size(), 2u);
	for (const CallOutcome &o : out) {
		if (o.tag == 1) {
			EXPECT_TRUE(o.task_lost) << o.message;
			EXPECT_EQ(o.code, ErrorCode::McpError);
		} else {
			EXPECT_FALSE(o.task_lost) << o.message;
			EXPECT_EQ(o.code, ErrorCode::None) << o.message;
		}
	}
	EXPECT_EQ(server.Count("tools/call"), 0);
	EXPECT_EQ(server.Count("tasks/result"), 1);
}
