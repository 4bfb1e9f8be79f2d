// libFuzzer target: CheckToolResult on arbitrary bytes with schema v1 never crashes or throws, and a success
// always carries a diagnosis that is valid JSON the validator accepted.
#include <cstddef>
#include <cstdint>
#include <string>

#include "pg_diagnosis/core/result.hpp"
#include "../unit/schema_v1.hpp"

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static pgdiag::SchemaRegistry *schemas = [] {
		auto *r = new pgdiag::SchemaRegistry();
		std::string error;
		if (!r->Add("v1", SchemaV1(), &error))
			__builtin_trap();
		return r;
	}();
	std::string input(reinterpret_cast<const char *>(data), size);
	pgdiag::ResultCheck check = pgdiag::CheckToolResult(input, "v1", *schemas);
	if (check.code == pgdiag::ErrorCode::None && check.result_json.empty())
		__builtin_trap();
	if (check.code != pgdiag::ErrorCode::None && check.message.empty())
		__builtin_trap();
	return 0;
}
