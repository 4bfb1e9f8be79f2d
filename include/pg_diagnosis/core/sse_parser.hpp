/*
 * sse_parser.hpp: an incremental Server-Sent Events parser (WHATWG HTML "Parsing an event stream").
 *
 * Fed arbitrary chunks (split anywhere, even between CR and LF), it yields complete events. Nothing a peer sends is
 * held more than once: the last event ID is kept by the parser alone (not copied into every event), a pending event
 * larger than the cap fails the stream, an id: or event: line longer than kMaxSseFieldBytes fails it too, and the
 * rest of an overlong comment or unknown field is skipped without being buffered. HeldBytes() and SseEventBytes()
 * say what the parser and each event it yielded cost, so their owner can count them against a budget.
 */
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace pgdiag {

struct SseEvent {
	std::string type = "message"; /* the event: field, "message" when absent */
	std::string data;             /* data: lines joined with "\n" */
};

/* The longest id: or event: line (field name included) a stream may send; MCP's event ids are a few dozen bytes. */
constexpr size_t kMaxSseFieldBytes = 1024;

/* The memory one dispatched event holds: the struct and its strings' buffers. */
size_t SseEventBytes(const SseEvent &event);

class SseParser {
public:
	explicit SseParser(size_t max_event_bytes = 64u << 20) : max_event_bytes_(max_event_bytes) {}

	/* Parses `length` bytes; appends finished events to `out`. False once the stream failed (then every later
	 * call is false and yields nothing); FailureReason() says why. */
	bool Feed(const char *bytes, size_t length, std::vector<SseEvent> &out);
	bool Failed() const { return failed_; }
	/* Why the stream failed ("" while it has not). */
	const std::string &FailureReason() const { return failure_; }
	/* The stream's last event ID (kept across events, as a reconnecting client sends it in Last-Event-ID). */
	const std::string &LastEventId() const { return last_id_; }
	/* The last valid retry: field in milliseconds (the reconnection time), -1 when the stream sent none. */
	long RetryMs() const { return retry_ms_; }
	/* The bytes the parser holds itself: the line and the event being assembled, the last event ID. */
	size_t HeldBytes() const;

private:
	void ProcessLine(std::vector<SseEvent> &out);
	void Fail(std::string reason);
	/* A line grew past kMaxSseFieldBytes: skip the rest of a comment or ignored field, fail an id: or event:. */
	void CheckLongLine();

	size_t max_event_bytes_;
	bool failed_ = false;
	std::string failure_;
	bool started_ = false;     /* past a possible leading BOM */
	bool last_was_cr_ = false; /* a CR ended the previous line: a following LF belongs to it */
	bool skipping_ = false;    /* discarding the rest of an overlong line that would be ignored anyway */
	std::string line_;
	std::string data_;
	std::string type_;
	std::string last_id_;
	bool has_data_ = false;
	long retry_ms_ = -1;
};

} // namespace pgdiag
