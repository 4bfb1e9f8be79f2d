// libFuzzer target: the MCP message classifier (JSON-RPC parsing, task results, discover/initialize results, era
// judgement of an error body) must never crash on hostile server output, whatever the era.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/mcp_session.hpp"

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	using namespace pgdiag;
	std::string text(reinterpret_cast<const char *>(data), size);

	std::vector<RpcMessage> messages;
	std::string error;
	if (ParseMessages(text, &messages, &error))
		for (const RpcMessage &m : messages) {
			CallProgress progress;
			ProgressOf(m, "\"t\"", &progress);
			SupportedVersions(m);
			if (m.is_error)
				RpcErrorOutcome(m);
			JudgeDiscover(HttpExchange(), &m, kModernVersion);
			JudgeInitialize(HttpExchange(), &m);
		}
	for (Era era : {Era::Modern, Era::Legacy}) {
		TaskInfo task;
		ParseCreateTask(text, era, &task);
		ParseTaskStatus(text, era, &task);
	}
	ServerFeatures features;
	ParseDiscoverResult(text, &features, &error);
	ParseInitializeResult(text, &features, &error);
	ToolEntry entry;
	std::string cursor;
	ParseToolsList(text, "run_diagnosis", &entry, &cursor, &error);
	ParamHeaderLines({ParamHeader{{"run_id"}, "Run"}, ParamHeader{{"inputs", "a"}, "A"}}, text);
	ParamHeaderLines(entry.param_headers, text);

	HttpExchange x;
	x.finished = true;
	x.status = size ? 400 + data[0] % 100 : 400;
	x.body = text;
	RpcMessage modern;
	IsModernErrorBody(x, &modern);
	JudgeDiscover(x, nullptr, kModernVersion);
	EncodeHeaderValue(text);
	return 0;
}
