// The client's authorization (src/core/mcp_auth.cpp) against a scripted server that is both a protected MCP server
// and its authorization server: a 401 starts discovery and a token request through the client's own transport, the
// call is sent again with the token (and only the MCP requests carry it), tokens are renewed ahead of expiry rather
// than per call, and a server that never accepts ends in a setting that cannot work, within the retry bound.
#include <atomic>
#include <mutex>
#include <set>

#include <gtest/gtest.h>

#include "test_server.hpp"

using namespace pgdiag_test;

namespace {

/* MCP on /mcp (modern), metadata at the well-known paths, tokens from /token that live `lifetime_s`. */
struct ProtectedServer {
	std::string base;
	int lifetime_s = 3600;
	bool accept_tokens = true;
	std::atomic<int> issued{0};
	std::set<std::string> valid;
	std::mutex mu;

	Reply operator()(const Request &r)
	{
		if (r.path == "/.well-known/oauth-protected-resource/mcp")
			return {Json(R"({"resource":")" + base + R"(/mcp","authorization_servers":[")" + base + R"("]})")};
		if (r.path == "/.well-known/oauth-authorization-server")
			return {Json(R"({"issuer":")" + base + R"(","token_endpoint":")" + base +
			             R"(/token","grant_types_supported":["client_credentials"]})")};
		if (r.path == "/token") {
			if (r.Get("authorization").rfind("Basic ", 0) != 0 ||
			    r.body.find("grant_type=client_credentials") == std::string::npos)
				return {Http(401, "application/json", R"({"error":"invalid_client"})")};
			std::string token = "tok-" + std::to_string(++issued);
			{
				std::lock_guard<std::mutex> lock(mu);
				valid.insert(token);
			}
			return {Json(R"({"access_token":")" + token + R"(","token_type":"Bearer","expires_in":)" +
			             std::to_string(lifetime_s) + "}")};
		}
		std::string auth = r.Get("authorization");
		bool ok;
		{
			std::lock_guard<std::mutex> lock(mu);
			ok = accept_tokens && auth.rfind("Bearer ", 0) == 0 && valid.count(auth.substr(7));
		}
		if (!ok)
			return {Http(401, "application/json", R"({"error":"invalid_token"})",
			             "WWW-Authenticate: Bearer resource_metadata=\"" + base +
			                 "/.well-known/oauth-protected-resource/mcp\"\r\n")};
		if (r.IsMethod("tools/call"))
			return {Json(ToolResult(IdOf(r)))};
		return ModernServer()(r);
	}
};

} // namespace

class AuthTest : public ClientTest {};

TEST_F(AuthTest, A401IsAnsweredWithATokenAndTheCallGoesThrough)
{
	ProtectedServer as;
	TestServer server([&](const Request &r, int) { return as(r); });
	as.base = "http://127.0.0.1:" + std::to_string(server.Port());
	ClientConfig config;
	config.oauth.client_id = "pgdiag";
	config.oauth.client_secret = "secret";
	auto client = Make(server.Url(), config);
	ASSERT_TRUE(client->Submit(Call(1)));
	auto outcomes = RunUntil(*client, 1);
	ASSERT_EQ(outcomes.size(), 1u);
	EXPECT_EQ(outcomes[0].code, ErrorCode::None) << outcomes[0].message;
	EXPECT_EQ(as.issued, 1);
	EXPECT_EQ(client->Endpoint().oauth_tokens, 1);
	for (const Request &r : server.Requests()) {
		if (r.path == "/token" || r.path.find("/.well-known/") == 0)
			EXPECT_FALSE(r.Has("authorization") && r.Get("authorization").rfind("Bearer", 0) == 0)
			    << "a bearer token went to " << r.path;
	}
	// More calls reuse the token: no further token request.
	for (uint64_t tag = 2; tag <= 6; tag++)
		ASSERT_TRUE(client->Submit(Call(tag, "run-" + std::to_string(tag))));
	outcomes = RunUntil(*client, 6);
	ASSERT_EQ(outcomes.size(), 6u);
	for (const CallOutcome &o : outcomes)
		EXPECT_EQ(o.code, ErrorCode::None) << o.message;
	EXPECT_EQ(as.issued, 1);
}

TEST_F(AuthTest, ShortLivedTokensAreRenewedAheadOfExpiryNotPerCall)
{
	ProtectedServer as;
	as.lifetime_s = 1;
	TestServer server([&](const Request &r, int) { return as(r); });
	as.base = "http://127.0.0.1:" + std::to_string(server.Port());
	ClientConfig config;
	config.oauth.client_id = "pgdiag";
	config.oauth.client_secret = "secret";
	auto client = Make(server.Url(), config);
	// A call every 100 ms for 2.5 s: 25 calls over 2.5 token lifetimes.
	auto start = std::chrono::steady_clock::now();
	uint64_t tag = 0;
	while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(2500)) {
		client->Submit(Call(++tag, "run-" + std::to_string(tag)));
		DriveFor(*client, 100);
		for (CallOutcome &o : client->TakeOutcomes())
			outcomes.push_back(std::move(o));
	}
	RunUntil(*client, tag);
	ASSERT_EQ(outcomes.size(), tag);
	for (const CallOutcome &o : outcomes)
		EXPECT_EQ(o.code, ErrorCode::None) << o.message;
	// Renewed at 0.8 s of each 1 s token: three or four tokens, not one per call.
	EXPECT_GE(as.issued, 3);
	EXPECT_LE(as.issued, 6); // (a loaded machine may let one expire: a 401 and one more token)
}

TEST_F(AuthTest, AServerThatNeverAcceptsIsASettingThatCannotWork)
{
	ProtectedServer as;
	as.accept_tokens = false;
	TestServer server([&](const Request &r, int) { return as(r); });
	as.base = "http://127.0.0.1:" + std::to_string(server.Port());
	ClientConfig config;
	config.oauth.client_id = "pgdiag";
	config.oauth.client_secret = "secret";
	auto client = Make(server.Url(), config);
	ASSERT_TRUE(client->Submit(Call(1)));
	auto outcomes = RunUntil(*client, 1);
	ASSERT_EQ(outcomes.size(), 1u);
	EXPECT_TRUE(outcomes[0].config_error) << outcomes[0].message;
	EXPECT_LE(as.issued, 3); // the first token and at most two retries (kMaxAuthRetries)
}
