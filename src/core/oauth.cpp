/*
 * oauth.cpp: the MCP client's OAuth 2.1 flow, its parsers and its OpenSSL helpers.
 */
#include <algorithm>
#include <chrono>
#include <cstring>
#include <cerrno>
#include <ctime>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <unistd.h>
#include <memory>
#include <stdexcept>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/oauth.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace {

std::string
Lower(std::string s)
{
	for (char &c : s)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	return s;
}

bool
Contains(const std::vector<std::string> &list, const std::string &item)
{
	return std::find(list.begin(), list.end(), item) != list.end();
}

/* scheme://host[:port] and the path (no query, no fragment) of a URL, by libcurl's parser. */
bool
SplitUrl(const std::string &url, std::string *origin, std::string *path)
{
	CURLU *u = curl_url();
	if (!u)
		throw std::bad_alloc();
	bool ok = curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK;
	char *scheme = nullptr, *host = nullptr, *port = nullptr, *p = nullptr;
	if (ok)
		ok = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		     curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		     curl_url_get(u, CURLUPART_PATH, &p, 0) == CURLUE_OK;
	if (ok) {
		curl_url_get(u, CURLUPART_PORT, &port, 0); /* absent when the URL names none */
		*origin = Lower(scheme) + "://" + Lower(host) + (port ? std::string(":") + port : "");
		*path = p;
		if (*path == "/")
			path->clear();
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(p);
	curl_url_cleanup(u);
	return ok;
}

std::string
Escape(const std::string &s)
{
	char *e = curl_easy_escape(nullptr, s.c_str(), static_cast<int>(s.size()));
	if (!e)
		throw std::bad_alloc();
	std::string out(e);
	curl_free(e);
	return out;
}

std::string
Unescape(const std::string &s)
{
	std::string plus = s;
	std::replace(plus.begin(), plus.end(), '+', ' ');
	int n = 0;
	char *u = curl_easy_unescape(nullptr, plus.c_str(), static_cast<int>(plus.size()), &n);
	if (!u)
		throw std::bad_alloc();
	std::string out(u, static_cast<size_t>(n));
	curl_free(u);
	return out;
}

const rapidjson::Value *
Member(const rapidjson::Value &v, const char *name)
{
	auto it = v.FindMember(name);
	return it == v.MemberEnd() ? nullptr : &it->value;
}

std::string
StringMember(const rapidjson::Value &v, const char *name)
{
	const rapidjson::Value *m = Member(v, name);
	return m && m->IsString() ? std::string(m->GetString(), m->GetStringLength()) : std::string();
}

std::vector<std::string>
StringList(const rapidjson::Value &v, const char *name)
{
	std::vector<std::string> out;
	const rapidjson::Value *m = Member(v, name);
	if (m && m->IsArray())
		for (const auto &item : m->GetArray())
			if (item.IsString())
				out.emplace_back(item.GetString(), item.GetStringLength());
	return out;
}

bool
ParseObject(const std::string &body, rapidjson::Document &doc, std::string *error)
{
	if (!ParseJson(body.data(), body.size(), doc, error))
		return false;
	if (!doc.IsObject()) {
		*error = "not a JSON object";
		return false;
	}
	return true;
}

std::string
Join(const std::vector<std::string> &items)
{
	std::string out;
	for (const std::string &s : items)
		out += (out.empty() ? "" : " ") + s;
	return out;
}

std::vector<std::string>
SplitSpaces(const std::string &s)
{
	std::vector<std::string> out;
	size_t i = 0;
	while (i < s.size()) {
		size_t b = s.find_first_not_of(' ', i);
		if (b == std::string::npos)
			break;
		size_t e = s.find(' ', b);
		out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
		i = e == std::string::npos ? s.size() : e;
	}
	return out;
}

/* A short, printable excerpt of what a server sent, for an error message. */
std::string
Excerpt(const std::string &s)
{
	std::string out;
	for (char c : s.substr(0, 200))
		out += (c >= 32 && c < 127) ? c : '?';
	return out;
}

struct PkeyFree {
	void operator()(EVP_PKEY *p) const { EVP_PKEY_free(p); }
};
struct MdCtxFree {
	void operator()(EVP_MD_CTX *p) const { EVP_MD_CTX_free(p); }
};

} // namespace

/* ------------------------------------------------------------ parsers */

