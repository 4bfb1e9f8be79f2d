/*
 * http_transport.cpp: HTTP exchanges on libcurl's multi socket interface, behind one epoll descriptor.
 */
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <pthread.h>
#include <stdexcept>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <utility>

#include <curl/curl.h>

#include "pg_diagnosis/core/http_transport.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace {

static_assert(sizeof(HttpExchange::errbuf) >= CURL_ERROR_SIZE, "errbuf must hold CURL_ERROR_SIZE bytes");

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

} // namespace

bool
IsLocalResourceErrno(long err)
{
	return err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS;
}

HttpTransport::HttpTransport()
{
	GlobalInitOnce();
	epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd_ < 0)
		throw std::runtime_error(std::string("epoll_create1 failed: ") + std::strerror(errno));
	try {
		AddPool();
	} catch (...) {
		close(epoll_fd_);
		throw;
	}
}

HttpTransport::~HttpTransport()
{
	AbortAll();
	finished_.clear();
	for (auto &pool : pools_)
		curl_multi_cleanup(pool->multi);
	close(epoll_fd_);
}

HttpTransport::Pool &
HttpTransport::AddPool()
{
	auto pool = std::make_unique<Pool>();
	pool->transport = this;
	pool->index = pools_.size();
	pool->multi = curl_multi_init();
	if (!pool->multi)
		throw std::runtime_error("curl_multi_init failed");
	curl_multi_setopt(pool->multi, CURLMOPT_SOCKETFUNCTION, SocketCallback);
	curl_multi_setopt(pool->multi, CURLMOPT_SOCKETDATA, pool.get());
	curl_multi_setopt(pool->multi, CURLMOPT_TIMERFUNCTION, TimerCallback);
	curl_multi_setopt(pool->multi, CURLMOPT_TIMERDATA, pool.get());
	pools_.push_back(std::move(pool));
	return *pools_.back();
}

/* Pools beyond the ones in use keep their exchanges until those end; only new exchanges move. Each pool in use
 * gets an equal share of both limits (one more for the first `total % n`), so the cap holds exactly. */
void
HttpTransport::SetConnectionLimits(long total, long cache)
{
	long basis = total > 0 ? total : std::max(1L, cache);
	size_t wanted = static_cast<size_t>((basis + kConnectionsPerPool - 1) / kConnectionsPerPool);
	size_t n = std::max<size_t>(1, std::min(kMaxPools, wanted));
	while (pools_.size() < n)
		AddPool();
	pools_in_use_ = n;
	for (size_t i = 0; i < n; i++) {
		long share =
		    total > 0 ? total / static_cast<long>(n) + (static_cast<long>(i) < total % static_cast<long>(n)) : 0;
		curl_multi_setopt(pools_[i]->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, share);
		curl_multi_setopt(pools_[i]->multi, CURLMOPT_MAXCONNECTS,
		                  std::max(1L, (std::max(1L, cache) + static_cast<long>(n) - 1) / static_cast<long>(n)));
	}
}

HttpTransport::Pool &
HttpTransport::LeastLoadedPool()
{
	Pool *best = pools_[0].get();
	for (size_t i = 1; i < pools_in_use_; i++)
		if (pools_[i]->live < best->live)
			best = pools_[i].get();
	return *best;
}

/* ------------------------------------------------------------ libcurl callbacks */

int
HttpTransport::SocketCallback(void *, int s, int what, void *userp, void *)
{
	Pool *pool = static_cast<Pool *>(userp);
	int epoll_fd = pool->transport->epoll_fd_;
	epoll_event ev{};
	/* The pool in the high half, the socket in the low half: Drive hands the event to the pool's handle. */
	ev.data.u64 = (static_cast<uint64_t>(pool->index) << 32) | static_cast<uint32_t>(s);
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, nullptr);
		return 0;
	}
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
	if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0)
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev);
	return 0;
}

int
HttpTransport::TimerCallback(void *, long timeout_ms, void *userp)
{
	Pool *pool = static_cast<Pool *>(userp);
	if (timeout_ms < 0)
		pool->timer_armed = false;
	else {
		pool->timer_armed = true;
		pool->timer_deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
	}
	return 0;
}

