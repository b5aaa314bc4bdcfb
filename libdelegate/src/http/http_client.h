// A small HTTP/1.1 client over libcurl, shared by the Docker Engine client
// (plain HTTP over a unix socket or TCP) and, later, the Harness manager REST
// calls (HTTPS). It knows nothing about either API: it moves one request and
// its response, optionally streaming the body and abandoning the transfer
// when asked.
#ifndef DELEGATE_HTTP_HTTP_CLIENT_H_
#define DELEGATE_HTTP_HTTP_CLIENT_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace delegate::http {

// For https:// URLs. Not exercised yet; kept so that the manager client can
// fill them in without reshaping the request.
struct TlsOptions {
  std::string ca_file;      // PEM bundle; empty: the system's
  std::string client_cert;  // PEM; with client_key for mutual TLS
  std::string client_key;
  bool verify_peer = true;  // also verifies the host name
};

using Header = std::pair<std::string, std::string>;

struct Request {
  std::string method = "GET";
  // Absolute: "http://host[:port]/path?query". With `unix_socket` set, the
  // host part only fills the Host header.
  std::string url;
  std::vector<Header> headers;  // sent as given; "Name: value"
  std::string body;             // sent when non-empty, or for POST/PUT/PATCH
  std::string unix_socket;      // connect to this path instead of the host

  absl::Duration connect_timeout = absl::Seconds(10);
  // The whole exchange, body included; infinite for long-lived streams,
  // which `abort` ends instead.
  absl::Duration timeout = absl::Minutes(5);

  // When set, the body of a 2xx response is handed here as it arrives
  // instead of being kept in Response::body (which then stays empty).
  // Returning false abandons the transfer: Perform returns Cancelled. The
  // body of a non-2xx response is always kept in Response::body, so that
  // callers can read an error document.
  std::function<bool(std::string_view chunk)> on_body;
  // Polled at least every 100 ms while the transfer runs (and between
  // chunks); returning true abandons it: Perform returns Cancelled.
  std::function<bool()> abort;

  // A body kept in Response::body longer than this fails the request with
  // ResourceExhausted (a streamed body has no cap).
  size_t max_body_bytes = size_t{64} << 20;

  TlsOptions tls;
};

struct Response {
  int status = 0;
  // Of the final response (not of a "100 Continue"), names as received.
  std::vector<Header> headers;
  std::string body;

  // The first header named `name`, compared case-insensitively; empty when
  // absent.
  std::string_view header(std::string_view name) const;
};

// Thread-safe: Perform may be called from many threads at once. Each call
// takes a libcurl handle from a pool (or makes one) and gives it back when
// done, so that a kept-alive connection is reused by a later request. The
// client must outlive every Perform call.
class HttpClient {
 public:
  // At most `max_idle_handles` handles (each with its open connections) are
  // kept between requests; more concurrent requests get fresh ones.
  explicit HttpClient(size_t max_idle_handles = 8);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Returns the response whatever its status (a 404 is a Response, not an
  // error). Errors are about the transfer only: Unavailable when the
  // connection cannot be made or breaks, DeadlineExceeded on a timeout,
  // Cancelled when `abort` or `on_body` stopped it, InvalidArgument for a
  // malformed request, ResourceExhausted for an oversized kept body.
  absl::StatusOr<Response> Perform(const Request& request);

 private:
  struct Handle;
  std::unique_ptr<Handle> Acquire();
  void Release(std::unique_ptr<Handle> handle);

  const size_t max_idle_handles_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Handle>> idle_ ABSL_GUARDED_BY(mu_);
};

// Percent-encodes everything but RFC 3986 unreserved characters and those
// in `keep` (e.g. "/" for a path).
std::string UrlEncode(std::string_view s, std::string_view keep = "");

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_HTTP_CLIENT_H_
