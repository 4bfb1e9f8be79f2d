/*
 * sse_parser.cpp: incremental Server-Sent Events parsing.
 */
#include <cstring>
#include <utility>

#include "pg_diagnosis/core/sse_parser.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

size_t
SseEventBytes(const SseEvent &event)
{
	/* capacity, not size: what the allocator really holds (an inline string counts twice, which errs safe). */
	return sizeof(SseEvent) + event.type.capacity() + event.data.capacity();
}

size_t
SseParser::HeldBytes() const
{
	return line_.capacity() + data_.capacity() + type_.capacity() + last_id_.capacity();
}

void
SseParser::Fail(std::string reason)
{
	failed_ = true;
	failure_ = std::move(reason);
	/* Nothing more will be parsed: give the buffers back at once. */
	std::string().swap(line_);
	std::string().swap(data_);
}

bool
SseParser::Feed(const char *bytes, size_t length, std::vector<SseEvent> &out)
{
	size_t i = 0;

	if (failed_)
		return false;
	while (i < length) {
		if (!started_) {
			/* A UTF-8 BOM may open the stream, possibly split across chunks. */
			static const char bom[] = "\xEF\xBB\xBF";
			size_t have = line_.size();
			if (have < 3 && static_cast<unsigned char>(bytes[i]) == static_cast<unsigned char>(bom[have])) {
				line_.push_back(bytes[i++]);
				if (line_.size() == 3) {
					line_.clear();
					started_ = true;
				}
				continue;
			}
			started_ = true; /* not a BOM: what was held back is ordinary text */
		}
		char c = bytes[i];
		if (c == '\n' && last_was_cr_) {
			last_was_cr_ = false;
			i++;
			continue;
		}
		last_was_cr_ = false;
		if (c == '\r' || c == '\n') {
			last_was_cr_ = c == '\r';
			i++;
			if (skipping_)
				skipping_ = false; /* the end of a line that was ignored: no dispatch, no field */
			else
				ProcessLine(out);
			if (failed_)
				return false;
			continue;
		}
		/* The run of ordinary bytes up to the next line end, in one go. */
		size_t end = i;
		while (end < length && bytes[end] != '\r' && bytes[end] != '\n')
			end++;
		if (!skipping_) {
			line_.append(bytes + i, end - i);
			if (line_.size() + data_.size() > max_event_bytes_) {
				Fail("an SSE event exceeds " + std::to_string(max_event_bytes_) + " bytes");
				return false;
			}
			if (line_.size() > kMaxSseFieldBytes) {
				CheckLongLine();
				if (failed_)
					return false;
			}
		}
		i = end;
	}
	return true;
}

void
SseParser::CheckLongLine()
{
	size_t colon = line_.find(':');
	std::string field = line_.substr(0, std::min(colon, kMaxSseFieldBytes));
	if (field == "data")
		return; /* bounded by the event cap */
	if (field == "id" || field == "event") {
		Fail("an SSE " + field + ": line exceeds " + std::to_string(kMaxSseFieldBytes) + " bytes");
		return;
	}
	/* A comment, retry: (no valid reconnection time is that long) or a field the parser ignores. */
	std::string().swap(line_);
	skipping_ = true;
}

void
SseParser::ProcessLine(std::vector<SseEvent> &out)
{
	if (line_.empty()) {
		/* Dispatch: an event with no data line is dropped (but its id stays). */
		if (has_data_) {
			SseEvent event;
			if (!data_.empty() && data_.back() == '\n')
				data_.pop_back();
			event.data = std::move(data_);
			if (!type_.empty())
				event.type = type_;
			out.push_back(std::move(event));
		}
		data_.clear();
		type_.clear();
		has_data_ = false;
		return;
	}
	if (line_[0] == ':') { /* comment or keep-alive */
		line_.clear();
		return;
	}
	size_t colon = line_.find(':');
	std::string field = line_.substr(0, colon);
	size_t start = colon == std::string::npos ? line_.size() : colon + 1;
	if (start < line_.size() && line_[start] == ' ')
		start++;

	if (field == "data") {
		/* Appended straight from the line: a large data line is never held a third time. Reserved exactly, with its
		 * line end, so the usual one-line event holds its size and not twice that. */
		data_.reserve(data_.size() + (line_.size() - start) + 1);
		data_.append(line_, start, std::string::npos);
		data_ += '\n';
		has_data_ = true;
		if (data_.size() > max_event_bytes_)
			Fail("an SSE event exceeds " + std::to_string(max_event_bytes_) + " bytes");
	} else if (field == "event")
		type_.assign(line_, start, std::string::npos);
	else if (field == "id") {
		if (line_.find('\0', start) == std::string::npos)
			last_id_.assign(line_, start, std::string::npos);
	} else if (field == "retry") {
		/* Only ASCII digits count (WHATWG); an absurd value is capped rather than overflowing. */
		std::string value = line_.substr(start);
		if (!value.empty() && value.find_first_not_of("0123456789") == std::string::npos)
			retry_ms_ = value.size() > 9 ? 999999999L : std::stol(value);
	}
	line_.clear();
	if (line_.capacity() > 4 * kMaxSseFieldBytes)
		std::string().swap(line_); /* a long data line's buffer is not kept for the lines after it */
	                               /* Unknown fields are ignored. */
}

} // namespace pgdiag
