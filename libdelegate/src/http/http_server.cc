#include "http/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/strings.h"

namespace delegate::http {
namespace {

// Connections answered 503 at once beyond max_connections; more are closed
// without a word, so that a flood cannot make threads without bound.
constexpr size_t kMaxRejecting = 16;
// A response in flight when Stop begins gets this long to be taken.
constexpr absl::Duration kStopGrace = absl::Seconds(1);
// After a final response on a connection that is closing, unread input is
// drained this long: closing with unread data makes the kernel send a reset,
// which can destroy the response before the client reads it.
constexpr absl::Duration kLingerTime = absl::Seconds(1);
// How long a connection beyond max_connections may take to shake hands
// before it is told 503.
constexpr absl::Duration kRejectHandshakeTime = absl::Seconds(5);
// A chunk-size line, extensions included.
constexpr size_t kMaxChunkLine = 4096;
constexpr size_t kReadSize = 64 << 10;

std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "unknown TLS error" : out;
}

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

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes (and '+' as a space when `plus_is_space`). Returns
// false for a malformed escape, leaving *out undefined.
bool PercentDecode(std::string_view s, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 1 < s.size() ? HexValue(s[i + 1]) : -1;
      int lo = i + 2 < s.size() ? HexValue(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(c);
    }
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// Calls `f` with each element of the comma-separated header lists of every
// header named `name`, trimmed, empty elements skipped.
template <typename F>
void ForEachListElement(const std::vector<Header>& headers,
                        std::string_view name, F f) {
  for (const auto& [key, value] : headers) {
    if (!absl::EqualsIgnoreCase(AbslView(key), AbslView(name))) continue;
    for (absl::string_view part : absl::StrSplit(AbslView(value), ',')) {
      std::string_view element = TrimOws(StdView(part));
      if (!element.empty()) f(element);
    }
  }
}

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

// The common name of the peer's verified certificate, or its whole subject
// when it has none; empty without a verified certificate.
std::string PeerCertificateSubject(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return "";
  X509_NAME* name = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index >= 0) {
    ASN1_STRING* data =
        X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    if (n >= 0) {
      std::string cn(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
      OPENSSL_free(utf8);
      return cn;
    }
  }
  char* line = X509_NAME_oneline(name, nullptr, 0);
  std::string subject = line != nullptr ? line : "";
  OPENSSL_free(line);
  return subject;
}

enum class Io { kOk, kEof, kTimeout, kStopped, kError };

// Byte I/O on one non-blocking socket, in the clear or through TLS. Every
// wait also watches the server's stop eventfd.
class Stream {
 public:
  Stream(int fd, SSL* ssl, int stop_fd)
      : fd_(fd), ssl_(ssl), stop_fd_(stop_fd) {}

  Io Handshake(absl::Time deadline) {
    for (;;) {
      ERR_clear_error();
      int r = SSL_accept(ssl_);
      if (r == 1) {
        tls_up_ = true;
        return Io::kOk;
      }
      int err = SSL_get_error(ssl_, r);
      Io w;
      if (err == SSL_ERROR_WANT_READ) {
        w = Wait(POLLIN, deadline, true);
      } else if (err == SSL_ERROR_WANT_WRITE) {
        w = Wait(POLLOUT, deadline, true);
      } else if (err == SSL_ERROR_ZERO_RETURN ||
                 (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
        return Io::kEof;  // the client left (a probe, or it gave up)
      } else {
        return Io::kError;
      }
      if (w != Io::kOk) return w;
    }
  }

  // Appends what arrives next (at least one byte) to *out.
  Io Read(std::string* out, absl::Time deadline) {
    char buf[kReadSize];
    for (;;) {
      short events = POLLIN;
      if (ssl_ != nullptr) {
        ERR_clear_error();
        int n = SSL_read(ssl_, buf, sizeof(buf));
        if (n > 0) {
          out->append(buf, static_cast<size_t>(n));
          return Io::kOk;
        }
        int err = SSL_get_error(ssl_, n);
        if (err == SSL_ERROR_WANT_WRITE) {
          events = POLLOUT;
        } else if (err == SSL_ERROR_ZERO_RETURN) {
          return Io::kEof;
        } else if (err != SSL_ERROR_WANT_READ) {
          tls_up_ = false;  // fatal: no close_notify may follow
          return err == SSL_ERROR_SYSCALL ? Io::kEof : Io::kError;
        }
      } else {
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        if (n > 0) {
          out->append(buf, static_cast<size_t>(n));
          return Io::kOk;
        }
        if (n == 0) return Io::kEof;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          return errno == ECONNRESET ? Io::kEof : Io::kError;
        }
      }
      Io w = Wait(events, deadline, true);
      if (w != Io::kOk) return w;
    }
  }

  // Sends all of `data`. Once Stop has begun, the deadline shrinks to
  // kStopGrace from then.
  Io Write(std::string_view data, absl::Time deadline) {
    bool watch_stop = true;
    while (!data.empty()) {
      short events = POLLOUT;
      if (ssl_ != nullptr) {
        ERR_clear_error();
        int len = static_cast<int>(std::min<size_t>(data.size(), INT_MAX));
        int n = SSL_write(ssl_, data.data(), len);
        if (n > 0) {
          data.remove_prefix(static_cast<size_t>(n));
          continue;
        }
        int err = SSL_get_error(ssl_, n);
        if (err == SSL_ERROR_WANT_READ) {
          events = POLLIN;
        } else if (err != SSL_ERROR_WANT_WRITE) {
          tls_up_ = false;
          return Io::kError;
        }
      } else {
        ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
          data.remove_prefix(static_cast<size_t>(n));
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
          return Io::kError;
        }
      }
      Io w = Wait(events, deadline, watch_stop);
      if (w == Io::kStopped) {
        watch_stop = false;
        deadline = std::min(deadline, absl::Now() + kStopGrace);
        continue;
      }
      if (w != Io::kOk) return w;
    }
    return Io::kOk;
  }

  // True when the peer has closed its end or the connection broke.
  bool PeerClosed() const {
    pollfd p{fd_, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 &&
           (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

  // Ends the conversation: close_notify, FIN, then, when `linger`, reads and
  // discards what the client still sends for up to kLingerTime.
  void Finish(bool linger) {
    if (ssl_ != nullptr && tls_up_) {
      ERR_clear_error();
      SSL_shutdown(ssl_);  // one try: a non-blocking close_notify
    }
    shutdown(fd_, SHUT_WR);
    if (!linger) return;
    absl::Time deadline = absl::Now() + kLingerTime;
    char buf[kReadSize];
    for (;;) {
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) continue;
      if (n == 0) return;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return;
      if (Wait(POLLIN, deadline, true) != Io::kOk) return;
    }
  }

 private:
  Io Wait(short events, absl::Time deadline, bool watch_stop) {
    for (;;) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return Io::kTimeout;
      // Capped so that a far deadline is re-read now and then.
      int ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 60000));
      pollfd fds[2] = {{fd_, events, 0}, {stop_fd_, POLLIN, 0}};
      int n = poll(fds, watch_stop ? 2 : 1, ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Io::kError;
      }
      if (watch_stop && fds[1].revents != 0) return Io::kStopped;
      if (fds[0].revents != 0) return Io::kOk;
    }
  }

