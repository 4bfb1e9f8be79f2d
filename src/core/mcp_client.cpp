/*
 * mcp_client.cpp: MCP Streamable HTTP client on libcurl's multi socket interface.
 *
 * libcurl reports which sockets to watch (socket callback) and when to come back (timer callback); the client
 * keeps the sockets in its own epoll descriptor so its owner waits on a single descriptor next to its latch.
 * One MCP session per endpoint is shared by every call: initialize, notifications/initialized, then many
 * tools/call requests at once. Replies are application/json or text/event-stream; SSE is parsed as bytes arrive,
 * so progress notifications surface while the call is still running.
 *
 * Callbacks never throw and never call back into the owner: they record what happened in the transfer and
 * return libcurl's abort value; everything else happens in Drive().
 */
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <pthread.h>
#include <stdexcept>
#include <string>
#include <sys/epoll.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include <curl/curl.h>

#include "pg_diagnosis/core/backoff.hpp"
#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/result.hpp"
#include "pg_diagnosis/core/sse_parser.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace {

using Clock = std::chrono::steady_clock;

const char *const kProtocolVersion = "2025-06-18";
const char *const kAcceptedVersions[] = {"2025-06-18", "2025-03-26", "2025-11-25"};

int64_t
MillisUntil(Clock::time_point t, Clock::time_point now)
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
}

/* libcurl's threaded resolver starts threads: they must be born with every signal blocked, so PostgreSQL's
 * handlers only ever run on the main thread. */
class SignalBlock {
public:
	SignalBlock()
	{
		sigset_t all;
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &saved_);
	}
	~SignalBlock() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }

private:
	sigset_t saved_;
};

void
GlobalInitOnce()
{
	static bool done = false;
	if (!done) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			throw std::runtime_error("curl_global_init failed");
		done = true;
	}
}

std::string
Lower(std::string s)
{
	for (char &c : s)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	return s;
}

std::string
Trim(const std::string &s)
{
	size_t b = s.find_first_not_of(" \t\r\n");
	if (b == std::string::npos)
		return "";
	size_t e = s.find_last_not_of(" \t\r\n");
	return s.substr(b, e - b + 1);
}

struct Call;

enum class Kind { Initialize, Initialized, ToolCall, PingReply };

/* One HTTP request and what came back. */
struct Transfer {
	Kind kind = Kind::ToolCall;
	CURL *easy = nullptr;
	curl_slist *headers = nullptr;
	std::string request_body;
	char errbuf[CURL_ERROR_SIZE] = {0};
	Call *call = nullptr;          /* tools/call only */
	std::string rpc_id;            /* JSON text of the request id */
	std::string progress_token;    /* tools/call only */
	bool sent_session = false;
	uint64_t session_generation = 0;
	size_t max_bytes = 0;
	Clock::time_point last_byte;
	long inactivity_ms = 0;

	/* What the callbacks saw. */
	std::string content_type, session_id, retry_after;
	bool is_sse = false;
	bool type_known = false;
	SseParser sse;
	std::string body;              /* JSON replies and error bodies */
	size_t bytes = 0;
	bool too_big = false;
	bool sse_failed = false;
	std::string callback_error;
	std::string response;          /* the JSON-RPC response addressed to us, as compact JSON */
	bool foreign_response = false; /* a response with another id arrived (a protocol violation) */
	std::vector<CallProgress> progress;
	std::vector<std::string> pings; /* ids of server pings to answer */

	~Transfer()
	{
		if (easy)
			curl_easy_cleanup(easy);
		if (headers)
			curl_slist_free_all(headers);
	}
};

struct Call {
	CallRequest request;
	Clock::time_point submitted;
	Clock::time_point deadline;
	bool retried_after_404 = false;
	Transfer *transfer = nullptr; /* null while waiting for the session */
};

