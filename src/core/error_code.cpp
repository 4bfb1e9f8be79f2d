/*
 * error_code.cpp: run error codes (SPEC section 5).
 */
#include "pg_diagnosis/core/error_code.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

const char *
ErrorCodeName(ErrorCode code)
{
	switch (code) {
	case ErrorCode::None:
		return "";
	case ErrorCode::ValidationError:
		return "VALIDATION_ERROR";
	case ErrorCode::LlmError:
		return "LLM_ERROR";
	case ErrorCode::ContextPackError:
		return "CONTEXT_PACK_ERROR";
	case ErrorCode::McpError:
		return "MCP_ERROR";
	case ErrorCode::NetworkError:
		return "NETWORK_ERROR";
	case ErrorCode::TimeoutError:
		return "TIMEOUT_ERROR";
	case ErrorCode::UnknownError:
		break;
	}
	return "UNKNOWN_ERROR";
}

bool
IsTransient(ErrorCode code)
{
	return code == ErrorCode::NetworkError || code == ErrorCode::TimeoutError;
}

} // namespace pgdiag
