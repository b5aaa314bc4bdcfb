// The Harness manager's REST calls (harness-protocol.md §3 to §5): register,
// heartbeat, unregister, runner events, task payloads and task responses,
// each with "Authorization: Delegate <jwe>" and the delegateTokenHash header,
// over one pooled libcurl client. One call per method, no retry: the
// connection decides what to retry (Retry below).
#ifndef DELEGATE_MANAGER_HARNESS_HARNESS_CLIENT_H_
#define DELEGATE_MANAGER_HARNESS_HARNESS_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/config.h"
#include "http/http_client.h"
#include "manager/harness/registration.h"
#include "manager/harness/task_request.h"
#include "manager/harness/token.h"

namespace delegate::harness {

// TLS and proxy settings shared by manager and log service calls.
struct Transport {
  http::TlsOptions tls;
  std::string proxy;  // empty: no proxy
  std::string no_proxy;
  // Caps every call's own timeout.
  absl::Duration max_timeout = absl::Seconds(30);
  // The largest task payload Acquire reads (DelegateConfig::
  // max_task_payload_bytes); a larger one is InvalidArgument, read no
  // further.
  size_t max_task_payload_bytes = size_t{16} << 20;
};

// The transport the configuration asks for: every file in certs_dir as an
// extra CA on top of the system store, the client pair for mutual TLS, the
// proxy. FailedPrecondition naming the variable when a file is unreadable.
absl::StatusOr<Transport> TransportFromConfig(const DelegateConfig& config);

class HarnessClient {
 public:
  // REQUIRES: `token` normalised (NormalizeDelegateToken); `http` and
  // `clock` outlive the client.
  HarnessClient(std::string manager_url, std::string account_id,
                SecretString token, Transport transport, http::HttpClient& http,
                Clock& clock);

  // Errors, for every call: Unauthenticated for 401 and PermissionDenied for
  // 403, with a message that points at the token and account id;
  // Unavailable for a connection failure or a 5xx and 429; DeadlineExceeded
  // for a timeout; NotFound for 404 (a heartbeat's: the manager does not know
  // the delegate); FailedPrecondition for other statuses. Messages name the
  // call and the URL path, never a token.
  absl::StatusOr<std::string> Register(
      const RegisterInfo& info);  // delegate id
  absl::Status Heartbeat(const RegisterInfo& info);
  absl::Status Unregister(const RegisterInfo& info);
  absl::StatusOr<std::vector<RunnerEvent>> PollEvents(
      const std::string& delegate_id);
  // `raw`, when given, gets the response body as it came (for the
  // journal: it is parsed again after a restart).
  absl::StatusOr<std::vector<TaskRequest>> Acquire(
      const std::string& task_id, const std::string& delegate_id,
      const std::string& delegate_name, std::string* raw = nullptr);
  // `body`: TaskResponseBody.
  absl::Status SendResponse(const std::string& task_id,
                            const std::string& delegate_id,
                            const std::string& body);

  const std::string& manager_url() const { return manager_url_; }

 private:
  absl::StatusOr<std::string> Call(std::string_view what, std::string method,
                                   const std::string& path_and_query,
                                   std::string body, absl::Duration timeout,
                                   size_t max_body_bytes = size_t{64} << 20);

  const std::string manager_url_;
  const std::string account_id_;
  const std::string token_hash_;
  const Transport transport_;
  http::HttpClient& http_;
  RequestTokenCache tokens_;
};

// Exponential backoff with jitter (the cenkalti/backoff defaults the Harness
// runner uses: 500 ms, x1.5, +-50 %, at most 60 s apart).
struct RetryPolicy {
  absl::Duration initial = absl::Milliseconds(500);
  double multiplier = 1.5;
  double jitter = 0.5;
  absl::Duration max_interval = absl::Seconds(60);
  // Give up after this long (the last error is returned); infinite: never.
  absl::Duration max_elapsed = absl::Seconds(30);
};

// True for errors worth another attempt: Unavailable, DeadlineExceeded,
// ResourceExhausted, Internal, Unknown, Aborted.
bool IsRetryable(const absl::Status& status);

// Calls `attempt` until it succeeds, fails with a non-retryable error, the
// policy gives up, or `stopped` returns true (checked while waiting, every
// 50 ms at most). `on_retry` sees each retryable failure and the wait before
// the next attempt.
absl::Status Retry(const RetryPolicy& policy,
                   const std::function<absl::Status()>& attempt,
                   const std::function<bool()>& stopped,
                   const std::function<void(const absl::Status&,
                                            absl::Duration)>& on_retry = {});

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_HARNESS_CLIENT_H_
