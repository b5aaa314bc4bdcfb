#include "aws/json_client.h"

#include <algorithm>
#include <random>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "aws/sigv4.h"
#include "delegate/version.h"
#include "rapidjson/document.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate::aws {
namespace {

constexpr char kPayloadUrl[] = "type.libdelegate/aws.error";

double ThreadRandom() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
}

absl::StatusCode CodeFor(const AwsError& e) {
  const std::string_view code = e.code;
  if (IsThrottlingCode(code)) return absl::StatusCode::kResourceExhausted;
  if (code == "ResourceAlreadyExistsException") {
    return absl::StatusCode::kAlreadyExists;
  }
  if (absl::EndsWith(AbslView(code), "NotFoundException")) {
    return absl::StatusCode::kNotFound;
  }
  if (code == "ExpiredTokenException" || code == "InvalidSignatureException" ||
      code == "UnrecognizedClientException" || code == "InvalidClientTokenId" ||
      code == "IncompleteSignature" ||
      code == "MissingAuthenticationTokenException" ||
      code == "SignatureDoesNotMatch") {
    return absl::StatusCode::kUnauthenticated;
  }
  if (e.http_status == 403 || code == "AccessDeniedException") {
    return absl::StatusCode::kPermissionDenied;
  }
  if (e.http_status >= 500) return absl::StatusCode::kUnavailable;
  return absl::StatusCode::kInvalidArgument;
}

absl::Status ToStatus(const ServiceSpec& service, std::string_view operation,
                      const AwsError& e) {
  std::string message =
      absl::StrCat(AbslView(service.title), " ", AbslView(operation), ": ",
                   e.code, ": ", e.message);
  if (!e.request_id.empty()) {
    absl::StrAppend(&message, " (request id ", e.request_id, ")");
  }
  if (e.code == "UnrecognizedClientException" ||
      e.code == "InvalidSignatureException") {
    absl::StrAppend(&message,
                    "; check the AWS access key and secret (or the task "
                    "role), and the machine's clock");
  }
  absl::Status status(CodeFor(e), message);
  const std::vector<std::string> fields = {absl::StrCat(e.http_status), e.code,
                                           e.request_id, e.message, e.body};
  const std::string encoded = absl::StrJoin(fields, absl::string_view("\0", 1));
  status.SetPayload(kPayloadUrl, absl::Cord(encoded));
  return status;
}

bool IsExpiredToken(std::string_view code) {
  return code == "ExpiredTokenException" || code == "ExpiredToken" ||
         code == "RequestExpired";
}

}  // namespace

// ------------------------------------------------------------ errors

std::optional<AwsError> GetAwsError(const absl::Status& status) {
  auto payload = status.GetPayload(kPayloadUrl);
  if (!payload) return std::nullopt;
  std::vector<std::string> parts = absl::StrSplit(
      std::string(*payload), absl::MaxSplits(absl::string_view("\0", 1), 4));
  if (parts.size() != 5) return std::nullopt;
  AwsError e;
  if (!absl::SimpleAtoi(parts[0], &e.http_status)) return std::nullopt;
  e.code = std::move(parts[1]);
  e.request_id = std::move(parts[2]);
  e.message = std::move(parts[3]);
  e.body = std::move(parts[4]);
  return e;
}

std::string AwsErrorCode(const absl::Status& status) {
  std::optional<AwsError> e = GetAwsError(status);
  return e ? e->code : "";
}

AwsError ParseAwsError(int http_status, std::string_view body) {
  AwsError e;
  e.http_status = http_status;
  e.body = std::string(body);
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    e.code = absl::StrCat(http_status);
    e.message = std::string(absl::StripAsciiWhitespace(AbslView(body)));
    return e;
  }
  e.message = json::StringMember(doc, "message");
  if (e.message.empty()) e.message = json::StringMember(doc, "Message");
  std::string code = json::StringMember(doc, "__type");
  if (code.empty()) code = json::StringMember(doc, "code");
  if (code.empty()) code = absl::StrCat(http_status);
  if (const size_t colon = code.find(':'); colon != std::string::npos) {
    code.resize(colon);
  }
  if (const size_t hash = code.rfind('#'); hash != std::string::npos) {
    code.erase(0, hash + 1);
  }
  e.code = std::move(code);
  return e;
}

bool IsThrottlingCode(std::string_view code) {
  static constexpr std::string_view kCodes[] = {
      "Throttling",
      "ThrottlingException",
      "ThrottledException",
      "RequestThrottledException",
      "TooManyRequestsException",
      "ProvisionedThroughputExceededException",
      "TransactionInProgressException",
      "RequestLimitExceeded",
      "BandwidthLimitExceeded",
      "LimitExceededException",
      "RequestThrottled",
      "SlowDown",
      "PriorRequestNotComplete",
      "EC2ThrottledException",
  };
  return std::find(std::begin(kCodes), std::end(kCodes), code) !=
         std::end(kCodes);
}

