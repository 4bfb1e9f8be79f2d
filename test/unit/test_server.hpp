// A scripted HTTP/1.1 server on 127.0.0.1 and an McpClient harness, shared by the client's unit tests. The client is
// driven exactly as the worker drives it: poll() on EventFd() for at most TimeoutMs(), then Drive(), then collect
// outcomes, progress and tasks.
#pragma once

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

namespace pgdiag_test {

using namespace pgdiag;

struct Request {
	std::string method, path, body;
	std::map<std::string, std::string> headers; // lower-case names
	std::chrono::steady_clock::time_point at;   // when it arrived
	bool Has(const std::string &h) const { return headers.count(h) > 0; }
	std::string Get(const std::string &h) const { return Has(h) ? headers.at(h) : ""; }
	bool IsMethod(const std::string &m) const { return body.find("\"method\":\"" + m + "\"") != std::string::npos; }
};

// What the scripted server does with one request.
struct Reply {
	std::string raw;                                  // written as is (status line, headers, body)
	bool close = false;                               // close the connection afterwards
	int hang_ms = 0;                                  // wait before writing (the test server stops waiting at shutdown)
	std::vector<std::pair<int, std::string>> trickle; // (delay ms, bytes) written after raw
};

inline std::string
Http(int status, const std::string &content_type, const std::string &body, const std::string &extra_headers = "")
{
	return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: " + content_type +
	       "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

inline std::string
Json(const std::string &body, const std::string &extra_headers = "")
{
	return Http(200, "application/json", body, extra_headers);
}

inline std::string
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

inline std::string
ToolResult(const std::string &id, const std::string &diagnosis = kValidDiagnosis)
{
	return R"({"jsonrpc":"2.0","id":)" + id +
	       R"(,"result":{"content":[{"type":"text","text":"x"}],"structuredContent":)" + diagnosis +
	       R"(,"_meta":{"run_id":"srv-1"}}})";
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
	int CountHttp(const std::string &http_method)
	{
		int n = 0;
		for (const Request &r : Requests())
			n += r.method == http_method;
		return n;
	}
	// The first request for `method`, or an empty one.
	Request First(const std::string &method)
	{
		for (const Request &r : Requests())
			if (r.IsMethod(method))
				return r;
		return Request();
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
				r.at = std::chrono::steady_clock::now();
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

inline const char *const kToolsList =
    R"({"tools":[{"name":"other_tool","inputSchema":{"type":"object"}},{"name":"run_diagnosis","inputSchema":{"type":"object"}}]})";

inline std::string
Result(const Request &r, const std::string &result)
{
	return R"({"jsonrpc":"2.0","id":)" + IdOf(r) + R"(,"result":)" + result + "}";
}

inline Reply
Accepted()
{
	return {"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"};
}

// A handshake-era server (as the official SDK's 1.x): server/discover without a session is a 400 with a non-modern
// JSON-RPC error, then initialize, notifications/initialized and tools/list.
struct LegacyServer {
	std::string session = "sess-1";
	std::string version = "2025-06-18";
	std::string capabilities = R"({"tools":{}})";
	std::string tools = kToolsList;

	Reply operator()(const Request &r) const
	{
		if (r.IsMethod("server/discover"))
			return {Http(
			    400, "application/json",
			    R"({"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: Server not initialized"},"id":null})")};
		if (r.IsMethod("initialize"))
			return {Json(Result(r, R"({"protocolVersion":")" + version + R"(","capabilities":)" + capabilities +
			                           R"(,"serverInfo":{"name":"t","version":"1"}})"),
			             session.empty() ? "" : "Mcp-Session-Id: " + session + "\r\n")};
		if (r.IsMethod("tools/list"))
			return {Json(Result(r, tools))};
		return Accepted();
	}
};

// The 0.1 tests' name for the default legacy behaviour.
inline Reply
Session(const Request &r, const std::string &session = "sess-1")
{
	LegacyServer s;
	s.session = session;
	return s(r);
}

// A 2026-07-28 server: server/discover and tools/list.
struct ModernServer {
	std::string capabilities = R"({"tools":{}})";
	std::string versions = R"(["2026-07-28"])";
	std::string tools = kToolsList;

	Reply operator()(const Request &r) const
	{
		if (r.IsMethod("server/discover"))
			return {
			    Json(Result(r, R"({"resultType":"complete","supportedVersions":)" + versions + R"(,"capabilities":)" +
			                       capabilities +
			                       R"(,"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"m","version":"2"}}})"))};
		if (r.IsMethod("tools/list"))
			return {Json(Result(r, tools))};
		return {Http(400, "application/json",
		             R"({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"unexpected"}})")};
	}
};

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

	// Drives the client like the worker until `count` outcomes arrived or `seconds` passed.
	std::vector<CallOutcome> RunUntil(McpClient &client, size_t count, int seconds = 10)
	{
		auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
		do {
			long timeout = client.TimeoutMs();
			pollfd p{client.EventFd(), POLLIN, 0};
			poll(&p, 1, timeout < 0 || timeout > 50 ? 50 : static_cast<int>(timeout));
			client.Drive();
			for (CallOutcome &o : client.TakeOutcomes())
				outcomes.push_back(std::move(o));
			for (CallProgress &p2 : client.TakeProgress())
				progress.push_back(std::move(p2));
			for (CallTask &t : client.TakeTasks())
				tasks.push_back(std::move(t));
		} while (outcomes.size() < count && std::chrono::steady_clock::now() < deadline);
		return outcomes;
	}

	// Drives the client for `ms` without waiting for outcomes (messages sent after an outcome).
	void DriveFor(McpClient &client, int ms)
	{
		auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
		while (std::chrono::steady_clock::now() < deadline) {
			pollfd p{client.EventFd(), POLLIN, 0};
			poll(&p, 1, 10);
			client.Drive();
		}
	}

	// Waits until the server saw `predicate` hold, for at most 3 s.
	template <typename F>
	bool WaitFor(TestServer &server, F predicate, McpClient *client = nullptr)
	{
		for (int i = 0; i < 300; i++) {
			for (const Request &r : server.Requests())
				if (predicate(r))
					return true;
			if (client)
				DriveFor(*client, 10);
			else
				std::this_thread::sleep_for(std::chrono::milliseconds(10));
		}
		return false;
	}

	SchemaRegistry schemas;
	std::vector<CallOutcome> outcomes;
	std::vector<CallProgress> progress;
	std::vector<CallTask> tasks;
};

} // namespace pgdiag_test
