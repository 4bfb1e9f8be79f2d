// HttpTransport on its own, and the client's handling of local resource limits: a descriptor shortage is a
// local_failure (not the run's fault), and max_connections queues calls inside libcurl instead of opening sockets.
#include <sys/resource.h>
#include <sys/wait.h>

#include "pg_diagnosis/core/http_transport.hpp"
#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

std::vector<std::unique_ptr<HttpExchange>>
DriveUntilFinished(HttpTransport &transport, size_t count)
{
	std::vector<std::unique_ptr<HttpExchange>> done;
	auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
	while (done.size() < count && std::chrono::steady_clock::now() < deadline) {
		long timeout = transport.TimeoutMs();
		pollfd p{transport.EventFd(), POLLIN, 0};
		poll(&p, 1, timeout < 0 || timeout > 50 ? 50 : static_cast<int>(timeout));
		transport.Drive();
		for (auto &x : transport.TakeFinished())
			done.push_back(std::move(x));
	}
	return done;
}

TEST(Transport, MethodsHeadersAndSseEvents)
{
	TestServer server([](const Request &r, int) {
		if (r.method == "GET")
			return Reply{Http(200, "text/event-stream", "id: 7\nretry: 250\ndata: hello\n\n")};
		if (r.method == "DELETE")
			return Reply{"HTTP/1.1 204 No Content\r\n\r\n"};
		return Reply{Json("{\"echo\":" + r.body + "}", "Mcp-Session-Id: s-9\r\nRetry-After: 3\r\n")};
	});
	HttpTransport transport;
	HttpRequest post;
	post.url = server.Url();
	post.headers = {"X-Test: 1", "Content-Type: application/json"};
	post.body = "[1]";
	HttpRequest get = post;
	get.method = HttpMethod::Get;
	HttpRequest del = post;
	del.method = HttpMethod::Delete;
	uint64_t post_id = transport.Start(post)->id;
	transport.Start(get);
	transport.Start(del);
	EXPECT_EQ(transport.Count(), 3u);
	auto done = DriveUntilFinished(transport, 3);
	ASSERT_EQ(done.size(), 3u);
	for (auto &x : done) {
		EXPECT_EQ(x->curl_code, 0) << x->error;
		if (x->id == post_id) {
			EXPECT_EQ(x->status, 200);
			EXPECT_EQ(x->body, "{\"echo\":[1]}");
			EXPECT_EQ(x->session_id, "s-9");
			EXPECT_EQ(x->retry_after, "3");
			EXPECT_FALSE(x->is_sse);
		} else if (x->request.method == HttpMethod::Get) {
			EXPECT_TRUE(x->is_sse);
			ASSERT_EQ(x->events.size(), 1u);
			EXPECT_EQ(x->events[0].data, "hello");
			EXPECT_EQ(x->sse.LastEventId(), "7");
			EXPECT_EQ(x->sse.RetryMs(), 250);
		} else
			EXPECT_EQ(x->status, 204);
	}
	auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 3u);
	for (const Request &r : requests) {
		EXPECT_EQ(r.Get("x-test"), "1");
		if (r.method == "POST") {
			EXPECT_EQ(r.body, "[1]");
		}
	}
	EXPECT_EQ(transport.Count(), 0u);
}

TEST(Transport, PoolsShareTheConnectionCap)
{
	HttpTransport transport;
	EXPECT_EQ(transport.PoolsInUse(), 1u);
	transport.SetConnectionLimits(600, 608);
	EXPECT_EQ(transport.PoolsInUse(), 3u);
	transport.SetConnectionLimits(0, 4104); /* no cap: the kept connections decide */
	EXPECT_EQ(transport.PoolsInUse(), 17u);
	transport.SetConnectionLimits(100000, 100008);
	EXPECT_EQ(transport.PoolsInUse(), HttpTransport::kMaxPools);
	transport.SetConnectionLimits(2, 10);
	EXPECT_EQ(transport.PoolsInUse(), 1u);

	/* Two pools of 150: 320 slow exchanges at once never open more than 300 connections, and all complete. */
	TestServer server([](const Request &, int) {
		Reply reply{Json("{}")};
		reply.hang_ms = 100;
		return reply;
	});
	transport.SetConnectionLimits(300, 308);
	ASSERT_EQ(transport.PoolsInUse(), 2u);
	HttpRequest r;
	r.url = server.Url();
	r.body = "{}";
	for (int i = 0; i < 320; i++)
		transport.Start(r);
	auto done = DriveUntilFinished(transport, 320);
	ASSERT_EQ(done.size(), 320u);
	for (auto &x : done)
		EXPECT_EQ(x->status, 200) << x->error;
	EXPECT_LE(server.Connections(), 300);
	EXPECT_GT(server.Connections(), 150); /* both pools carried exchanges */
}