  const int fd_;
  SSL* const ssl_;
  const int stop_fd_;
  bool tls_up_ = false;
};

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

// The offset just past the empty line that ends a request head, searching
// from `from`; npos when it has not arrived. Lines may end in LF alone.
size_t FindHeadEnd(std::string_view buf, size_t from) {
  for (size_t i = buf.find('\n', from); i != std::string_view::npos;
       i = buf.find('\n', i + 1)) {
    if (i + 1 < buf.size() && buf[i + 1] == '\n') return i + 2;
    if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
      return i + 3;
    }
  }
  return std::string_view::npos;
}

// Parses the request line and headers (without the final empty line) into
// `request`. Returns 0, or the status to answer.
int ParseHead(std::string_view head, ServerRequest* request, int* minor,
              std::string* why) {
  std::vector<std::string_view> lines;
  for (absl::string_view line : absl::StrSplit(AbslView(head), '\n')) {
    std::string_view l = StdView(line);
    if (l.ends_with('\r')) l.remove_suffix(1);
    lines.push_back(l);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) {
    *why = "empty request";
    return 400;
  }
  // request-line = method SP request-target SP HTTP-version
  std::string_view line = lines[0];
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos) {
    *why = "malformed request line";
    return 400;
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) {
    *why = "malformed method";
    return 400;
  }
  if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
      })) {
    *why = "malformed request target";
    return 400;
  }
  if (version.size() != 8 || !version.starts_with("HTTP/") ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[5])) ||
      version[6] != '.' ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[7]))) {
    *why = "malformed HTTP version";
    return 400;
  }
  if (version[5] != '1') {
    *why = "only HTTP/1.x is served";
    return 505;
  }
  *minor = version[7] - '0';

  request->method = std::string(method);
  request->target = std::string(target);
  std::string_view raw_path;
  if (target.front() == '/') {
    raw_path = target.substr(0, target.find_first_of("?#"));
  } else if (size_t scheme_end = target.find("://");
             scheme_end != std::string_view::npos && scheme_end > 0 &&
             std::all_of(
                 target.begin(), target.begin() + scheme_end, [](char c) {
                   return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                          c == '+' || c == '-' || c == '.';
                 })) {
    // absolute-form, as sent to a forward proxy
    std::string_view rest = target.substr(scheme_end + 3);
    size_t slash = rest.find_first_of("/?#");
    raw_path =
        slash == std::string_view::npos || rest[slash] != '/'
            ? std::string_view("/")
            : rest.substr(slash, rest.find_first_of("?#", slash) - slash);
  } else if (target == "*" && method == "OPTIONS") {
    raw_path = "*";
  } else if (method == "CONNECT") {
    raw_path = "";  // authority-form
  } else {
    *why = "malformed request target";
    return 400;
  }
  if (!PercentDecode(raw_path, false, &request->path)) {
    *why = "malformed percent escape in the path";
    return 400;
  }

  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view l = lines[i];
    if (l.empty() || l.front() == ' ' || l.front() == '\t') {
      *why = "malformed header line";  // obsolete folding, or a stray CRLF
      return 400;
    }
    size_t colon = l.find(':');
    if (colon == std::string_view::npos || !IsToken(l.substr(0, colon))) {
      *why = "malformed header line";
      return 400;
    }
    std::string_view value = TrimOws(l.substr(colon + 1));
    if (std::any_of(value.begin(), value.end(), [](char c) {
          return (static_cast<unsigned char>(c) < 0x20 && c != '\t') ||
                 c == 0x7f;
        })) {
      *why = "control character in a header value";
      return 400;
    }
    request->headers.emplace_back(std::string(l.substr(0, colon)),
                                  std::string(value));
  }
  return 0;
}