bool
ParseBearerChallenge(const std::string &header, BearerChallenge *out)
{
	*out = BearerChallenge();
	size_t i = 0, n = header.size();
	bool in_bearer = false;
	auto skip = [&](const char *set) {
		while (i < n && std::strchr(set, header[i]))
			i++;
	};
	while (i < n) {
		skip(" \t,");
		size_t b = i;
		while (i < n && header[i] != '=' && header[i] != ' ' && header[i] != ',' && header[i] != '\t')
			i++;
		std::string token = header.substr(b, i - b);
		if (token.empty()) {
			i++;
			continue;
		}
		skip(" \t");
		if (i < n && header[i] == '=') { /* an auth-param, or token68 padding */
			i++;
			skip(" \t");
			std::string value;
			if (i < n && header[i] == '"') {
				i++;
				while (i < n && header[i] != '"') {
					if (header[i] == '\\' && i + 1 < n)
						i++;
					value += header[i++];
				}
				i++;
			} else {
				size_t vb = i;
				while (i < n && header[i] != ',' && header[i] != ' ' && header[i] != '\t')
					i++;
				value = header.substr(vb, i - vb);
			}
			if (!in_bearer)
				continue;
			std::string name = Lower(token);
			if (name == "error")
				out->error = value;
			else if (name == "scope")
				out->scope = value;
			else if (name == "resource_metadata")
				out->resource_metadata = value;
		} else { /* a new challenge's scheme */
			if (out->bearer && in_bearer)
				break; /* the Bearer challenge ended */
			in_bearer = Lower(token) == "bearer";
			out->bearer = out->bearer || in_bearer;
		}
	}
	return out->bearer;
}

bool
ParseResourceMetadata(const std::string &body, ResourceMetadata *out, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(body, doc, error))
		return false;
	out->resource = StringMember(doc, "resource");
	out->authorization_servers = StringList(doc, "authorization_servers");
	out->scopes_supported = StringList(doc, "scopes_supported");
	if (out->resource.empty()) {
		*error = "protected resource metadata without \"resource\"";
		return false;
	}
	if (out->authorization_servers.empty()) {
		*error = "protected resource metadata names no authorization server";
		return false;
	}
	return true;
}

bool
ParseServerMetadata(const std::string &body, ServerMetadata *out, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(body, doc, error))
		return false;
	out->issuer = StringMember(doc, "issuer");
	out->authorization_endpoint = StringMember(doc, "authorization_endpoint");
	out->token_endpoint = StringMember(doc, "token_endpoint");
	out->registration_endpoint = StringMember(doc, "registration_endpoint");
	out->grant_types_supported = StringList(doc, "grant_types_supported");
	out->token_endpoint_auth_methods_supported = StringList(doc, "token_endpoint_auth_methods_supported");
	out->code_challenge_methods_supported = StringList(doc, "code_challenge_methods_supported");
	out->scopes_supported = StringList(doc, "scopes_supported");
	const rapidjson::Value *iss = Member(doc, "authorization_response_iss_parameter_supported");
	out->iss_parameter_supported = iss && iss->IsBool() && iss->GetBool();
	const rapidjson::Value *cimd = Member(doc, "client_id_metadata_document_supported");
	out->client_id_metadata_document_supported = cimd && cimd->IsBool() && cimd->GetBool();
	if (out->issuer.empty() || out->token_endpoint.empty()) {
		*error = "authorization server metadata without issuer or token_endpoint";
		return false;
	}
	return true;
}

bool
ParseTokenResponse(const std::string &body, OAuthToken *out, std::string *error)
{
	rapidjson::Document doc;
	if (!ParseObject(body, doc, error))
		return false;
	std::string oauth_error = StringMember(doc, "error");
	if (!oauth_error.empty()) {
		std::string description = StringMember(doc, "error_description");
		*error = "the authorization server refused: " + Excerpt(oauth_error) +
		         (description.empty() ? "" : " (" + Excerpt(description) + ")");
		return false;
	}
	out->access_token = StringMember(doc, "access_token");
	out->refresh_token = StringMember(doc, "refresh_token");
	out->scope = StringMember(doc, "scope");
	std::string type = Lower(StringMember(doc, "token_type"));
	const rapidjson::Value *expires = Member(doc, "expires_in");
	out->expires_in_s = expires && expires->IsNumber() && expires->GetDouble() >= 0 && expires->GetDouble() < 1e9
	                        ? static_cast<int64_t>(expires->GetDouble())
	                        : -1;
	if (out->access_token.empty()) {
		*error = "token response without access_token";
		return false;
	}
	if (type != "bearer") {
		*error = "token_type \"" + Excerpt(type) + "\" is not Bearer";
		out->access_token.clear();
		return false;
	}
	return true;
}

