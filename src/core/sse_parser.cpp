/*
 * sse_parser.cpp: incremental Server-Sent Events parsing.
 */
#include <cstring>

#include "pg_diagnosis/core/sse_parser.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

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
			ProcessLine(out);
			if (failed_)
				return false;
			continue;
		}
		/* Copy the run of ordinary bytes up to the next line end in one go. */
		size_t end = i;
		while (end < length && bytes[end] != '\r' && bytes[end] != '\n')
			end++;
		line_.append(bytes + i, end - i);
		i = end;
		if (line_.size() + data_.size() > max_event_bytes_) {
			failed_ = true;
			return false;
		}
	}
	return true;
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
			event.type = type_.empty() ? "message" : type_;
			event.id = last_id_;
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
	std::string value;
	if (colon != std::string::npos) {
		size_t start = colon + 1;
		if (start < line_.size() && line_[start] == ' ')
			start++;
		value = line_.substr(start);
	}
	line_.clear();

	if (field == "data") {
		data_ += value;
		data_ += '\n';
		has_data_ = true;
		if (data_.size() > max_event_bytes_)
			failed_ = true;
	} else if (field == "event")
		type_ = value;
	else if (field == "id") {
		if (value.find('\0') == std::string::npos)
			last_id_ = value;
	} else if (field == "retry") {
		/* Only ASCII digits count (WHATWG); an absurd value is capped rather than overflowing. */
		if (!value.empty() && value.find_first_not_of("0123456789") == std::string::npos)
			retry_ms_ = value.size() > 9 ? 999999999L : std::stol(value);
	}
	/* Unknown fields are ignored. */
}

} // namespace pgdiag
