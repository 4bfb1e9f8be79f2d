// libFuzzer target: what an HTTP exchange holds of an SSE response, through HttpExchange::AcceptSse (exactly what
// the transport's write callback runs) fed in chunks of a fuzzed size, with the owner taking the events at fuzzed
// points. Asserted at every chunk (issue 27, amplification): the bytes held stay within a fixed multiple of the
// bytes fed, and past the exchange's budget by no more than one chunk can add (its own bytes, and buffers that
// doubled to take them); once a limit is broken the exchange says why and takes nothing more.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pg_diagnosis/core/http_transport.hpp"

namespace {

using pgdiag::HttpExchange;
using pgdiag::SseEvent;

/* As in fuzz_sse: each event of at least 6 input bytes costs at most the struct and two inline buffers, doubled
 * for the vector's growth; data and type bytes come from the input once, doubled for string growth. */
constexpr size_t kPerEvent = 2 * (sizeof(SseEvent) + 2 * 16);
constexpr size_t kSlack = 4 * pgdiag::kMaxSseFieldBytes + 4096;

size_t
Amplified(size_t fed)
{
	return 2 * fed + kPerEvent * (fed / 6 + 1) + kSlack;
}

} // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	/* Byte 0-1: the chunk size (1..4096, as libcurl hands over up to 16 KiB); byte 2: which chunks are followed by
	 * the owner taking the events (a bit pattern; 0 = never, so they pile up). */
	size_t chunk = 1 + ((static_cast<size_t>(data[0]) << 8 | data[1]) % 4096);
	uint8_t drains = data[2];
	const char *bytes = reinterpret_cast<const char *>(data + 3);
	size_t length = size - 3;

	HttpExchange x;
	x.request.max_bytes = 16 << 10;
	x.request.max_held_bytes = 24 << 10;
	x.sse = pgdiag::SseParser(x.request.max_bytes);
	size_t fed = 0;
	for (size_t i = 0, n = 0; i < length; i += chunk, n++) {
		size_t piece = std::min(chunk, length - i);
		fed += piece;
		bool go_on = x.AcceptSse(bytes + i, piece);
		/* Before this chunk the exchange held at most its budget; a buffer at most doubles to take a chunk. */
		if (x.HeldBytes() > 2 * x.request.max_held_bytes + Amplified(piece))
			__builtin_trap();
		if (x.HeldBytes() > Amplified(fed))
			__builtin_trap();
		if (!go_on) {
			if (!x.sse_failed && !x.held_too_much)
				__builtin_trap(); /* a refusal always says why */
			if (x.sse_failed && x.sse.FailureReason().empty())
				__builtin_trap();
			break;
		}
		if (drains & (1u << (n % 8))) {
			std::vector<SseEvent> taken = x.TakeEvents();
			if (x.events_held != 0 || !x.events.empty())
				__builtin_trap();
		}
	}
	return 0;
}
