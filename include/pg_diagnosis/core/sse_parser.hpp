/*
 * sse_parser.hpp: an incremental Server-Sent Events parser (WHATWG HTML "Parsing an event stream").
 *
 * Fed arbitrary chunks (split anywhere, even between CR and LF), it yields complete events. No fixed buffers;
 * a pending event larger than the cap fails the stream instead of growing without bound.
 */
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace pgdiag {

struct SseEvent {
	std::string type = "message"; /* the event: field, "message" when absent */
	std::string data;             /* data: lines joined with "\n" */
	std::string id;               /* the last event ID */
};

class SseParser {
public:
	explicit SseParser(size_t max_event_bytes = 64u << 20) : max_event_bytes_(max_event_bytes) {}

	/* Parses `length` bytes; appends finished events to `out`. False once the cap was exceeded (then every later
	 * call is false and yields nothing). */
	bool Feed(const char *bytes, size_t length, std::vector<SseEvent> &out);
	bool Failed() const { return failed_; }
	/* The stream's last event ID (kept across events, as a reconnecting client sends it in Last-Event-ID). */
	const std::string &LastEventId() const { return last_id_; }
	/* The last valid retry: field in milliseconds (the reconnection time), -1 when the stream sent none. */
	long RetryMs() const { return retry_ms_; }

private:
	void ProcessLine(std::vector<SseEvent> &out);

	size_t max_event_bytes_;
	bool failed_ = false;
	bool started_ = false;     /* past a possible leading BOM */
	bool last_was_cr_ = false; /* a CR ended the previous line: a following LF belongs to it */
	std::string line_;
	std::string data_;
	std::string type_;
	std::string last_id_;
	bool has_data_ = false;
	long retry_ms_ = -1;
};

} // namespace pgdiag
