/*
 * oauth.hpp: the MCP client's OAuth 2.1 side (MCP authorization specification, 2026-07-28), without I/O of its own.
 *
 * OAuthFlow is a state machine that says which HTTP request to make next and is fed what came back, so the worker
 * drives it through its non-blocking transport (a token request never stalls the calls in flight) and the CLI
 * through a plain loop. A flow starts on a 401 (or a 403 insufficient_scope) with what WWW-Authenticate said, or on
 * a timer to renew a token with what an earlier flow discovered:
 *   protected-resource metadata (RFC 9728: WWW-Authenticate's resource_metadata, else the path-aware well-known
 *   URL, then the root one), its resource checked against the MCP URL; authorization-server metadata (RFC 8414
 *   path-aware, then OpenID discovery, in the specification's order), its issuer checked against the one it was
 *   looked up for; then a grant: client credentials (the io.modelcontextprotocol/oauth-client-credentials
 *   extension: client_secret_basic/_post or private_key_jwt, RFC 7523), the refresh token of an operator's login,
 *   or (the CLI only) the authorization-code grant with PKCE S256, registering the client first (client ID
 *   metadata document, or dynamic registration) when it has no client id. Every token request carries the RFC 8707
 *   resource parameter. Crypto (random, SHA-256, JWT signatures, base64) is OpenSSL's.
 */
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pg_diagnosis/core/http_transport.hpp"

namespace pgdiag {

/* What the owner configured (diagnosis.mcp_oauth_*, or the CLI's options). */
struct OAuthSettings {
	std::string client_id;
	std::string client_secret;   /* client_secret_basic / client_secret_post */
	std::string private_key_pem; /* private_key_jwt (RS256 for RSA keys, ES256 for P-256 keys) */
	std::string scope;           /* "" = the scope the server names */
	/* The authorization-code grant (CLI only): the loopback redirect URI; "" = the grant is not available here. */
	std::string redirect_uri;
	/* true: the authorization URL is fetched and its redirect read from Location (an authorization server that
	 * answers without a user, like the conformance suite's); false: Next() returns Authorize for a person to log in */
	bool headless_authorize = false;
	std::string client_metadata_url; /* a client ID metadata document URL, used where the server supports them */
	/* From the operator's login (the token store): refresh tokens are tied to the client that got them. */
	std::string refresh_token;
	std::string refresh_client_id;
	std::string refresh_client_secret;
	std::string refresh_issuer;
	long timeout_ms = 10000; /* each metadata, registration and token request */
	size_t max_bytes = 256u << 10;
	/* TLS, as for the MCP endpoint */
	std::string ca_file, client_cert, client_key;
	std::string user_agent = "pg_diagnosis";