size_t
HttpTransport::HeaderCallback(char *buffer, size_t size, size_t nitems, void *userdata)
{
	HttpExchange *x = static_cast<HttpExchange *>(userdata);
	size_t n = size * nitems;
	try {
		x->last_byte = Clock::now();
		x->header_bytes += n;
		if (x->header_bytes > kMaxHeaderBytes) {
			x->headers_too_big = true;
			return 0;
		}
		std::string line(buffer, n);
		if (line.rfind("HTTP/", 0) == 0) { /* a new header block (e.g. after 100 Continue) */
			x->content_type.clear();
			x->session_id.clear();
			x->retry_after.clear();
			x->www_authenticate.clear();
			x->location.clear();
			return n;
		}
		size_t colon = line.find(':');
		if (colon == std::string::npos)
			return n;
		std::string name = Lower(Trim(line.substr(0, colon)));
		std::string value = Trim(line.substr(colon + 1));
		if (name == "content-type")
			x->content_type = Lower(value);
		else if (name == "mcp-session-id")
			x->session_id = value;
		else if (name == "retry-after")
			x->retry_after = value;
		else if (name == "www-authenticate" && x->www_authenticate.size() < 8192)
			x->www_authenticate += (x->www_authenticate.empty() ? "" : ", ") + value; /* one list, as RFC 9110 */
		else if (name == "location")
			x->location = value.substr(0, 8192);
		return n;
	} catch (...) {
		x->callback_error = "out of memory reading headers";
		return 0;
	}
}

size_t
HttpTransport::WriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	HttpExchange *x = static_cast<HttpExchange *>(userdata);
	size_t n = size * nmemb;
	try {
		x->last_byte = Clock::now();
		x->bytes += n;
		if (x->bytes > x->request.max_bytes) {
			x->too_big = true;
			return 0;
		}
		if (x->bytes == n) { /* the first body bytes: the headers are complete */
			curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
			x->is_sse = x->status >= 200 && x->status < 300 && x->content_type.rfind("text/event-stream", 0) == 0;
		}
		if (!x->is_sse) {
			x->body.append(ptr, n);
			return n;
		}
		if (!x->AcceptSse(ptr, n))
			return 0;
		if (!x->events.empty() && !x->touched) {
			x->touched = true;
			x->transport->touched_.push_back(x->id);
		}
		return n;
	} catch (const std::exception &e) {
		x->callback_error = e.what();
		return 0;
	} catch (...) {
		x->callback_error = "unknown error in the write callback";
		return 0;
	}
}

/* Opens libcurl's sockets as libcurl would, remembering why socket() failed: libcurl reports that failure as a
 * plain connect error, without CURLINFO_OS_ERRNO, and a descriptor shortage must not pass for the peer's fault. */
int
HttpTransport::OpenSocketCallback(void *clientp, int, struct curl_sockaddr *address)
{
	HttpExchange *x = static_cast<HttpExchange *>(clientp);
	int s = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	if (s < 0)
		x->socket_errno = errno;
	return s < 0 ? CURL_SOCKET_BAD : s;
}

/* ------------------------------------------------------------ exchanges */

size_t
HttpExchange::HeldBytes() const
{
	return body.capacity() + sse.HeldBytes() + events_held + (events.capacity() - events.size()) * sizeof(SseEvent);
}

bool
HttpExchange::AcceptSse(const char *bytes, size_t length)
{
	size_t before = events.size();
	bool parsed = sse.Feed(bytes, length, events);
	for (size_t i = before; i < events.size(); i++)
		events_held += SseEventBytes(events[i]);
	if (!parsed) {
		sse_failed = true;
		return false;
	}
	size_t budget = request.max_held_bytes ? request.max_held_bytes : HttpTransport::MaxHeldBytes(request.max_bytes);
	if (HeldBytes() > budget) {
		/* The owner takes events between reads; a peer faster than that cannot pile them up. */
		held_too_much = true;
		return false;
	}
	return true;
}

