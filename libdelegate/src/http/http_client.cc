#include "http/http_client.h"

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstring>
#include <exception>
#include <iterator>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// `url` without "user:password@" before its host.
std::string WithoutUserinfo(std::string_view url) {
  size_t scheme = url.find("://");
  size_t host = scheme == std::string_view::npos ? 0 : scheme + 3;
  size_t end = url.find_first_of("/?#", host);
  size_t at = url.substr(0, end).rfind('@');
  if (at == std::string_view::npos || at < host) return std::string(url);
  return absl::StrCat(AbslView(url.substr(0, host)),
                      AbslView(url.substr(at + 1)));
}

// The URL for messages: without its query, which may carry tokens, nor
// credentials; likewise the proxy's.
std::string UrlForMessages(const Request& request) {
  std::string url = WithoutUserinfo(
      std::string_view(request.url).substr(0, request.url.find_first_of("?#")));
  if (!request.unix_socket.empty()) {
    absl::StrAppend(&url, " (unix socket ", request.unix_socket, ")");
  }
  if (!request.proxy.empty()) {
    absl::StrAppend(&url, " via proxy ", WithoutUserinfo(request.proxy));
  }
  return url;
}

bool IsTlsError(CURLcode result) {
  switch (result) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_USE_SSL_FAILED:
#if CURL_AT_LEAST_VERSION(7, 77, 0)
    case CURLE_SSL_CLIENTCERT:
#endif
      return true;
    default:
      return false;
  }
}

// Adds every certificate in the PEM file `path` to `store`.
absl::Status AddCertificates(X509_STORE* store, const std::string& path) {
  ERR_clear_error();
  BIO* bio = BIO_new_file(path.c_str(), "r");
  if (bio == nullptr) {
    const int error = errno;
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot read CA file \"", path, "\": ", std::strerror(error)));
  }
  int added = 0;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    if (X509_STORE_add_cert(store, cert) == 1) ++added;
    X509_free(cert);
  }
  BIO_free(bio);
  ERR_clear_error();  // the read that ends the loop leaves "no start line"
  if (added == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("no PEM certificate in CA file \"", path, "\""));
  }
  return absl::OkStatus();
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
  absl::Status tls_setup;      // adding extra_ca_files failed
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

// Called by libcurl with each new connection's SSL_CTX, after it loaded its
// CA store: the extra CAs join that store rather than replace it.
CURLcode OnSslContext(CURL*, void* ssl_ctx, void* user) {
  auto* t = static_cast<Transfer*>(user);
  X509_STORE* store = SSL_CTX_get_cert_store(static_cast<SSL_CTX*>(ssl_ctx));
  for (const std::string& file : t->request->tls.extra_ca_files) {
    if (absl::Status s = AddCertificates(store, file); !s.ok()) {
      t->tls_setup = s;
      return CURLE_SSL_CACERT_BADFILE;
    }
  }
  return CURLE_OK;
}

absl::StatusCode CodeFor(CURLcode result) {
  switch (result) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    // The caller's own TLS files are unusable: retrying will not help.
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CRL_BADFILE:
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
  std::string trust_key;  // see Acquire

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

std::unique_ptr<HttpClient::Handle> HttpClient::Acquire(
    const std::string& trust_key) {
  {
    absl::MutexLock lock(&mu_);
    for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
      if ((*it)->trust_key != trust_key) continue;
      std::unique_ptr<Handle> handle = std::move(*it);
      idle_.erase(std::next(it).base());
      return handle;
    }
  }
  auto handle = std::make_unique<Handle>();
  handle->trust_key = trust_key;
  handle->easy = curl_easy_init();
  handle->multi = curl_multi_init();
  if (handle->easy == nullptr || handle->multi == nullptr) return nullptr;
  return handle;
}

void HttpClient::Release(std::unique_ptr<Handle> handle) {
  std::unique_ptr<Handle> evicted;  // cleaned up outside the lock
  absl::MutexLock lock(&mu_);
  if (max_idle_handles_ == 0) return;
  if (idle_.size() >= max_idle_handles_) {
    evicted = std::move(idle_.front());  // the least recently used
    idle_.erase(idle_.begin());
  }
  idle_.push_back(std::move(handle));
}

absl::StatusOr<Response> HttpClient::Perform(const Request& request) {
  if (request.url.empty() || request.method.empty()) {
    return absl::InvalidArgumentError("HTTP request without a URL or method");
  }
  std::unique_ptr<Handle> handle =
      Acquire(absl::StrJoin(request.tls.extra_ca_files, "\n"));
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
  bool asks_expect = false;
  for (const auto& [name, value] : request.headers) {
    if (absl::EqualsIgnoreCase(AbslView(name), "expect")) asks_expect = true;
    // "Name;" is libcurl's spelling of a header with an empty value.
    std::string line = value.empty() ? absl::StrCat(name, ";")
                                     : absl::StrCat(name, ": ", value);
    headers = curl_slist_append(headers, line.c_str());
  }
  const bool sends_body = !request.body.empty() || request.method == "POST" ||
                          request.method == "PUT" || request.method == "PATCH";
  if (sends_body && !asks_expect) {
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
  if (request.fresh_connection) {
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
  }
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                   ToMillis(request.connect_timeout));
  if (request.timeout != absl::InfiniteDuration()) {
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ToMillis(request.timeout));
  }
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  if (!request.proxy.empty()) {
    curl_easy_setopt(easy, CURLOPT_PROXY, request.proxy.c_str());
  } else if (!request.use_env_proxy) {
    curl_easy_setopt(easy, CURLOPT_PROXY, "");  // "": no proxy, env or not
  }
  if (!request.use_env_proxy || !request.no_proxy.empty()) {
    // Set even when empty: libcurl reads no_proxy/NO_PROXY from the process
    // environment when it is unset, whatever the proxy option says.
    curl_easy_setopt(easy, CURLOPT_NOPROXY, request.no_proxy.c_str());
  }
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
  if (!request.tls.extra_ca_files.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, &transfer);
    if (curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, &OnSslContext) !=
        CURLE_OK) {
      curl_slist_free_all(headers);
      curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, nullptr);
      Release(std::move(handle));
      return absl::FailedPreconditionError(absl::StrCat(
          request.method, " ", UrlForMessages(request),
          ": TLS: extra_ca_files needs a libcurl built with OpenSSL"));
    }
  }

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
  if (!transfer.tls_setup.ok()) {
    return absl::Status(
        transfer.tls_setup.code(),
        absl::StrCat(what, ": TLS: ", transfer.tls_setup.message()));
  }
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
    // A TLS alert after the handshake (a client certificate refused under
    // TLS 1.3) surfaces as a read error.
    const bool tls = IsTlsError(result) || absl::StartsWith(reason, "OpenSSL");
    return absl::Status(CodeFor(result),
                        absl::StrCat(what, tls ? ": TLS: " : ": ", reason));
  }
  return response;
}

}  // namespace delegate::http
