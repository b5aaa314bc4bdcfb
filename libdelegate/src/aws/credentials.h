// Where the ECS and CloudWatch Logs clients get their AWS credentials and
// region, in the AWS SDKs' order: the environment, the ECS container
// credentials endpoint, then EC2 instance metadata (IMDSv2). Temporary
// credentials are refreshed before they expire. The endpoints are always
// reached directly, never through a proxy (aws/transport.h says why).
#ifndef DELEGATE_AWS_CREDENTIALS_H_
#define DELEGATE_AWS_CREDENTIALS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "aws/sigv4.h"
#include "delegate/clock.h"
#include "delegate/config.h"
#include "http/http_client.h"

namespace delegate::aws {

// Credentials and when they stop working (InfiniteFuture for long-term keys).
struct TimedCredentials {
  Credentials credentials;
  absl::Time expiration = absl::InfiniteFuture();
  // For messages: "environment", "container credentials endpoint URL",
  // "EC2 instance metadata".
  std::string source;
};

// Thread-safe.
class CredentialsProvider {
 public:
  CredentialsProvider() = default;
  CredentialsProvider(const CredentialsProvider&) = delete;
  CredentialsProvider& operator=(const CredentialsProvider&) = delete;
  virtual ~CredentialsProvider() = default;

  // Credentials good for at least a while longer. Errors name the source
  // (variable, URL) and what to do; they never hold a key, token or secret.
  virtual absl::StatusOr<Credentials> Get() = 0;
  // The service refused the credentials as expired: the next Get fetches new
  // ones, whatever their stated expiration.
  virtual void Invalidate() {}
};

// Long-term keys, never refreshed; for tests and for hosts with their own
// credential handling.
class StaticCredentialsProvider final : public CredentialsProvider {
 public:
  explicit StaticCredentialsProvider(Credentials credentials)
      : credentials_(std::move(credentials)) {}
  absl::StatusOr<Credentials> Get() override { return credentials_; }

 private:
  const Credentials credentials_;
};

// Wraps a fetch of temporary credentials. Get returns the cached ones until
// `advisory` before their expiration; then it fetches, keeping the old ones
// if that fails while they are still more than `mandatory` from expiring.
// Within `mandatory` (or after Invalidate) a failed fetch is an error. One
// fetch at a time: concurrent callers wait for it.
class RefreshingCredentialsProvider final : public CredentialsProvider {
 public:
  using Fetch = std::function<absl::StatusOr<TimedCredentials>()>;
  RefreshingCredentialsProvider(Fetch fetch, Clock& clock,
                                absl::Duration advisory = absl::Minutes(15),
                                absl::Duration mandatory = absl::Minutes(10));

  absl::StatusOr<Credentials> Get() override ABSL_LOCKS_EXCLUDED(mu_);
  void Invalidate() override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const Fetch fetch_;
  Clock& clock_;
  const absl::Duration advisory_;
  const absl::Duration mandatory_;
  absl::Mutex mu_;
  std::optional<TimedCredentials> cached_ ABSL_GUARDED_BY(mu_);
  bool invalidated_ ABSL_GUARDED_BY(mu_) = false;
};

// The addresses and limits the chain uses. The defaults are AWS's; tests
// point them at loopback servers.
struct CredentialsOptions {
  // Where AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is resolved.
  std::string container_endpoint = "http://169.254.170.2";
  // IMDS; AWS_EC2_METADATA_SERVICE_ENDPOINT overrides it, as in the SDKs.
  std::string imds_endpoint = "http://169.254.169.254";
  absl::Duration container_timeout = absl::Seconds(2);
  int container_attempts = 3;
  absl::Duration container_retry_delay = absl::Seconds(1);
  absl::Duration imds_timeout = absl::Seconds(1);
  int imds_attempts = 2;
};

// The long-term or session keys in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
// and AWS_SESSION_TOKEN. NotFound when AWS_ACCESS_KEY_ID is unset;
// InvalidArgument when only one of the key variables is set.
absl::StatusOr<TimedCredentials> EnvironmentCredentials(const EnvMap& env);

// One fetch from the ECS container credentials endpoint:
// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI against options.container_endpoint,
// or AWS_CONTAINER_CREDENTIALS_FULL_URI (https to any host; http only to a
// loopback address, 169.254.170.2, 169.254.170.23 or fd00:ec2::23), with the
// Authorization header from the file named by
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read at each fetch) or from
// AWS_CONTAINER_AUTHORIZATION_TOKEN. NotFound when neither URI variable is
// set. Retries per options.
absl::StatusOr<TimedCredentials> FetchContainerCredentials(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock);

// One fetch from EC2 instance metadata with an IMDSv2 session token: the
// instance profile's role, then its credentials.
absl::StatusOr<TimedCredentials> FetchImdsCredentials(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock);

// The SDKs' chain, decided by which variables are set: the environment's
// keys when AWS_ACCESS_KEY_ID is set; otherwise the container endpoint when
// one of its URI variables is set; otherwise IMDSv2 unless
// AWS_EC2_METADATA_DISABLED is true (then FailedPrecondition listing what to
// set). Temporary credentials come through a RefreshingCredentialsProvider.
// REQUIRES: http and clock outlive the provider.
absl::StatusOr<std::unique_ptr<CredentialsProvider>> DefaultCredentialsChain(
    const EnvMap& env, const CredentialsOptions& options,
    http::HttpClient& http, Clock& clock);

// The container endpoint's and IMDS's answer,
// {"AccessKeyId","SecretAccessKey","Token","Expiration"} (IMDS adds
// "Code"), as credentials from `source`. Unavailable naming `source` and the
// missing member otherwise; the secret values never appear in an error.
absl::StatusOr<TimedCredentials> ParseCredentialsDocument(
    std::string_view body, const std::string& source);

// "2016-02-25T06:03:31Z" and the other RFC 3339 forms the endpoints send.
absl::StatusOr<absl::Time> ParseIso8601(std::string_view text);

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_CREDENTIALS_H_
