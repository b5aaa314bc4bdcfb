#include "aws/credentials.h"

#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "logs/held_credentials.h"
#include "rapidjson/document.h"
#include "util/env.h"
#include "util/files.h"
#include "util/json.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::aws {
namespace {

constexpr char kRelativeUriVar[] = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
constexpr char kFullUriVar[] = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
constexpr char kTokenVar[] = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
constexpr char kTokenFileVar[] = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

bool IsTrue(const std::optional<std::string>& v) {
  return v && absl::AsciiStrToLower(AbslView(*v)) == "true";
}

// The host of "scheme://host[:port]/...", without brackets.
std::string UrlHost(std::string_view url) {
  const size_t scheme = url.find("://");
  std::string_view rest =
      scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    rest = rest.substr(at + 1);
  }
  if (!rest.empty() && rest.front() == '[') {
    return std::string(rest.substr(1, rest.find(']') - 1));
  }
  return std::string(rest.substr(0, rest.find(':')));
}

// The SDKs allow plain http only to hosts on the machine or to the link-local
// addresses ECS and EKS serve credentials on.
bool AllowedPlainHost(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") ||
         host == "::1" || host == "169.254.170.2" || host == "169.254.170.23" ||
         host == "fd00:ec2::23";
}

bool Retryable(const absl::StatusOr<http::Response>& r) {
  return !r.ok() || r->status >= 500;
}

}  // namespace

absl::StatusOr<TimedCredentials> ParseCredentialsDocument(
    std::string_view body, const std::string& source) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::UnavailableError(
        absl::StrCat(source, ": the answer is not a JSON object"));
  }
  if (const std::string code = json::StringMember(doc, "Code");
      !code.empty() && code != "Success") {
    return absl::UnavailableError(absl::StrCat(
        source, ": ", code, ": ", json::StringMember(doc, "Message")));
  }
  TimedCredentials out;
  out.source = source;
  out.credentials.access_key_id = json::StringMember(doc, "AccessKeyId");
  out.credentials.secret_access_key =
      SecretString(json::StringMember(doc, "SecretAccessKey"));
  out.credentials.session_token =
      SecretString(json::StringMember(doc, "Token"));
  for (const char* required : {"AccessKeyId", "SecretAccessKey", "Token"}) {
    if (json::StringMember(doc, required).empty()) {
      return absl::UnavailableError(
          absl::StrCat(source, ": the answer has no ", required));
    }
  }
  const std::string expiration = json::StringMember(doc, "Expiration");
  if (!expiration.empty()) {
    absl::StatusOr<absl::Time> t = ParseIso8601(expiration);
    if (!t.ok()) {
      return absl::UnavailableError(
          absl::StrCat(source, ": Expiration: ", t.status().message()));
    }
    out.expiration = *t;
  }
  return out;
}

absl::StatusOr<absl::Time> ParseIso8601(std::string_view text) {
  absl::Time t;
  std::string err;
  for (const char* format :
       {"%Y-%m-%d%ET%H:%M:%E*S%Ez", "%Y-%m-%d%ET%H:%M:%E*SZ"}) {
    if (absl::ParseTime(format, AbslView(text), &t, &err)) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", AbslView(text), "' is not an RFC 3339 time"));
}

// ------------------------------------------------------------ refreshing

RefreshingCredentialsProvider::RefreshingCredentialsProvider(
    Fetch fetch, Clock& clock, absl::Duration advisory,
    absl::Duration mandatory)
    : fetch_(std::move(fetch)),
      clock_(clock),
      advisory_(advisory),
      mandatory_(mandatory) {}

absl::StatusOr<Credentials> RefreshingCredentialsProvider::Get() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  if (cached_ && !invalidated_ && now < cached_->expiration - advisory_) {
    return cached_->credentials;
  }
  absl::StatusOr<TimedCredentials> fresh = fetch_();
  if (fresh.ok()) {
    cached_ = *std::move(fresh);
    invalidated_ = false;
    // Stages prepared from now on mask them (a step can fetch them too).
    logs::AddHeldCredential(cached_->credentials.secret_access_key.reveal());
    logs::AddHeldCredential(cached_->credentials.session_token.reveal());
    return cached_->credentials;
  }
  if (cached_ && !invalidated_ && now < cached_->expiration - mandatory_) {
    return cached_->credentials;  // advisory refresh failed: keep going
  }
  return fresh.status();
}

