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
 *
 * With --login it instead performs the OAuth authorization-code grant once for an operator (PKCE, a loopback
 * redirect on 127.0.0.1, offline_access where offered) and stores the refresh token in --oauth-store (mode 0600),
 * the file the workers refresh their tokens from.
 */
#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <netinet/in.h>
#include <poll.h>
#include <random>
#include <sstream>
#include <sys/socket.h>
#include <string>
#include <unistd.h>

#include "mcp_check_schema.hpp"
#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/mcp_client.hpp"
#include "pg_diagnosis/core/mcp_protocol.hpp"
#include "pg_diagnosis/core/oauth.hpp"
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
	    "  --ca-file FILE             CA bundle that verifies the server\n"
	    "  --client-cert FILE, --client-key FILE   mutual TLS\n"
	    "  --oauth-client-id ID       OAuth client id\n"
	    "  --oauth-client-secret-file FILE   its secret's file (first line; or PGDIAG_OAUTH_CLIENT_SECRET)\n"
	    "  --oauth-private-key FILE   PEM key for private_key_jwt\n"
	    "  --oauth-scope SCOPE        scope to ask for (default: what the server names)\n"
	    "  --oauth-store FILE         the operator's login (refresh token), as the workers read it\n"
	    "  --oauth-client-metadata-url URL   a client ID metadata document, where the server takes them\n"
	    "  --oauth-context JSON       client_id, client_secret, private_key_pem from a JSON object (conformance)\n"
	    "  --login                    log in (authorization code + PKCE) and store the refresh token in --oauth-store\n"
	    "  --oauth-headless           let the authorization server answer without a person (test servers)\n"
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

/* The first line of a file (a secret named by the operator). */
bool
ReadFirstLine(const std::string &path, std::string *out)
{
	std::ifstream in(path);
	if (!in)
		return false;
	std::getline(in, *out);
	while (!out->empty() && (out->back() == '\r' || out->back() == ' '))
		out->pop_back();
	return true;
}

bool
ReadFile(const std::string &path, std::string *out)
{
	std::ifstream in(path);
	if (!in)
		return false;
	std::stringstream text;
	text << in.rdbuf();
	*out = text.str();
	return true;
}

/* A loopback listener for the authorization redirect (RFC 8252 section 7.3). */
class LoopbackRedirect {
public:
	LoopbackRedirect()
	{
		fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		sockaddr_in a{};
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t n = sizeof(a);
		if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0 || listen(fd_, 4) != 0 ||
		    getsockname(fd_, reinterpret_cast<sockaddr *>(&a), &n) != 0)
			throw std::runtime_error("cannot listen on 127.0.0.1 for the authorization redirect");
		port_ = ntohs(a.sin_port);
	}
	~LoopbackRedirect()
	{
		if (fd_ >= 0)
			close(fd_);
	}
	std::string Uri() const { return "http://127.0.0.1:" + std::to_string(port_) + "/callback"; }

	/* Waits for the browser's GET /callback?... and answers it; the full redirect URL, or "" on timeout. */
	std::string Wait(long timeout_ms)
	{
		auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
		while (std::chrono::steady_clock::now() < deadline) {
			pollfd p{fd_, POLLIN, 0};
			if (poll(&p, 1, 500) <= 0)
				continue;
			int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			std::string request;
			char buffer[4096];
			pollfd q{c, POLLIN, 0};
			while (request.find("\r\n") == std::string::npos && request.size() < 16384 && poll(&q, 1, 5000) > 0) {
				ssize_t n = read(c, buffer, sizeof(buffer));
				if (n <= 0)
					break;
				request.append(buffer, static_cast<size_t>(n));
			}
			size_t sp1 = request.find(' '), sp2 = request.find(' ', sp1 + 1);
			std::string target =
			    sp1 == std::string::npos || sp2 == std::string::npos ? "" : request.substr(sp1 + 1, sp2 - sp1 - 1);
			bool ours = target.rfind("/callback?", 0) == 0;
			std::string body =
			    ours ? "pg_diagnosis: authorization received; you can close this window.\n" : "not found\n";
			std::string answer =
			    std::string(ours ? "HTTP/1.1 200 OK" : "HTTP/1.1 404 Not Found") +
			    "\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) +
			    "\r\n\r\n" + body;
			(void) !write(c, answer.data(), answer.size());
			close(c);
			if (ours)
				return "http://127.0.0.1:" + std::to_string(port_) + target;
		}
		return "";
	}

private:
	int fd_ = -1;
	int port_ = 0;
};