class Client final : public McpClient {
public:
	Client(const ClientConfig &config, const SchemaRegistry *schemas) : config_(config), schemas_(schemas)
	{
		GlobalInitOnce();
		epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
		if (epoll_fd_ < 0)
			throw std::runtime_error("epoll_create1 failed");
		multi_ = curl_multi_init();
		if (!multi_) {
			close(epoll_fd_);
			throw std::runtime_error("curl_multi_init failed");
		}
		curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, SocketCallback);
		curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
		curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, TimerCallback);
		curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
		curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(config_.max_inflight + 8));
	}

	~Client() override
	{
		AbortAll();
		curl_multi_cleanup(multi_);
		close(epoll_fd_);
	}

	void Configure(const ClientConfig &config) override
	{
		bool endpoint_changed = config.url != config_.url || config.auth_token != config_.auth_token;
		config_ = config;
		curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(config_.max_inflight + 8));
		if (endpoint_changed) {
			DropSession();
			if (!waiting_.empty())
				EnsureSession();
		}
	}

	bool Submit(CallRequest request) override
	{
		if (static_cast<int>(calls_.size()) >= config_.max_inflight)
			return false;
		auto call = std::make_unique<Call>();
		call->submitted = Clock::now();
		call->deadline = call->submitted + std::chrono::milliseconds(config_.request_timeout_ms);
		call->request = std::move(request);
		Call *raw = call.get();
		calls_[raw->request.tag] = std::move(call);
		if (session_ == Session::Ready)
			StartToolCall(raw);
		else {
			waiting_.push_back(raw);
			EnsureSession();
		}
		return true;
	}

	size_t InFlight() const override { return calls_.size(); }
	int EventFd() const override { return epoll_fd_; }

	long TimeoutMs() const override
	{
		Clock::time_point now = Clock::now();
		long timeout = -1;
		auto consider = [&](Clock::time_point t) {
			long ms = static_cast<long>(std::max<int64_t>(0, MillisUntil(t, now)));
			if (timeout < 0 || ms < timeout)
				timeout = ms;
		};
		if (timer_armed_)
			consider(timer_deadline_);
		for (const auto &entry : transfers_)
			if (entry.second->inactivity_ms > 0)
				consider(entry.second->last_byte + std::chrono::milliseconds(entry.second->inactivity_ms));
		for (const Call *call : waiting_)
			consider(call->deadline);
		return timeout;
	}

	void Drive() override
	{
		for (int round = 0; round < 4; round++) {
			epoll_event events[64];
			int n = epoll_wait(epoll_fd_, events, 64, 0);
			for (int i = 0; i < n; i++) {
				int flags = 0;
				if (events[i].events & EPOLLIN)
					flags |= CURL_CSELECT_IN;
				if (events[i].events & EPOLLOUT)
					flags |= CURL_CSELECT_OUT;
				if (events[i].events & (EPOLLERR | EPOLLHUP))
					flags |= CURL_CSELECT_ERR;
				SocketAction(events[i].data.fd, flags);
			}
			if (timer_armed_ && Clock::now() >= timer_deadline_) {
				timer_armed_ = false;
				SocketAction(CURL_SOCKET_TIMEOUT, 0);
			}
			FinishDone();
			CheckDeadlines();
			/* New transfers started while finishing arm a 0 ms timer: serve it now rather than next loop. */
			if (!(timer_armed_ && Clock::now() >= timer_deadline_) && n < 64)
				break;
		}
	}

	std::vector<CallProgress> TakeProgress() override { return std::exchange(progress_, {}); }
	std::vector<CallOutcome> TakeOutcomes() override { return std::exchange(outcomes_, {}); }

	std::vector<uint64_t> AbortAll() override
	{
		std::vector<uint64_t> tags;
		for (auto &entry : transfers_)
			curl_multi_remove_handle(multi_, entry.first);
		transfers_.clear();
		for (auto &entry : calls_)
			tags.push_back(entry.first);
		calls_.clear();
		waiting_.clear();
		DropSession();
		return tags;
	}

