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

// For https:// URLs.
struct TlsOptions {
  // A PEM bundle of CAs trusted instead of the system's store; empty: the
  // system's.
  std::string ca_file;
  // PEM files of more CAs, trusted on top of the store above (the system's
  // unless ca_file is set), e.g. a corporate CA next to the public ones.
  // Each must hold at least one certificate, or the request fails with
  // InvalidArgument.
  std::vector<std::string> extra_ca_files;
  // PEM; with client_key for mutual TLS (client_key may be empty when
  // client_cert also holds the key). Unencrypted keys only.
  std::string client_cert;
  std::string client_key;
  // Verifies the server's certificate chain and that it names the URL's
  // host. Off only for tests and diagnostics.
  bool verify_peer = true;
};

using Header = std::pair<std::string, std::string>;

struct Request {
  std::string method = "GET";
  // Absolute: "http://host[:port]/path?query". With `unix_socket` set, the
  // host part only fills the Host header.
  std::string url;
  std::vector<Header> headers;  // sent as given; "Name: value"
  // Sent when non-empty, or for POST/PUT/PATCH, with a Content-Length and
  // without "Expect: 100-continue" unless `headers` asks for it.
  std::string body;
  std::string unix_socket;  // connect to this path instead of the host

  // A proxy: "http://[user:password@]host:port" (also "https://",
  // "socks5h://"); https:// URLs go through it with CONNECT. Empty: none,
  // unless use_env_proxy.
  std::string proxy;
  // Hosts reached directly even with a proxy: "localhost,.corp,10.0.0.0/8",
  // or "*". Empty: none, unless use_env_proxy (then no_proxy/NO_PROXY);
  // without use_env_proxy the process's variables are never read.
  std::string no_proxy;
  // With `proxy` empty, take the proxy from the environment as libcurl does
  // (http_proxy, https_proxy/HTTPS_PROXY, all_proxy/ALL_PROXY, with
  // no_proxy/NO_PROXY). Off by default so that no variable the caller did
  // not choose can send a request, and its credentials, elsewhere.
  bool use_env_proxy = false;

  // A new connection, closed after this request: whether the peer accepts
  // connections now (a server shutting down may still answer on a kept-alive
  // one).
  bool fresh_connection = false;

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
// done, so that a kept-alive connection is reused by a later request with
// the same TLS trust. The client must outlive every Perform call.
class HttpClient {
 public:
  // At most `max_idle_handles` handles (each with its open connections) are
  // kept between requests; more concurrent requests get fresh ones.
  explicit HttpClient(size_t max_idle_handles = 8);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Returns the response whatever its status (a 404 is a Response, not an
  // error; redirects are never followed, so a 302 is one too). Errors are
  // about the transfer only: Unavailable when the connection cannot be made
  // or breaks, or the server's certificate is not trusted,
  // DeadlineExceeded on a timeout, Cancelled when `abort` or `on_body`
  // stopped it, InvalidArgument for a malformed request or an unusable TLS
  // file (CA, client certificate or key), ResourceExhausted for an oversized
  // kept body. Messages name the method and the URL without its query and
  // credentials (and the proxy, likewise); never headers or bodies. TLS
  // failures read "TLS: " and libcurl's reason.
  absl::StatusOr<Response> Perform(const Request& request);

 private:
  struct Handle;
  // A pooled handle whose connections were verified with `trust_key` (the
  // request's extra_ca_files), or a new one: libcurl would otherwise reuse a
  // connection verified against other CAs.
  std::unique_ptr<Handle> Acquire(const std::string& trust_key);
  void Release(std::unique_ptr<Handle> handle);

  const size_t max_idle_handles_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Handle>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_HTTP_CLIENT_H_
