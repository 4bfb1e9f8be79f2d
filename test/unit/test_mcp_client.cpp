// McpClient against a scripted HTTP/1.1 server on 127.0.0.1, driven exactly as the worker drives it: poll() on
// EventFd() for at most TimeoutMs(), then Drive(), then collect outcomes and progress.
#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <functional>
#include <gtest/gtest.h>
#include <map>
#include <mutex>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/result.hpp"
#include "schema_v1.hpp"

using namespace pgdiag;

namespace {

struct Request {
	std::string method, path, body;
	std::map<std::string, std::string> headers; // lower-case names
	bool Has(const std::string &h) const { return headers.count(h) > 0; }
	std::string Get(const std::string &h) const { return Has(h) ? headers.at(h) : ""; }
	bool IsMethod(const std::string &m) const { return body.find("\"method\":\"" + m + "\"") != std::string::npos; }
};

// What the scripted server does with one request.
struct Reply {
	std::string raw;       // written as is (status line, headers, body)
	bool close = false;    // close the connection afterwards
	int hang_ms = 0;       // wait before writing (the test server stops waiting at shutdown)
	std::vector<std::pair<int, std::string>> trickle; // (delay ms, bytes) written after raw
};

std::string
Http(int status, const std::string &content_type, const std::string &body, const std::string &extra_headers = "")
{
	return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: " + content_type +
	       "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

std::string
Json(const std::string &body, const std::string &extra_headers = "")
{
	return Http(200, "application/json", body, extra_headers);
}

std::string
IdOf(const Request &r)
{
	size_t p = r.body.find("\"id\":");
	if (p == std::string::npos)
		return "null";
	size_t start = p + 5, end = start;
	if (r.body[start] == '"')
		end = r.body.find('"', start + 1) + 1;
	else
		while (end < r.body.size() && r.body[end] != ',' && r.body[end] != '}')
			end++;
	return r.body.substr(start, end - start);
}

std::string
ToolResult(const std::string &id, const std::string &diagnosis = kValidDiagnosis)
{
	return R"({"jsonrpc":"2.0","id":)" + id + R"(,"result":{"content":[{"type":"text","text":"x"}],"structuredContent":)" +
	       diagnosis + R"(,"_meta":{"run_id":"srv-1"}}})";
}

class TestServer {
public:
	using Handler = std::function<Reply(const Request &, int index)>;

	explicit TestServer(Handler handler) : handler_(std::move(handler))
	{
		listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
		int one = 1;
		setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		sockaddr_in addr{};
		addr.sin_family = AF_INET;
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		bind(listen_fd_, reinterpret_cast<sockaddr *>(&addr), sizeof(addr));
		socklen_t len = sizeof(addr);
		getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&addr), &len);
		port_ = ntohs(addr.sin_port);
		listen(listen_fd_, 128);
		acceptor_ = std::thread([this] { Accept(); });
	}

	~TestServer()
	{
		stopping_ = true;
		shutdown(listen_fd_, SHUT_RDWR);
		close(listen_fd_);
		acceptor_.join();
		std::vector<std::thread> threads;
		{
			std::lock_guard<std::mutex> lock(mutex_);
			for (int fd : open_fds_)
				shutdown(fd, SHUT_RDWR);
			threads.swap(threads_);
		}
		for (auto &t : threads)
			t.join();
	}

	std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/mcp"; }
	int Port() const { return port_; }

	std::vector<Request> Requests()
	{
		std::lock_guard<std::mutex> lock(mutex_);
		return requests_;
	}
	int Count(const std::string &method)
	{
		int n = 0;
		for (const Request &r : Requests())
			n += r.IsMethod(method);
		return n;
	}
	int Connections() const { return connections_; }

private:
	void Accept()
	{
		while (!stopping_) {
			int fd = accept(listen_fd_, nullptr, nullptr);
			if (fd < 0)
				return;
			connections_++;
			std::lock_guard<std::mutex> lock(mutex_);
			open_fds_.push_back(fd);
			threads_.emplace_back([this, fd] { Serve(fd); });
		}
	}