/* ------------------------------------------------------------ URLs */

std::vector<std::string>
ResourceMetadataUrls(const std::string &mcp_url)
{
	std::string origin, path;
	if (!SplitUrl(mcp_url, &origin, &path))
		return {};
	std::vector<std::string> urls;
	if (!path.empty())
		urls.push_back(origin + "/.well-known/oauth-protected-resource" + path);
	urls.push_back(origin + "/.well-known/oauth-protected-resource");
	return urls;
}

std::vector<std::string>
ServerMetadataUrls(const std::string &issuer)
{
	std::string origin, path;
	if (!SplitUrl(issuer, &origin, &path))
		return {};
	if (path.empty())
		return {origin + "/.well-known/oauth-authorization-server", origin + "/.well-known/openid-configuration"};
	return {origin + "/.well-known/oauth-authorization-server" + path,
	        origin + "/.well-known/openid-configuration" + path, origin + path + "/.well-known/openid-configuration"};
}

bool
ResourceMatches(const std::string &resource, const std::string &mcp_url)
{
	std::string ro, rp, mo, mp;
	if (!SplitUrl(resource, &ro, &rp) || !SplitUrl(mcp_url, &mo, &mp) || ro != mo)
		return false;
	if (!rp.empty() && rp.back() == '/')
		rp.pop_back();
	return rp.empty() || mp == rp || mp.compare(0, rp.size() + 1, rp + "/") == 0;
}

std::string
FormEncode(const std::vector<std::pair<std::string, std::string>> &fields)
{
	std::string out;
	for (const auto &f : fields)
		out += (out.empty() ? "" : "&") + Escape(f.first) + "=" + Escape(f.second);
	return out;
}

std::map<std::string, std::string>
QueryParameters(const std::string &url)
{
	std::map<std::string, std::string> out;
	size_t q = url.find('?');
	if (q == std::string::npos)
		return out;
	std::string query =
	    url.substr(q + 1, url.find('#', q) == std::string::npos ? std::string::npos : url.find('#', q) - q - 1);
	size_t i = 0;
	while (i <= query.size()) {
		size_t amp = query.find('&', i);
		std::string pair = query.substr(i, amp == std::string::npos ? std::string::npos : amp - i);
		size_t eq = pair.find('=');
		if (!pair.empty())
			out.emplace(Unescape(pair.substr(0, eq)), eq == std::string::npos ? "" : Unescape(pair.substr(eq + 1)));
		if (amp == std::string::npos)
			break;
		i = amp + 1;
	}
	return out;
}

/* ------------------------------------------------------------ OpenSSL */

std::string
Base64Url(const std::string &bytes)
{
	std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
	int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(&out[0]),
	                        reinterpret_cast<const unsigned char *>(bytes.data()), static_cast<int>(bytes.size()));
	out.resize(static_cast<size_t>(std::max(0, n)));
	while (!out.empty() && out.back() == '=')
		out.pop_back();
	for (char &c : out)
		c = c == '+' ? '-' : c == '/' ? '_' : c;
	return out;
}

std::string
RandomUrlToken(size_t bytes)
{
	std::string raw(bytes, '\0');
	if (RAND_bytes(reinterpret_cast<unsigned char *>(&raw[0]), static_cast<int>(bytes)) != 1)
		throw std::runtime_error("the random number generator failed");
	return Base64Url(raw);
}

std::string
PkceChallengeS256(const std::string &verifier)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (EVP_Digest(verifier.data(), verifier.size(), digest, &n, EVP_sha256(), nullptr) != 1)
		throw std::runtime_error("SHA-256 failed");
	return Base64Url(std::string(reinterpret_cast<char *>(digest), n));
}

