#include "http/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "http/http_syntax.h"
#include "http/request_parser.h"
#include "util/strings.h"

namespace delegate::http {
namespace {

// Connections answered 503 at once beyond max_connections; more are closed
// without a word, so that a flood cannot make threads without bound.
constexpr size_t kMaxRejecting = 16;
// How long a connection beyond max_connections may take to shake hands
// before it is told 503.
constexpr absl::Duration kRejectHandshakeTime = absl::Seconds(5);

// A connection's buffer keeps at most this much capacity between requests;
// past it, it is reallocated to what it holds.
constexpr size_t kKeptBufferBytes = size_t{64} << 10;
// A request this large (body and head) returns the allocator's free memory
// to the system once answered, so that a burst of large requests does not
// leave the process large.
constexpr size_t kTrimAfterBytes = size_t{1} << 20;

std::string HostPort(std::string_view host, int port) {
  if (host.find(':') != std::string_view::npos) {
    return absl::StrCat("[", AbslView(host), "]:", port);
  }
  return absl::StrCat(AbslView(host), ":", port);
}

std::string PeerAddress(const sockaddr_storage& addr, socklen_t len) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host,
                  sizeof(host), serv, sizeof(serv),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown";
  }
  std::string_view h = host;
  // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
  if (h.starts_with("::ffff:") && h.find('.') != std::string_view::npos) {
    h.remove_prefix(7);
  }
  int port = 0;
  (void)absl::SimpleAtoi(serv, &port);
  return HostPort(h, port);
}

