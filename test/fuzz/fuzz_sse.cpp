// libFuzzer target: the SSE parser must never crash, the chunking of the input must never change the events or the
// last event id, and what the parser and its events hold must stay within a fixed multiple of the input
// (amplification, issue 27: 0.2.0 copied the last id into every event, 184 KB became 1.3 GB). The bytes held are
// measured with the accounting the transport charges to an exchange's budget (SseParser::HeldBytes,
// SseEventBytes), and checked at every chunk, as the transport does.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pg_diagnosis/core/sse_parser.hpp"

namespace {

using pgdiag::SseEvent;
using pgdiag::SseParser;

/* The smallest event is 6 bytes ("data\n\n"): each costs at most the struct and two inline buffers, doubled for
 * the vector's growth. Data and type bytes come from the input once each, doubled for string growth. */
constexpr size_t kPerEvent = 2 * (sizeof(SseEvent) + 2 * 16);
constexpr size_t kSlack = 4 * pgdiag::kMaxSseFieldBytes + 4096;

size_t
Held(const SseParser &parser, const std::vector<SseEvent> &events)
{
	size_t held = parser.HeldBytes() + (events.capacity() - events.size()) * sizeof(SseEvent);
	for (const SseEvent &e : events)
		held += pgdiag::SseEventBytes(e);
	return held;
}

void
CheckBounded(const SseParser &parser, const std::vector<SseEvent> &events, size_t fed)
{
	size_t payload = 0;
	for (const SseEvent &e : events)
		payload += e.data.size() + (e.type == "message" ? 0 : e.type.size());
	if (payload > fed)
		__builtin_trap(); /* a byte of input became more than one byte of events */
	if (events.size() > fed / 6 + 1)
		__builtin_trap();
	if (Held(parser, events) > 2 * fed + kPerEvent * (fed / 6 + 1) + kSlack)
		__builtin_trap();
	if (parser.LastEventId().size() > pgdiag::kMaxSseFieldBytes)
		__builtin_trap();
}

} // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *bytes = reinterpret_cast<const char *>(data);

	SseParser whole(1 << 16);
	std::vector<SseEvent> a;
	bool ok_whole = whole.Feed(bytes, size, a);
	CheckBounded(whole, a, size);

	// The first byte picks a chunk size; the rest is fed in pieces of that size.
	size_t step = size ? (data[0] % 7) + 1 : 1;
	SseParser pieces(1 << 16);
	std::vector<SseEvent> b;
	bool ok_pieces = true;
	for (size_t i = 0; i < size; i += step) {
		ok_pieces = pieces.Feed(bytes + i, std::min(step, size - i), b) && ok_pieces;
		CheckBounded(pieces, b, std::min(size, i + step));
	}

	if (ok_whole != ok_pieces)
		__builtin_trap(); /* whether a stream fails cannot depend on how it was cut */
	if (ok_whole && ok_pieces) {
		if (a.size() != b.size() || whole.LastEventId() != pieces.LastEventId() || whole.RetryMs() != pieces.RetryMs())
			__builtin_trap();
		for (size_t i = 0; i < a.size(); i++)
			if (a[i].data != b[i].data || a[i].type != b[i].type)
				__builtin_trap();
	}
	return 0;
}