bool IsRetryableError(const AwsError& error) {
  if (error.http_status == 0) return true;  // no answer
  if (IsThrottlingCode(error.code)) return true;
  if (error.code == "RequestTimeout" ||
      error.code == "RequestTimeoutException" ||
      error.code == "InternalFailure" || error.code == "ServiceUnavailable" ||
      error.code == "ServiceUnavailableException") {
    return true;
  }
  return error.http_status == 500 || error.http_status == 502 ||
         error.http_status == 503 || error.http_status == 504;
}

// ------------------------------------------------------------ client

JsonClient::JsonClient(JsonClientOptions options)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : Clock::Real()),
      quota_(options_.retry.quota) {
  std::string_view rest = options_.endpoint;
  if (const size_t scheme = rest.find("://"); scheme != std::string::npos) {
    rest.remove_prefix(scheme + 3);
  }
  const size_t slash = rest.find('/');
  host_ = std::string(rest.substr(0, slash));
  path_ =
      slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (path_.empty() || path_.back() != '/') path_ += "/";
}

absl::Duration JsonClient::Backoff(int attempt, bool throttled) {
  const absl::Duration base =
      throttled ? options_.retry.throttle_base : options_.retry.other_base;
  const absl::Duration cap = std::min(base * (1 << std::min(attempt - 1, 20)),
                                      options_.retry.max_backoff);
  const double r = options_.random ? options_.random() : ThreadRandom();
  return cap * std::clamp(r, 0.0, 1.0);
}

bool JsonClient::TakeRetryQuota(bool throttled) {
  absl::MutexLock lock(&mu_);
  const int cost = throttled ? 5 : 14;
  if (quota_ < cost) return false;
  quota_ -= cost;
  return true;
}

void JsonClient::ReturnRetryQuota() {
  absl::MutexLock lock(&mu_);
  quota_ = std::min(quota_ + 1, options_.retry.quota);
}

absl::StatusOr<std::string> JsonClient::Call(
    std::string_view operation, std::string_view body,
    const std::function<bool()>& abort) {
  const std::string target = absl::StrCat(
      AbslView(options_.service.target_prefix), ".", AbslView(operation));
  bool refreshed = false;
  absl::Status last;
  for (int attempt = 1;; ++attempt) {
    if (abort && abort()) {
      return absl::CancelledError(absl::StrCat(AbslView(options_.service.title),
                                               " ", AbslView(operation),
                                               ": cancelled"));
    }
    absl::StatusOr<Credentials> credentials = options_.credentials->Get();
    if (!credentials.ok()) {
      return absl::Status(
          credentials.status().code(),
          absl::StrCat(
              AbslView(options_.service.title), " ", AbslView(operation),
              ": no AWS credentials: ", credentials.status().message()));
    }
    SignableRequest signable;
    signable.method = "POST";
    signable.path = path_;
    signable.headers = {
        {"Content-Type", "application/x-amz-json-1.1"},
        {"Host", host_},
        {"X-Amz-Target", target},
    };
    signable.body = std::string(body.empty() ? "{}" : body);
    SigningOptions signing;
    signing.region = options_.region;
    signing.service = std::string(options_.service.signing_name);
    signing.time = clock_.Now();
    Sign(*credentials, signing, signable);

    http::Request request;
    request.method = "POST";
    request.url = options_.endpoint;
    if (request.url.empty() || request.url.back() != '/') request.url += "/";
    request.headers = signable.headers;
    request.headers.push_back(
        {"User-Agent", absl::StrCat("libdelegate/", AbslView(Version()))});
    request.body = std::move(signable.body);
    request.timeout = options_.timeout;
    request.abort = abort;
    options_.transport.Apply(request);
    absl::StatusOr<http::Response> response = options_.http->Perform(request);

    AwsError error;
    if (!response.ok()) {
      if (absl::IsCancelled(response.status())) return response.status();
      std::string message(response.status().message());
      if (absl::StrContains(message, ": TLS: ")) {
        absl::StrAppend(&message, options_.transport.TlsHint());
      }
      if (absl::IsInvalidArgument(response.status())) {
        return absl::InvalidArgumentError(message);
      }
      error.http_status = 0;
      error.code = "ConnectionError";
      error.message = std::move(message);
    } else if (response->status >= 200 && response->status < 300) {
      ReturnRetryQuota();
      return std::move(response->body);
    } else {
      error = ParseAwsError(response->status, response->body);
      error.request_id = std::string(response->header("x-amzn-RequestId"));
    }

    if (IsExpiredToken(error.code) && !refreshed) {
      refreshed = true;
      options_.credentials->Invalidate();
      --attempt;  // a refresh is not one of the attempts
      continue;
    }
    const bool throttled = IsThrottlingCode(error.code);
    if (!IsRetryableError(error) || attempt >= options_.retry.max_attempts ||
        !TakeRetryQuota(throttled)) {
      if (error.http_status == 0) {
        return absl::UnavailableError(absl::StrCat(
            AbslView(options_.service.title), " ", AbslView(operation), ": ",
            error.message,
            attempt > 1 ? absl::StrCat(" (after ", attempt, " attempts)")
                        : std::string()));
      }
      return ToStatus(options_.service, operation, error);
    }
    clock_.SleepFor(Backoff(attempt, throttled));
  }
}

}  // namespace delegate::aws
