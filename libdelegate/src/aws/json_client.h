// A client of one AWS service on the JSON 1.1 protocol (ECS, CloudWatch
// Logs): POST / with X-Amz-Target, signed with SigV4, errors parsed the way
// botocore does, and retries with backoff and full jitter on throttling,
// transient errors, 5xx and broken connections (botocore's "standard" mode,
// retry quota included). Knows no operation: the caller builds the JSON.
#ifndef DELEGATE_AWS_JSON_CLIENT_H_
#define DELEGATE_AWS_JSON_CLIENT_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "aws/credentials.h"
#include "aws/endpoints.h"
#include "aws/transport.h"
#include "delegate/clock.h"
#include "http/http_client.h"

namespace delegate::aws {

struct RetryOptions {
  int max_attempts = 3;  // the first try included
  absl::Duration throttle_base = absl::Seconds(1);
  absl::Duration other_base = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(20);
  // botocore's client-side quota: a retry costs 5 (throttling) or 14 (other)
  // of these, a success gives one back; with none left, errors are returned
  // without retrying, so that an outage does not multiply the load.
  int quota = 500;
};

struct JsonClientOptions {
  ServiceSpec service = kEcs;
  std::string endpoint;  // "https://ecs.us-east-1.amazonaws.com"
  std::string region;
  CredentialsProvider* credentials = nullptr;  // REQUIRED; outlives the client
  http::HttpClient* http = nullptr;            // REQUIRED; outlives the client
  // The proxy, NO_PROXY and CA bundle of every call (TransportFromEnv);
  // default: direct, with the system's CAs.
  Transport transport;
  Clock* clock = nullptr;  // nullptr: Clock::Real()
  RetryOptions retry;
  absl::Duration timeout = absl::Seconds(30);
  // A uniform draw in [0, 1) for the jitter; unset: a thread-local PRNG.
  std::function<double()> random;
};

// An AWS error answer, as a Status payload: what callers branch on.
struct AwsError {
  int http_status = 0;  // 0: no answer (the transfer failed)
  std::string code;     // "ThrottlingException", normalised as botocore does
  std::string message;
  std::string request_id;  // x-amzn-RequestId
  std::string body;        // the raw error document
};

// The AwsError in a Status a JsonClient returned; nullopt for other errors.
std::optional<AwsError> GetAwsError(const absl::Status& status);
// Its code, or "" (a shorthand for the common branch).
std::string AwsErrorCode(const absl::Status& status);

// Parses an error answer: __type (or the status when absent; "prefix#Code"
// and "Code:detail" normalised to Code), message or Message, or the raw text
// as the message when the body is not JSON.
AwsError ParseAwsError(int http_status, std::string_view body);

// Whether botocore's standard mode retries it, and whether as throttling.
bool IsThrottlingCode(std::string_view code);
bool IsRetryableError(const AwsError& error);

// Thread-safe.
class JsonClient {
 public:
  explicit JsonClient(JsonClientOptions options);
  JsonClient(const JsonClient&) = delete;
  JsonClient& operator=(const JsonClient&) = delete;

  // Sends `body` (a JSON object) to operation `operation` ("RunTask") and
  // returns the 2xx answer's body. Errors: the service's answer as
  // InvalidArgument (4xx), PermissionDenied (403; Unauthenticated for
  // signature, unknown-key and expiry errors), NotFound
  // (ResourceNotFoundException, ...NotFoundException), AlreadyExists
  // (ResourceAlreadyExistsException), ResourceExhausted (throttling, after
  // the retries), Unavailable (5xx or no connection, after the retries),
  // each with an AwsError payload and a message "ECS RunTask: CODE: MESSAGE
  // (request id ID)". An expired-token answer invalidates the credentials
  // and is retried once with fresh ones. `abort`, when set, is polled
  // between attempts: once it returns true the call ends Cancelled.
  absl::StatusOr<std::string> Call(std::string_view operation,
                                   std::string_view body,
                                   const std::function<bool()>& abort = {});

  const JsonClientOptions& options() const { return options_; }

 private:
  absl::Duration Backoff(int attempt, bool throttled);
  bool TakeRetryQuota(bool throttled) ABSL_LOCKS_EXCLUDED(mu_);
  void ReturnRetryQuota() ABSL_LOCKS_EXCLUDED(mu_);

  const JsonClientOptions options_;
  Clock& clock_;
  std::string host_;  // the Host header, "ecs.us-east-1.amazonaws.com"
  std::string path_;  // the endpoint's path, "/" unless it has one
  absl::Mutex mu_;
  int quota_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::aws

#endif  // DELEGATE_AWS_JSON_CLIENT_H_