bool
SignClientAssertion(const std::string &private_key_pem, const std::string &client_id, const std::string &audience,
                    std::string *jwt, std::string *error)
{
	std::unique_ptr<BIO, decltype(&BIO_free)> bio(
	    BIO_new_mem_buf(private_key_pem.data(), static_cast<int>(private_key_pem.size())), BIO_free);
	if (!bio)
		throw std::bad_alloc();
	std::unique_ptr<EVP_PKEY, PkeyFree> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
	if (!key) {
		*error = "diagnosis.mcp_oauth_private_key is not a PEM private key";
		return false;
	}
	bool ec = EVP_PKEY_is_a(key.get(), "EC");
	if (!ec && !EVP_PKEY_is_a(key.get(), "RSA")) {
		*error = "diagnosis.mcp_oauth_private_key is neither an RSA nor an EC key";
		return false;
	}
	if (ec && EVP_PKEY_get_bits(key.get()) != 256) {
		*error = "diagnosis.mcp_oauth_private_key is an EC key but not on P-256 (ES256)";
		return false;
	}
	int64_t now = static_cast<int64_t>(std::time(nullptr));
	rapidjson::StringBuffer payload;
	{
		rapidjson::Writer<rapidjson::StringBuffer> w(payload);
		w.StartObject();
		w.Key("iss");
		w.String(client_id);
		w.Key("sub");
		w.String(client_id);
		w.Key("aud");
		w.String(audience);
		w.Key("iat");
		w.Int64(now);
		w.Key("exp");
		w.Int64(now + 60);
		w.Key("jti");
		w.String(RandomUrlToken(16));
		w.EndObject();
	}
	std::string header = ec ? "{\"alg\":\"ES256\",\"typ\":\"JWT\"}" : "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	std::string input = Base64Url(header) + "." + Base64Url(payload.GetString());

	std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
	size_t length = 0;
	if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
	    EVP_DigestSign(ctx.get(), nullptr, &length, reinterpret_cast<const unsigned char *>(input.data()),
	                   input.size()) != 1) {
		*error = "signing the client assertion failed";
		return false;
	}
	std::string signature(length, '\0');
	if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(&signature[0]), &length,
	                   reinterpret_cast<const unsigned char *>(input.data()), input.size()) != 1) {
		*error = "signing the client assertion failed";
		return false;
	}
	signature.resize(length);
	if (ec) {
		/* OpenSSL signs ECDSA as DER; JWS (RFC 7518 3.4) wants r and s, 32 bytes each. */
		const unsigned char *p = reinterpret_cast<const unsigned char *>(signature.data());
		std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> sig(
		    d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(signature.size())), ECDSA_SIG_free);
		if (!sig) {
			*error = "signing the client assertion failed";
			return false;
		}
		unsigned char raw[64];
		if (BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), raw, 32) != 32 ||
		    BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), raw + 32, 32) != 32) {
			*error = "signing the client assertion failed";
			return false;
		}
		signature.assign(reinterpret_cast<char *>(raw), 64);
	}
	*jwt = input + "." + Base64Url(signature);
	return true;
}

int64_t
RenewalMarginMs(int64_t lifetime_ms)
{
	if (lifetime_ms <= 0)
		return 0;
	return std::min<int64_t>(lifetime_ms / 5, 5 * 60 * 1000);
}

/* ------------------------------------------------------------ the login's store */

bool
LoadTokenStore(const std::string &path, OAuthSettings *settings, std::string *error)
{
	error->clear();
	std::ifstream in(path);
	if (!in)
		return false;
	std::stringstream text;
	text << in.rdbuf();
	if (text.str().size() > (64u << 10)) {
		*error = "the OAuth login file " + path + " is too large";
		return false;
	}
	rapidjson::Document doc;
	if (!ParseObject(text.str(), doc, error)) {
		*error = "the OAuth login file " + path + " is not JSON";
		return false;
	}
	settings->refresh_token = StringMember(doc, "refresh_token");
	settings->refresh_client_id = StringMember(doc, "client_id");
	settings->refresh_client_secret = StringMember(doc, "client_secret");
	settings->refresh_issuer = StringMember(doc, "issuer");
	return !settings->refresh_token.empty();
}

bool
SaveTokenStore(const std::string &path, const OAuthSettings &settings, std::string *error)
{
	rapidjson::StringBuffer body;
	{
		rapidjson::Writer<rapidjson::StringBuffer> w(body);
		w.StartObject();
		w.Key("issuer");
		w.String(settings.refresh_issuer);
		w.Key("client_id");
		w.String(settings.refresh_client_id);
		if (!settings.refresh_client_secret.empty()) {
			w.Key("client_secret");
			w.String(settings.refresh_client_secret);
		}
		w.Key("refresh_token");
		w.String(settings.refresh_token);
		w.EndObject();
	}
	std::string tmp = path + ".tmp";
	unlink(tmp.c_str());
	int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		*error = "could not create " + tmp + ": " + std::strerror(errno);
		return false;
	}
	std::string text = std::string(body.GetString()) + "\n";
	bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
		*error = "could not write " + path + ": " + std::strerror(errno);
		unlink(tmp.c_str());
		return false;
	}
	return true;
}