void RefreshingCredentialsProvider::Invalidate() {
  absl::MutexLock lock(&mu_);
  invalidated_ = true;
}

// ------------------------------------------------------------ sources

absl::StatusOr<TimedCredentials> EnvironmentCredentials(const EnvMap& env) {
  const std::optional<std::string> key = EnvValue(env, "AWS_ACCESS_KEY_ID");
  const std::optional<std::string> secret =
      EnvValue(env, "AWS_SECRET_ACCESS_KEY");
  if (!key && !secret) {
    return absl::NotFoundError("AWS_ACCESS_KEY_ID is not set");
  }
  if (!key || !secret) {
    return absl::InvalidArgumentError(
        absl::StrCat(key ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
                     " is not set, but ",
                     key ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
                     " is: set both, or neither to use the ECS or EC2 role"));
  }
  TimedCredentials out;
  out.source = "environment";
  out.credentials.access_key_id = *key;
  out.credentials.secret_access_key = SecretString(*secret);
  out.credentials.session_token =
      SecretString(EnvValue(env, "AWS_SESSION_TOKEN").value_or(""));
  return out;
}

absl::StatusOr<TimedCredentials> FetchContainerCredentials(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock) {
  std::string url;
  std::string var;
  if (std::optional<std::string> rel = EnvValue(env, kRelativeUriVar)) {
    var = kRelativeUriVar;
    if (rel->front() != '/') rel->insert(0, "/");
    url = options.container_endpoint + *rel;
  } else if (std::optional<std::string> full = EnvValue(env, kFullUriVar)) {
    var = kFullUriVar;
    url = *full;
    const bool https = absl::StartsWithIgnoreCase(url, "https://");
    if (!https && !absl::StartsWithIgnoreCase(url, "http://")) {
      return absl::InvalidArgumentError(
          absl::StrCat(kFullUriVar, ": expected an http:// or https:// URL"));
    }
    if (!https && !AllowedPlainHost(UrlHost(url))) {
      return absl::InvalidArgumentError(
          absl::StrCat(kFullUriVar,
                       ": plain http is allowed only to a loopback address, "
                       "169.254.170.2, 169.254.170.23 or fd00:ec2::23, not '",
                       UrlHost(url), "'; use https://"));
    }
  } else {
    return absl::NotFoundError(absl::StrCat("neither ", kRelativeUriVar,
                                            " nor ", kFullUriVar, " is set"));
  }
  const std::string source =
      absl::StrCat("container credentials endpoint (", var, ")");

  http::Request request;
  request.url = url;
  request.headers.push_back({"Accept", "application/json"});
  request.connect_timeout = options.container_timeout;
  request.timeout = options.container_timeout;
  // Re-read at each fetch: EKS and ECS Anywhere rotate the file.
  std::string token;
  if (std::optional<std::string> file = EnvValue(env, kTokenFileVar)) {
    absl::StatusOr<std::string> content = ReadSettingFile(*file, kTokenFileVar);
    if (!content.ok()) return content.status();
    token = std::string(absl::StripAsciiWhitespace(*content));
  } else if (std::optional<std::string> t = EnvValue(env, kTokenVar)) {
    token = *t;
  }
  if (token.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        EnvValue(env, kTokenFileVar) ? kTokenFileVar : kTokenVar,
        ": the authorization token holds a line break; it must be one line"));
  }
  if (!token.empty()) request.headers.push_back({"Authorization", token});

  absl::StatusOr<http::Response> response;
  for (int attempt = 0; attempt < std::max(1, options.container_attempts);
       ++attempt) {
    if (attempt > 0) clock.SleepFor(options.container_retry_delay);
    response = http.Perform(request);
    if (!Retryable(response)) break;
  }
  if (!response.ok()) {
    return absl::UnavailableError(
        absl::StrCat(source, ": ", response.status().message()));
  }
  if (response->status != 200) {
    return absl::UnavailableError(
        absl::StrCat(source, ": HTTP ", response->status,
                     response->status == 401 || response->status == 403
                         ? "; check AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)"
                         : ""));
  }
  return ParseCredentialsDocument(response->body, source);
}