private:
	enum class Session { None, Initializing, Notifying, Ready };

	/* ------------------------------------------------------------ libcurl callbacks */

	static int SocketCallback(CURL *, curl_socket_t s, int what, void *userp, void *socketp)
	{
		Client *self = static_cast<Client *>(userp);
		epoll_event ev{};
		ev.data.fd = s;
		if (what == CURL_POLL_REMOVE) {
			epoll_ctl(self->epoll_fd_, EPOLL_CTL_DEL, s, nullptr);
			return 0;
		}
		ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
		if (epoll_ctl(self->epoll_fd_, EPOLL_CTL_MOD, s, &ev) != 0)
			epoll_ctl(self->epoll_fd_, EPOLL_CTL_ADD, s, &ev);
		(void) socketp;
		return 0;
	}

	static int TimerCallback(CURLM *, long timeout_ms, void *userp)
	{
		Client *self = static_cast<Client *>(userp);
		if (timeout_ms < 0)
			self->timer_armed_ = false;
		else {
			self->timer_armed_ = true;
			self->timer_deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms);
		}
		return 0;
	}

	static size_t HeaderCallback(char *buffer, size_t size, size_t nitems, void *userdata)
	{
		Transfer *t = static_cast<Transfer *>(userdata);
		size_t n = size * nitems;
		try {
			std::string line(buffer, n);
			if (line.rfind("HTTP/", 0) == 0) { /* a new header block (e.g. after 100 Continue) */
				t->content_type.clear();
				t->session_id.clear();
				t->retry_after.clear();
				return n;
			}
			size_t colon = line.find(':');
			if (colon == std::string::npos)
				return n;
			std::string name = Lower(Trim(line.substr(0, colon)));
			std::string value = Trim(line.substr(colon + 1));
			if (name == "content-type")
				t->content_type = Lower(value);
			else if (name == "mcp-session-id")
				t->session_id = value;
			else if (name == "retry-after")
				t->retry_after = value;
			return n;
		} catch (...) {
			t->callback_error = "out of memory reading headers";
			return 0;
		}
	}

	static size_t WriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata)
	{
		Transfer *t = static_cast<Transfer *>(userdata);
		size_t n = size * nmemb;
		try {
			t->last_byte = Clock::now();
			t->bytes += n;
			if (t->bytes > t->max_bytes) {
				t->too_big = true;
				return 0;
			}
			if (!t->type_known) {
				long status = 0;
				curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
				t->is_sse = status >= 200 && status < 300 &&
				            t->content_type.rfind("text/event-stream", 0) == 0;
				t->type_known = true;
			}
			if (!t->is_sse) {
				t->body.append(ptr, n);
				return n;
			}
			std::vector<SseEvent> events;
			if (!t->sse.Feed(ptr, n, events)) {
				t->sse_failed = true;
				return 0;
			}
			for (SseEvent &event : events)
				HandleMessageText(t, event.data);
			return n;
		} catch (const std::exception &e) {
			t->callback_error = e.what();
			return 0;
		} catch (...) {
			t->callback_error = "unknown error in the write callback";
			return 0;
		}
	}

	/* Any progress callback resets the inactivity clock on any byte, which WriteCallback already does. */

	/* One JSON-RPC message from an SSE event (or a JSON reply). */
	static void HandleMessageText(Transfer *t, const std::string &text)
	{
		if (Trim(text).empty())
			return; /* priming event */
		rapidjson::Document doc;
		std::string error;
		if (!ParseJson(text.data(), text.size(), doc, &error))
			return; /* not a message for us; the stream still has to deliver our response */
		if (doc.IsArray()) {
			for (auto &item : doc.GetArray())
				HandleMessage(t, item);
		} else
			HandleMessage(t, doc);
	}

	static void HandleMessage(Transfer *t, const rapidjson::Value &msg)
	{
		if (!msg.IsObject())
			return;
		auto id = msg.FindMember("id");
		auto method = msg.FindMember("method");
		bool has_method = method != msg.MemberEnd() && method->value.IsString();
		if (!has_method && id != msg.MemberEnd()) {
			if (ToJson(id->value) == t->rpc_id) {
				if (t->response.empty())
					t->response = ToJson(msg);
			} else
				t->foreign_response = true;
			return;
		}
		if (!has_method)
			return;
		std::string name(method->value.GetString(), method->value.GetStringLength());
		if (id != msg.MemberEnd()) {
			if (name == "ping")
				t->pings.push_back(ToJson(id->value));
			return; /* other server requests are not supported and ignored */
		}
		if (name != "notifications/progress" || t->progress_token.empty())
			return;
		auto params = msg.FindMember("params");
		if (params == msg.MemberEnd() || !params->value.IsObject())
			return;
		auto token = params->value.FindMember("progressToken");
		auto progress = params->value.FindMember("progress");
		if (token == params->value.MemberEnd() || progress == params->value.MemberEnd() ||
		    !progress->value.IsNumber() || ToJson(token->value) != t->progress_token)
			return;
		CallProgress p;
		p.tag = t->call ? t->call->request.tag : 0;
		p.progress = progress->value.GetDouble();
		auto total = params->value.FindMember("total");
		if (total != params->value.MemberEnd() && total->value.IsNumber())
			p.total = total->value.GetDouble();
		auto message = params->value.FindMember("message");
		if (message != params->value.MemberEnd() && message->value.IsString())
			p.message.assign(message->value.GetString(), message->value.GetStringLength());
		t->progress.push_back(std::move(p));
	}

	/* ------------------------------------------------------------ requests */

	void SocketAction(curl_socket_t s, int flags)
	{
		SignalBlock block;
		int running = 0;
		curl_multi_socket_action(multi_, s, flags, &running);
	}

	Transfer *StartTransfer(std::unique_ptr<Transfer> t, long timeout_ms)
	{
		CURL *easy = curl_easy_init();
		if (!easy)
			throw std::runtime_error("curl_easy_init failed");
		t->easy = easy;
		t->max_bytes = config_.max_response_bytes;
		t->last_byte = Clock::now();
		long inactivity = config_.inactivity_timeout_ms > 0 ? config_.inactivity_timeout_ms : 0;
		t->inactivity_ms = inactivity;

		t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
		t->headers = curl_slist_append(t->headers, "Accept: application/json, text/event-stream");
		t->headers = curl_slist_append(t->headers, "Expect:");
		if (!config_.auth_token.empty())
			t->headers = curl_slist_append(t->headers, ("Authorization: Bearer " + config_.auth_token).c_str());
		if (t->kind != Kind::Initialize) {
			if (!session_id_.empty()) {
				t->headers = curl_slist_append(t->headers, ("Mcp-Session-Id: " + session_id_).c_str());
				t->sent_session = true;
			}
			if (!protocol_version_.empty())
				t->headers =
				    curl_slist_append(t->headers, ("MCP-Protocol-Version: " + protocol_version_).c_str());
		}
		if (t->kind == Kind::ToolCall)
			t->headers = curl_slist_append(t->headers, ("Idempotency-Key: " + t->call->request.run_id + ":" +
			                                            std::to_string(t->call->request.attempt))
			                                               .c_str());
		t->session_generation = session_generation_;

		curl_easy_setopt(easy, CURLOPT_URL, config_.url.c_str());
		curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
		if (!config_.ca_file.empty())
			curl_easy_setopt(easy, CURLOPT_CAINFO, config_.ca_file.c_str());
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->request_body.c_str());
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t->request_body.size()));
		curl_easy_setopt(easy, CURLOPT_USERAGENT, config_.user_agent.c_str());
		curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, config_.connect_timeout_ms);
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, std::max(1L, timeout_ms));
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
		curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, HeaderCallback);
		curl_easy_setopt(easy, CURLOPT_HEADERDATA, t.get());
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, WriteCallback);
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, t.get());
		curl_easy_setopt(easy, CURLOPT_PRIVATE, t.get());
		curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);

		Transfer *raw = t.get();
		transfers_[easy] = std::move(t);
		SignalBlock block;
		if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
			transfers_.erase(easy);
			throw std::runtime_error("curl_multi_add_handle failed");
		}
		return raw;
	}

	long RemainingMs(const Call *call) const
	{
		return static_cast<long>(std::max<int64_t>(1, MillisUntil(call->deadline, Clock::now())));
	}

	void EnsureSession()
	{
		if (session_ != Session::None)
			return;
		auto t = std::make_unique<Transfer>();
		t->kind = Kind::Initialize;
		t->rpc_id = "\"pg_diagnosis-initialize-" + std::to_string(++initialize_count_) + "\"";
		t->request_body = "{\"jsonrpc\":\"2.0\",\"id\":" + t->rpc_id +
		                  ",\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"" + kProtocolVersion +
		                  "\",\"capabilities\":{},\"clientInfo\":{\"name\":\"pg_diagnosis\",\"version\":\"0.1.0\"}}}";
		session_ = Session::Initializing;
		StartTransfer(std::move(t), config_.request_timeout_ms);
	}

	void DropSession()
	{
		session_ = Session::None;
		session_id_.clear();
		protocol_version_.clear();
		session_generation_++;
	}

	void StartToolCall(Call *call)
	{
		const CallRequest &r = call->request;
		rapidjson::StringBuffer buffer;
		rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
		std::string token = r.run_id + ":" + std::to_string(r.attempt);
		w.StartObject();
		w.Key("jsonrpc");
		w.String("2.0");
		w.Key("id");
		w.String(token);
		w.Key("method");
		w.String("tools/call");
		w.Key("params");
		w.StartObject();
		w.Key("name");
		w.String(config_.tool);
		w.Key("arguments");
		w.StartObject();
		w.Key("run_id");
		w.String(r.run_id);
		w.Key("patient_id");
		w.String(r.patient_id);
		w.Key("attempt");
		w.Int(r.attempt);
		w.Key("schema_version");
		w.String(r.schema_version);
		w.Key("inputs");
		w.RawValue(r.inputs_json.data(), r.inputs_json.size(), rapidjson::kObjectType);
		w.Key("context_pack");
		w.RawValue(r.context_pack_json.data(), r.context_pack_json.size(), rapidjson::kObjectType);
		w.EndObject();
		w.Key("_meta");
		w.StartObject();
		w.Key("progressToken");
		w.String(token);
		w.EndObject();
		w.EndObject();
		w.EndObject();

		auto t = std::make_unique<Transfer>();
		t->kind = Kind::ToolCall;
		t->call = call;
		t->rpc_id = ToJson(rapidjson::Value(token.c_str(), static_cast<rapidjson::SizeType>(token.size())));
		t->progress_token = t->rpc_id;
		t->request_body.assign(buffer.GetString(), buffer.GetSize());
		call->transfer = StartTransfer(std::move(t), RemainingMs(call));
	}

	void SendPingReply(const std::string &id)
	{
		auto t = std::make_unique<Transfer>();
		t->kind = Kind::PingReply;
		t->request_body = "{\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"result\":{}}";
		StartTransfer(std::move(t), config_.request_timeout_ms);
	}

	/* ------------------------------------------------------------ outcomes */

	void Finish(Call *call, CallOutcome outcome)
	{
		outcome.tag = call->request.tag;
		outcome.elapsed_ms = std::max<int64_t>(0, -MillisUntil(call->submitted, Clock::now()));
		outcomes_.push_back(std::move(outcome));
		waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), call), waiting_.end());
		calls_.erase(call->request.tag);
	}

	static CallOutcome Error(ErrorCode code, std::string message, std::string details = "")
	{
		CallOutcome o;
		o.code = code;
		o.message = std::move(message);
		o.details_json = std::move(details);
		return o;
	}

	/* What a finished HTTP exchange amounts to, before looking at the JSON-RPC message. ok = a 2xx with our
	 * response in t->response. */
	CallOutcome ClassifyTransport(Transfer *t, CURLcode code, long status, bool *ok)
	{
		*ok = false;
		CallOutcome o;
		o.http_status = status;
		if (!t->retry_after.empty())
			o.retry_after_ms = ParseRetryAfterMs(t->retry_after, std::time(nullptr));
		/* Our response may have arrived before the stream broke: it counts. */
		bool answered = !t->response.empty() && status >= 200 && status < 300;
		if (code != CURLE_OK && !answered) {
			if (t->too_big)
				return Error(ErrorCode::McpError, "response exceeds diagnosis.max_response_bytes (" +
				                                      std::to_string(t->max_bytes) + " bytes)");
			if (t->sse_failed)
				return Error(ErrorCode::McpError, "an SSE event exceeds diagnosis.max_response_bytes");
			if (!t->callback_error.empty())
				return Error(ErrorCode::UnknownError, "reading the response failed: " + t->callback_error);
			if (code == CURLE_OPERATION_TIMEDOUT)
				return Error(ErrorCode::TimeoutError,
				             std::string("MCP request timed out: ") + (t->errbuf[0] ? t->errbuf : curl_easy_strerror(code)));
			if (code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE)
				/* Verification is never turned off; retrying cannot fix a certificate. */
				return Error(ErrorCode::McpError, std::string("TLS verification failed: ") +
				                                      (t->errbuf[0] ? t->errbuf : curl_easy_strerror(code)));
			if (code == CURLE_UNSUPPORTED_PROTOCOL || code == CURLE_URL_MALFORMAT)
				return Error(ErrorCode::McpError, std::string("bad MCP URL: ") +
				                                      (t->errbuf[0] ? t->errbuf : curl_easy_strerror(code)));
			CallOutcome e = Error(ErrorCode::NetworkError, std::string("MCP request failed: ") +
			                                                   (t->errbuf[0] ? t->errbuf : curl_easy_strerror(code)));
			e.http_status = status;
			return e;
		}
		if (status >= 300 && status < 400)
			return Error(ErrorCode::McpError, "HTTP " + std::to_string(status) + ": redirects are not followed");
		if (status == 408 || status == 429 || status >= 500) {
			CallOutcome e = Error(status == 408 ? ErrorCode::TimeoutError : ErrorCode::NetworkError,
			                      "MCP server answered HTTP " + std::to_string(status),
			                      "{\"http_status\":" + std::to_string(status) + "}");
			e.http_status = status;
			e.retry_after_ms = o.retry_after_ms;
			return e;
		}
		if (status >= 400 || status < 200) {
			CallOutcome e = Error(ErrorCode::McpError, "MCP server answered HTTP " + std::to_string(status),
			                      "{\"http_status\":" + std::to_string(status) + "}");
			e.http_status = status;
			return e;
		}
		if (!t->is_sse) {
			if (t->body.empty())
				return Error(ErrorCode::McpError, "HTTP " + std::to_string(status) +
				                                      " without a JSON-RPC response (protocol violation)");
			rapidjson::Document doc;
			std::string error;
			if (!ParseJson(t->body.data(), t->body.size(), doc, &error))
				return Error(ErrorCode::McpError, "malformed JSON from the MCP server: " + error);
			if (doc.IsArray()) {
				for (auto &item : doc.GetArray())
					HandleMessage(t, item);
			} else
				HandleMessage(t, doc);
		}
		if (t->response.empty()) {
			if (t->foreign_response || !t->is_sse)
				return Error(ErrorCode::McpError, "no JSON-RPC response with the request's id");
			/* MCP treats a closed stream as a disconnection, not as the end of the request: try again later. */
			return Error(ErrorCode::NetworkError, "the event stream ended before the response (disconnected)");
		}
		*ok = true;
		o.http_status = status;
		return o;
	}

	/* A JSON-RPC error object, or null when the message carries a result (then *result is set). */
	static bool RpcResult(const std::string &response, std::string *result, CallOutcome *error)
	{
		rapidjson::Document doc;
		std::string parse_error;
		if (!ParseJson(response.data(), response.size(), doc, &parse_error) || !doc.IsObject()) {
			*error = Error(ErrorCode::McpError, "malformed JSON-RPC response");
			return false;
		}
		auto err = doc.FindMember("error");
		if (err != doc.MemberEnd()) {
			std::string code = "null", message;
			if (err->value.IsObject()) {
				auto c = err->value.FindMember("code");
				auto m = err->value.FindMember("message");
				if (c != err->value.MemberEnd())
					code = ToJson(c->value);
				if (m != err->value.MemberEnd() && m->value.IsString())
					message.assign(m->value.GetString(), m->value.GetStringLength());
			}
			rapidjson::Document details(rapidjson::kObjectType);
			auto &a = details.GetAllocator();
			rapidjson::Value code_value;
			rapidjson::Document code_doc;
			code_doc.Parse(code.c_str());
			code_value.CopyFrom(code_doc, a);
			details.AddMember("jsonrpc_code", code_value, a);
			details.AddMember("jsonrpc_message", rapidjson::Value(message.c_str(), a), a);
			*error = Error(ErrorCode::McpError, "JSON-RPC error " + code + ": " + message, ToJson(details));
			return false;
		}
		auto res = doc.FindMember("result");
		if (res == doc.MemberEnd()) {
			*error = Error(ErrorCode::McpError, "JSON-RPC response has neither result nor error");
			return false;
		}
		*result = ToJson(res->value);
		return true;
	}

	void FailWaiting(const CallOutcome &why)
	{
		std::vector<Call *> waiting(waiting_.begin(), waiting_.end());
		for (Call *call : waiting)
			Finish(call, why);
	}

	void FinishSessionTransfer(Transfer *t, CURLcode code, long status)
	{
		bool ok = false;
		if (t->session_generation != session_generation_) {
			/* The session was dropped meanwhile (new URL or token): start over for the calls still waiting. */
			if (session_ == Session::None && !waiting_.empty())
				EnsureSession();
			return;
		}
		if (t->kind == Kind::Initialize) {
			CallOutcome o = ClassifyTransport(t, code, status, &ok);
			std::string result;
			if (ok && !RpcResult(t->response, &result, &o))
				ok = false;
			if (ok) {
				rapidjson::Document doc;
				std::string error;
				std::string version;
				if (ParseJson(result.data(), result.size(), doc, &error) && doc.IsObject()) {
					auto v = doc.FindMember("protocolVersion");
					if (v != doc.MemberEnd() && v->value.IsString())
						version = v->value.GetString();
				}
				bool accepted = std::any_of(std::begin(kAcceptedVersions), std::end(kAcceptedVersions),
				                            [&](const char *a) { return version == a; });
				if (!accepted) {
					o = Error(ErrorCode::McpError, "MCP server offered unsupported protocol version \"" + version + "\"");
					ok = false;
				} else {
					protocol_version_ = version;
					session_id_ = t->session_id;
					session_ = Session::Notifying;
					auto n = std::make_unique<Transfer>();
					n->kind = Kind::Initialized;
					n->request_body = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";
					StartTransfer(std::move(n), config_.request_timeout_ms);
					return;
				}
			}
			session_ = Session::None;
			o.message = "MCP initialize failed: " + o.message;
			FailWaiting(o);
			return;
		}
		/* notifications/initialized: 202 Accepted (or 200) with no JSON-RPC response expected. */
		if (code == CURLE_OK && status >= 200 && status < 300) {
			session_ = Session::Ready;
			std::vector<Call *> waiting(waiting_.begin(), waiting_.end());
			waiting_.clear();
			for (Call *call : waiting)
				StartToolCall(call);
			return;
		}
		CallOutcome o = ClassifyTransport(t, code, status, &ok);
		if (ok || o.code == ErrorCode::None)
			o = Error(ErrorCode::McpError, "HTTP " + std::to_string(status));
		o.message = "MCP notifications/initialized failed: " + o.message;
		DropSession();
		FailWaiting(o);
	}

	void FinishToolCall(Transfer *t, CURLcode code, long status)
	{
		Call *call = t->call;
		call->transfer = nullptr;
		for (CallProgress &p : t->progress)
			progress_.push_back(std::move(p));
		t->progress.clear();

		if (status == 404 && t->sent_session && code == CURLE_OK) {
			if (call->retried_after_404) {
				/* The server accepted a new initialize and lost that session too: churn on its side, which a later
				 * attempt with backoff can outlast. (A wrong URL fails initialize itself, permanently.) */
				Finish(call, Error(ErrorCode::NetworkError, "MCP session lost again (HTTP 404) after re-initializing",
				                   "{\"http_status\":404}"));
				return;
			}
			/* The session expired: set up a new one (once for every call that noticed) and retry this call. */
			call->retried_after_404 = true;
			if (t->session_generation == session_generation_)
				DropSession();
			if (session_ == Session::Ready)
				StartToolCall(call);
			else {
				waiting_.push_back(call);
				EnsureSession();
			}
			return;
		}

		bool ok = false;
		CallOutcome o = ClassifyTransport(t, code, status, &ok);
		if (!ok) {
			Finish(call, std::move(o));
			return;
		}
		std::string result;
		if (!RpcResult(t->response, &result, &o)) {
			o.http_status = status;
			Finish(call, std::move(o));
			return;
		}
		ResultCheck check = CheckToolResult(result, call->request.schema_version, *schemas_);
		CallOutcome done;
		done.code = check.code;
		done.message = std::move(check.message);
		done.details_json = std::move(check.details_json);
		done.result_json = std::move(check.result_json);
		done.mcp_run_id = std::move(check.mcp_run_id);
		done.response_json = std::move(result);
		done.http_status = status;
		Finish(call, std::move(done));
	}

	void FinishDone()
	{
		CURLMsg *msg;
		int left = 0;
		while ((msg = curl_multi_info_read(multi_, &left))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			CURL *easy = msg->easy_handle;
			CURLcode code = msg->data.result;
			curl_multi_remove_handle(multi_, easy);
			auto it = transfers_.find(easy);
			if (it == transfers_.end())
				continue;
			std::unique_ptr<Transfer> t = std::move(it->second);
			transfers_.erase(it);
			Complete(t.get(), code);
		}
	}

	void Complete(Transfer *t, CURLcode code)
	{
		long status = 0;
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
		std::vector<std::string> pings = std::move(t->pings);
		switch (t->kind) {
		case Kind::PingReply:
			break;
		case Kind::Initialize:
		case Kind::Initialized:
			FinishSessionTransfer(t, code, status);
			break;
		case Kind::ToolCall:
			FinishToolCall(t, code, status);
			break;
		}
		for (const std::string &id : pings)
			SendPingReply(id);
	}

	/* Inactivity timeouts (no byte for inactivity_ms) and calls still waiting for a session past their deadline.
	 * Pings seen so far on live streams are answered here too, without waiting for the stream to end. */
	void CheckDeadlines()
	{
		Clock::time_point now = Clock::now();
		std::vector<CURL *> idle;
		std::vector<std::string> pings;
		for (auto &entry : transfers_) {
			Transfer *t = entry.second.get();
			for (CallProgress &p : t->progress)
				progress_.push_back(std::move(p));
			t->progress.clear();
			for (std::string &id : t->pings)
				pings.push_back(std::move(id));
			t->pings.clear();
			if (t->inactivity_ms > 0 && now - t->last_byte >= std::chrono::milliseconds(t->inactivity_ms))
				idle.push_back(entry.first);
		}
		for (CURL *easy : idle) {
			curl_multi_remove_handle(multi_, easy);
			std::unique_ptr<Transfer> t = std::move(transfers_[easy]);
			transfers_.erase(easy);
			CallOutcome o = Error(ErrorCode::TimeoutError, "no data from the MCP server for " +
			                                                   std::to_string(t->inactivity_ms) + " ms");
			if (t->kind == Kind::ToolCall) {
				t->call->transfer = nullptr;
				Finish(t->call, o);
			} else if (t->kind != Kind::PingReply && t->session_generation == session_generation_) {
				DropSession();
				FailWaiting(o);
			}
		}
		std::vector<Call *> expired;
		for (Call *call : waiting_)
			if (now >= call->deadline)
				expired.push_back(call);
		for (Call *call : expired)
			Finish(call, Error(ErrorCode::TimeoutError, "timed out waiting for the MCP session"));
		for (const std::string &id : pings)
			SendPingReply(id);
	}

	ClientConfig config_;
	const SchemaRegistry *schemas_;
	int epoll_fd_ = -1;
	CURLM *multi_ = nullptr;
	bool timer_armed_ = false;
	Clock::time_point timer_deadline_;

	Session session_ = Session::None;
	std::string session_id_;
	std::string protocol_version_;
	uint64_t session_generation_ = 0;
	uint64_t initialize_count_ = 0;

	std::map<uint64_t, std::unique_ptr<Call>> calls_;
	std::deque<Call *> waiting_;
	std::unordered_map<CURL *, std::unique_ptr<Transfer>> transfers_;
	std::vector<CallProgress> progress_;
	std::vector<CallOutcome> outcomes_;
};

} // namespace

std::unique_ptr<McpClient>
McpClient::Create(const ClientConfig &config, const SchemaRegistry *schemas)
{
	return std::make_unique<Client>(config, schemas);
}

} // namespace pgdiag