bool ValidHeaderText(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) ==
         std::string_view::npos;
}

// One connection's conversation, on its own thread.
class Session {
 public:
  Session(const ServerOptions& options, const Handler& handler,
          const std::atomic<bool>& stopping, Stream& stream, std::string peer)
      : options_(options),
        handler_(handler),
        stopping_(stopping),
        stream_(stream),
        peer_(std::move(peer)) {}

  void Run(bool tls, SSL* ssl) {
    if (tls) {
      Io r = stream_.Handshake(absl::Now() + options_.read_timeout);
      if (r != Io::kOk) {
        if (r == Io::kError) {
          Report(absl::StrCat("TLS handshake with ", peer_,
                              " failed: ", OpenSslErrors()));
          // Lingering lets the client read the alert (say, "certificate
          // required") rather than a reset.
          stream_.Finish(/*linger=*/true);
        }
        return;
      }
      client_subject_ = PeerCertificateSubject(ssl);
    }
    for (;;) {
      if (stopping_) return;
      ServerRequest request;
      int minor = 1;
      bool keep_alive = true;
      ReadOutcome outcome = ReadRequest(&request, &minor, &keep_alive);
      if (outcome.kind == ReadOutcome::kClose) return;
      if (outcome.kind == ReadOutcome::kError) {
        SendError(outcome.status, outcome.message, minor);
        return;
      }
      ServerResponse response = Call(request);
      bool close = !keep_alive || stopping_;
      if (!Send(response, minor, &close, request.method == "HEAD")) return;
      if (close) {
        stream_.Finish(/*linger=*/true);
        return;
      }
    }
  }