/* ------------------------------------------------------------ the flow */

OAuthFlow::OAuthFlow(const OAuthSettings &settings, std::string mcp_url, const BearerChallenge &challenge,
                     const OAuthDiscovery &discovery, std::string previous_scope, bool rediscover)
    : settings_(settings), mcp_url_(std::move(mcp_url)), challenge_(challenge), discovery_(discovery),
      previous_scope_(std::move(previous_scope))
{
	if (discovery_.known && !rediscover) {
		stage_ = Stage::Grant;
		return;
	}
	/* WWW-Authenticate's resource_metadata first, the well-known URLs after it. */
	if (!challenge_.resource_metadata.empty())
		urls_.push_back(challenge_.resource_metadata);
	for (std::string &u : ResourceMetadataUrls(mcp_url_))
		if (!Contains(urls_, u))
			urls_.push_back(std::move(u));
}

void
OAuthFlow::Fail(std::string why)
{
	stage_ = Stage::Failed;
	error_ = std::move(why);
}

HttpRequest
OAuthFlow::BaseRequest(HttpMethod method, const std::string &url) const
{
	HttpRequest r;
	r.method = method;
	r.url = url;
	r.timeout_ms = settings_.timeout_ms;
	r.connect_timeout_ms = std::min(settings_.timeout_ms, 10000L);
	r.max_bytes = settings_.max_bytes;
	r.ca_file = settings_.ca_file;
	r.client_cert = settings_.client_cert;
	r.client_key = settings_.client_key;
	r.user_agent = settings_.user_agent;
	r.headers.push_back("Accept: application/json");
	r.headers.push_back("Expect:");
	if (method == HttpMethod::Get)
		r.headers.push_back("MCP-Protocol-Version: 2026-07-28");
	return r;
}

OAuthFlow::Step
OAuthFlow::Next(HttpRequest *request)
{
	if (stage_ == Stage::Grant)
		ChooseGrant();
	if (stage_ != Stage::Done && stage_ != Stage::Failed && requests_ >= kMaxRequests)
		Fail("authorization took more than " + std::to_string(kMaxRequests) + " requests");
	switch (stage_) {
	case Stage::ResourceMetadata:
	case Stage::ServerMetadata:
		*request = BaseRequest(HttpMethod::Get, urls_[url_index_]);
		break;
	case Stage::Register: {
		*request = BaseRequest(HttpMethod::Post, discovery_.server.registration_endpoint);
		request->headers.push_back("Content-Type: application/json");
		rapidjson::StringBuffer body;
		rapidjson::Writer<rapidjson::StringBuffer> w(body);
		w.StartObject();
		w.Key("client_name");
		w.String("pg_diagnosis");
		w.Key("application_type");
		w.String("native");
		w.Key("redirect_uris");
		w.StartArray();
		w.String(settings_.redirect_uri);
		w.EndArray();
		w.Key("grant_types");
		w.StartArray();
		w.String("authorization_code");
		w.String("refresh_token");
		w.EndArray();
		w.Key("response_types");
		w.StartArray();
		w.String("code");
		w.EndArray();
		w.Key("token_endpoint_auth_method");
		w.String(ChooseAuthMethod(true));
		w.EndObject();
		request->body = body.GetString();
		break;
	}
	case Stage::Authorize:
		if (!settings_.headless_authorize)
			return Step::Authorize;
		*request = BaseRequest(HttpMethod::Get, authorization_url_);
		break;
	case Stage::Token:
		*request = TokenRequest();
		if (stage_ == Stage::Failed)
			return Step::Failed;
		break;
	case Stage::Done:
		return Step::Done;
	case Stage::Grant:
	case Stage::Failed:
		return Step::Failed;
	}
	requests_++;
	return Step::Http;
}

void
OAuthFlow::Feed(const HttpExchange &x)
{
	if (x.curl_code != 0 && !(stage_ == Stage::Authorize && x.status >= 300 && x.status < 400)) {
		Fail("authorization request to " + Excerpt(x.request.url) + " failed: " + x.error);
		return;
	}
	switch (stage_) {
	case Stage::ResourceMetadata:
		AfterResourceMetadata(x);
		return;
	case Stage::ServerMetadata:
		AfterServerMetadata(x);
		return;
	case Stage::Register:
		AfterRegister(x);
		return;
	case Stage::Authorize:
		if (x.status < 300 || x.status >= 400 || x.location.empty()) {
			Fail("the authorization endpoint answered HTTP " + std::to_string(x.status) + " instead of a redirect");
			return;
		}
		AfterAuthorize(x.location);
		return;
	case Stage::Token:
		AfterToken(x);
		return;
	default:
		return;
	}
}

