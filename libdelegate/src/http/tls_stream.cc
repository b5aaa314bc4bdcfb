#include "http/tls_stream.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace delegate::http {
namespace {

// A response in flight when the server stops gets this long to be taken.
constexpr absl::Duration kStopGrace = absl::Seconds(1);
// After a final response on a connection that is closing, unread input is
// drained this long (see Finish).
constexpr absl::Duration kLingerTime = absl::Seconds(1);
constexpr size_t kReadSize = 64 << 10;

// OpenSSL's error queue for this thread, emptied.
std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "unknown TLS error" : out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerTlsContext>> ServerTlsContext::Create(
    const ServerTlsOptions& tls) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create a TLS context: ", OpenSslErrors()));
  }
  std::unique_ptr<ServerTlsContext> context(new ServerTlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  auto file_error = [](const char* what, const std::string& file) {
    std::string reason = access(file.c_str(), R_OK) != 0 ? std::strerror(errno)
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
    if (names == nullptr) {
      return file_error("client CA file", tls.client_ca_file);
    }
    SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    // Without it, resuming a session of a verified client fails.
    static const unsigned char kContext[] = "delegate-http-server";
    SSL_CTX_set_session_id_context(ctx, kContext, sizeof(kContext) - 1);
  }
  return context;
}

ServerTlsContext::~ServerTlsContext() { SSL_CTX_free(ctx_); }

TlsStream::TlsStream(int fd, const ServerTlsContext* tls, int stop_fd)
    : fd_(fd), stop_fd_(stop_fd) {
  if (tls == nullptr) return;
  ssl_ = SSL_new(tls->ctx_);
  if (ssl_ == nullptr) {
    ok_ = false;
    return;
  }
  SSL_set_fd(ssl_, fd_);
}

TlsStream::~TlsStream() {
  if (ssl_ != nullptr) SSL_free(ssl_);
}

StreamResult TlsStream::Handshake(absl::Time deadline, std::string* error) {
  for (;;) {
    ERR_clear_error();
    int r = SSL_accept(ssl_);
    if (r == 1) {
      tls_up_ = true;
      return StreamResult::kOk;
    }
    int err = SSL_get_error(ssl_, r);
    StreamResult w;
    if (err == SSL_ERROR_WANT_READ) {
      w = Wait(POLLIN, deadline, true);
    } else if (err == SSL_ERROR_WANT_WRITE) {
      w = Wait(POLLOUT, deadline, true);
    } else if (err == SSL_ERROR_ZERO_RETURN ||
               (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
      return StreamResult::kEof;  // the client left (a probe, or it gave up)
    } else {
      *error = OpenSslErrors();
      return StreamResult::kError;
    }
    if (w == StreamResult::kError) *error = OpenSslErrors();
    if (w != StreamResult::kOk) return w;
  }
}

std::string TlsStream::PeerCertificateSubject() const {
  if (ssl_ == nullptr) return "";
  X509* cert = SSL_get0_peer_certificate(ssl_);
  if (cert == nullptr || SSL_get_verify_result(ssl_) != X509_V_OK) return "";
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

StreamResult TlsStream::Read(std::string* out, absl::Time deadline) {
  char buf[kReadSize];
  for (;;) {
    short events = POLLIN;
    if (ssl_ != nullptr) {
      ERR_clear_error();
      int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n > 0) {
        out->append(buf, static_cast<size_t>(n));
        return StreamResult::kOk;
      }
      int err = SSL_get_error(ssl_, n);
      if (err == SSL_ERROR_WANT_WRITE) {
        events = POLLOUT;
      } else if (err == SSL_ERROR_ZERO_RETURN) {
        return StreamResult::kEof;
      } else if (err != SSL_ERROR_WANT_READ) {
        tls_up_ = false;  // fatal: no close_notify may follow
        return err == SSL_ERROR_SYSCALL ? StreamResult::kEof
                                        : StreamResult::kError;
      }
    } else {
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        out->append(buf, static_cast<size_t>(n));
        return StreamResult::kOk;
      }
      if (n == 0) return StreamResult::kEof;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        return errno == ECONNRESET ? StreamResult::kEof : StreamResult::kError;
      }
    }
    StreamResult w = Wait(events, deadline, true);
    if (w != StreamResult::kOk) return w;
  }
}

StreamResult TlsStream::Write(std::string_view data, absl::Time deadline) {
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
        return StreamResult::kError;
      }
    } else {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        return StreamResult::kError;
      }
    }
    StreamResult w = Wait(events, deadline, watch_stop);
    if (w == StreamResult::kStopped) {
      watch_stop = false;
      deadline = std::min(deadline, absl::Now() + kStopGrace);
      continue;
    }
    if (w != StreamResult::kOk) return w;
  }
  return StreamResult::kOk;
}

bool TlsStream::PeerClosed() const {
  pollfd p{fd_, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 &&
         (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void TlsStream::Finish(bool linger) {
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
    if (Wait(POLLIN, deadline, true) != StreamResult::kOk) return;
  }
}

StreamResult TlsStream::Wait(short events, absl::Time deadline,
                             bool watch_stop) {
  for (;;) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return StreamResult::kTimeout;
    // Capped so that a far deadline is re-read now and then.
    int ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 60000));
    pollfd fds[2] = {{fd_, events, 0}, {stop_fd_, POLLIN, 0}};
    int n = poll(fds, watch_stop ? 2 : 1, ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return StreamResult::kError;
    }
    if (watch_stop && fds[1].revents != 0) return StreamResult::kStopped;
    if (fds[0].revents != 0) return StreamResult::kOk;
  }
}

}  // namespace delegate::http
