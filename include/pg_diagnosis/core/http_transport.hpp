/*
 * http_transport.hpp: HTTP exchanges on libcurl's multi socket interface, behind one epoll descriptor.
 *
 * libcurl says which sockets to watch (socket callback) and when to come back (timer callback); the transport keeps
 * the sockets in its own epoll descriptor so its owner waits on a single descriptor next to its latch. Exchanges are
 * spread over several multi handles (pools) of at most kConnectionsPerPool connections each: libcurl 7.88 walks
 * every connection of its multi handle when a transfer looks for a connection and when one is removed, which at
 * thousands of connections was a sixth of the worker's time. Responses are recorded as they arrive:
 * text/event-stream bodies are parsed into SSE events while the stream is still open, so the owner sees
 * notifications before the exchange ends. The transport knows nothing of MCP.
 *
 * Callbacks never throw and never call back into the owner: they record what happened in the exchange and return
 * libcurl's abort value; everything else happens in Drive().
 */
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pg_diagnosis/core/sse_parser.hpp"

struct curl_sockaddr;

namespace pgdiag {

using Clock = std::chrono::steady_clock;

enum class HttpMethod { Post, Get, Delete };

struct HttpRequest {
	HttpMethod method = HttpMethod::Post;
	std::string url;
	std::vector<std::string> headers; /* "Name: value" lines */
	std::string body;                 /* POST only */
	long timeout_ms = 300000;         /* the whole exchange */
	long connect_timeout_ms = 10000;
	long inactivity_ms = 0;      /* no byte for this long ends the exchange; 0 = no limit */
	size_t max_bytes = 8u << 20; /* response body cap, enforced in the write callback */
	/* The SSE events not yet taken and the parser's buffers may hold at most this (0: MaxHeldBytes(max_bytes)). */
	size_t max_held_bytes = 0;
	std::string ca_file;     /* "" = the system's CA bundle */
	std::string client_cert; /* PEM certificate for mutual TLS, "" = none */
	std::string client_key;  /* its PEM private key, "" = in client_cert's file */
	std::string user_agent = "pg_diagnosis";
};

class HttpTransport;

/* One exchange and what came back so far. */
struct HttpExchange {
	uint64_t id = 0;
	HttpRequest request;

	/* The response, filled in while it arrives. */
	long status = 0;
	std::string content_type;     /* lower case */
	std::string session_id;       /* Mcp-Session-Id */
	std::string retry_after;      /* Retry-After */
	std::string www_authenticate; /* WWW-Authenticate (the Bearer challenge of a 401 or 403) */
	std::string location;         /* Location (an authorization redirect; redirects are never followed) */
	bool is_sse = false;          /* a 2xx text/event-stream */
	std::string body;             /* every non-SSE body, error bodies included */
	std::vector<SseEvent> events; /* SSE events not yet taken by the owner (TakeEvents) */
	SseParser sse;
	size_t bytes = 0;        /* body bytes received */
	size_t header_bytes = 0; /* header bytes received, every header block counted */
	size_t events_held = 0;  /* what `events` holds (SseEventBytes of each), until taken */
	Clock::time_point last_byte;
	bool touched = false; /* events arrived since the owner last took Touched() */
	HttpTransport *transport = nullptr;

	/* How it ended (valid once finished). */
	bool finished = false;
	int curl_code = 0;            /* CURLcode; 0 = the transfer completed */
	long os_errno = 0;            /* CURLINFO_OS_ERRNO of a failed connect, or why socket() failed */
	int socket_errno = 0;         /* errno of a failed socket() (the open-socket callback) */
	std::string error;            /* libcurl's message for curl_code, "" when 0 */
	bool timed_out = false;       /* the total or connect timeout */
	bool inactive = false;        /* ended by the transport's inactivity limit */
	bool too_big = false;         /* max_bytes exceeded */
	bool sse_failed = false;      /* the SSE stream broke a limit of the parser: sse.FailureReason() */
	bool held_too_much = false;   /* the SSE events not yet taken held more than the exchange's budget */
	bool headers_too_big = false; /* the response headers exceeded kMaxHeaderBytes */
	bool local_failure = false;   /* this process ran out of descriptors or memory: not the peer's fault */
	std::string callback_error;

	/* libcurl's handle and header list: owned by the transport. */
	void *easy = nullptr;
	size_t pool = 0; /* the transport's pool the handle was added to */
	void *header_list = nullptr;
	char errbuf[256] = {0};