void
OAuthFlow::Redirected(const std::string &url)
{
	if (stage_ == Stage::Authorize)
		AfterAuthorize(url);
}

void
OAuthFlow::AfterResourceMetadata(const HttpExchange &x)
{
	ResourceMetadata prm;
	std::string error;
	if (x.status == 200 && ParseResourceMetadata(x.body, &prm, &error)) {
		if (!ResourceMatches(prm.resource, mcp_url_)) {
			Fail("the protected resource metadata names resource \"" + Excerpt(prm.resource) + "\", not " +
			     Excerpt(mcp_url_));
			return;
		}
		discovery_.resource = prm.resource;
		discovery_.resource_scopes = prm.scopes_supported;
		if (discovery_.issuer != prm.authorization_servers[0]) {
			/* Another authorization server: a client registered with the old one is not used with it. */
			discovery_.registered_client_id.clear();
			discovery_.registered_client_secret.clear();
			discovery_.registered_auth_method.clear();
		}
		discovery_.issuer = prm.authorization_servers[0];
	} else if (++url_index_ < urls_.size())
		return;
	else {
		/* No resource metadata (2025-03-26 servers): the MCP server's origin is its authorization server. */
		std::string origin, path;
		SplitUrl(mcp_url_, &origin, &path);
		discovery_.resource = mcp_url_;
		discovery_.issuer = origin;
	}
	urls_ = ServerMetadataUrls(discovery_.issuer);
	url_index_ = 0;
	if (urls_.empty()) {
		Fail("the authorization server \"" + Excerpt(discovery_.issuer) + "\" is not a URL");
		return;
	}
	stage_ = Stage::ServerMetadata;
}

void
OAuthFlow::AfterServerMetadata(const HttpExchange &x)
{
	ServerMetadata meta;
	std::string error;
	if (x.status == 200 && ParseServerMetadata(x.body, &meta, &error)) {
		/* RFC 8414 section 3.3: the issuer must be the one the metadata was looked up for, byte for byte. */
		if (meta.issuer != discovery_.issuer) {
			Fail("the authorization server metadata names issuer \"" + Excerpt(meta.issuer) + "\", not \"" +
			     Excerpt(discovery_.issuer) + "\"");
			return;
		}
		discovery_.server = std::move(meta);
		discovery_.known = true;
		stage_ = Stage::Grant;
		return;
	}
	if (++url_index_ < urls_.size())
		return;
	Fail("no authorization server metadata found for \"" + Excerpt(discovery_.issuer) + "\"" +
	     (error.empty() ? "" : ": " + error));
}

std::string
OAuthFlow::ChooseAuthMethod(bool has_secret) const
{
	const std::vector<std::string> &methods = discovery_.server.token_endpoint_auth_methods_supported;
	auto offered = [&](const char *m) {
		return methods.empty() ? std::string(m) == "client_secret_basic" : Contains(methods, m);
	};
	if (has_secret && offered("client_secret_basic"))
		return "client_secret_basic";
	if (has_secret && offered("client_secret_post"))
		return "client_secret_post";
	if (offered("none") || !has_secret)
		return "none";
	return "client_secret_basic";
}

std::string
OAuthFlow::RequestedScope(bool authorization_code) const
{
	std::vector<std::string> scopes;
	auto add = [&](const std::string &list) {
		for (std::string &s : SplitSpaces(list))
			if (!Contains(scopes, s))
				scopes.push_back(std::move(s));
	};
	if (!settings_.scope.empty())
		add(settings_.scope);
	else if (!challenge_.scope.empty()) {
		if (challenge_.error == "insufficient_scope")
			add(previous_scope_); /* step-up: what was granted and what is asked for now */
		add(challenge_.scope);
	} else if (!discovery_.resource_scopes.empty())
		add(Join(discovery_.resource_scopes));
	else if (!previous_scope_.empty())
		add(previous_scope_);
	if (authorization_code && Contains(discovery_.server.scopes_supported, "offline_access"))
		add("offline_access");
	if (!authorization_code)
		scopes.erase(std::remove(scopes.begin(), scopes.end(), "offline_access"), scopes.end());
	return Join(scopes);
}

/* Client credentials where configured and offered, else the refresh token of a login with this server, else the
 * authorization code (CLI). */
