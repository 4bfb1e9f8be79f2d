// libFuzzer target: the SSE parser must never crash, and the chunking of the input must never change the events.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pg_diagnosis/core/sse_parser.hpp"

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	using pgdiag::SseEvent;
	using pgdiag::SseParser;
	const char *bytes = reinterpret_cast<const char *>(data);

	SseParser whole(1 << 16);
	std::vector<SseEvent> a;
	bool ok_whole = whole.Feed(bytes, size, a);

	// The first byte picks a chunk size; the rest is fed in pieces of that size.
	size_t step = size ? (data[0] % 7) + 1 : 1;
	SseParser pieces(1 << 16);
	std::vector<SseEvent> b;
	bool ok_pieces = true;
	for (size_t i = 0; i < size; i += step)
		ok_pieces = pieces.Feed(bytes + i, std::min(step, size - i), b) && ok_pieces;

	if (ok_whole && ok_pieces) {
		if (a.size() != b.size())
			__builtin_trap();
		for (size_t i = 0; i < a.size(); i++)
			if (a[i].data != b[i].data || a[i].type != b[i].type || a[i].id != b[i].id)
				__builtin_trap();
	}
	return 0;
}