// The client's address without the port: what the cap per client counts.
std::string ClientOf(const std::string& peer) {
  size_t colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

// Whether a connection may be evicted: it is idle while it waits for the
// first byte of a request. The connection's thread moves it between idle
// and busy; the acceptor, under the server's lock, from idle to evicted,
// after which the thread only winds down.
class IdleGate {
 public:
  // The connection waits for a request; false when it has been evicted.
  bool Idle() {
    idle_since_ns_.store(absl::ToUnixNanos(absl::Now()));
    int busy = kBusy;
    return state_.compare_exchange_strong(busy, kIdle) || busy == kIdle;
  }
  // A byte came; false when the connection was evicted first.
  bool Busy() {
    int idle = kIdle;
    return state_.compare_exchange_strong(idle, kBusy) || idle == kBusy;
  }
  // True when it was idle, and is now evicted.
  bool Evict() {
    int idle = kIdle;
    return state_.compare_exchange_strong(idle, kEvicted);
  }
  bool idle() const { return state_.load() == kIdle; }
  bool evicted() const { return state_.load() == kEvicted; }
  int64_t idle_since_ns() const { return idle_since_ns_.load(); }

 private:
  enum { kIdle, kBusy, kEvicted };
  // A new connection is idle: it has sent nothing yet.
  std::atomic<int> state_{kIdle};
  std::atomic<int64_t> idle_since_ns_{absl::ToUnixNanos(absl::Now())};
};

const char* Reason(int status) {
  static constexpr std::pair<int, const char*> kReasons[] = {
      {100, "Continue"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {206, "Partial Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {303, "See Other"},
      {304, "Not Modified"},
      {307, "Temporary Redirect"},
      {308, "Permanent Redirect"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {406, "Not Acceptable"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {410, "Gone"},
      {411, "Length Required"},
      {412, "Precondition Failed"},
      {413, "Content Too Large"},
      {415, "Unsupported Media Type"},
      {417, "Expectation Failed"},
      {422, "Unprocessable Content"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
  };
  for (const auto& [code, reason] : kReasons) {
    if (code == status) return reason;
  }
  return "Unknown";
}

// What became of reading a request.
struct ReadOutcome {
  enum Kind { kRequest, kClose, kError } kind = kClose;
  int status = 0;       // for kError: the answer, then the connection closes
  std::string message;  // for kError: the answer's body
};

ReadOutcome Got() { return {ReadOutcome::kRequest, 0, ""}; }
ReadOutcome Closed() { return {ReadOutcome::kClose, 0, ""}; }
ReadOutcome Fail(int status, std::string message) {
  return {ReadOutcome::kError, status, std::move(message)};
}

bool ValidHeaderText(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) ==
         std::string_view::npos;
}

// One connection's conversation, on its own thread.
class Session {
 public:
  Session(const ServerOptions& options, const Handler& handler,
          const std::atomic<bool>& stopping, TlsStream& stream,
          std::string peer, IdleGate& gate)
      : options_(options),
        handler_(handler),
        stopping_(stopping),
        stream_(stream),
        peer_(std::move(peer)),
        gate_(gate) {}

  void Run() {
    if (stream_.tls()) {
      std::string error;
      StreamResult r =
          stream_.Handshake(absl::Now() + options_.head_timeout, &error);
      if (r != StreamResult::kOk) {
        if (r == StreamResult::kError) {
          Report(
              absl::StrCat("TLS handshake with ", peer_, " failed: ", error));
          // Lingering lets the client read the alert (say, "certificate
          // required") rather than a reset.
          stream_.Finish(/*linger=*/true);
        }
        return;
      }
      client_subject_ = stream_.PeerCertificateSubject();
    }
    for (;;) {
      if (stopping_) return;
      RequestParser parser(RequestLimits{
          .max_header_bytes = options_.max_header_bytes,
          .max_request_line_bytes = options_.max_request_line_bytes,
          .max_header_count = options_.max_header_count,
          .max_body_bytes = options_.max_body_bytes,
          .body_limit = options_.body_limit,
      });
      ReadOutcome outcome = ReadRequest(parser);
      if (outcome.kind == ReadOutcome::kClose) return;
      if (outcome.kind == ReadOutcome::kError) {
        SendError(outcome.status, outcome.message, parser.minor_version());
        return;
      }
      ServerRequest& request = parser.request();
      const size_t request_bytes = request.body.size() + head_bytes_;
      bool sent;
      bool close = !parser.keep_alive() || stopping_;
      {
        ServerResponse response = Call(request);
        sent = Send(response, parser.minor_version(), &close,
                    request.method == "HEAD");
      }
      // What the request held goes now, not when the connection does.
      request = ServerRequest();
      if (buffer_.capacity() > kKeptBufferBytes) {
        std::string rest(buffer_);
        buffer_.swap(rest);
      }
#ifdef __GLIBC__
      if (request_bytes >= kTrimAfterBytes) malloc_trim(0);
#endif
      if (!sent) return;
      if (close) {
        stream_.Finish(/*linger=*/true);
        return;
      }
    }
  }

  // Answers 503 to a connection beyond max_connections.
  void Reject() {
    if (stream_.tls()) {
      absl::Duration limit =
          std::min(options_.read_timeout, kRejectHandshakeTime);
      std::string error;
      if (stream_.Handshake(absl::Now() + limit, &error) != StreamResult::kOk) {
        return;
      }
    }
    ServerResponse response;
    response.status = 503;
    response.content_type = "text/plain";
    response.headers.emplace_back("Retry-After", "1");
    response.body = "too many connections; try again later\n";
    bool close = true;
    if (Send(response, 1, &close)) stream_.Finish(/*linger=*/true);
  }

 private:
  void Report(std::string_view message) {
    if (options_.on_error) options_.on_error(message);
  }

  // Feeds `parser` from the connection until it has a request or an error.
  ReadOutcome ReadRequest(RequestParser& parser) {
    // The head: wait idle_timeout for its first byte (idle, and so
    // evictable, meanwhile), then head_timeout for the whole of it. The
    // body: read_timeout for each read, and min_body_bytes_per_second.
    const absl::Time start = absl::Now();
    absl::Time deadline = start + options_.idle_timeout;
    absl::Time body_start;
    size_t body_bytes = 0;
    bool started = false;
    head_bytes_ = 0;
    for (;;) {
      switch (parser.Parse(&buffer_)) {
        case RequestParser::Status::kDone:
          return Got();
        case RequestParser::Status::kError:
          return Fail(parser.error_status(), parser.error_message());
        case RequestParser::Status::kSendContinue:
          if (stream_.Write("HTTP/1.1 100 Continue\r\n\r\n",
                            absl::Now() + options_.write_timeout) !=
              StreamResult::kOk) {
            return Closed();
          }
          continue;
        case RequestParser::Status::kNeedMore:
          break;
      }
      const bool body = parser.reading_body();
      if (body) {
        if (body_start == absl::Time()) body_start = absl::Now();
        const double earned =
            static_cast<double>(body_bytes) /
            static_cast<double>(std::max<size_t>(
                options_.min_body_bytes_per_second, 1));
        deadline = std::min(absl::Now() + options_.read_timeout,
                            body_start + options_.read_timeout +
                                absl::Seconds(earned));
      } else if (!started && parser.started()) {
        started = true;
        deadline = absl::Now() + options_.head_timeout;
      }
      const bool idle = !parser.started() && buffer_.empty();
      if (idle && !gate_.Idle()) return Closed();
      const size_t before = buffer_.size();
      StreamResult r = stream_.Read(&buffer_, deadline);
      if (idle && !gate_.Busy()) return Closed();  // evicted
      if (r == StreamResult::kOk) {
        (body ? body_bytes : head_bytes_) += buffer_.size() - before;
        continue;
      }
      if (r == StreamResult::kTimeout && parser.started()) {
        return Fail(
            408, body ? absl::StrCat("request body not received within ",
                                     absl::FormatDuration(
                                         options_.read_timeout),
                                     " a read, or at ",
                                     options_.min_body_bytes_per_second,
                                     " bytes/s")
                      : absl::StrCat("request head not received within ",
                                     absl::FormatDuration(
                                         options_.head_timeout)));
      }
      return Closed();
    }
  }

  ServerResponse Call(ServerRequest& request) {
    request.peer_address = peer_;
    request.client_cert_subject = client_subject_;
    request.cancelled = [this] {
      return stopping_.load() || stream_.PeerClosed();
    };
    std::string failure;
    try {
      return handler_(request);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "an exception that is not a std::exception";
    }
    Report(absl::StrCat("the handler of ", request.method, " ", request.path,
                        " threw: ", failure));
    return InternalError();
  }

  static ServerResponse InternalError() {
    ServerResponse response;
    response.status = 500;
    response.content_type = "text/plain";
    response.body = "internal server error\n";
    return response;
  }

  void SendError(int status, const std::string& message, int minor) {
    ServerResponse response;
    response.status = status;
    response.content_type = "text/plain";
    response.body = absl::StrCat(message, "\n");
    bool close = true;
    if (Send(response, minor, &close)) stream_.Finish(/*linger=*/true);
  }

  // Sends `response` (without its body, but with its length, for HEAD);
  // *close may become true when the handler asked for it. Returns false
  // when the connection broke.
  bool Send(const ServerResponse& given, int minor, bool* close,
            bool head = false) {
    const ServerResponse* response = &given;
    ServerResponse fallback;
    std::string problem;
    if (given.status < 200 || given.status > 599) {
      problem = absl::StrCat("status ", given.status, " is not 200..599");
    } else if (!ValidHeaderText(given.content_type)) {
      problem = "a Content-Type with CR, LF or NUL";
    } else {
      for (const auto& [name, value] : given.headers) {
        if (!IsToken(name) || !ValidHeaderText(value)) {
          problem = absl::StrCat("a malformed header named \"",
                                 absl::CEscape(name), "\"");
          break;
        }
      }
    }
    if (!problem.empty()) {
      Report(absl::StrCat("the handler returned ", problem,
                          "; answered 500 instead"));
      fallback = InternalError();
      response = &fallback;
    }
    ForEachListElement(response->headers, "connection",
                       [&](std::string_view e) {
                         if (absl::EqualsIgnoreCase(AbslView(e), "close"))
                           *close = true;
                       });

    const bool no_body = response->status == 204 || response->status == 304;
    std::string out = absl::StrCat("HTTP/1.1 ", response->status, " ",
                                   Reason(response->status), "\r\n");
    if (!response->content_type.empty() && !no_body) {
      absl::StrAppend(&out, "Content-Type: ", response->content_type, "\r\n");
    }
    for (const auto& [name, value] : response->headers) {
      absl::string_view n = AbslView(name);
      if (absl::EqualsIgnoreCase(n, "content-length") ||
          absl::EqualsIgnoreCase(n, "transfer-encoding") ||
          absl::EqualsIgnoreCase(n, "connection") ||
          (absl::EqualsIgnoreCase(n, "content-type") &&
           !response->content_type.empty())) {
        continue;
      }
      absl::StrAppend(&out, name, ": ", value, "\r\n");
    }
    if (!no_body) {
      absl::StrAppend(&out, "Content-Length: ", response->body.size(), "\r\n");
    }
    if (*close) {
      absl::StrAppend(&out, "Connection: close\r\n");
    } else if (minor == 0) {
      absl::StrAppend(&out, "Connection: keep-alive\r\n");
    }
    absl::StrAppend(&out, "\r\n");
    const absl::Time deadline = absl::Now() + options_.write_timeout;
    std::string_view body =
        no_body || head ? std::string_view() : response->body;
    if (body.size() <= 16384) {
      out.append(body);
      body = {};
    }
    return stream_.Write(out, deadline) == StreamResult::kOk &&
           (body.empty() || stream_.Write(body, deadline) == StreamResult::kOk);
  }

  const ServerOptions& options_;
  const Handler& handler_;
  const std::atomic<bool>& stopping_;
  TlsStream& stream_;
  const std::string peer_;
  IdleGate& gate_;
  std::string client_subject_;
  std::string buffer_;    // received, not yet consumed
  size_t head_bytes_ = 0;  // received for the current request's head
};

}  // namespace

struct HttpServer::Connection {
  int fd = -1;
  std::string peer;
  std::string client;   // peer without the port
  bool reject = false;  // answers 503 only
  IdleGate gate;
  std::thread thread;
};

HttpServer::HttpServer(ServerOptions options, Handler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

HttpServer::~HttpServer() {
  Stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    ServerOptions options, Handler handler) {
  if (!handler)
    return absl::InvalidArgumentError("HTTP server without a handler");
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot listen on ", HostPort(options.address, options.port),
        ": the port is not 0..65535"));
  }
  if (options.max_connections == 0) {
    return absl::InvalidArgumentError("HTTP server with max_connections 0");
  }
  std::unique_ptr<HttpServer> server(
      new HttpServer(std::move(options), std::move(handler)));
  const ServerOptions& o = server->options_;

  if (o.tls.has_value()) {
    absl::StatusOr<std::unique_ptr<ServerTlsContext>> tls =
        ServerTlsContext::Create(*o.tls);
    if (!tls.ok()) return tls.status();
    server->tls_ = *std::move(tls);
  }

  if (absl::Status s = server->Listen(); !s.ok()) return s;
  server->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->stop_fd_ < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create an eventfd: ", std::strerror(errno)));
  }
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

absl::Status HttpServer::Listen() {
  std::string host = options_.address;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // "[::]", as in "[::]:3000"
  }
  const std::string where = HostPort(host, options_.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port = absl::StrCat(options_.port);
  int gai = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(),
                        &hints, &found);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on ", where,
                     ": cannot resolve the address: ", gai_strerror(gai)));
  }
  int error = 0;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    int fd =
        socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      error = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
      error = errno;
      close(fd);
      continue;
    }
    listen_fd_ = fd;
    break;
  }
  freeaddrinfo(found);
  if (listen_fd_ < 0) {
    std::string message = absl::StrCat("cannot listen on ", where, ": ");
    switch (error) {
      case EADDRINUSE:
        return absl::UnavailableError(absl::StrCat(
            message, "address already in use (is another server there?)"));
      case EACCES:
        return absl::PermissionDeniedError(absl::StrCat(
            message, "permission denied (ports below 1024 need privileges)"));
      case EADDRNOTAVAIL:
        return absl::InvalidArgumentError(
            absl::StrCat(message, "the address is not one of this host's"));
      default:
        return absl::UnavailableError(
            absl::StrCat(message, std::strerror(error)));
    }
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = addr.ss_family == AF_INET6
              ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
              : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);

  if (host.empty() || host == "0.0.0.0") {
    host_for_url_ = "127.0.0.1";
  } else if (host == "::") {
    host_for_url_ = "[::1]";
  } else if (host.find(':') != std::string::npos) {
    host_for_url_ = absl::StrCat("[", host, "]");
  } else {
    host_for_url_ = host;
  }
  return absl::OkStatus();
}