void
OAuthFlow::ChooseGrant()
{
	const ServerMetadata &s = discovery_.server;
	bool cc_offered = s.grant_types_supported.empty() || Contains(s.grant_types_supported, "client_credentials");
	bool has_credentials =
	    !settings_.client_id.empty() && (!settings_.client_secret.empty() || !settings_.private_key_pem.empty());
	bool refresh_fits = !settings_.refresh_token.empty() &&
	                    (settings_.refresh_issuer.empty() || settings_.refresh_issuer == discovery_.issuer);
	if (has_credentials && cc_offered &&
	    (settings_.redirect_uri.empty() || Contains(s.grant_types_supported, "client_credentials"))) {
		grant_ = "client_credentials";
		client_id_ = settings_.client_id;
		client_secret_ = settings_.client_secret;
		if (!settings_.private_key_pem.empty() &&
		    (Contains(s.token_endpoint_auth_methods_supported, "private_key_jwt") || settings_.client_secret.empty()))
			auth_method_ = "private_key_jwt";
		else
			auth_method_ = ChooseAuthMethod(true);
		scope_ = RequestedScope(false);
		stage_ = Stage::Token;
		return;
	}
	if (refresh_fits) {
		grant_ = "refresh_token";
		client_id_ = settings_.refresh_client_id.empty() ? settings_.client_id : settings_.refresh_client_id;
		client_secret_ =
		    settings_.refresh_client_id.empty() ? settings_.client_secret : settings_.refresh_client_secret;
		auth_method_ = ChooseAuthMethod(!client_secret_.empty());
		scope_ = challenge_.error == "insufficient_scope" ? RequestedScope(false) : "";
		stage_ = Stage::Token;
		return;
	}
	if (settings_.redirect_uri.empty()) {
		Fail(has_credentials ? "the authorization server does not offer the client_credentials grant"
		                     : "no OAuth client credentials are configured (diagnosis.mcp_oauth_client_id with "
		                       "mcp_oauth_client_secret or mcp_oauth_private_key) and no operator has logged in "
		                       "(pg_diagnosis_mcp_check --login)");
		return;
	}
	if (s.authorization_endpoint.empty()) {
		Fail("the authorization server has no authorization_endpoint");
		return;
	}
	if (!s.code_challenge_methods_supported.empty() && !Contains(s.code_challenge_methods_supported, "S256")) {
		Fail("the authorization server does not support PKCE S256");
		return;
	}
	grant_ = "authorization_code";
	redirect_uri_ = settings_.redirect_uri;
	if (!settings_.client_id.empty()) {
		client_id_ = settings_.client_id;
		client_secret_ = settings_.client_secret;
		auth_method_ = ChooseAuthMethod(!client_secret_.empty());
	} else if (!discovery_.registered_client_id.empty()) {
		client_id_ = discovery_.registered_client_id;
		client_secret_ = discovery_.registered_client_secret;
		auth_method_ = discovery_.registered_auth_method;
	} else if (s.client_id_metadata_document_supported && !settings_.client_metadata_url.empty()) {
		client_id_ = settings_.client_metadata_url;
		auth_method_ = "none";
	} else if (!s.registration_endpoint.empty()) {
		stage_ = Stage::Register;
		return;
	} else {
		Fail("the authorization server takes no dynamic registration: give a pre-registered client id");
		return;
	}
	stage_ = Stage::Authorize;
	AfterRegister(HttpExchange()); /* builds the authorization URL */
}

void
OAuthFlow::AfterRegister(const HttpExchange &x)
{
	if (stage_ == Stage::Register) {
		rapidjson::Document doc;
		std::string error;
		if (x.status < 200 || x.status >= 300 || !ParseObject(x.body, doc, &error) ||
		    StringMember(doc, "client_id").empty()) {
			Fail("dynamic client registration failed (HTTP " + std::to_string(x.status) + ")");
			return;
		}
		client_id_ = StringMember(doc, "client_id");
		client_secret_ = StringMember(doc, "client_secret");
		std::string method = StringMember(doc, "token_endpoint_auth_method");
		auth_method_ = !method.empty() ? method : ChooseAuthMethod(!client_secret_.empty());
		discovery_.registered_client_id = client_id_;
		discovery_.registered_client_secret = client_secret_;
		discovery_.registered_auth_method = auth_method_;
	}
	verifier_ = RandomUrlToken(32);
	state_ = RandomUrlToken(16);
	scope_ = RequestedScope(true);
	std::vector<std::pair<std::string, std::string>> q = {
	    {"response_type", "code"},         {"client_id", client_id_},
	    {"redirect_uri", redirect_uri_},   {"code_challenge", PkceChallengeS256(verifier_)},
	    {"code_challenge_method", "S256"}, {"state", state_},
	    {"resource", discovery_.resource}};
	if (!scope_.empty())
		q.emplace_back("scope", scope_);
	const std::string &endpoint = discovery_.server.authorization_endpoint;
	authorization_url_ = endpoint + (endpoint.find('?') == std::string::npos ? "?" : "&") + FormEncode(q);
	stage_ = Stage::Authorize;
}

