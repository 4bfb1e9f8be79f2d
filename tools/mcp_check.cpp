/*
 * mcp_check.cpp: pg_diagnosis_mcp_check URL [TOOL] — what the worker would see at an MCP endpoint.
 *
 * Sets the endpoint up with the worker's own client (modern probe, legacy fallback, tools/list), prints its era,
 * negotiated version, capabilities and whether it offers tasks and the tool, then makes one test call of TOOL and
 * prints its outcome exactly as the worker would classify it (error code and flags). Without TOOL it only sets the
 * endpoint up.
 *
 * For the conformance suite, whose servers offer other tools than the worker's, the test call can send other
 * arguments (--arguments JSON), call a list of tools with their arguments (--calls '[{"name":..,"arguments":{..}}]',
 * the suite's toolCalls context) or call every tool the server lists, with arguments built from its inputSchema
 * (--all-tools; tools whose x-mcp-header annotations are invalid are left out, as a client must). What the worker
 * sends is not changed by any of these: only this program sets CallRequest::arguments_json.
 *
 * Exit status: 0 the endpoint works (and the call returned a valid diagnosis); 1 the tool answered, but not with a
 * valid diagnosis (VALIDATION_ERROR, LLM_ERROR); 2 any other failure (configuration, protocol, network, timeout);
 * 64 usage.
 */
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <random>
#include <string>
#include <unistd.h>

#include "mcp_check_schema.hpp"
#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/result.hpp"

using namespace pgdiag;

