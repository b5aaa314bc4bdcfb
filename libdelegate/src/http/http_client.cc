#include "http/http_client.h"

#include <curl/curl.h>

#include <cstring>
#include <exception>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate::http {
namespace {

// How long one wait for socket activity may last before the abort predicate
// is polled again; the contract promises abandonment within ~100 ms.
constexpr int kPollIntervalMs = 100;

void GlobalInitOnce() {
  // curl_global_init is not thread-safe and must precede every other call;
  // it is never undone because handles may live until exit.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

long ToMillis(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 1;
  int64_t ms = absl::ToInt64Milliseconds(d);
  return ms < 1 ? 1 : static_cast<long>(ms);
}

// The URL for messages: without its query, which may carry tokens.
std::string UrlForMessages(const Request& request) {
  std::string url = request.url.substr(0, request.url.find('?'));
  if (!request.unix_socket.empty()) {
    absl::StrAppend(&url, " (unix socket ", request.unix_socket, ")");
  }
  return url;
}

// What the callbacks share with Perform for one transfer. Callbacks run on
// the thread inside Perform, so no locking.
struct Transfer {
  const Request* request = nullptr;
  CURL* easy = nullptr;
  Response* response = nullptr;
  bool status_checked = false;
  bool streaming = false;      // the body goes to request->on_body
  bool stopped = false;        // on_body returned false
  bool aborted = false;        // abort returned true
  bool too_big = false;        // max_body_bytes exceeded
  std::string callback_error;  // an exception thrown by a callback
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  std::string_view line(data, n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
    line.remove_suffix(1);
  }
  try {
    if (line.starts_with("HTTP/")) {
      // A new status line (after "100 Continue", or a new response): only
      // the final response's headers count.
      t->response->headers.clear();
    } else if (size_t colon = line.find(':'); colon != std::string_view::npos) {
      std::string_view value = line.substr(colon + 1);
      absl::string_view trimmed = absl::StripAsciiWhitespace(AbslView(value));
      t->response->headers.emplace_back(std::string(line.substr(0, colon)),
                                        std::string(trimmed));
    }
  } catch (const std::exception& e) {
    t->callback_error = e.what();
    return 0;
  }
  return n;
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (!t->status_checked) {
    // Body bytes only arrive once the final status line has been read.
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    t->streaming = t->request->on_body && code >= 200 && code < 300;
    t->status_checked = true;
  }
  try {
    if (t->streaming) {
      if (!t->request->on_body(std::string_view(data, n))) {
        t->stopped = true;
        return 0;  // anything but n fails the transfer with a write error
      }
      // A fast stream may never let the poll loop run; honour abort here.
      if (t->request->abort && t->request->abort()) {
        t->aborted = true;
        return 0;
      }
      return n;
    }
    std::string& body = t->response->body;
    if (body.size() + n > t->request->max_body_bytes) {
      t->too_big = true;
      return 0;
    }
    body.append(data, n);
  } catch (const std::exception& e) {
    t->callback_error = e.what();
    return 0;
  }
  return n;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (!t->request->abort) return 0;
  try {
    if (t->request->abort()) {
      t->aborted = true;
      return 1;  // CURLE_ABORTED_BY_CALLBACK
    }
  } catch (const std::exception& e) {
    t->callback_error = e.what();
    return 1;
  }
  return 0;
}

absl::StatusCode CodeFor(CURLcode result) {
  switch (result) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return absl::StatusCode::kInvalidArgument;
    case CURLE_OUT_OF_MEMORY:
      return absl::StatusCode::kResourceExhausted;
    default:
      // Refused, reset, resolution failures, TLS handshake and
      // verification failures: the peer cannot be used right now.
      return absl::StatusCode::kUnavailable;
  }
}

}  // namespace

struct HttpClient::Handle {
  CURL* easy = nullptr;
  // Driving the easy handle through its own multi handle lets Perform wait
  // for socket activity in 100 ms slices and poll `abort` in between; the
  // multi handle also keeps the connection cache between requests.
  CURLM* multi = nullptr;

  ~Handle() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    if (multi != nullptr) curl_multi_cleanup(multi);
  }
};

std::string_view Response::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(AbslView(key), AbslView(name))) return value;
  }
  return {};
}

HttpClient::HttpClient(size_t max_idle_handles)
    : max_idle_handles_(max_idle_handles) {
  GlobalInitOnce();
}

HttpClient::~HttpClient() = default;

std::unique_ptr<HttpClient::Handle> HttpClient::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      std::unique_ptr<Handle> handle = std::move(idle_.back());
      idle_.pop_back();
      return handle;
    }
  }
  auto handle = std::make_unique<Handle>();
  handle->easy = curl_easy_init();
  handle->multi = curl_multi_init();
  if (handle->easy == nullptr || handle->multi == nullptr) return nullptr;
  return handle;
}

void HttpClient::Release(std::unique_ptr<Handle> handle) {
  absl::MutexLock lock(&mu_);
  if (idle_.size() < max_idle_handles_) idle_.push_back(std::move(handle));
}