	/* The SSE events received since the last call; their bytes no longer count against the exchange. */
	std::vector<SseEvent> TakeEvents()
	{
		events_held = 0;
		return std::exchange(events, {});
	}
	/* What the exchange holds of its response now: body or events not yet taken, and the parser's buffers. */
	size_t HeldBytes() const;
	/* The write callback's SSE path: parses body bytes into `events`, counting what they hold against the
	 * exchange's budget. False (with sse_failed or held_too_much) when the stream must end. On its own so the
	 * fuzzer drives exactly what the transport runs. */
	bool AcceptSse(const char *bytes, size_t length);
};

class HttpTransport {
public:
	/* Throws std::runtime_error when the epoll descriptor or the multi handle cannot be made. */
	HttpTransport();
	~HttpTransport();
	HttpTransport(const HttpTransport &) = delete;
	HttpTransport &operator=(const HttpTransport &) = delete;

	/* At most `total` connections at once (CURLMOPT_MAX_TOTAL_CONNECTIONS; 0 = no cap), shared out between the
	 * pools: further exchanges wait inside libcurl for a free connection instead of opening more sockets. `cache`
	 * connections are kept open for reuse, also shared out. */
	void SetConnectionLimits(long total, long cache);
	/* How many pools new exchanges are spread over. */
	size_t PoolsInUse() const { return pools_in_use_; }

	/* Starts an exchange. It is never null: an exchange that cannot even start is returned already finished (with
	 * local_failure when libcurl had no memory), and TakeFinished() delivers it. */
	HttpExchange *Start(HttpRequest request);
	/* Abandons an exchange at once (closing its connection, which ends a stream) and frees it. */
	void Abort(uint64_t id);
	void AbortAll();
	/* Ends a live exchange now as if it had completed (its connection is closed): for a stream whose final
	 * response already arrived while the server keeps it open. Null for an unknown id. */
	std::unique_ptr<HttpExchange> Detach(uint64_t id);

	HttpExchange *Find(uint64_t id);
	size_t Count() const { return live_.size(); }
	/* The exchanges still open, for reading their SSE events and progress. */
	std::vector<HttpExchange *> Live();
	/* The open exchanges that received SSE events since the last call: what the owner has to read, without a
	 * walk over thousands of silent streams at every turn. */
	std::vector<HttpExchange *> Touched();

	/* Readable when Drive() has socket work to do. Stable for the transport's life. */
	int EventFd() const { return epoll_fd_; }
	/* Milliseconds until Drive() must run for timers; -1 when none is pending. */
	long TimeoutMs() const;
	/* Performs due socket I/O and timers without blocking; finished exchanges move to TakeFinished(). */
	void Drive();
	std::vector<std::unique_ptr<HttpExchange>> TakeFinished();

	/* The budget of what an exchange may hold of its response at once: a small multiple of the wire cap, so that
	 * a stream framed to multiply (many tiny events, each with its own overhead) fails instead of growing. */
	static size_t MaxHeldBytes(size_t max_bytes) { return 2 * max_bytes + (64u << 10); }
	/* Response headers of one exchange, every header block included: no server needs more. */
	static constexpr size_t kMaxHeaderBytes = 64u << 10;

	static constexpr long kConnectionsPerPool = 256;
	static constexpr size_t kMaxPools = 64;

private:
	/* One libcurl multi handle: its connections, its timer, and how many exchanges it carries. */
	struct Pool {
		HttpTransport *transport = nullptr;
		size_t index = 0;
		void *multi = nullptr;
		bool timer_armed = false;
		Clock::time_point timer_deadline;
		size_t live = 0;
	};
	static int SocketCallback(void *easy, int s, int what, void *userp, void *socketp);
	static int TimerCallback(void *multi, long timeout_ms, void *userp);
	static size_t HeaderCallback(char *buffer, size_t size, size_t nitems, void *userdata);
	static size_t WriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata);
	static int OpenSocketCallback(void *clientp, int purpose, struct curl_sockaddr *address);

	Pool &AddPool();
	Pool &LeastLoadedPool();
	void SocketAction(Pool &pool, int socket, int flags);
	void CollectDone(Pool &pool);
	void ExpireInactive();
	void Finish(uint64_t id, int code);
	void Release(HttpExchange *exchange);

	int epoll_fd_ = -1;
	std::vector<std::unique_ptr<Pool>> pools_;
	size_t pools_in_use_ = 1; /* new exchanges go to pools_[0, pools_in_use_) */
	/* No exchange can be inactive for its limit before this: ExpireInactive walks the exchanges only then (bytes
	 * only move an exchange's own deadline later, so the earliest one seen at the last walk is a lower bound). */
	Clock::time_point inactivity_check_at_ = Clock::time_point::max();
	std::vector<uint64_t> touched_;
	uint64_t next_id_ = 0;
	std::unordered_map<uint64_t, std::unique_ptr<HttpExchange>> live_;
	std::vector<std::unique_ptr<HttpExchange>> finished_;
};

/* True for an errno that means this process, not the network, is short of a resource (EMFILE, ENFILE, ENOMEM,
 * ENOBUFS). */
bool IsLocalResourceErrno(long err);

} // namespace pgdiag