namespace {

void
Usage()
{
	std::fprintf(
	    stderr,
	    "usage: pg_diagnosis_mcp_check [--token TOKEN] [--timeout MS] [--ca-file FILE]\n"
	    "                              [--arguments JSON | --calls JSON | --all-tools] URL [TOOL]\n"
	    "  Sets the MCP endpoint up as the pg_diagnosis worker does and, with TOOL, makes one test call.\n"
	    "  --arguments JSON  send these tools/call arguments instead of the worker's\n"
	    "  --calls JSON      call each [{\"name\": TOOL, \"arguments\": {...}}] in turn (or {\"toolCalls\": [...]})\n"
	    "  --all-tools       call every tool the server lists, arguments built from its inputSchema\n"
	    "  The token may also come from the environment variable PGDIAG_MCP_TOKEN.\n"
	    "  Exit: 0 works, 1 the tool answered without a valid diagnosis, 2 failure, 64 usage.\n");
}

std::string
RandomHex(size_t digits)
{
	std::random_device device;
	std::mt19937_64 rng(device());
	static const char hex[] = "0123456789abcdef";
	std::string out;
	for (size_t i = 0; i < digits; i++)
		out += hex[rng() & 15];
	return out;
}

/* Drives the client until `done` holds or the deadline passes, as the worker does: wait on the descriptor for at
 * most TimeoutMs(), then Drive(). */
template <typename F>
bool
DriveUntil(McpClient &client, long timeout_ms, F done)
{
	auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
	while (!done()) {
		if (std::chrono::steady_clock::now() >= deadline)
			return false;
		long wait = client.TimeoutMs();
		pollfd p{client.EventFd(), POLLIN, 0};
		poll(&p, 1, wait < 0 || wait > 100 ? 100 : static_cast<int>(wait));
		client.Drive();
	}
	return true;
}

void
PrintEndpoint(const EndpointInfo &e, const std::string &tool)
{
	std::printf("era:               %s\n", e.era.empty() ? "unknown" : e.era.c_str());
	std::printf("protocol version:  %s\n", e.protocol_version.empty() ? "-" : e.protocol_version.c_str());
	std::printf("server:            %s\n", e.server_name.empty() ? "-" : e.server_name.c_str());
	if (!e.session_id.empty())
		std::printf("session:           %s\n", e.session_id.c_str());
	std::printf("capabilities:      %s\n", e.capabilities_json.empty() ? "-" : e.capabilities_json.c_str());
	std::printf("tasks:             %s\n", e.tasks ? "yes (task-backed calls: exactly one tools/call per run)"
	                                               : "no (direct calls: at-least-once)");
	if (!tool.empty())
		std::printf("tool:              %s: %s%s%s\n", tool.c_str(),
		            e.tool_offered == 1   ? "offered"
		            : e.tool_offered == 0 ? "NOT offered"
		                                  : "not checked",
		            e.tool_task_support.empty() ? "" : ", taskSupport ", e.tool_task_support.c_str());
	if (!e.last_error.empty())
		std::printf("endpoint error:    %s\n", e.last_error.c_str());
}

/* One test call of config.tool (with `arguments_json`, "" = the worker's arguments), printed as the worker would
 * classify it. Returns the exit status: 0 a valid diagnosis, 1 the tool answered otherwise, 2 any other failure. */
int
TestCall(const ClientConfig &config, const SchemaRegistry &schemas, const std::string &arguments_json)
{
	std::unique_ptr<McpClient> client = McpClient::Create(config, &schemas);
	CallRequest call;
	call.tag = 1;
	call.run_id = "mcp-check-" + RandomHex(12);
	call.patient_id = "mcp-check";
	call.inputs_json = R"({"reason":"pg_diagnosis_mcp_check test call"})";
	call.context_pack_json = R"({"observations":[]})";
	call.traceparent = "00-" + RandomHex(32) + "-" + RandomHex(16) + "-01";
	call.arguments_json = arguments_json;
	client->Submit(call);
	std::vector<CallOutcome> outcomes;
	std::vector<CallTask> tasks;
	size_t progress = 0;
	DriveUntil(*client, config.request_timeout_ms + 5000, [&] {
		for (CallOutcome &o : client->TakeOutcomes())
			outcomes.push_back(std::move(o));
		for (CallTask &t : client->TakeTasks())
			tasks.push_back(std::move(t));
		progress += client->TakeProgress().size();
		return !outcomes.empty();
	});
	PrintEndpoint(client->Endpoint(), config.tool);
	std::printf("test call:         run_id %s, traceparent %s\n", call.run_id.c_str(), call.traceparent.c_str());
	if (!arguments_json.empty())
		std::printf("arguments:         %s\n", arguments_json.c_str());
	for (const CallTask &t : tasks)
		std::printf("task:              %s (ttl %s)\n", t.task_id.c_str(),
		            t.ttl_ms < 0 ? "unknown" : (std::to_string(t.ttl_ms) + " ms").c_str());
	if (progress)
		std::printf("progress:          %zu notifications\n", progress);
	if (outcomes.empty()) {
		std::printf("outcome:           no outcome within %ld ms\n", config.request_timeout_ms + 5000);
		client->Shutdown();
		return 2;
	}
	const CallOutcome &o = outcomes[0];
	std::string flags;
	for (auto [on, name] : {std::pair{o.config_error, "config_error"},
	                        {o.local_failure, "local_failure"},
	                        {o.task_lost, "task_lost"},
	                        {o.cancelled, "cancelled"}})
		if (on)
			flags += std::string(flags.empty() ? "" : " ") + name;
	std::printf("outcome:           %s%s%s\n", o.code == ErrorCode::None ? "OK" : ErrorCodeName(o.code),
	            o.message.empty() ? "" : ": ", o.message.c_str());
	std::printf("retry:             %s\n", o.code == ErrorCode::None ? "-"
	                                       : o.config_error          ? "no: the setting cannot work (the worker pauses)"
	                                       : o.local_failure         ? "yes, without spending an attempt"
	                                       : IsTransient(o.code)     ? "yes (transient)"
	                                                                 : "no (permanent)");
	std::printf("flags:             %s\n", flags.empty() ? "-" : flags.c_str());
	std::printf("http status:       %ld\n", o.http_status);
	std::printf("elapsed:           %lld ms\n", static_cast<long long>(o.elapsed_ms));
	if (!o.mcp_run_id.empty())
		std::printf("mcp run id:        %s\n", o.mcp_run_id.c_str());
	if (!o.details_json.empty())
		std::printf("details:           %s\n", o.details_json.c_str());
	client->Shutdown();
	if (o.code == ErrorCode::None)
		return 0;
	return o.code == ErrorCode::ValidationError || o.code == ErrorCode::LlmError ? 1 : 2;
}

/* Sets the endpoint up without a call (with `list_tools`, every tool listed): 0 ready, 2 not. */
int
SetUp(ClientConfig config, const SchemaRegistry &schemas, bool list_tools, EndpointInfo *info)
{
	config.tool.clear();
	config.list_tools = list_tools;
	std::unique_ptr<McpClient> client = McpClient::Create(config, &schemas);
	client->Connect();
	bool settled = DriveUntil(*client, config.request_timeout_ms, [&] {
		EndpointInfo e = client->Endpoint();
		return e.state == "ready" || (e.state == "idle" && !e.last_error.empty());
	});
	*info = client->Endpoint();
	PrintEndpoint(*info, "");
	client->Shutdown();
	if (!settled)
		std::printf("endpoint error:    timed out after %ld ms\n", config.request_timeout_ms);
	return info->state == "ready" ? 0 : 2;
}

/* The worst of several calls' exit statuses. */
int
Worst(int a, int b)
{
	return a > b ? a : b;
}

/* --calls: [{"name": TOOL, "arguments": {...}}, ...], or an object whose toolCalls member is that list (the
 * conformance suite's MCP_CONFORMANCE_CONTEXT as it is). */
bool
ParseCalls(const std::string &text, std::vector<std::pair<std::string, std::string>> *calls)
{
	rapidjson::Document doc;
	std::string error;
	if (!ParseJson(text.data(), text.size(), doc, &error))
		return false;
	const rapidjson::Value *list = &doc;
	if (doc.IsObject() && doc.HasMember("toolCalls"))
		list = &doc["toolCalls"];
	if (!list->IsArray())
		return false;
	for (auto &c : list->GetArray()) {
		if (!c.IsObject() || !c.HasMember("name") || !c["name"].IsString())
			return false;
		std::string arguments = "{}";
		if (c.HasMember("arguments")) {
			if (!c["arguments"].IsObject())
				return false;
			arguments = ToJson(c["arguments"]);
		}
		calls->emplace_back(c["name"].GetString(), arguments);
	}
	return true;
}

} // namespace