std::string HttpServer::url() const {
  return absl::StrCat(options_.tls.has_value() ? "https://" : "http://",
                      host_for_url_, ":", port_);
}

void HttpServer::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int n = poll(fds, 2, 1000);
    if (stopping_) return;
    ReapFinished();
    if (n <= 0 || (fds[0].revents & POLLIN) == 0) continue;
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len,
                     SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        // Out of descriptors: the connection stays queued; back off rather
        // than spin on it.
        pollfd stop{stop_fd_, POLLIN, 0};
        poll(&stop, 1, 100);
      }
      continue;
    }
    ++accepted_;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto connection = std::make_unique<Connection>();
    connection->fd = fd;
    connection->peer = PeerAddress(addr, len);
    connection->client = ClientOf(connection->peer);
    absl::MutexLock lock(&mu_);
    if (Admit(connection->client)) {
      ++serving_;
    } else if (rejecting_ < kMaxRejecting) {
      ++rejecting_;
      connection->reject = true;
    } else {
      close(fd);
      continue;
    }
    Connection* c = connection.get();
    try {
      c->thread = std::thread([this, c] { Serve(c); });
    } catch (const std::system_error&) {
      close(fd);
      --(c->reject ? rejecting_ : serving_);
      continue;
    }
    connections_.push_back(std::move(connection));
  }
}