HttpExchange *
HttpTransport::Start(HttpRequest request)
{
	auto owned = std::make_unique<HttpExchange>();
	HttpExchange *x = owned.get();
	x->id = ++next_id_;
	x->transport = this;
	x->request = std::move(request);
	x->last_byte = Clock::now();
	if (x->request.inactivity_ms > 0)
		inactivity_check_at_ =
		    std::min(inactivity_check_at_, x->last_byte + std::chrono::milliseconds(x->request.inactivity_ms));
	x->sse = SseParser(x->request.max_bytes);

	CURL *easy = curl_easy_init();
	if (!easy) {
		x->finished = true;
		x->curl_code = CURLE_OUT_OF_MEMORY;
		x->local_failure = true;
		x->error = "curl_easy_init failed";
		finished_.push_back(std::move(owned));
		return x;
	}
	x->easy = easy;
	curl_slist *headers = nullptr;
	for (const std::string &h : x->request.headers) {
		curl_slist *grown = curl_slist_append(headers, h.c_str());
		if (!grown) {
			curl_slist_free_all(headers);
			curl_easy_cleanup(easy);
			x->easy = nullptr;
			x->finished = true;
			x->curl_code = CURLE_OUT_OF_MEMORY;
			x->local_failure = true;
			x->error = "out of memory building the request headers";
			finished_.push_back(std::move(owned));
			return x;
		}
		headers = grown;
	}
	x->header_list = headers;

	const HttpRequest &r = x->request;
	curl_easy_setopt(easy, CURLOPT_URL, r.url.c_str());
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (!r.ca_file.empty())
		curl_easy_setopt(easy, CURLOPT_CAINFO, r.ca_file.c_str());
	if (!r.client_cert.empty())
		curl_easy_setopt(easy, CURLOPT_SSLCERT, r.client_cert.c_str());
	if (!r.client_key.empty())
		curl_easy_setopt(easy, CURLOPT_SSLKEY, r.client_key.c_str());
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	if (r.method == HttpMethod::Post) {
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, r.body.c_str());
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
	} else if (r.method == HttpMethod::Delete)
		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE");
	else
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, r.user_agent.c_str());
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, std::max(1L, r.connect_timeout_ms));
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, std::max(1L, r.timeout_ms));
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, HeaderCallback);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, WriteCallback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, OpenSocketCallback);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, x);

	SignalBlock block;
	Pool &pool = LeastLoadedPool();
	x->pool = pool.index;
	pool.live++; /* Release() counts it off again, added or not */
	CURLMcode added = curl_multi_add_handle(pool.multi, easy);
	if (added != CURLM_OK) {
		x->finished = true;
		x->curl_code = added == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
		x->local_failure = added == CURLM_OUT_OF_MEMORY;
		x->error = std::string("curl_multi_add_handle failed: ") + curl_multi_strerror(added);
		Release(x);
		finished_.push_back(std::move(owned));
		return x;
	}
	live_[x->id] = std::move(owned);
	return x;
}

/* Frees libcurl's side of an exchange; the exchange itself keeps what it recorded. */
void
HttpTransport::Release(HttpExchange *x)
{
	if (x->easy) {
		Pool &pool = *pools_[x->pool];
		curl_multi_remove_handle(pool.multi, x->easy);
		pool.live--;
		curl_easy_cleanup(x->easy);
		x->easy = nullptr;
	}
	if (x->header_list) {
		curl_slist_free_all(static_cast<curl_slist *>(x->header_list));
		x->header_list = nullptr;
	}
}

void
HttpTransport::Abort(uint64_t id)
{
	auto it = live_.find(id);
	if (it == live_.end())
		return;
	Release(it->second.get());
	live_.erase(it);
}

void
HttpTransport::AbortAll()
{
	for (auto &entry : live_)
		Release(entry.second.get());
	live_.clear();
}

std::unique_ptr<HttpExchange>
HttpTransport::Detach(uint64_t id)
{
	auto it = live_.find(id);
	if (it == live_.end())
		return nullptr;
	std::unique_ptr<HttpExchange> x = std::move(it->second);
	live_.erase(it);
	Release(x.get());
	x->finished = true;
	return x;
}

HttpExchange *
HttpTransport::Find(uint64_t id)
{
	auto it = live_.find(id);
	return it == live_.end() ? nullptr : it->second.get();
}

std::vector<HttpExchange *>
HttpTransport::Touched()
{
	std::vector<HttpExchange *> out;
	out.reserve(touched_.size());
	for (uint64_t id : touched_) {
		auto it = live_.find(id);
		if (it == live_.end())
			continue; /* finished meanwhile: TakeFinished() delivers it */
		it->second->touched = false;
		out.push_back(it->second.get());
	}
	touched_.clear();
	return out;
}

std::vector<HttpExchange *>
HttpTransport::Live()
{
	std::vector<HttpExchange *> out;
	out.reserve(live_.size());
	for (auto &entry : live_)
		out.push_back(entry.second.get());
	return out;
}

