// A small HTTP/1.1 server: one thread per connection, keep-alive, request
// bodies framed by Content-Length or chunked, optional TLS (and mutual TLS)
// over OpenSSL. It serves the delegate's ops endpoint (/health, /ready,
// /metrics) and, in tests, a reference manager that answers JSON REST calls
// and long polls. Every response is sent whole, with a Content-Length: there
// is no response streaming.
#ifndef DELEGATE_HTTP_HTTP_SERVER_H_
#define DELEGATE_HTTP_HTTP_SERVER_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "http/http_client.h"     // Header
#include "http/server_request.h"  // ServerRequest
#include "http/tls_stream.h"      // ServerTlsOptions

namespace delegate::http {

struct ServerResponse {
  int status = 200;  // REQUIRES: 200..599 (anything else answers 500)
  // Sent as Content-Type unless empty.
  std::string content_type = "application/json";
  // Sent as given, after Content-Type. Content-Length and Transfer-Encoding
  // are the server's and are dropped; "Connection: close" closes the
  // connection after the response. A name or value with CR, LF or NUL makes
  // the response a 500.
  std::vector<Header> headers;
  // Not sent for 204 and 304, nor in answer to HEAD (whose Content-Length
  // is still the body's).
  std::string body;
};

struct ServerOptions {
  // A numeric IPv4 or IPv6 address (brackets allowed: "[::1]") or a host
  // name; "0.0.0.0" for every IPv4 interface, "::" for every interface.
  // Empty: every interface.
  std::string address = "127.0.0.1";
  int port = 0;  // 0: an ephemeral port, see HttpServer::port()
  std::optional<ServerTlsOptions> tls;  // TLS 1.2 or later when set

  // Connections held at once. A connection that arrives at the cap takes
  // the place of the oldest idle one (connected, or between requests, with
  // no byte of a request sent), preferring the client that holds the most
  // connections, which is closed. Only when none is idle is it answered 503
  // and closed (a few at a time; past those, closed unanswered). So idle
  // connections, however many, never keep a new client (a liveness probe)
  // out. Each connection served has a thread.
  size_t max_connections = 512;
  // Connections from one client address (its IP, whatever the port) held at
  // once; beyond it the client's own oldest idle connection is closed, or,
  // when none is idle, the newcomer answered 503. 0: no cap per client.
  size_t max_connections_per_client = 128;
  // The request line; longer is answered 414.
  size_t max_request_line_bytes = size_t{8} << 10;
  // The request line and headers (and a chunked body's trailers); larger is
  // answered 431.
  size_t max_header_bytes = size_t{64} << 10;
  // Header fields in a request; more are answered 431.
  size_t max_header_count = 100;
  // A request body (after de-chunking); larger is answered 413 as soon as
  // that is known (from Content-Length, before the body is read). A GET or
  // HEAD with a body is answered 400 before it is read, whatever the limit.
  size_t max_body_bytes = size_t{64} << 20;
  // When set, the body limit of a request given its head (method, path,
  // headers; no body): a route's limit. The lower of it and max_body_bytes
  // applies. Called on connection threads, at once.
  std::function<size_t(const ServerRequest& head)> body_limit;
  // A connection with no request in progress is closed after this long.
  absl::Duration idle_timeout = absl::Seconds(60);
  // Bounds the TLS handshake, and the receipt of a request's line and
  // headers from its first byte (in all, however the bytes trickle in).
  // Past it the request is answered 408 and its connection closed.
  absl::Duration head_timeout = absl::Seconds(10);
  // Bounds each wait for more of a request's body; and the body as a whole
  // must come at min_body_bytes_per_second or faster, after this much grace.
  // Past either, 408, and the connection is closed.
  absl::Duration read_timeout = absl::Seconds(30);
  size_t min_body_bytes_per_second = 1024;
  // A response the client does not take within this closes the connection.
  absl::Duration write_timeout = absl::Seconds(30);

  // Called, from connection threads and possibly at once, with a description
  // of what the client was not told in detail: a handler's exception, a
  // failed TLS handshake, an invalid response. May be empty.
  std::function<void(std::string_view message)> on_error;
};

// Called on the connection's thread, from many threads at once; returns the
// response. An exception it throws is answered 500 (and reported to
// ServerOptions::on_error); the server keeps serving.
using Handler = std::function<ServerResponse(const ServerRequest&)>;

// Thread-safe. Requests on one connection are handled one after another, in
// order; requests on different connections concurrently.
class HttpServer {
 public:
  // Listens and starts serving. Fails with the address and port in the
  // message: Unavailable when the address is in use, InvalidArgument for a
  // bad address, port or TLS file, PermissionDenied for a privileged port.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      ServerOptions options, Handler handler);

  // Stop()s.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port listened on (the ephemeral one when options.port was 0).
  int port() const { return port_; }
  // "http://127.0.0.1:PORT" or "https://...", with the address listened on
  // ("127.0.0.1" for "0.0.0.0", "[::1]" for "::").
  std::string url() const;

  // TCP connections accepted since Start, including any answered 503.
  size_t connections_accepted() const { return accepted_.load(); }
  // Idle connections closed to make room for new ones, since Start.
  size_t connections_evicted() const { return evicted_.load(); }

  // Closes the listener and every connection, waiting for handler calls in
  // flight to return (their responses are sent if the client takes them
  // within a second). Idempotent; returns promptly whatever the clients do.
  // REQUIRES: not called from a handler.
  void Stop();

 private:
  struct Connection;
  HttpServer(ServerOptions options, Handler handler);
  absl::Status Listen();
  void AcceptLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void Serve(Connection* connection) ABSL_LOCKS_EXCLUDED(mu_);
  // Joins the threads of the connections that have finished.
  void ReapFinished() ABSL_LOCKS_EXCLUDED(mu_);
  // Makes room for a connection from `client`: false when it must be
  // answered 503 (the caps are reached and no connection is idle).
  bool Admit(const std::string& client) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ServerOptions options_;
  const Handler handler_;
  std::unique_ptr<ServerTlsContext> tls_;  // null without TLS
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // an eventfd, readable once Stop has begun
  int port_ = 0;
  std::string host_for_url_;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> accepted_{0};
  std::atomic<size_t> evicted_{0};
  std::thread acceptor_;
  std::once_flag stop_once_;

  absl::Mutex mu_;
  // Connections whose thread runs; each moves itself to finished_ when done,
  // for the acceptor (or Stop) to join.
  std::list<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
  std::list<std::unique_ptr<Connection>> finished_ ABSL_GUARDED_BY(mu_);
  // Not yet finished, nor evicted (an evicted one is on its way out).
  size_t serving_ ABSL_GUARDED_BY(mu_) = 0;
  size_t rejecting_ ABSL_GUARDED_BY(mu_) = 0;  // answering 503
};

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_HTTP_SERVER_H_