int
main(int argc, char **argv)
{
	ClientConfig config;
	config.request_timeout_ms = 30000;
	config.user_agent = "pg_diagnosis_mcp_check";
	if (const char *token = std::getenv("PGDIAG_MCP_TOKEN"))
		config.auth_token = token;
	std::vector<std::string> positional;
	std::string arguments, calls_json;
	bool all_tools = false;
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i];
		if ((arg == "--token" || arg == "--timeout" || arg == "--ca-file" || arg == "--arguments" ||
		     arg == "--calls") &&
		    i + 1 < argc) {
			std::string value = argv[++i];
			if (arg == "--token")
				config.auth_token = value;
			else if (arg == "--ca-file")
				config.ca_file = value;
			else if (arg == "--arguments")
				arguments = value;
			else if (arg == "--calls")
				calls_json = value;
			else
				config.request_timeout_ms = std::atol(value.c_str());
		} else if (arg == "--all-tools")
			all_tools = true;
		else if (arg == "-h" || arg == "--help") {
			Usage();
			return 0;
		} else if (!arg.empty() && arg[0] == '-') {
			Usage();
			return 64;
		} else
			positional.push_back(arg);
	}
	int modes = !arguments.empty() + !calls_json.empty() + all_tools;
	if (positional.empty() || positional.size() > 2 || config.request_timeout_ms <= 0 || modes > 1 ||
	    ((!calls_json.empty() || all_tools) && positional.size() > 1)) {
		Usage();
		return 64;
	}
	config.url = positional[0];
	config.tool = positional.size() > 1 ? positional[1] : "";
	std::vector<std::pair<std::string, std::string>> calls;
	if (!calls_json.empty() && !ParseCalls(calls_json, &calls)) {
		std::fprintf(stderr, "pg_diagnosis_mcp_check: --calls takes a JSON array of {\"name\", \"arguments\"}\n");
		return 64;
	}
	if (!arguments.empty()) {
		rapidjson::Document doc;
		std::string error;
		if (!ParseJson(arguments.data(), arguments.size(), doc, &error) || !doc.IsObject()) {
			std::fprintf(stderr, "pg_diagnosis_mcp_check: --arguments takes a JSON object\n");
			return 64;
		}
	}

	try {
		SchemaRegistry schemas;
		std::string error;
		if (!schemas.Add("v1", kResultSchemaV1, &error)) {
			std::fprintf(stderr, "pg_diagnosis_mcp_check: result schema v1: %s\n", error.c_str());
			return 2;
		}
		std::printf("endpoint:          %s\n", config.url.c_str());
		if (all_tools) {
			EndpointInfo info;
			int status = SetUp(config, schemas, true, &info);
			if (status != 0)
				return status;
			for (const ListedTool &t : info.tools) {
				if (!t.invalid.empty())
					std::printf("tool:              %s: left out, unusable: %s\n", t.name.c_str(), t.invalid.c_str());
				else
					calls.emplace_back(t.name, ExampleArguments(t.input_schema_json));
			}
			if (calls.empty())
				return 0;
		}
		if (calls.empty()) {
			if (config.tool.empty()) {
				EndpointInfo info;
				return SetUp(config, schemas, false, &info);
			}
			return TestCall(config, schemas, arguments);
		}
		int status = 0;
		for (const auto &[tool, tool_arguments] : calls) {
			std::printf("\n");
			ClientConfig one = config;
			one.tool = tool;
			status = Worst(status, TestCall(one, schemas, tool_arguments));
		}
		return status;
	} catch (const std::exception &e) {
		std::fprintf(stderr, "pg_diagnosis_mcp_check: %s\n", e.what());
		return 2;
	}
}