absl::StatusOr<Response> HttpClient::Perform(const Request& request) {
  if (request.url.empty() || request.method.empty()) {
    return absl::InvalidArgumentError("HTTP request without a URL or method");
  }
  std::unique_ptr<Handle> handle = Acquire();
  if (handle == nullptr) {
    return absl::ResourceExhaustedError("cannot create a libcurl handle");
  }
  CURL* easy = handle->easy;
  curl_easy_reset(easy);  // keeps the connection cache, drops old options

  Response response;
  Transfer transfer;
  transfer.request = &request;
  transfer.easy = easy;
  transfer.response = &response;
  char error_buffer[CURL_ERROR_SIZE] = {};

  curl_slist* headers = nullptr;
  for (const auto& [name, value] : request.headers) {
    // "Name;" is libcurl's spelling of a header with an empty value.
    std::string line = value.empty() ? absl::StrCat(name, ";")
                                     : absl::StrCat(name, ": ", value);
    headers = curl_slist_append(headers, line.c_str());
  }
  const bool sends_body = !request.body.empty() || request.method == "POST" ||
                          request.method == "PUT" || request.method == "PATCH";
  if (sends_body) {
    // libcurl would otherwise wait for a "100 Continue" on larger bodies.
    headers = curl_slist_append(headers, "Expect:");
  }

  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);  // we are multi-threaded
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
#if CURL_AT_LEAST_VERSION(7, 85, 0)
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
  if (!request.unix_socket.empty()) {
    curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH,
                     request.unix_socket.c_str());
  }
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                   ToMillis(request.connect_timeout));
  if (request.timeout != absl::InfiniteDuration()) {
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ToMillis(request.timeout));
  }
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  if (headers != nullptr) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);

  if (request.method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (sends_body) {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
    // Not copied: `request` outlives the transfer.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.data());
    if (request.method != "POST") {
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    }
  } else if (request.method != "GET") {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }

  if (!request.tls.ca_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_CAINFO, request.tls.ca_file.c_str());
  }
  if (!request.tls.client_cert.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLCERT, request.tls.client_cert.c_str());
  }
  if (!request.tls.client_key.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLKEY, request.tls.client_key.c_str());
  }
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER,
                   request.tls.verify_peer ? 1L : 0L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST,
                   request.tls.verify_peer ? 2L : 0L);

  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &transfer);

  CURLcode result = CURLE_OK;
  bool done = false;
  CURLMcode mc = curl_multi_add_handle(handle->multi, easy);
  while (mc == CURLM_OK) {
    int running = 0;
    mc = curl_multi_perform(handle->multi, &running);
    if (mc != CURLM_OK) break;
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(handle->multi, &left)) {
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
        result = msg->data.result;
        done = true;
      }
    }
    if (done) break;
    if (request.abort) {
      bool abort = false;
      try {
        abort = request.abort();
      } catch (const std::exception& e) {
        transfer.callback_error = e.what();
        abort = true;
      }
      if (abort) {
        transfer.aborted = true;
        break;
      }
    }
    mc = curl_multi_poll(handle->multi, nullptr, 0, kPollIntervalMs, nullptr);
  }
  // Removing an unfinished transfer closes its connection, so an abandoned
  // stream never leaks into the next request on this handle.
  curl_multi_remove_handle(handle->multi, easy);
  curl_slist_free_all(headers);
  // The error buffer lives on this stack frame; do not leave it dangling.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, nullptr);
  long code = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
  response.status = static_cast<int>(code);
  long os_errno = 0;
  curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &os_errno);
  Release(std::move(handle));  // `easy` may now serve another thread

  const std::string what =
      absl::StrCat(request.method, " ", UrlForMessages(request));
  if (!transfer.callback_error.empty()) {
    return absl::InternalError(
        absl::StrCat(what, ": callback failed: ", transfer.callback_error));
  }
  if (transfer.aborted) {
    return absl::CancelledError(absl::StrCat(what, ": abandoned"));
  }
  if (transfer.stopped) {
    return absl::CancelledError(
        absl::StrCat(what, ": abandoned by the body callback"));
  }
  if (transfer.too_big) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": response body larger than ",
                     request.max_body_bytes, " bytes"));
  }
  if (mc != CURLM_OK) {
    return absl::InternalError(
        absl::StrCat(what, ": ", curl_multi_strerror(mc)));
  }
  if (!done) {
    return absl::InternalError(absl::StrCat(what, ": transfer did not end"));
  }
  if (result != CURLE_OK) {
    std::string reason =
        error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(result);
    if (result == CURLE_COULDNT_CONNECT && !request.unix_socket.empty()) {
      // libcurl words it as a failure to reach "localhost port 80".
      reason =
          absl::StrCat("cannot connect to the socket: ",
                       os_errno != 0 ? std::strerror(static_cast<int>(os_errno))
                                     : curl_easy_strerror(result));
    }
    return absl::Status(CodeFor(result), absl::StrCat(what, ": ", reason));
  }
  return response;
}

std::string UrlEncode(std::string_view s, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' ||
        c == '~' || keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

}  // namespace delegate::http
