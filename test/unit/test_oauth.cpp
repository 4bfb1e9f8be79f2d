// The OAuth client (src/core/oauth.cpp): challenge and metadata parsing, discovery order, the issuer and resource
// checks, each token endpoint authentication, PKCE, RFC 9207, renewal margins, step-up scopes. A flow is driven
// against canned answers keyed by URL, so every request it makes is seen and checked.
#include <functional>
#include <map>
#include <memory>

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "pg_diagnosis/core/oauth.hpp"

using namespace pgdiag;

namespace {

struct Answer {
	long status = 200;
	std::string body;
	std::string location;
};

/* Runs a flow to its end against `server` (URL -> answer; unknown URLs are 404), recording every request. */
struct Harness {
	std::function<Answer(const HttpRequest &)> server;
	std::vector<HttpRequest> requests;

	OAuthFlow::Step Run(OAuthFlow &flow)
	{
		HttpRequest r;
		OAuthFlow::Step step;
		while ((step = flow.Next(&r)) == OAuthFlow::Step::Http) {
			requests.push_back(r);
			Answer a = server(r);
			HttpExchange x;
			x.request = r;
			x.status = a.status;
			x.body = a.body;
			x.location = a.location;
			flow.Feed(x);
		}
		return step;
	}
	std::vector<std::string> Urls() const
	{
		std::vector<std::string> out;
		for (const auto &r : requests)
			out.push_back(r.url.substr(0, r.url.find('?')));
		return out;
	}
};

const char *kMcp = "https://mcp.example/mcp";
const char *kPrm = R"({"resource":"https://mcp.example/mcp","authorization_servers":["https://as.example"]})";
std::string
Asm(const std::string &extra = "")
{
	return R"({"issuer":"https://as.example","token_endpoint":"https://as.example/token",)"
	       R"("authorization_endpoint":"https://as.example/authorize","registration_endpoint":"https://as.example/register")" +
	       extra + "}";
}
const char *kToken = R"({"access_token":"at-1","token_type":"Bearer","expires_in":60,"refresh_token":"rt-1"})";

std::map<std::string, std::string>
Form(const std::string &body)
{
	return QueryParameters("x?" + body);
}

std::string
Header(const HttpRequest &r, const std::string &name)
{
	for (const std::string &h : r.headers)
		if (h.rfind(name + ": ", 0) == 0)
			return h.substr(name.size() + 2);
	return "";
}

/* A server with resource metadata, server metadata and a token endpoint that records nothing. */
Answer
Standard(const HttpRequest &r, const std::string &asm_body = Asm())
{
	if (r.url == "https://mcp.example/.well-known/oauth-protected-resource/mcp")
		return {200, kPrm, ""};
	if (r.url == "https://as.example/.well-known/oauth-authorization-server")
		return {200, asm_body, ""};
	if (r.url == "https://as.example/token")
		return {200, kToken, ""};
	return {404, "", ""};
}

OAuthSettings
Credentials()
{
	OAuthSettings s;
	s.client_id = "pgdiag";
	s.client_secret = "s3cr:et";
	return s;
}

std::string
PemOf(EVP_PKEY *key)
{
	std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
	PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
	char *data = nullptr;
	long n = BIO_get_mem_data(bio.get(), &data);
	return std::string(data, static_cast<size_t>(n));
}

std::string
FromBase64Url(std::string s)
{
	for (char &c : s)
		c = c == '-' ? '+' : c == '_' ? '/' : c;
	while (s.size() % 4)
		s += '=';
	std::string out(s.size(), '\0');
	int n = EVP_DecodeBlock(reinterpret_cast<unsigned char *>(&out[0]),
	                        reinterpret_cast<const unsigned char *>(s.data()), static_cast<int>(s.size()));
	out.resize(static_cast<size_t>(n));
	while (!s.empty() && s.back() == '=') { /* DecodeBlock keeps the padding's zero bytes */
		s.pop_back();
		out.pop_back();
	}
	return out;
}

/* Verifies a JWS made by SignClientAssertion with the key's public half. */
bool
VerifyJwt(const std::string &jwt, EVP_PKEY *key, bool ec)
{
	size_t dot = jwt.rfind('.');
	std::string input = jwt.substr(0, dot), signature = FromBase64Url(jwt.substr(dot + 1));
	if (ec) {
		if (signature.size() != 64)
			return false;
		ECDSA_SIG *sig = ECDSA_SIG_new();
		ECDSA_SIG_set0(sig, BN_bin2bn(reinterpret_cast<const unsigned char *>(signature.data()), 32, nullptr),
		               BN_bin2bn(reinterpret_cast<const unsigned char *>(signature.data()) + 32, 32, nullptr));
		unsigned char *der = nullptr;
		int n = i2d_ECDSA_SIG(sig, &der);
		signature.assign(reinterpret_cast<char *>(der), static_cast<size_t>(n));
		OPENSSL_free(der);
		ECDSA_SIG_free(sig);
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
	          EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char *>(signature.data()), signature.size(),
	                           reinterpret_cast<const unsigned char *>(input.data()), input.size()) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

} // namespace

TEST(OAuthParse, BearerChallengeAmongOthers)
{
	BearerChallenge c;
	ASSERT_TRUE(ParseBearerChallenge(
	    R"(Basic realm="x", Bearer error="insufficient_scope", scope="mcp:basic mcp:write", )"
	    R"(resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp", Other k=v)",
	    &c));
	EXPECT_EQ(c.error, "insufficient_scope");
	EXPECT_EQ(c.scope, "mcp:basic mcp:write");
	EXPECT_EQ(c.resource_metadata, "https://mcp.example/.well-known/oauth-protected-resource/mcp");
	ASSERT_TRUE(ParseBearerChallenge("bearer scope=a,error=\"x\\\"y\"", &c));
	EXPECT_EQ(c.scope, "a");
	EXPECT_EQ(c.error, "x\"y");
	EXPECT_FALSE(ParseBearerChallenge("Basic realm=\"x\"", &c));
	EXPECT_FALSE(ParseBearerChallenge("", &c));
}

