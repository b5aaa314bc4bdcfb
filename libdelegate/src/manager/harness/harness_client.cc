#include "manager/harness/harness_client.h"

#include <algorithm>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "http/tls_config.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::harness {
namespace {

std::string Enc(const std::string& s) { return UrlEncode(s); }

// The first part of a response body, for an error message: a manager error
// document says what it rejected. Bodies of manager errors hold no secrets.
std::string Excerpt(const std::string& body) {
  std::string s = body.substr(0, 300);
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

absl::StatusOr<Transport> TransportFromConfig(const DelegateConfig& config) {
  Transport t;
  absl::StatusOr<http::TlsOptions> tls = TlsFromConfig(config);
  if (!tls.ok()) return tls.status();
  t.tls = *std::move(tls);
  t.proxy = config.proxy.reveal();
  t.no_proxy = config.no_proxy;
  t.max_timeout = config.manager_timeout;
  t.max_task_payload_bytes = config.max_task_payload_bytes;
  return t;
}

HarnessClient::HarnessClient(std::string manager_url, std::string account_id,
                             SecretString token, Transport transport,
                             http::HttpClient& http, Clock& clock)
    : manager_url_(std::move(manager_url)),
      account_id_(std::move(account_id)),
      token_hash_(DelegateTokenHash(token)),
      transport_(std::move(transport)),
      http_(http),
      tokens_(std::move(token), account_id_, clock) {}

absl::StatusOr<std::string> HarnessClient::Call(
    std::string_view what, std::string method,
    const std::string& path_and_query, std::string body, absl::Duration timeout,
    size_t max_body_bytes) {
  absl::StatusOr<std::string> jwe = tokens_.Get();
  if (!jwe.ok()) return jwe.status();
  http::Request req;
  req.method = std::move(method);
  req.url = manager_url_ + path_and_query;
  req.headers = {{"Authorization", absl::StrCat("Delegate ", *jwe)},
                 {"delegateTokenHash", token_hash_},
                 {"Content-Type", "application/json"},
                 {"Accept", "application/json"}};
  req.body = std::move(body);
  req.timeout = std::min(timeout, transport_.max_timeout);
  req.connect_timeout = std::min(req.timeout, absl::Seconds(10));
  req.tls = transport_.tls;
  req.proxy = transport_.proxy;
  req.no_proxy = transport_.no_proxy;
  req.max_body_bytes = max_body_bytes;
  const std::string path = path_and_query.substr(0, path_and_query.find('?'));
  absl::StatusOr<http::Response> resp = http_.Perform(req);
  if (!resp.ok()) {
    return absl::Status(
        resp.status().code(),
        absl::StrCat(AbslView(what), ": ", resp.status().message()));
  }
  const int code = resp->status;
  if (code == 204) return std::string();
  if (code >= 200 && code < 300) return std::move(resp->body);
  const std::string where =
      absl::StrCat(AbslView(what), ": ", RedactUrl(manager_url_), path,
                   " answered HTTP ", code);
  if (code == 401 || code == 403) {
    const std::string msg = absl::StrCat(
        where,
        ": the manager refused the delegate's credentials; check that "
        "HARNESS_TOKEN is a current delegate token of account ",
        account_id_,
        " (HARNESS_ACCOUNT_ID) and that HARNESS_URL is that "
        "account's manager");
    return code == 401 ? absl::UnauthenticatedError(msg)
                       : absl::PermissionDeniedError(msg);
  }
  const std::string detail =
      resp->body.empty() ? "" : absl::StrCat(": ", Excerpt(resp->body));
  if (code == 404) return absl::NotFoundError(absl::StrCat(where, detail));
  if (code >= 500 || code == 429 || code == 408) {
    return absl::UnavailableError(absl::StrCat(where, detail));
  }
  if (code >= 300 && code < 400) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, " (a redirect to '", AbslView(resp->header("Location")),
        "', which the delegate does not follow; set HARNESS_URL to the "
        "final address)"));
  }
  return absl::FailedPreconditionError(absl::StrCat(where, detail));
}

