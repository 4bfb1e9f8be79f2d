/*
 * mcp_auth.cpp: the client's authorization (OAuth): a 401, or a 403 that asks for more scope, starts an OAuthFlow
 * (oauth.cpp) whose requests go through the same non-blocking transport as the calls, so a token request never
 * holds a call back; only the calls that met the challenge wait for its token, and are sent again with it (within
 * kMaxAuthRetries). Tokens are cached per origin, sent to no other, and renewed ahead of expiry while calls are in
 * flight.
 */
#include <unistd.h>

#include "mcp_client_impl.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {
namespace client_detail {

bool
Client::OAuthChanged(const ClientConfig &c) const
{
	const OAuthSettings &a = c.oauth, &b = config_.oauth;
	return a.client_id != b.client_id || a.client_secret != b.client_secret || a.private_key_pem != b.private_key_pem ||
	       a.scope != b.scope || c.oauth_store != config_.oauth_store;
}

/* New credentials: tokens and registrations obtained with the old ones are not used again. */
void
Client::ResetAuth()
{
	DropAuthFlow();
	tokens_.clear();
	discovery_ = OAuthDiscovery();
}

void
Client::DropAuthFlow()
{
	if (auth_exchange_) {
		transport_.Abort(auth_exchange_);
		pending_.erase(auth_exchange_);
	}
	auth_exchange_ = 0;
	auth_flow_.reset();
	endpoint_after_auth_ = false;
}

bool
Client::OAuthUsable() const
{
	return config_.oauth.CanAuthorize() ||
	       (!config_.oauth_store.empty() && access(config_.oauth_store.c_str(), R_OK) == 0);
}

/* The token of this endpoint's origin when it is due for renewal at some point and calls would use it. */
const CachedToken *
Client::RenewableToken() const
{
	if (auth_flow_ || calls_.empty())
		return nullptr;
	auto it = tokens_.find(OriginOf(config_.url));
	if (it == tokens_.end() || it->second.renew_at == Clock::time_point::max())
		return nullptr;
	return &it->second;
}

/* A 401, or a 403 that asks for more scope: the request never reached the tool. */
bool
Client::Challenged(const HttpExchange &x, const Pending &p)
{
	if (p.purpose == Purpose::Fire || p.response || p.resumption || x.curl_code != 0)
		return false;
	if (x.status == 401)
		return true;
	BearerChallenge c;
	return x.status == 403 && ParseBearerChallenge(x.www_authenticate, &c) && c.error == "insufficient_scope";
}

/* Authorizes and sends the request again (the endpoint's set-up, or the call), within kMaxAuthRetries. False
 * when OAuth cannot help: the 401/403 then stands as a setting that cannot work. */
bool
Client::OnChallenge(const HttpExchange &x, const Pending &p, bool stale)
{
	if (!OAuthUsable())
		return false;
	BearerChallenge challenge;
	ParseBearerChallenge(x.www_authenticate, &challenge);
	bool step_up = challenge.error == "insufficient_scope";
	if (p.purpose == Purpose::ToolCall || p.purpose == Purpose::TaskGet || p.purpose == Purpose::TaskResult) {
		Call *c = CallOf(p);
		if (!c)
			return true; /* finished meanwhile */
		if (c->auth_retries >= kMaxAuthRetries)
			return false;
		c->auth_retries++;
		SetExchange(c, 0);
		auth_waiting_.push_back(c->request.tag);
	} else {
		if (stale)
			return false; /* the endpoint changed meanwhile: the usual path starts over */
		if (endpoint_auth_retries_ >= kMaxAuthRetries)
			return false;
		endpoint_auth_retries_++;
		session_.Reset();
		endpoint_after_auth_ = true;
	}
	if (auth_flow_) {
		if (step_up)
			pending_step_up_ = challenge; /* asked for once the running flow ends */
		return true;
	}
	if (p.auth_generation != auth_generation_ && !step_up) {
		ResumeAfterAuth(); /* a newer token came after this request left: send it again with that one */
		return true;
	}
	StartAuth(challenge, true);
	return true;
}

void
Client::StartAuth(const BearerChallenge &challenge, bool rediscover)
{
	if (auth_flow_)
		return;
	OAuthSettings s = config_.oauth;
	s.ca_file = config_.ca_file;
	s.client_cert = config_.client_cert;
	s.client_key = config_.client_key;
	s.user_agent = config_.user_agent;
	s.timeout_ms = std::max(1000L, std::min(config_.request_timeout_ms, 30000L));
	std::string error;
	if (!config_.oauth_store.empty() && !LoadTokenStore(config_.oauth_store, &s, &error) && !error.empty()) {
		FailAuth(error, !rediscover);
		return;
	}
	auto token = tokens_.find(OriginOf(config_.url));
	std::string previous_scope = token != tokens_.end() ? token->second.scope : "";
	auth_settings_ = s;
	auth_renewal_ = !rediscover;
	auth_flow_ = std::make_unique<OAuthFlow>(s, config_.url, challenge, discovery_, previous_scope, rediscover);
	PumpAuth();
}

void
Client::PumpAuth()
{
	HttpRequest r;
	switch (auth_flow_->Next(&r)) {
	case OAuthFlow::Step::Http: {
		Pending p;
		p.purpose = Purpose::Auth;
		auth_exchange_ = Send(std::move(r), std::move(p));
		return;
	}
	case OAuthFlow::Step::Done:
		AuthDone();
		return;
	case OAuthFlow::Step::Authorize:
		FailAuth("the authorization server offers no grant that works without a person: an operator logs in "
		         "once with pg_diagnosis_mcp_check --login",
		         auth_renewal_);
		return;
	case OAuthFlow::Step::Failed:
		FailAuth(auth_flow_->Error(), auth_renewal_);
		return;
	}
}

void
Client::FeedAuth(const HttpExchange &x)
{
	if (!auth_flow_ || x.id != auth_exchange_)
		return;
	auth_exchange_ = 0;
	auth_flow_->Feed(x);
	PumpAuth();
}

void
Client::AuthDone()
{
	const OAuthToken &t = auth_flow_->Token();
	CachedToken cached;
	cached.access_token = t.access_token;
	cached.scope = t.scope;
	if (t.expires_in_s > 0) {
		int64_t lifetime_ms = t.expires_in_s * 1000;
		cached.renew_at = Clock::now() + std::chrono::milliseconds(lifetime_ms - RenewalMarginMs(lifetime_ms));
	}
	tokens_[OriginOf(config_.url)] = std::move(cached);
	discovery_ = auth_flow_->Discovery();
	auth_generation_++;
	oauth_tokens_++;
	if (!config_.oauth_store.empty() && !t.refresh_token.empty() && t.refresh_token != auth_settings_.refresh_token) {
		/* The server rotated the refresh token: the old one may already be void. */
		OAuthSettings store = auth_settings_;
		store.refresh_token = t.refresh_token;
		store.refresh_client_id = auth_flow_->ClientId();
		store.refresh_client_secret = auth_flow_->ClientSecret();
		store.refresh_issuer = discovery_.issuer;
		std::string error;
		if (!SaveTokenStore(config_.oauth_store, store, &error))
			session_.last_error = error;
	}
	auth_flow_.reset();
	if (pending_step_up_.bearer) {
		BearerChallenge step_up = std::exchange(pending_step_up_, BearerChallenge());
		StartAuth(step_up, true);
		return;
	}
	ResumeAfterAuth();
}

/* A renewal that fails leaves the current token in use (until a 401 asks for a new one); a flow that calls
 * or the endpoint wait for fails them as a setting that cannot work. */
void
Client::FailAuth(const std::string &why, bool renewal)
{
	auth_flow_.reset();
	auth_exchange_ = 0;
	pending_step_up_ = BearerChallenge();
	if (renewal) {
		auto token = tokens_.find(OriginOf(config_.url));
		if (token != tokens_.end())
			token->second.renew_at = Clock::time_point::max();
		ResumeAfterAuth();
		return;
	}
	CallOutcome o = ConfigError("OAuth authorization failed: " + why);
	std::vector<uint64_t> tags = std::exchange(auth_waiting_, {});
	for (uint64_t tag : tags) {
		auto it = calls_.find(tag);
		if (it != calls_.end())
			Finish(it->second.get(), o);
	}
	if (std::exchange(endpoint_after_auth_, false))
		FailEndpoint(o);
}

/* The token is there: calls that met a 401 go again, the endpoint's set-up starts over. */
void
Client::ResumeAfterAuth()
{
	std::vector<uint64_t> tags = std::exchange(auth_waiting_, {});
	for (uint64_t tag : tags) {
		auto it = calls_.find(tag);
		if (it == calls_.end())
			continue;
		Call *c = it->second.get();
		if (session_.phase != EndpointSession::Phase::Ready)
			waiting_.push_back(c);
		else if (c->task_id.empty())
			StartToolCall(c);
		else
			StartTaskRequest(c, Purpose::TaskGet);
	}
	if (std::exchange(endpoint_after_auth_, false) || (!waiting_.empty() && !tags.empty()))
		EnsureEndpoint();
}

} // namespace client_detail
} // namespace pgdiag
