// libFuzzer target: what an authorization server or a protected MCP server sends the OAuth client (the Bearer
// challenge, resource and server metadata, token and registration responses, an authorization redirect) must never
// crash it, and a flow fed hostile answers must end within its request bound.
#include <cstddef>
#include <cstdint>
#include <string>

#include "pg_diagnosis/core/oauth.hpp"

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	using namespace pgdiag;
	std::string text(reinterpret_cast<const char *>(data), size);

	BearerChallenge challenge;
	ParseBearerChallenge(text, &challenge);
	std::string error;
	ResourceMetadata prm;
	ParseResourceMetadata(text, &prm, &error);
	ServerMetadata meta;
	ParseServerMetadata(text, &meta, &error);
	OAuthToken token;
	ParseTokenResponse(text, &token, &error);
	QueryParameters("http://127.0.0.1/cb?" + text);
	ResourceMatches(text, "https://mcp.example/mcp");
	ResourceMetadataUrls(text);
	ServerMetadataUrls(text);

	/* A whole flow where every answer is this input, with the status and headers it could carry. */
	for (long status : {200L, 302L, 401L}) {
		OAuthSettings settings;
		settings.client_id = "c";
		settings.redirect_uri = "http://127.0.0.1:1/cb";
		settings.headless_authorize = true;
		OAuthFlow flow(settings, "https://mcp.example/mcp", challenge, OAuthDiscovery(), "", true);
		HttpRequest request;
		int steps = 0;
		while (flow.Next(&request) == OAuthFlow::Step::Http) {
			HttpExchange x;
			x.request = request;
			x.status = status;
			x.body = text;
			x.location = text;
			flow.Feed(x);
			if (++steps > OAuthFlow::kMaxRequests + 1)
				__builtin_trap();
		}
	}
	return 0;
}