  // Answers 503 to a connection beyond max_connections.
  void Reject(bool tls) {
    if (tls) {
      absl::Duration limit =
          std::min(options_.read_timeout, kRejectHandshakeTime);
      if (stream_.Handshake(absl::Now() + limit) != Io::kOk) return;
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

  // Reads more into buffer_ while a request is being received.
  Io Fill() {
    return stream_.Read(&buffer_, absl::Now() + options_.read_timeout);
  }

  ReadOutcome FillFailed(Io r) {
    if (r == Io::kTimeout) {
      return Fail(408,
                  absl::StrCat("request not received within ",
                               absl::FormatDuration(options_.read_timeout)));
    }
    return Closed();
  }

  ReadOutcome ReadRequest(ServerRequest* request, int* minor,
                          bool* keep_alive) {
    // The head: wait idle_timeout for its first byte, then read_timeout for
    // the rest.
    absl::Time deadline = absl::Now() + options_.idle_timeout;
    bool started = false;
    size_t scanned = 0;
    size_t head_end = std::string::npos;
    for (;;) {
      if (!started) {
        // Stray empty lines between requests are ignored (RFC 9112 2.2).
        size_t skip = buffer_.find_first_not_of("\r\n");
        buffer_.erase(0, skip == std::string::npos ? buffer_.size() : skip);
        if (!buffer_.empty()) {
          started = true;
          deadline = absl::Now() + options_.read_timeout;
        }
      }
      if (started) {
        head_end = FindHeadEnd(buffer_, scanned);
        if (head_end != std::string::npos) break;
        scanned = buffer_.size() < 2 ? 0 : buffer_.size() - 2;
        if (buffer_.size() > options_.max_header_bytes) {
          return Fail(431, "request headers too large");
        }
      }
      Io r = stream_.Read(&buffer_, deadline);
      if (r == Io::kOk) continue;
      if (r == Io::kTimeout && started) return FillFailed(r);
      return Closed();
    }
    if (head_end > options_.max_header_bytes) {
      return Fail(431, "request headers too large");
    }
    std::string why;
    int status = ParseHead(std::string_view(buffer_).substr(0, head_end),
                           request, minor, &why);
    buffer_.erase(0, head_end);
    if (status != 0) return Fail(status, why);

    bool close_token = false;
    bool keep_alive_token = false;
    ForEachListElement(request->headers, "connection", [&](std::string_view e) {
      if (absl::EqualsIgnoreCase(AbslView(e), "close")) close_token = true;
      if (absl::EqualsIgnoreCase(AbslView(e), "keep-alive")) {
        keep_alive_token = true;
      }
    });
    *keep_alive = !close_token && (*minor >= 1 || keep_alive_token);

    // The body's framing (RFC 9112 6.3).
    std::vector<std::string_view> codings;
    bool has_te = false;
    for (const auto& [name, value] : request->headers) {
      if (absl::EqualsIgnoreCase(AbslView(name), "transfer-encoding")) {
        has_te = true;
      }
    }
    ForEachListElement(request->headers, "transfer-encoding",
                       [&](std::string_view e) { codings.push_back(e); });
    bool chunked = false;
    std::optional<size_t> length;
    bool has_length = false;
    bool bad_length = false;
    ForEachListElement(
        request->headers, "content-length", [&](std::string_view e) {
          has_length = true;
          size_t n = 0;
          if (!std::all_of(e.begin(), e.end(),
                           [](char c) { return c >= '0' && c <= '9'; }) ||
              !absl::SimpleAtoi(AbslView(e), &n) ||
              (length.has_value() && *length != n)) {
            bad_length = true;
          }
          length = n;
        });
    if (has_te) {
      if (*minor == 0) {
        return Fail(400, "Transfer-Encoding in an HTTP/1.0 request");
      }
      if (has_length) {
        return Fail(400, "both Transfer-Encoding and Content-Length");
      }
      if (codings.size() != 1 ||
          !absl::EqualsIgnoreCase(AbslView(codings[0]), "chunked")) {
        return Fail(501, "only the chunked transfer coding is supported");
      }
      chunked = true;
    } else if (bad_length) {
      return Fail(400, "malformed Content-Length");
    } else if (has_length && *length > options_.max_body_bytes) {
      return Fail(413, absl::StrCat("request body larger than ",
                                    options_.max_body_bytes, " bytes"));
    }
    const bool has_body = chunked || (length.has_value() && *length > 0);

    bool expect_continue = false;
    for (const auto& [name, value] : request->headers) {
      if (!absl::EqualsIgnoreCase(AbslView(name), "expect")) continue;
      if (absl::EqualsIgnoreCase(AbslView(value), "100-continue")) {
        expect_continue = true;
      } else {
        return Fail(417, "unsupported expectation");
      }
    }
    // HTTP/1.0 clients do not understand 1xx (RFC 9110 10.1.1).
    if (expect_continue && has_body && *minor >= 1 && buffer_.empty()) {
      if (stream_.Write("HTTP/1.1 100 Continue\r\n\r\n",
                        absl::Now() + options_.write_timeout) != Io::kOk) {
        return Closed();
      }
    }

    if (chunked) {
      ReadOutcome o = ReadChunked(&request->body);
      if (o.kind != ReadOutcome::kRequest) return o;
    } else if (has_body) {
      while (buffer_.size() < *length) {
        if (Io r = Fill(); r != Io::kOk) return FillFailed(r);
      }
      request->body = buffer_.substr(0, *length);
      buffer_.erase(0, *length);
    }
    return Got();
  }

  // De-chunks a body from buffer_ (RFC 9112 7.1), discarding trailers.
  ReadOutcome ReadChunked(std::string* body) {
    size_t pos = 0;
    auto line_end = [&](size_t limit, int status,
                        const char* what) -> std::optional<ReadOutcome> {
      for (;;) {
        size_t nl = buffer_.find('\n', pos);
        if (nl != std::string::npos && nl - pos <= limit) return std::nullopt;
        if (buffer_.size() - pos > limit) return Fail(status, what);
        if (Io r = Fill(); r != Io::kOk) return FillFailed(r);
      }
    };
    for (;;) {
      if (auto o = line_end(kMaxChunkLine, 400, "chunk size line too long")) {
        return *o;
      }
      size_t nl = buffer_.find('\n', pos);
      std::string_view line(buffer_.data() + pos, nl - pos);
      if (line.ends_with('\r')) line.remove_suffix(1);
      size_t size = 0;
      size_t digits = 0;
      for (; digits < line.size() && HexValue(line[digits]) >= 0; ++digits) {
        if (size > (SIZE_MAX >> 4)) {
          return Fail(413, absl::StrCat("request body larger than ",
                                        options_.max_body_bytes, " bytes"));
        }
        size = size * 16 + static_cast<size_t>(HexValue(line[digits]));
      }
      std::string_view rest = TrimOws(line.substr(digits));
      if (digits == 0 || (!rest.empty() && rest.front() != ';')) {
        return Fail(400, "malformed chunk size");
      }
      pos = nl + 1;
      if (size == 0) break;
      if (size > options_.max_body_bytes - body->size()) {
        return Fail(413, absl::StrCat("request body larger than ",
                                      options_.max_body_bytes, " bytes"));
      }
      // The chunk's data, then CRLF (or LF).
      while (buffer_.size() - pos < size + 1 ||
             (buffer_[pos + size] == '\r' && buffer_.size() - pos < size + 2)) {
        if (Io r = Fill(); r != Io::kOk) return FillFailed(r);
      }
      size_t after = pos + size;
      if (buffer_[after] == '\r' && buffer_[after + 1] == '\n') {
        after += 2;
      } else if (buffer_[after] == '\n') {
        after += 1;
      } else {
        return Fail(400, "malformed chunk: no CRLF after the data");
      }
      body->append(buffer_, pos, size);
      buffer_.erase(0, after);
      pos = 0;
    }
    // Trailer fields, up to an empty line.
    const size_t trailers_start = pos;
    for (;;) {
      size_t limit = options_.max_header_bytes -
                     std::min(options_.max_header_bytes, pos - trailers_start);
      if (auto o = line_end(limit, 431, "request trailers too large")) {
        return *o;
      }
      size_t nl = buffer_.find('\n', pos);
      bool empty = nl == pos || (nl == pos + 1 && buffer_[pos] == '\r');
      pos = nl + 1;
      if (empty) break;
    }
    buffer_.erase(0, pos);
    return Got();
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
    return stream_.Write(out, deadline) == Io::kOk &&
           (body.empty() || stream_.Write(body, deadline) == Io::kOk);
  }

  const ServerOptions& options_;
  const Handler& handler_;
  const std::atomic<bool>& stopping_;
  Stream& stream_;
  const std::string peer_;
  std::string client_subject_;
  std::string buffer_;  // received, not yet consumed
};

}  // namespace

struct HttpServer::Connection {
  int fd = -1;
  std::string peer;
  bool reject = false;  // answers 503 only
  std::thread thread;
  bool finished = false;  // guarded by the server's mu_
};

std::string_view ServerRequest::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(AbslView(key), AbslView(name))) return value;
  }
  return {};
}