bool HttpServer::Admit(const std::string& client) {
  const size_t per_client = options_.max_connections_per_client;
  size_t mine = 0;
  for (const auto& c : connections_) {
    if (!c->reject && !c->gate.evicted() && c->client == client) ++mine;
  }
  const bool client_full = per_client != 0 && mine >= per_client;
  if (!client_full && serving_ < options_.max_connections) return true;
  // At a cap: the oldest idle connection makes room, the client's own when
  // it is the client that is at its cap, else one of the client holding
  // the most connections (a flood from one address pays for itself).
  absl::flat_hash_map<std::string_view, size_t> held;
  if (!client_full) {
    for (const auto& c : connections_) {
      if (!c->reject && !c->gate.evicted()) ++held[c->client];
    }
  }
  Connection* victim = nullptr;
  size_t victim_held = 0;
  for (const auto& c : connections_) {
    if (c->reject || !c->gate.idle()) continue;
    if (client_full && c->client != client) continue;
    const size_t h = client_full ? 0 : held[c->client];
    if (victim == nullptr || h > victim_held ||
        (h == victim_held &&
         c->gate.idle_since_ns() < victim->gate.idle_since_ns())) {
      victim = c.get();
      victim_held = h;
    }
  }
  // It may have become busy since: then there is no room after all.
  if (victim == nullptr || !victim->gate.Evict()) return false;
  // Its thread sees the end of its stream, and winds down; it no longer
  // counts.
  shutdown(victim->fd, SHUT_RDWR);
  --serving_;
  ++evicted_;
  return true;
}