TEST(OAuthParse, TokenResponses)
{
	OAuthToken t;
	std::string error;
	ASSERT_TRUE(ParseTokenResponse(kToken, &t, &error));
	EXPECT_EQ(t.access_token, "at-1");
	EXPECT_EQ(t.expires_in_s, 60);
	EXPECT_FALSE(ParseTokenResponse(R"({"access_token":"secret-x","token_type":"DPoP"})", &t, &error));
	EXPECT_EQ(error.find("secret-x"), std::string::npos);
	EXPECT_FALSE(ParseTokenResponse(R"({"error":"invalid_client","error_description":"bad"})", &t, &error));
	EXPECT_NE(error.find("invalid_client"), std::string::npos);
	EXPECT_FALSE(ParseTokenResponse("[1]", &t, &error));
}

TEST(OAuthUrls, WellKnownOrder)
{
	EXPECT_EQ(ResourceMetadataUrls("https://Mcp.Example:8443/a/mcp?x=1"),
	          (std::vector<std::string>{"https://mcp.example:8443/.well-known/oauth-protected-resource/a/mcp",
	                                    "https://mcp.example:8443/.well-known/oauth-protected-resource"}));
	EXPECT_EQ(ResourceMetadataUrls("https://mcp.example"),
	          (std::vector<std::string>{"https://mcp.example/.well-known/oauth-protected-resource"}));
	EXPECT_EQ(ServerMetadataUrls("https://as.example/tenant1"),
	          (std::vector<std::string>{"https://as.example/.well-known/oauth-authorization-server/tenant1",
	                                    "https://as.example/.well-known/openid-configuration/tenant1",
	                                    "https://as.example/tenant1/.well-known/openid-configuration"}));
	EXPECT_EQ(ServerMetadataUrls("https://as.example"),
	          (std::vector<std::string>{"https://as.example/.well-known/oauth-authorization-server",
	                                    "https://as.example/.well-known/openid-configuration"}));
	EXPECT_TRUE(ResourceMatches("https://mcp.example/mcp", "https://mcp.example/mcp"));
	EXPECT_TRUE(ResourceMatches("https://mcp.example", "https://mcp.example/mcp"));
	EXPECT_FALSE(ResourceMatches("https://evil.example.com/mcp", "https://mcp.example/mcp"));
	EXPECT_FALSE(ResourceMatches("https://mcp.example/mc", "https://mcp.example/mcp"));
	EXPECT_FALSE(ResourceMatches("http://mcp.example/mcp", "https://mcp.example/mcp"));
}