	bool SleepUnlessStopping(int ms)
	{
		for (int waited = 0; waited < ms; waited += 10) {
			if (stopping_)
				return false;
			std::this_thread::sleep_for(std::chrono::milliseconds(10));
		}
		return !stopping_;
	}

	void Serve(int fd)
	{
		std::string buffer;
		char chunk[65536];
		for (;;) {
			size_t end;
			while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
				ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
				if (n <= 0) {
					close(fd);
					return;
				}
				buffer.append(chunk, n);
			}
			Request r;
			std::string head = buffer.substr(0, end);
			size_t line_end = head.find("\r\n");
			std::string first = head.substr(0, line_end);
			r.method = first.substr(0, first.find(' '));
			r.path = first.substr(first.find(' ') + 1, first.rfind(' ') - first.find(' ') - 1);
			size_t pos = line_end + 2;
			while (pos < head.size()) {
				size_t next = head.find("\r\n", pos);
				if (next == std::string::npos)
					next = head.size();
				std::string line = head.substr(pos, next - pos);
				size_t colon = line.find(':');
				std::string name = line.substr(0, colon);
				for (char &c : name)
					c = static_cast<char>(tolower(c));
				std::string value = colon + 1 < line.size() ? line.substr(colon + 1) : "";
				value.erase(0, value.find_first_not_of(' '));
				r.headers[name] = value;
				pos = next + 2;
			}
			size_t length = r.Has("content-length") ? std::stoul(r.Get("content-length")) : 0;
			buffer.erase(0, end + 4);
			while (buffer.size() < length) {
				ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
				if (n <= 0) {
					close(fd);
					return;
				}
				buffer.append(chunk, n);
			}
			r.body = buffer.substr(0, length);
			buffer.erase(0, length);
			int index;
			{
				std::lock_guard<std::mutex> lock(mutex_);
				requests_.push_back(r);
				index = static_cast<int>(requests_.size()) - 1;
			}
			Reply reply = handler_(r, index);
			if (reply.hang_ms && !SleepUnlessStopping(reply.hang_ms)) {
				close(fd);
				return;
			}
			send(fd, reply.raw.data(), reply.raw.size(), MSG_NOSIGNAL);
			for (auto &[delay, bytes] : reply.trickle) {
				if (!SleepUnlessStopping(delay))
					break;
				send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
			}
			if (reply.close) {
				close(fd);
				return;
			}
		}
	}

	Handler handler_;
	int listen_fd_ = -1;
	int port_ = 0;
	std::atomic<bool> stopping_{false};
	std::atomic<int> connections_{0};
	std::thread acceptor_;
	std::mutex mutex_;
	std::vector<std::thread> threads_;
	std::vector<int> open_fds_;
	std::vector<Request> requests_;
};

// The standard MCP server behaviour for initialize and notifications/initialized.
Reply
Session(const Request &r, const std::string &session = "sess-1")
{
	if (r.IsMethod("initialize"))
		return {Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) +
		                 R"(,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"t","version":"1"}}})",
		             session.empty() ? "" : "Mcp-Session-Id: " + session + "\r\n")};
	return {"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"};
}