absl::StatusOr<std::string> HarnessClient::Register(const RegisterInfo& info) {
  absl::StatusOr<std::string> body =
      Call("register", "POST",
           absl::StrCat("/api/agent/delegates/register?accountId=",
                        Enc(account_id_)),
           RegisterRequestJson(info), absl::Seconds(30));
  if (!body.ok()) return body.status();
  absl::StatusOr<std::string> id = ParseRegisterResponse(*body);
  if (!id.ok()) {
    return absl::UnavailableError(
        absl::StrCat("register: the manager's answer is not usable: ",
                     id.status().message()));
  }
  return id;
}

absl::Status HarnessClient::Heartbeat(const RegisterInfo& info) {
  return Call("heartbeat", "POST",
              absl::StrCat(
                  "/api/agent/delegates/heartbeat-with-polling?accountId=",
                  Enc(account_id_)),
              RegisterRequestJson(info), absl::Seconds(15))
      .status();
}

absl::Status HarnessClient::Unregister(const RegisterInfo& info) {
  return Call("unregister", "POST",
              absl::StrCat("/api/agent/delegates/unregister?accountId=",
                           Enc(account_id_)),
              UnregisterRequestJson(info), absl::Seconds(30))
      .status();
}

absl::StatusOr<std::vector<RunnerEvent>> HarnessClient::PollEvents(
    const std::string& delegate_id) {
  absl::StatusOr<std::string> body =
      Call("runner-events", "GET",
           absl::StrCat("/api/executions/", Enc(delegate_id),
                        "/runner-events?accountId=", Enc(account_id_)),
           "", absl::Seconds(30));
  if (!body.ok()) return body.status();
  return ParseRunnerEvents(*body);
}

absl::StatusOr<std::vector<TaskRequest>> HarnessClient::Acquire(
    const std::string& task_id, const std::string& delegate_id,
    const std::string& delegate_name, std::string* raw) {
  absl::StatusOr<std::string> body =
      Call("task request", "GET",
           absl::StrCat("/api/executions/", Enc(task_id),
                        "/request?delegateId=", Enc(delegate_id),
                        "&accountId=", Enc(account_id_), "&delegateInstanceId=",
                        Enc(delegate_id), "&delegateName=", Enc(delegate_name)),
           "", absl::Seconds(30), transport_.max_task_payload_bytes);
  if (absl::IsResourceExhausted(body.status())) {
    // Not read any further, and not fetched again: the connection answers
    // the task FAILED with this.
    return absl::InvalidArgumentError(absl::StrCat(
        "the task's payload is larger than ", transport_.max_task_payload_bytes,
        " bytes, the limit DELEGATE_MAX_TASK_PAYLOAD_BYTES sets"));
  }
  if (!body.ok()) return body.status();
  absl::StatusOr<std::vector<TaskRequest>> parsed = ParseAcquireResponse(*body);
  if (parsed.ok() && raw) *raw = *std::move(body);
  return parsed;
}

absl::Status HarnessClient::SendResponse(const std::string& task_id,
                                         const std::string& delegate_id,
                                         const std::string& body) {
  return Call("task-response", "POST",
              absl::StrCat("/api/executions/", Enc(task_id),
                           "/task-response?runnerId=", Enc(delegate_id),
                           "&accountId=", Enc(account_id_)),
              body, absl::Seconds(30))
      .status();
}

bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

absl::Status Retry(
    const RetryPolicy& policy, const std::function<absl::Status()>& attempt,
    const std::function<bool()>& stopped,
    const std::function<void(const absl::Status&, absl::Duration)>& on_retry) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const absl::Time give_up = policy.max_elapsed == absl::InfiniteDuration()
                                 ? absl::InfiniteFuture()
                                 : absl::Now() + policy.max_elapsed;
  absl::Duration interval = policy.initial;
  while (true) {
    absl::Status s = attempt();
    if (s.ok() || !IsRetryable(s)) return s;
    std::uniform_real_distribution<double> spread(1 - policy.jitter,
                                                  1 + policy.jitter);
    const absl::Duration wait = interval * spread(rng);
    if (absl::Now() + wait > give_up) return s;
    if (on_retry) on_retry(s, wait);
    const absl::Time until = absl::Now() + wait;
    while (absl::Now() < until) {
      if (stopped && stopped()) return s;
      absl::SleepFor(std::min(absl::Milliseconds(50), until - absl::Now()));
    }
    interval = std::min(interval * policy.multiplier, policy.max_interval);
  }
}

}  // namespace delegate::harness