TEST(OAuthCrypto, PkceAndBase64Url)
{
	// RFC 7636 appendix B
	EXPECT_EQ(PkceChallengeS256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
	          "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
	EXPECT_EQ(Base64Url("\xfb\xff"), "-_8");
	EXPECT_NE(RandomUrlToken(32), RandomUrlToken(32));
	EXPECT_EQ(RandomUrlToken(32).size(), 43u);
}

TEST(OAuthFlowTest, ClientSecretBasicFromTheChallengesMetadata)
{
	Harness h;
	h.server = [](const HttpRequest &r) -> Answer {
		if (r.url == "https://mcp.example/custom/prm.json")
			return {200, kPrm, ""};
		return Standard(r);
	};
	BearerChallenge c;
	ParseBearerChallenge(R"(Bearer resource_metadata="https://mcp.example/custom/prm.json", scope="mcp:basic")", &c);
	OAuthFlow flow(Credentials(), kMcp, c, OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
	EXPECT_EQ(h.Urls(), (std::vector<std::string>{"https://mcp.example/custom/prm.json",
	                                              "https://as.example/.well-known/oauth-authorization-server",
	                                              "https://as.example/token"}));
	const HttpRequest &token = h.requests.back();
	// base64("pgdiag:s3cr%3Aet"): the secret is form-encoded before base64 (RFC 6749 2.3.1)
	EXPECT_EQ(Header(token, "Authorization"), "Basic cGdkaWFnOnMzY3IlM0FldA==");
	auto form = Form(token.body);
	EXPECT_EQ(form["grant_type"], "client_credentials");
	EXPECT_EQ(form["resource"], "https://mcp.example/mcp");
	EXPECT_EQ(form["scope"], "mcp:basic");
	EXPECT_EQ(form.count("client_secret"), 0u);
	EXPECT_EQ(flow.Token().access_token, "at-1");
	EXPECT_EQ(flow.Token().expires_in_s, 60);
	EXPECT_TRUE(flow.Discovery().known);
}

TEST(OAuthFlowTest, ClientSecretPostWhenOnlyThatIsOffered)
{
	Harness h;
	h.server = [](const HttpRequest &r) {
		return Standard(r, Asm(R"(,"token_endpoint_auth_methods_supported":["client_secret_post"])"));
	};
	OAuthFlow flow(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
	auto form = Form(h.requests.back().body);
	EXPECT_EQ(form["client_id"], "pgdiag");
	EXPECT_EQ(form["client_secret"], "s3cr:et");
	EXPECT_EQ(Header(h.requests.back(), "Authorization"), "");
	EXPECT_EQ(form.count("scope"), 0u); // no scope named anywhere: none asked for
}

TEST(OAuthFlowTest, PrivateKeyJwtSignedWithEachKeyType)
{
	for (bool ec : {true, false}) {
		EVP_PKEY *key = ec ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
		                   : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
		ASSERT_NE(key, nullptr);
		OAuthSettings s;
		s.client_id = "pgdiag";
		s.private_key_pem = PemOf(key);
		Harness h;
		h.server = [](const HttpRequest &r) {
			return Standard(r, Asm(R"(,"token_endpoint_auth_methods_supported":["private_key_jwt"])"));
		};
		OAuthFlow flow(s, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
		ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
		auto form = Form(h.requests.back().body);
		EXPECT_EQ(form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
		std::string jwt = form["client_assertion"];
		EXPECT_TRUE(VerifyJwt(jwt, key, ec));
		std::string header = FromBase64Url(jwt.substr(0, jwt.find('.')));
		EXPECT_NE(header.find(ec ? "ES256" : "RS256"), std::string::npos) << header;
		std::string payload = FromBase64Url(jwt.substr(jwt.find('.') + 1, jwt.rfind('.') - jwt.find('.') - 1));
		EXPECT_NE(payload.find(R"("iss":"pgdiag","sub":"pgdiag","aud":"https://as.example")"), std::string::npos)
		    << payload;
		// a tampered assertion does not verify
		std::string bad = jwt;
		bad[bad.find('.') + 2] ^= 1;
		EXPECT_FALSE(VerifyJwt(bad, key, ec));
		EVP_PKEY_free(key);
	}
	OAuthSettings s;
	s.client_id = "pgdiag";
	s.private_key_pem = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n";
	Harness h;
	h.server = [](const HttpRequest &r) { return Standard(r); };
	OAuthFlow flow(s, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	EXPECT_EQ(h.Run(flow), OAuthFlow::Step::Failed);
	EXPECT_NE(flow.Error().find("not a PEM private key"), std::string::npos);
	EXPECT_EQ(flow.Error().find("not a key"), std::string::npos);
}

TEST(OAuthFlowTest, PathAwareFirstThenRootAndIssuerPaths)
{
	Harness h;
	h.server = [](const HttpRequest &r) -> Answer {
		if (r.url == "https://mcp.example/.well-known/oauth-protected-resource")
			return {200, R"({"resource":"https://mcp.example","authorization_servers":["https://as.example/t1"]})", ""};
		if (r.url == "https://as.example/t1/.well-known/openid-configuration")
			return {200, R"({"issuer":"https://as.example/t1","token_endpoint":"https://as.example/t1/token"})", ""};
		if (r.url == "https://as.example/t1/token")
			return {200, kToken, ""};
		return {404, "", ""};
	};
	OAuthFlow flow(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
	EXPECT_EQ(h.Urls(), (std::vector<std::string>{
	                        "https://mcp.example/.well-known/oauth-protected-resource/mcp",
	                        "https://mcp.example/.well-known/oauth-protected-resource",
	                        "https://as.example/.well-known/oauth-authorization-server/t1",
	                        "https://as.example/.well-known/openid-configuration/t1",
	                        "https://as.example/t1/.well-known/openid-configuration",
	                        "https://as.example/t1/token",
	                    }));
	// the resource parameter is the metadata's resource, exactly as published
	EXPECT_EQ(Form(h.requests.back().body)["resource"], "https://mcp.example");
}

TEST(OAuthFlowTest, RefusesAResourceOrIssuerThatDoesNotMatch)
{
	Harness h;
	h.server = [](const HttpRequest &r) -> Answer {
		if (r.url == "https://mcp.example/.well-known/oauth-protected-resource/mcp")
			return {200,
			        R"({"resource":"https://evil.example.com/mcp","authorization_servers":["https://as.example"]})",
			        ""};
		return Standard(r);
	};
	OAuthFlow flow(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	EXPECT_EQ(h.Run(flow), OAuthFlow::Step::Failed);
	EXPECT_NE(flow.Error().find("evil.example.com"), std::string::npos);
	EXPECT_EQ(h.requests.size(), 1u); // nothing after the metadata

	Harness h2;
	h2.server = [](const HttpRequest &r) -> Answer {
		if (r.url == "https://as.example/.well-known/oauth-authorization-server")
			return {200,
			        R"({"issuer":"https://attacker.example.com","token_endpoint":"https://attacker.example.com/t"})",
			        ""};
		return Standard(r);
	};
	OAuthFlow flow2(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	EXPECT_EQ(h2.Run(flow2), OAuthFlow::Step::Failed);
	for (const std::string &u : h2.Urls())
		EXPECT_EQ(u.find("attacker"), std::string::npos) << u;
}

TEST(OAuthFlowTest, RenewalSkipsDiscoveryAndRefreshUsesTheStoredToken)
{
	Harness h;
	h.server = [](const HttpRequest &r) { return Standard(r); };
	OAuthFlow first(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(first), OAuthFlow::Step::Done);
	h.requests.clear();
	OAuthFlow renew(Credentials(), kMcp, BearerChallenge(), first.Discovery(), "", false);
	ASSERT_EQ(h.Run(renew), OAuthFlow::Step::Done);
	EXPECT_EQ(h.Urls(), (std::vector<std::string>{"https://as.example/token"}));

	OAuthSettings login;
	login.refresh_token = "rt-0";
	login.refresh_client_id = "registered";
	login.refresh_issuer = "https://as.example";
	h.requests.clear();
	OAuthFlow refresh(login, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(refresh), OAuthFlow::Step::Done) << refresh.Error();
	auto form = Form(h.requests.back().body);
	EXPECT_EQ(form["grant_type"], "refresh_token");
	EXPECT_EQ(form["refresh_token"], "rt-0");
	EXPECT_EQ(form["client_id"], "registered");
	EXPECT_EQ(refresh.Token().refresh_token, "rt-1"); // rotated

	OAuthSettings nothing;
	h.requests.clear();
	OAuthFlow none(nothing, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	EXPECT_EQ(h.Run(none), OAuthFlow::Step::Failed);
	EXPECT_NE(none.Error().find("--login"), std::string::npos);
}

namespace {
/* An authorization server with registration and a headless authorization endpoint; `iss` says what the redirect
 * carries ("" none). */
struct CodeServer {
	std::string iss = "https://as.example";
	std::string asm_extra =
	    R"(,"authorization_response_iss_parameter_supported":true,"scopes_supported":["mcp:basic","offline_access"])";
	std::map<std::string, std::string> authorize_query, token_form, registration;

	Answer operator()(const HttpRequest &r)
	{
		if (r.url == "https://as.example/register") {
			registration["body"] = r.body;
			return {
			    201,
			    R"({"client_id":"dcr-1","client_secret":"dcr-secret","token_endpoint_auth_method":"client_secret_post"})",
			    ""};
		}
		if (r.url.rfind("https://as.example/authorize?", 0) == 0) {
			authorize_query = QueryParameters(r.url);
			std::string loc = authorize_query["redirect_uri"] + "?code=c0de&state=" + authorize_query["state"];
			if (!iss.empty())
				loc += "&iss=" + iss;
			return {302, "", loc};
		}
		if (r.url == "https://as.example/token")
			token_form = Form(r.body);
		return Standard(r, Asm(asm_extra));
	}
};
OAuthSettings
Headless()
{
	OAuthSettings s;
	s.redirect_uri = "http://127.0.0.1:33418/callback";
	s.headless_authorize = true;
	return s;
}
} // namespace

TEST(OAuthFlowTest, AuthorizationCodeWithRegistrationPkceAndIss)
{
	CodeServer as;
	Harness h;
	h.server = [&](const HttpRequest &r) { return as(r); };
	BearerChallenge c;
	c.scope = "mcp:basic";
	OAuthFlow flow(Headless(), kMcp, c, OAuthDiscovery(), "", true);
	ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
	EXPECT_NE(as.registration["body"].find(R"("application_type":"native")"), std::string::npos);
	EXPECT_EQ(as.authorize_query["client_id"], "dcr-1");
	EXPECT_EQ(as.authorize_query["code_challenge_method"], "S256");
	EXPECT_EQ(as.authorize_query["resource"], "https://mcp.example/mcp");
	EXPECT_EQ(as.authorize_query["scope"], "mcp:basic offline_access");
	EXPECT_EQ(PkceChallengeS256(as.token_form["code_verifier"]), as.authorize_query["code_challenge"]);
	EXPECT_EQ(as.token_form["code"], "c0de");
	EXPECT_EQ(as.token_form["client_secret"], "dcr-secret");
	EXPECT_EQ(as.token_form["resource"], "https://mcp.example/mcp");
	EXPECT_EQ(flow.Token().refresh_token, "rt-1");
	EXPECT_EQ(flow.ClientId(), "dcr-1");
}

TEST(OAuthFlowTest, Rfc9207IssChecks)
{
	for (std::string iss : {"https://evil.example.com", "https://as.example/", ""}) {
		CodeServer as;
		as.iss = iss;
		Harness h;
		h.server = [&](const HttpRequest &r) { return as(r); };
		OAuthFlow flow(Headless(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
		EXPECT_EQ(h.Run(flow), OAuthFlow::Step::Failed) << iss;
		EXPECT_TRUE(as.token_form.empty()) << iss; // the code never reached the token endpoint
	}
	// not advertised: absent is fine, a wrong one is not
	for (std::string iss : {"", "https://evil.example.com"}) {
		CodeServer as;
		as.iss = iss;
		as.asm_extra = "";
		Harness h;
		h.server = [&](const HttpRequest &r) { return as(r); };
		OAuthFlow flow(Headless(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
		EXPECT_EQ(h.Run(flow), iss.empty() ? OAuthFlow::Step::Done : OAuthFlow::Step::Failed) << iss;
	}
}

TEST(OAuthFlowTest, StepUpAsksForTheUnionAndAPersonIsAskedWhenNotHeadless)
{
	CodeServer as;
	as.asm_extra = "";
	Harness h;
	h.server = [&](const HttpRequest &r) { return as(r); };
	BearerChallenge c;
	ParseBearerChallenge(R"(Bearer error="insufficient_scope", scope="mcp:write")", &c);
	OAuthFlow flow(Headless(), kMcp, c, OAuthDiscovery(), "mcp:basic", true);
	ASSERT_EQ(h.Run(flow), OAuthFlow::Step::Done) << flow.Error();
	EXPECT_EQ(as.authorize_query["scope"], "mcp:basic mcp:write");

	OAuthSettings person = Headless();
	person.headless_authorize = false;
	person.client_id = "pre-registered";
	OAuthFlow login(person, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	Harness h2;
	h2.server = [&](const HttpRequest &r) { return as(r); };
	ASSERT_EQ(h2.Run(login), OAuthFlow::Step::Authorize);
	auto q = QueryParameters(login.AuthorizationUrl());
	EXPECT_EQ(q["client_id"], "pre-registered");
	login.Redirected("http://127.0.0.1:33418/callback?code=abc&state=" + q["state"]);
	ASSERT_EQ(h2.Run(login), OAuthFlow::Step::Done) << login.Error();
	EXPECT_EQ(as.token_form["code"], "abc");
	OAuthFlow forged(person, kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	Harness h3;
	h3.server = [&](const HttpRequest &r) { return as(r); };
	ASSERT_EQ(h3.Run(forged), OAuthFlow::Step::Authorize);
	forged.Redirected("http://127.0.0.1:33418/callback?code=abc&state=forged");
	EXPECT_EQ(h3.Run(forged), OAuthFlow::Step::Failed);
}

TEST(OAuthFlowTest, BoundedAgainstAServerThatNeverAnswers)
{
	Harness h;
	h.server = [](const HttpRequest &) { return Answer{500, "", ""}; };
	OAuthFlow flow(Credentials(), kMcp, BearerChallenge(), OAuthDiscovery(), "", true);
	EXPECT_EQ(h.Run(flow), OAuthFlow::Step::Failed);
	EXPECT_LE(h.requests.size(), static_cast<size_t>(OAuthFlow::kMaxRequests));
}

TEST(OAuthRenewal, MarginScalesWithLifetime)
{
	EXPECT_EQ(RenewalMarginMs(3600 * 1000), 300 * 1000);
	EXPECT_EQ(RenewalMarginMs(5000), 1000);
	EXPECT_EQ(RenewalMarginMs(2000), 400);
	EXPECT_EQ(RenewalMarginMs(0), 0);
	EXPECT_EQ(RenewalMarginMs(-1), 0);
}