class ClientTest : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string error;
		ASSERT_TRUE(schemas.Add("v1", SchemaV1(), &error));
	}

	std::unique_ptr<McpClient> Make(const std::string &url, ClientConfig config = {})
	{
		config.url = url;
		if (config.request_timeout_ms == 300000)
			config.request_timeout_ms = 5000;
		config.connect_timeout_ms = 2000;
		return McpClient::Create(config, &schemas);
	}

	static CallRequest Call(uint64_t tag, const std::string &run = "run-1", int attempt = 1)
	{
		CallRequest r;
		r.tag = tag;
		r.run_id = run;
		r.patient_id = "patient-1";
		r.attempt = attempt;
		r.inputs_json = R"({"reason":"test"})";
		r.context_pack_json = R"({"observations":[]})";
		return r;
	}

	// Drives the client like the worker until `count` outcomes arrived or 10 s passed.
	std::vector<CallOutcome> RunUntil(McpClient &client, size_t count)
	{
		auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
		while (outcomes.size() < count && std::chrono::steady_clock::now() < deadline) {
			long timeout = client.TimeoutMs();
			pollfd p{client.EventFd(), POLLIN, 0};
			poll(&p, 1, timeout < 0 || timeout > 50 ? 50 : static_cast<int>(timeout));
			client.Drive();
			for (CallOutcome &o : client.TakeOutcomes())
				outcomes.push_back(std::move(o));
			for (CallProgress &p2 : client.TakeProgress())
				progress.push_back(std::move(p2));
		}
		return outcomes;
	}

	SchemaRegistry schemas;
	std::vector<CallOutcome> outcomes;
	std::vector<CallProgress> progress;
};

TEST_F(ClientTest, JsonReplyAndHeaders)
{
	TestServer server([](const Request &r, int) {
		return r.IsMethod("tools/call") ? Reply{Json(ToolResult(IdOf(r)))} : Session(r);
	});
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

	auto requests = server.Requests();
	ASSERT_EQ(requests.size(), 3u);
	EXPECT_TRUE(requests[0].IsMethod("initialize"));
	EXPECT_FALSE(requests[0].Has("mcp-protocol-version"));
	EXPECT_FALSE(requests[0].Has("mcp-session-id"));
	EXPECT_TRUE(requests[1].IsMethod("notifications/initialized"));
	EXPECT_EQ(requests[1].Get("mcp-session-id"), "sess-1");
	const Request &call = requests[2];
	EXPECT_EQ(call.Get("mcp-session-id"), "sess-1");
	EXPECT_EQ(call.Get("mcp-protocol-version"), "2025-06-18");
	EXPECT_EQ(call.Get("accept"), "application/json, text/event-stream");
	EXPECT_EQ(call.Get("authorization"), "Bearer s3cret");
	EXPECT_EQ(call.Get("idempotency-key"), "run-1:1");
	EXPECT_FALSE(call.Has("expect"));
	EXPECT_NE(call.body.find("\"id\":\"run-1:1\""), std::string::npos);
	EXPECT_NE(call.body.find("\"arguments\":{\"run_id\":\"run-1\",\"patient_id\":\"patient-1\",\"attempt\":1,"
	                         "\"schema_version\":\"v1\",\"inputs\":{\"reason\":\"test\"},\"context_pack\":{\"observations\":[]}}"),
	          std::string::npos)
	    << call.body;
	EXPECT_NE(call.body.find("\"_meta\":{\"progressToken\":\"run-1:1\"}"), std::string::npos);
}