void
OAuthFlow::AfterAuthorize(const std::string &redirect)
{
	std::map<std::string, std::string> p = QueryParameters(redirect);
	if (p["state"] != state_) {
		Fail("the authorization response's state does not match the request's");
		return;
	}
	if (p.count("error")) {
		Fail("the authorization server refused: " + Excerpt(p["error"]));
		return;
	}
	/* RFC 9207: an iss present must be the issuer, compared as strings; a server that says it sends one must. */
	auto iss = p.find("iss");
	if (iss != p.end() && iss->second != discovery_.issuer) {
		Fail("the authorization response comes from issuer \"" + Excerpt(iss->second) + "\", not \"" +
		     Excerpt(discovery_.issuer) + "\" (RFC 9207)");
		return;
	}
	if (iss == p.end() && discovery_.server.iss_parameter_supported) {
		Fail("the authorization server promises an iss parameter and the response has none (RFC 9207)");
		return;
	}
	code_ = p["code"];
	if (code_.empty()) {
		Fail("the authorization response carries no code");
		return;
	}
	stage_ = Stage::Token;
}

HttpRequest
OAuthFlow::TokenRequest()
{
	HttpRequest r = BaseRequest(HttpMethod::Post, discovery_.server.token_endpoint);
	r.headers.push_back("Content-Type: application/x-www-form-urlencoded");
	std::vector<std::pair<std::string, std::string>> f = {{"grant_type", grant_}};
	if (grant_ == "authorization_code") {
		f.emplace_back("code", code_);
		f.emplace_back("redirect_uri", redirect_uri_);
		f.emplace_back("code_verifier", verifier_);
	} else if (grant_ == "refresh_token")
		f.emplace_back("refresh_token", settings_.refresh_token);
	if (!scope_.empty() && grant_ != "authorization_code")
		f.emplace_back("scope", scope_);
	f.emplace_back("resource", discovery_.resource);
	if (auth_method_ == "client_secret_basic") {
		/* RFC 6749 2.3.1: both parts form-encoded before base64. */
		std::string pair = Escape(client_id_) + ":" + Escape(client_secret_);
		std::string b64(4 * ((pair.size() + 2) / 3) + 1, '\0');
		int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(&b64[0]),
		                        reinterpret_cast<const unsigned char *>(pair.data()), static_cast<int>(pair.size()));
		b64.resize(static_cast<size_t>(std::max(0, n)));
		r.headers.push_back("Authorization: Basic " + b64);
	} else if (auth_method_ == "client_secret_post") {
		f.emplace_back("client_id", client_id_);
		f.emplace_back("client_secret", client_secret_);
	} else if (auth_method_ == "private_key_jwt") {
		std::string jwt, error;
		if (!SignClientAssertion(settings_.private_key_pem, client_id_, discovery_.issuer, &jwt, &error)) {
			Fail(error);
			return r;
		}
		f.emplace_back("client_id", client_id_);
		f.emplace_back("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
		f.emplace_back("client_assertion", jwt);
	} else
		f.emplace_back("client_id", client_id_);
	r.body = FormEncode(f);
	return r;
}

void
OAuthFlow::AfterToken(const HttpExchange &x)
{
	std::string error;
	OAuthToken token;
	if (!ParseTokenResponse(x.body, &token, &error) || x.status < 200 || x.status >= 300) {
		Fail("token request (" + grant_ + ") failed with HTTP " + std::to_string(x.status) +
		     (error.empty() ? "" : ": " + error));
		return;
	}
	if (token.scope.empty())
		token.scope = scope_;
	if (token.refresh_token.empty() && grant_ == "refresh_token")
		token.refresh_token = settings_.refresh_token; /* not rotated: the old one stays good */
	token_ = std::move(token);
	stage_ = Stage::Done;
}

} // namespace pgdiag