/* --login: the authorization-code grant once, its refresh token stored where the workers read it. */
int
Login(const ClientConfig &config, const std::string &store, bool headless, long timeout_ms)
{
	OAuthSettings s = config.oauth;
	LoopbackRedirect redirect;
	s.redirect_uri = redirect.Uri();
	s.headless_authorize = headless;
	s.ca_file = config.ca_file;
	s.client_cert = config.client_cert;
	s.client_key = config.client_key;
	s.user_agent = config.user_agent;
	s.refresh_token.clear(); /* a login asks anew */
	OAuthFlow flow(s, config.url, BearerChallenge(), OAuthDiscovery(), "", true);
	HttpTransport transport;
	for (;;) {
		HttpRequest r;
		OAuthFlow::Step step = flow.Next(&r);
		if (step == OAuthFlow::Step::Http) {
			uint64_t id = transport.Start(std::move(r))->id;
			std::unique_ptr<HttpExchange> done;
			while (!done) {
				pollfd p{transport.EventFd(), POLLIN, 0};
				long wait = transport.TimeoutMs();
				poll(&p, 1, wait < 0 || wait > 100 ? 100 : static_cast<int>(wait));
				transport.Drive();
				for (auto &x : transport.TakeFinished())
					if (x->id == id)
						done = std::move(x);
			}
			flow.Feed(*done);
		} else if (step == OAuthFlow::Step::Authorize) {
			std::printf("Open this URL in a browser and log in (waiting %ld s for the redirect to %s):\n\n  %s\n\n",
			            timeout_ms / 1000, redirect.Uri().c_str(), flow.AuthorizationUrl().c_str());
			std::fflush(stdout);
			std::string url = redirect.Wait(timeout_ms);
			if (url.empty()) {
				std::fprintf(stderr, "pg_diagnosis_mcp_check: no authorization redirect within %ld s\n",
				             timeout_ms / 1000);
				return 2;
			}
			flow.Redirected(url);
		} else if (step == OAuthFlow::Step::Failed) {
			std::fprintf(stderr, "pg_diagnosis_mcp_check: login failed: %s\n", flow.Error().c_str());
			return 2;
		} else
			break;
	}
	if (flow.Token().refresh_token.empty()) {
		std::fprintf(stderr, "pg_diagnosis_mcp_check: the authorization server issued no refresh token (it did not "
		                     "grant offline access), so the workers could not renew the token\n");
		return 2;
	}
	OAuthSettings saved;
	saved.refresh_token = flow.Token().refresh_token;
	saved.refresh_client_id = flow.ClientId();
	saved.refresh_client_secret = flow.ClientSecret();
	saved.refresh_issuer = flow.Discovery().issuer;
	std::string error;
	if (!SaveTokenStore(store, saved, &error)) {
		std::fprintf(stderr, "pg_diagnosis_mcp_check: %s\n", error.c_str());
		return 2;
	}
	std::printf("logged in at %s as client %s; refresh token stored in %s (mode 0600)\n",
	            flow.Discovery().issuer.c_str(), flow.ClientId().c_str(), store.c_str());
	return 0;
}

/* --oauth-context: the conformance suite's scenario context (client_id, client_secret, private_key_pem). */
bool
ApplyOAuthContext(const std::string &text, OAuthSettings *oauth)
{
	rapidjson::Document doc;
	std::string error;
	if (!ParseJson(text.data(), text.size(), doc, &error) || !doc.IsObject())
		return false;
	auto get = [&](const char *name, std::string *out) {
		auto it = doc.FindMember(name);
		if (it != doc.MemberEnd() && it->value.IsString())
			*out = it->value.GetString();
	};
	get("client_id", &oauth->client_id);
	get("client_secret", &oauth->client_secret);
	get("private_key_pem", &oauth->private_key_pem);
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
	if (const char *secret = std::getenv("PGDIAG_OAUTH_CLIENT_SECRET"))
		config.oauth.client_secret = secret;
	std::vector<std::string> positional;
	std::string arguments, calls_json;
	bool all_tools = false, login = false, headless = false;
	static const std::vector<std::string> valued = {"--token",
	                                                "--timeout",
	                                                "--ca-file",
	                                                "--arguments",
	                                                "--calls",
	                                                "--client-cert",
	                                                "--client-key",
	                                                "--oauth-client-id",
	                                                "--oauth-scope",
	                                                "--oauth-client-secret-file",
	                                                "--oauth-private-key",
	                                                "--oauth-store",
	                                                "--oauth-client-metadata-url",
	                                                "--oauth-context"};
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i];
		if (std::find(valued.begin(), valued.end(), arg) != valued.end() && i + 1 < argc) {
			std::string value = argv[++i];
			bool read = true;
			if (arg == "--token")
				config.auth_token = value;
			else if (arg == "--ca-file")
				config.ca_file = value;
			else if (arg == "--arguments")
				arguments = value;
			else if (arg == "--calls")
				calls_json = value;
			else if (arg == "--client-cert")
				config.client_cert = value;
			else if (arg == "--client-key")
				config.client_key = value;
			else if (arg == "--oauth-client-id")
				config.oauth.client_id = value;
			else if (arg == "--oauth-scope")
				config.oauth.scope = value;
			else if (arg == "--oauth-client-secret-file")
				read = ReadFirstLine(value, &config.oauth.client_secret);
			else if (arg == "--oauth-private-key")
				read = ReadFile(value, &config.oauth.private_key_pem);
			else if (arg == "--oauth-store")
				config.oauth_store = value;
			else if (arg == "--oauth-client-metadata-url")
				config.oauth.client_metadata_url = value;
			else if (arg == "--oauth-context")
				read = ApplyOAuthContext(value, &config.oauth);
			else
				config.request_timeout_ms = std::atol(value.c_str());
			if (!read) {
				std::fprintf(stderr, "pg_diagnosis_mcp_check: cannot read %s's value\n", arg.c_str());
				return 64;
			}
		} else if (arg == "--all-tools")
			all_tools = true;
		else if (arg == "--login")
			login = true;
		else if (arg == "--oauth-headless")
			headless = true;
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
	if (login && (config.oauth_store.empty() || positional.size() != 1 || modes > 0)) {
		Usage();
		return 64;
	}
	if (headless && !login) {
		/* The authorization-code grant inside the client, without a person (test authorization servers). */
		config.oauth.redirect_uri = "http://127.0.0.1:33418/callback";
		config.oauth.headless_authorize = true;
	}
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
		if (login)
			return Login(config, config.oauth_store, headless, std::max(config.request_timeout_ms, 300000L));
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