absl::StatusOr<TimedCredentials> FetchImdsCredentials(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock) {
  const std::string base = std::string(absl::StripSuffix(
      AbslView(EnvValue(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT")
                   .value_or(options.imds_endpoint)),
      "/"));
  const std::string source = "EC2 instance metadata (" + base + ")";
  auto perform = [&](http::Request r) {
    r.connect_timeout = options.imds_timeout;
    r.timeout = options.imds_timeout;
    absl::StatusOr<http::Response> response;
    for (int attempt = 0; attempt < std::max(1, options.imds_attempts);
         ++attempt) {
      if (attempt > 0) clock.SleepFor(absl::Milliseconds(100));
      response = http.Perform(r);
      if (!Retryable(response)) break;
    }
    return response;
  };
  http::Request token_request;
  token_request.method = "PUT";
  token_request.url = base + "/latest/api/token";
  token_request.headers.push_back(
      {"x-aws-ec2-metadata-token-ttl-seconds", "21600"});
  absl::StatusOr<http::Response> token = perform(token_request);
  if (!token.ok()) {
    return absl::UnavailableError(absl::StrCat(
        source, ": ", token.status().message(),
        "; outside EC2 set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
        "run in an ECS task with a task role"));
  }
  if (token->status != 200) {
    return absl::UnavailableError(absl::StrCat(
        source, ": no IMDSv2 session token (HTTP ", token->status, ")"));
  }
  const std::string session(absl::StripAsciiWhitespace(token->body));
  auto get = [&](const std::string& path) {
    http::Request r;
    r.url = base + path;
    r.headers.push_back({"x-aws-ec2-metadata-token", session});
    return perform(r);
  };
  const std::string prefix = "/latest/meta-data/iam/security-credentials/";
  absl::StatusOr<http::Response> roles = get(prefix);
  if (!roles.ok()) {
    return absl::UnavailableError(
        absl::StrCat(source, ": ", roles.status().message()));
  }
  if (roles->status != 200) {
    return absl::UnavailableError(
        absl::StrCat(source, ": no instance profile role (HTTP ", roles->status,
                     "); attach an IAM role to the instance"));
  }
  std::string role(absl::StripAsciiWhitespace(roles->body));
  role = role.substr(0, role.find('\n'));
  if (role.empty()) {
    return absl::UnavailableError(
        absl::StrCat(source, ": no instance profile role; attach an IAM role"));
  }
  absl::StatusOr<http::Response> creds = get(prefix + UrlEncode(role));
  if (!creds.ok()) {
    return absl::UnavailableError(
        absl::StrCat(source, ": ", creds.status().message()));
  }
  if (creds->status != 200) {
    return absl::UnavailableError(absl::StrCat(source, ": credentials of role ",
                                               role, ": HTTP ", creds->status));
  }
  return ParseCredentialsDocument(creds->body, source);
}

absl::StatusOr<std::unique_ptr<CredentialsProvider>> DefaultCredentialsChain(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock) {
  absl::StatusOr<TimedCredentials> from_env = EnvironmentCredentials(env);
  if (from_env.ok()) {
    return std::make_unique<StaticCredentialsProvider>(
        std::move(from_env->credentials));
  }
  if (!absl::IsNotFound(from_env.status())) return from_env.status();

  RefreshingCredentialsProvider::Fetch fetch;
  if (EnvValue(env, kRelativeUriVar) || EnvValue(env, kFullUriVar)) {
    fetch = [env, options, &http, &clock] {
      return FetchContainerCredentials(env, options, http, clock);
    };
  } else if (IsTrue(EnvValue(env, "AWS_EC2_METADATA_DISABLED"))) {
    return absl::FailedPreconditionError(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "or give the ECS task a task role (which sets "
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI); instance metadata is off "
        "(AWS_EC2_METADATA_DISABLED)");
  } else {
    fetch = [env, options, &http, &clock] {
      return FetchImdsCredentials(env, options, http, clock);
    };
  }
  return std::make_unique<RefreshingCredentialsProvider>(std::move(fetch),
                                                         clock);
}

}  // namespace delegate::aws