long
HttpTransport::TimeoutMs() const
{
	if (!finished_.empty())
		return 0;
	Clock::time_point now = Clock::now();
	long timeout = -1;
	auto consider = [&](Clock::time_point t) {
		long ms = static_cast<long>(
		    std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count()));
		if (timeout < 0 || ms < timeout)
			timeout = ms;
	};
	for (const auto &pool : pools_)
		if (pool->timer_armed)
			consider(pool->timer_deadline);
	if (!live_.empty() && inactivity_check_at_ != Clock::time_point::max())
		consider(inactivity_check_at_);
	return timeout;
}

void
HttpTransport::SocketAction(Pool &pool, int s, int flags)
{
	SignalBlock block;
	int running = 0;
	curl_multi_socket_action(pool.multi, s, flags, &running);
}

void
HttpTransport::Drive()
{
	for (int round = 0; round < 4; round++) {
		epoll_event events[64];
		bool timers_left = false;
		int n = epoll_wait(epoll_fd_, events, 64, 0);
		for (int i = 0; i < n; i++) {
			int flags = 0;
			size_t pool = static_cast<size_t>(events[i].data.u64 >> 32);
			if (events[i].events & EPOLLIN)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				flags |= CURL_CSELECT_ERR;
			if (pool < pools_.size())
				SocketAction(*pools_[pool], static_cast<int>(events[i].data.u64 & 0xffffffffu), flags);
		}
		for (auto &pool : pools_) {
			if (pool->timer_armed && Clock::now() >= pool->timer_deadline) {
				pool->timer_armed = false;
				SocketAction(*pool, CURL_SOCKET_TIMEOUT, 0);
			}
			CollectDone(*pool);
			timers_left = timers_left || (pool->timer_armed && Clock::now() >= pool->timer_deadline);
		}
		if (!timers_left && n < 64)
			break;
	}
	ExpireInactive();
}

/* Moves an exchange from live to finished with libcurl's verdict. */
void
HttpTransport::Finish(uint64_t id, int code)
{
	auto it = live_.find(id);
	if (it == live_.end())
		return;
	std::unique_ptr<HttpExchange> x = std::move(it->second);
	live_.erase(it);
	x->finished = true;
	x->curl_code = code;
	if (x->easy) {
		long status = 0, os_errno = 0;
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
		curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_errno);
		if (status)
			x->status = status;
		x->os_errno = os_errno ? os_errno : x->socket_errno;
	}
	if (code != CURLE_OK) {
		CURLcode c = static_cast<CURLcode>(code);
		if (x->error.empty())
			x->error = x->errbuf[0] ? x->errbuf : curl_easy_strerror(c);
		x->timed_out = c == CURLE_OPERATION_TIMEDOUT;
		x->local_failure =
		    c == CURLE_OUT_OF_MEMORY || (x->status == 0 && IsLocalResourceErrno(x->os_errno) &&
		                                 (c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
		                                  c == CURLE_SEND_ERROR || c == CURLE_RECV_ERROR));
	}
	Release(x.get());
	finished_.push_back(std::move(x));
}

void
HttpTransport::CollectDone(Pool &pool)
{
	CURLMsg *msg;
	int left = 0;
	while ((msg = curl_multi_info_read(pool.multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		HttpExchange *x = nullptr;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char **>(&x));
		if (x)
			Finish(x->id, msg->data.result);
	}
}

/* Exchanges that received no byte for their inactivity limit end here, as a timeout. */
void
HttpTransport::ExpireInactive()
{
	Clock::time_point now = Clock::now();
	if (now < inactivity_check_at_)
		return;
	std::vector<uint64_t> idle;
	inactivity_check_at_ = Clock::time_point::max();
	for (auto &entry : live_) {
		const HttpExchange &x = *entry.second;
		if (x.request.inactivity_ms <= 0)
			continue;
		Clock::time_point deadline = x.last_byte + std::chrono::milliseconds(x.request.inactivity_ms);
		if (now >= deadline)
			idle.push_back(entry.first);
		else
			inactivity_check_at_ = std::min(inactivity_check_at_, deadline);
	}
	for (uint64_t id : idle) {
		HttpExchange *x = live_[id].get();
		x->inactive = true;
		x->timed_out = true;
		x->error = "no data for " + std::to_string(x->request.inactivity_ms) + " ms";
		Finish(id, CURLE_OPERATION_TIMEDOUT);
	}
}

std::vector<std::unique_ptr<HttpExchange>>
HttpTransport::TakeFinished()
{
	return std::exchange(finished_, {});
}

} // namespace pgdiag