TEST(Transport, AbortClosesTheConnection)
{
	TestServer server([](const Request &, int) {
		Reply reply{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"};
		reply.trickle = {{20000, "data: late\n\n"}};
		return reply;
	});
	HttpTransport transport;
	HttpRequest r;
	r.url = server.Url();
	uint64_t id = transport.Start(r)->id;
	DriveUntilFinished(transport, 0);
	for (int i = 0; i < 20 && server.Requests().empty(); i++) {
		transport.Drive();
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	}
	transport.Abort(id);
	EXPECT_EQ(transport.Count(), 0u);
	EXPECT_EQ(transport.Find(id), nullptr);
	transport.Drive();
	EXPECT_TRUE(transport.TakeFinished().empty());
}

TEST(Transport, LocalResourceErrnos)
{
	EXPECT_TRUE(IsLocalResourceErrno(EMFILE));
	EXPECT_TRUE(IsLocalResourceErrno(ENFILE));
	EXPECT_TRUE(IsLocalResourceErrno(ENOMEM));
	EXPECT_FALSE(IsLocalResourceErrno(ECONNREFUSED));
	EXPECT_FALSE(IsLocalResourceErrno(0));
}

// In a forked child whose descriptor limit leaves no room for a socket, a call ends with local_failure (the worker
// requeues the run without spending an attempt). The child reports through its exit status.
TEST_F(ClientTest, DescriptorShortageIsALocalFailure)
{
	TestServer server(
	    [](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : Session(r); });
	std::string url = server.Url();
	pid_t child = fork();
	ASSERT_GE(child, 0);
	if (child == 0) {
		auto client = Make(url);
		// Submitted first: libcurl opens the socket only in Drive(). Calling into the client before the limit also
		// lets UBSan's vptr check, which needs a pipe, cache the client's type while descriptors remain.
		client->Submit(Call(1));
		client->TimeoutMs();
		// Every descriptor from here on fails with EMFILE.
		int probe = dup(0);
		rlimit limit{static_cast<rlim_t>(probe), static_cast<rlim_t>(probe)};
		close(probe);
		if (setrlimit(RLIMIT_NOFILE, &limit) != 0)
			_exit(10);
		std::vector<CallOutcome> out;
		for (int i = 0; i < 200 && out.empty(); i++) {
			pollfd p{client->EventFd(), POLLIN, 0};
			poll(&p, 1, 10);
			client->Drive();
			out = client->TakeOutcomes();
		}
		if (out.size() != 1)
			_exit(11);
		if (!out[0].local_failure) {
			fprintf(stderr, "outcome: %s\n", out[0].message.c_str());
			_exit(12);
		}
		if (out[0].config_error)
			_exit(13);
		_exit(0);
	}
	int status = 0;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(WEXITSTATUS(status), 0) << "11: no outcome, 12: not flagged local_failure, 13: flagged config_error";
}

TEST_F(ClientTest, MaxConnectionsQueuesCallsInsideLibcurl)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return Session(r);
		Reply reply{Json(ToolResult(IdOf(r)))};
		reply.hang_ms = 50;
		return reply;
	});
	ClientConfig config;
	config.max_inflight = 12;
	config.max_connections = 2;
	auto client = Make(server.Url(), config);
	for (int i = 0; i < 12; i++)
		ASSERT_TRUE(client->Submit(Call(i, "run-" + std::to_string(i))));
	auto out = RunUntil(*client, 12);
	ASSERT_EQ(out.size(), 12u);
	for (const CallOutcome &o : out)
		EXPECT_EQ(o.code, ErrorCode::None) << o.message;
	EXPECT_LE(server.Connections(), 2);
}

} // namespace