void HttpServer::Serve(Connection* c) {
  // OpenSSL writes with write(2), which raises SIGPIPE on a closed
  // connection; blocked, it leaves EPIPE instead, and a thread-directed
  // signal pending on this thread dies with it.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);

  // With TLS, the connection is idle (evictable) until the client's hello
  // begins; without, until its request does (see Session).
  bool hello = true;
  if (tls_ != nullptr && !c->reject) {
    hello = false;
    const absl::Time deadline = absl::Now() + options_.idle_timeout;
    for (;;) {
      pollfd fds[2] = {{c->fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) break;
      int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(ms, 60000)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || fds[1].revents != 0) break;
      if (fds[0].revents != 0) {
        hello = c->gate.Busy();
        break;
      }
    }
  }
  if (hello) {
    TlsStream stream(c->fd, tls_.get(), stop_fd_);
    if (stream.ok()) {
      Session session(options_, handler_, stopping_, stream, c->peer,
                      c->gate);
      if (c->reject) {
        session.Reject();
      } else {
        session.Run();
      }
    }
  }
  absl::MutexLock lock(&mu_);
  // Closed under the lock, so that the acceptor never shuts down the
  // descriptor once it is another connection's.
  close(c->fd);
  if (c->reject) {
    --rejecting_;
  } else if (!c->gate.evicted()) {
    --serving_;
  } else {
    // Counted out when it was evicted.
  }
  // Not found once Stop has taken every connection to join.
  auto it = std::find_if(
      connections_.begin(), connections_.end(),
      [c](const std::unique_ptr<Connection>& p) { return p.get() == c; });
  if (it != connections_.end()) {
    finished_.splice(finished_.end(), connections_, it);
  }
}

void HttpServer::ReapFinished() {
  std::list<std::unique_ptr<Connection>> done;
  {
    absl::MutexLock lock(&mu_);
    done.swap(finished_);
  }
  for (auto& c : done) c->thread.join();
}

void HttpServer::Stop() {
  std::call_once(stop_once_, [this] {
    stopping_ = true;
    if (stop_fd_ >= 0) {
      uint64_t one = 1;
      (void)!write(stop_fd_, &one, sizeof(one));
    }
    if (acceptor_.joinable()) acceptor_.join();
    if (listen_fd_ >= 0) {
      close(listen_fd_);
      listen_fd_ = -1;
    }
    std::list<std::unique_ptr<Connection>> all;
    {
      absl::MutexLock lock(&mu_);
      all.swap(connections_);
      all.splice(all.end(), finished_);
    }
    for (auto& c : all) c->thread.join();
  });
}

}  // namespace delegate::http