	/* Whether this client can get a token without a person: client credentials or a stored refresh token. */
	bool CanAuthorize() const
	{
		return (!client_id.empty() && (!client_secret.empty() || !private_key_pem.empty())) || !refresh_token.empty() ||
		       !redirect_uri.empty();
	}
};

/* A Bearer challenge (RFC 6750, RFC 9728). */
struct BearerChallenge {
	bool bearer = false;
	std::string error; /* e.g. invalid_token, insufficient_scope */
	std::string scope;
	std::string resource_metadata;
};
/* Finds the Bearer challenge among the WWW-Authenticate header's challenges. False when there is none. */
bool ParseBearerChallenge(const std::string &header, BearerChallenge *out);

struct ResourceMetadata {
	std::string resource;
	std::vector<std::string> authorization_servers;
	std::vector<std::string> scopes_supported;
};
bool ParseResourceMetadata(const std::string &body, ResourceMetadata *out, std::string *error);

struct ServerMetadata {
	std::string issuer;
	std::string authorization_endpoint;
	std::string token_endpoint;
	std::string registration_endpoint;
	std::vector<std::string> grant_types_supported;                 /* empty: not given */
	std::vector<std::string> token_endpoint_auth_methods_supported; /* empty: client_secret_basic (RFC 8414) */
	std::vector<std::string> code_challenge_methods_supported;
	std::vector<std::string> scopes_supported;
	bool iss_parameter_supported = false; /* authorization_response_iss_parameter_supported */
	bool client_id_metadata_document_supported = false;
};
bool ParseServerMetadata(const std::string &body, ServerMetadata *out, std::string *error);

struct OAuthToken {
	std::string access_token;
	std::string refresh_token; /* "" when none was issued */
	std::string scope;
	int64_t expires_in_s = -1; /* -1: not said */
};
/* A 2xx token response. False and *error (the server's error and description, never a token) otherwise. */
bool ParseTokenResponse(const std::string &body, OAuthToken *out, std::string *error);

/* The well-known URLs to try, in the specification's order. */
std::vector<std::string> ResourceMetadataUrls(const std::string &mcp_url);
std::vector<std::string> ServerMetadataUrls(const std::string &issuer);
/* RFC 9728 section 3.3: the metadata's resource must name the MCP server (same origin, a path prefix of its URL). */
bool ResourceMatches(const std::string &resource, const std::string &mcp_url);

/* OpenSSL helpers (no crypto of our own). */
std::string Base64Url(const std::string &bytes);
std::string RandomUrlToken(size_t bytes); /* base64url of `bytes` random bytes; throws if the RNG fails */
std::string PkceChallengeS256(const std::string &verifier);
/* An RFC 7523 client assertion: iss = sub = client_id, aud = audience, 60 s life. False and *error (never the key)
 * when the key cannot be read or cannot sign. */
bool SignClientAssertion(const std::string &private_key_pem, const std::string &client_id, const std::string &audience,
                         std::string *jwt, std::string *error);
std::string FormEncode(const std::vector<std::pair<std::string, std::string>> &fields);
/* The query parameters of a URL (decoded). */
std::map<std::string, std::string> QueryParameters(const std::string &url);

/* What one flow learned that later flows for the same MCP server reuse: a renewal goes straight to the token
 * endpoint. */
struct OAuthDiscovery {
	bool known = false;
	std::string resource; /* the RFC 8707 resource parameter: the metadata's resource, as published */
	std::string issuer;
	ServerMetadata server;
	std::vector<std::string> resource_scopes; /* the resource metadata's scopes_supported */
	/* a client registered dynamically with `issuer` (never used with another issuer) */
	std::string registered_client_id, registered_client_secret, registered_auth_method;
};

/* How long before expiry a token is renewed: a fifth of its life, at most five minutes, so a token of an hour is
 * renewed at 55 minutes and one of five seconds at four. */
int64_t RenewalMarginMs(int64_t lifetime_ms);

/* The operator's login (pg_diagnosis_mcp_check --login): a JSON file, mode 0600, with the issuer, client and
 * refresh token. Load fills settings' refresh_* fields (a missing file is not an error: false, *error empty);
 * Save writes a new file beside it and renames it over, so a reader never sees half a file. */
bool LoadTokenStore(const std::string &path, OAuthSettings *settings, std::string *error);
bool SaveTokenStore(const std::string &path, const OAuthSettings &settings, std::string *error);

class OAuthFlow {
public:
	enum class Step {
		Http,      /* make *request, then Feed() what came back */
		Authorize, /* send a person to AuthorizationUrl(), then Redirected() with the URL they were sent back to */
		Done,      /* Token() holds the token */
		Failed,    /* Error() says why (never a secret) */
	};
	/* `challenge`: what the 401/403 said (may be empty); `discovery`: what earlier flows learned (renewals use it
	 * and skip discovery; a challenge always rediscovers, as the server may have moved); `previous_scope`: the scope
	 * of the token being replaced (a step-up asks for it and the challenged scope together). */
	OAuthFlow(const OAuthSettings &settings, std::string mcp_url, const BearerChallenge &challenge,
	          const OAuthDiscovery &discovery, std::string previous_scope, bool rediscover);

	Step Next(HttpRequest *request);
	void Feed(const HttpExchange &x);
	void Redirected(const std::string &url);

	const std::string &AuthorizationUrl() const { return authorization_url_; }
	const OAuthToken &Token() const { return token_; }
	const OAuthDiscovery &Discovery() const { return discovery_; }
	const std::string &Error() const { return error_; }
	/* The client id the token was obtained for (for the token store). */
	const std::string &ClientId() const { return client_id_; }
	const std::string &ClientSecret() const { return client_secret_; }
	/* How many HTTP requests the flow made (a bound: a flow never makes more than kMaxRequests). */
	int Requests() const { return requests_; }
	static constexpr int kMaxRequests = 16;

private:
	enum class Stage { ResourceMetadata, ServerMetadata, Grant, Register, Authorize, Token, Done, Failed };
	void Fail(std::string why);
	void ChooseGrant();
	void AfterResourceMetadata(const HttpExchange &x);
	void AfterServerMetadata(const HttpExchange &x);
	void AfterRegister(const HttpExchange &x);
	void AfterAuthorize(const std::string &redirect);
	void AfterToken(const HttpExchange &x);
	HttpRequest BaseRequest(HttpMethod method, const std::string &url) const;
	HttpRequest TokenRequest();
	std::string RequestedScope(bool authorization_code) const;
	std::string ChooseAuthMethod(bool has_secret) const;

	OAuthSettings settings_;
	std::string mcp_url_;
	BearerChallenge challenge_;
	OAuthDiscovery discovery_;
	std::string previous_scope_;
	Stage stage_ = Stage::ResourceMetadata;
	std::vector<std::string> urls_; /* candidates of the current metadata stage */
	size_t url_index_ = 0;
	std::string grant_; /* client_credentials, refresh_token, authorization_code */
	std::string client_id_, client_secret_, auth_method_;
	std::string verifier_, state_, code_, redirect_uri_, authorization_url_, scope_;
	OAuthToken token_;
	std::string error_;
	int requests_ = 0;
};

} // namespace pgdiag