TEST_F(ClientTest, SseReplyWithProgressAndPing)
{
	TestServer server([](const Request &r, int) {
		if (!r.IsMethod("tools/call"))
			return r.body.find("\"result\":{}") != std::string::npos ? Reply{Json("")} : Session(r, "");
		std::string events = "id: 1\ndata:\n\n"
		                     ": keep-alive\n\n"
		                     "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		                     "{\"progressToken\":\"run-1:1\",\"progress\":1,\"total\":4,\"message\":\"scoring\"}}\n\n"
		                     "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		                     "{\"progressToken\":\"someone-else\",\"progress\":3,\"total\":4}}\n\n"
		                     "data: {\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"ping\"}\n\n"
		                     "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n"
		                     "data: " + ToolResult(IdOf(r)) + "\r\n\r\n";
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
	for (int i = 0; i < 50 && server.Requests().size() < 4; i++) {
		client->Drive();
		std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	bool pong = false;
	for (const Request &r : server.Requests()) {
		pong |= r.body == R"({"jsonrpc":"2.0","id":99,"result":{}})";
		EXPECT_FALSE(r.Has("mcp-session-id"));
	}
	EXPECT_TRUE(pong);
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
	EXPECT_EQ(wrong.Count("tools/call"), 0);
	EXPECT_EQ(server.Count("tools/call"), 2);
}

struct StatusCase {
	std::string reply;
	ErrorCode code;
	int64_t retry_after_ms;
};

TEST_F(ClientTest, HttpStatusClassification)
{
	std::vector<StatusCase> cases = {
	    {Http(503, "text/plain", "busy", "Retry-After: 7\r\n"), ErrorCode::NetworkError, 7000},
	    {Http(500, "text/plain", "oops"), ErrorCode::NetworkError, -1},
	    {Http(429, "text/plain", "slow down", "Retry-After: 2\r\n"), ErrorCode::NetworkError, 2000},
	    {Http(408, "text/plain", "timeout"), ErrorCode::TimeoutError, -1},
	    {Http(400, "text/plain", "bad"), ErrorCode::McpError, -1},
	    {Http(401, "text/plain", "who"), ErrorCode::McpError, -1},
	    {"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n", ErrorCode::McpError, -1},
	};
	for (const StatusCase &c : cases) {
		TestServer server([&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{c.reply} : Session(r); });
		auto client = Make(server.Url());
		outcomes.clear();
		client->Submit(Call(1));
		auto out = RunUntil(*client, 1);
		ASSERT_EQ(out.size(), 1u) << c.reply;
		EXPECT_EQ(out[0].code, c.code) << c.reply << " -> " << out[0].message;
		EXPECT_EQ(out[0].retry_after_ms, c.retry_after_ms) << c.reply;
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
	    {[](const Request &r) { return Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) + R"(,"error":{"code":-32602,"message":"bad params"}})"); },
	     ErrorCode::McpError, false},
	    {[](const Request &) { return Json("{not json"); }, ErrorCode::McpError, false},
	    {[](const Request &) { return Json(R"({"jsonrpc":"2.0","id":"other","result":{}})"); }, ErrorCode::McpError, false},
	    {[](const Request &) { return std::string("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"); }, ErrorCode::McpError, false},
	    // A stream that ends before the response is a disconnection (transient); one that answers another id is a
	    // protocol violation.
	    {[](const Request &r) { return Http(200, "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":" + IdOf(r) + ",\"res"); },
	     ErrorCode::NetworkError, false},
	    {[](const Request &) { return Http(200, "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":\"other\",\"result\":{}}\n\n"); },
	     ErrorCode::McpError, false},
	    {[](const Request &r) { return Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) + R"(,"result":{"isError":true,"content":[{"type":"text","text":"no"}]}})"); },
	     ErrorCode::LlmError, true},
	    {[](const Request &r) { return Json(ToolResult(IdOf(r), R"({"risk_level":"purple"})")); }, ErrorCode::ValidationError, true},
	    {[](const Request &r) { return Json(R"([{"jsonrpc":"2.0","method":"notifications/x"},)" + ToolResult(IdOf(r)) + "]"); },
	     ErrorCode::None, true},
	};
	for (size_t i = 0; i < cases.size(); i++) {
		TestServer server([&](const Request &r, int) { return r.IsMethod("tools/call") ? Reply{cases[i].reply(r)} : Session(r); });
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
	TestServer server([](const Request &r, int) {
		return Reply{Json(R"({"jsonrpc":"2.0","id":)" + IdOf(r) + R"(,"result":{"protocolVersion":"1999-01-01","capabilities":{}}})")};
	});
	auto client = Make(server.Url());
	client->Submit(Call(1));
	auto out = RunUntil(*client, 1);
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].code, ErrorCode::McpError);
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
}

} // namespace