std::optional<std::string> ServerRequest::query(std::string_view name) const {
  size_t q = target.find('?');
  if (q == std::string::npos) return std::nullopt;
  std::string_view query = std::string_view(target).substr(q + 1);
  query = query.substr(0, query.find('#'));
  for (absl::string_view part : absl::StrSplit(AbslView(query), '&')) {
    std::string_view p = StdView(part);
    size_t eq = p.find('=');
    std::string key;
    if (!PercentDecode(p.substr(0, eq), true, &key)) key = p.substr(0, eq);
    if (key != name) continue;
    if (eq == std::string_view::npos) return std::string();
    std::string value;
    if (!PercentDecode(p.substr(eq + 1), true, &value)) {
      value = p.substr(eq + 1);  // kept as sent
    }
    return value;
  }
  return std::nullopt;
}

HttpServer::HttpServer(ServerOptions options, Handler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

HttpServer::~HttpServer() {
  Stop();
  if (ssl_ctx_ != nullptr) SSL_CTX_free(static_cast<SSL_CTX*>(ssl_ctx_));
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
    const ServerTlsOptions& tls = *o.tls;
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot create a TLS context: ", OpenSslErrors()));
    }
    server->ssl_ctx_ = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    auto file_error = [](const char* what, const std::string& file) {
      std::string reason = access(file.c_str(), R_OK) != 0
                               ? std::strerror(errno)
                               : OpenSslErrors();
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat("TLS ", what, " \"", file, "\": ", reason));
    };
    if (tls.cert_file.empty() || tls.key_file.empty()) {
      return absl::InvalidArgumentError(
          "TLS for the HTTP server needs both cert_file and key_file");
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1) {
      return file_error("certificate file", tls.cert_file);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      return file_error("key file", tls.key_file);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TLS key file \"", tls.key_file, "\" does not match certificate \"",
          tls.cert_file, "\": ", OpenSslErrors()));
    }
    if (!tls.client_ca_file.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, tls.client_ca_file.c_str(),
                                        nullptr) != 1) {
        return file_error("client CA file", tls.client_ca_file);
      }
      STACK_OF(X509_NAME)* names =
          SSL_load_client_CA_file(tls.client_ca_file.c_str());
      if (names == nullptr)
        return file_error("client CA file", tls.client_ca_file);
      SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                         nullptr);
      // Without it, resuming a session of a verified client fails.
      static const unsigned char kContext[] = "delegate-http-server";
      SSL_CTX_set_session_id_context(ctx, kContext, sizeof(kContext) - 1);
    }
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
    std::lock_guard<std::mutex> lock(mu_);
    if (serving_ < options_.max_connections) {
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

void HttpServer::Serve(Connection* c) {
  // OpenSSL writes with write(2), which raises SIGPIPE on a closed
  // connection; blocked, it leaves EPIPE instead, and a thread-directed
  // signal pending on this thread dies with it.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);

  SSL* ssl = nullptr;
  if (ssl_ctx_ != nullptr) {
    ssl = SSL_new(static_cast<SSL_CTX*>(ssl_ctx_));
    if (ssl != nullptr) SSL_set_fd(ssl, c->fd);
  }
  if (ssl_ctx_ == nullptr || ssl != nullptr) {
    Stream stream(c->fd, ssl, stop_fd_);
    Session session(options_, handler_, stopping_, stream, c->peer);
    if (c->reject) {
      session.Reject(ssl != nullptr);
    } else {
      session.Run(ssl != nullptr, ssl);
    }
  }
  if (ssl != nullptr) SSL_free(ssl);
  close(c->fd);
  std::lock_guard<std::mutex> lock(mu_);
  c->finished = true;
  --(c->reject ? rejecting_ : serving_);
}

void HttpServer::ReapFinished() {
  std::list<std::unique_ptr<Connection>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->finished) {
        done.splice(done.end(), connections_, it++);
      } else {
        ++it;
      }
    }
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
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(connections_);
    }
    for (auto& c : all) c->thread.join();
  });
}

}  // namespace delegate::http
