// An https:// front for a plain-http loopback fake: accepts TLS on
// 127.0.0.1 with a certificate (e.g. TestCa::server(), which names
// localhost and 127.0.0.1) and relays the decrypted bytes to
// 127.0.0.1:target_port. Counts the connections, and the handshakes that
// failed (a client that did not trust the certificate; counted once the
// client has gone, which may be after its call returned).
#ifndef DELEGATE_TESTS_FAKES_TLS_TERMINATOR_H_
#define DELEGATE_TESTS_FAKES_TLS_TERMINATOR_H_

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "tests/fakes/loopback_server.h"
#include "tests/fakes/test_ca.h"

namespace delegate::testing {

class TlsTerminator {
 public:
  TlsTerminator(const CertAndKey& cert, int target_port)
      : target_port_(target_port), ctx_(SSL_CTX_new(TLS_server_method())) {
    ok_ =
        ctx_ != nullptr &&
        SSL_CTX_use_certificate_chain_file(ctx_, cert.cert_file.c_str()) == 1 &&
        SSL_CTX_use_PrivateKey_file(ctx_, cert.key_file.c_str(),
                                    SSL_FILETYPE_PEM) == 1;
    server_ = std::make_unique<LoopbackServer>(
        [this](int fd, LoopbackServer& server) { Serve(fd, server); });
  }
  ~TlsTerminator() {
    server_.reset();
    SSL_CTX_free(ctx_);
  }
  TlsTerminator(const TlsTerminator&) = delete;
  TlsTerminator& operator=(const TlsTerminator&) = delete;

  // False when the certificate or key could not be loaded.
  bool ok() const { return ok_; }
  int port() const { return server_->port(); }
  // "https://localhost:PORT"
  std::string url() const { return absl::StrCat("https://localhost:", port()); }
  int failed_handshakes() const { return failed_handshakes_; }
  int connections() const { return connections_; }

 private:
  void Serve(int fd, LoopbackServer& server) {
    ++connections_;
    if (!ok_) return;
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
      ++failed_handshakes_;
      ERR_clear_error();
      SSL_free(ssl);
      return;
    }
    const int upstream = ConnectTcp("127.0.0.1", target_port_);
    if (upstream >= 0) {
      server.Track(upstream);
      RelayTls(ssl, fd, upstream);
      server.Untrack(upstream);
      close(upstream);
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    ERR_clear_error();
  }

  // Relay() with TLS on the client's side.
  static void RelayTls(SSL* ssl, int fd, int upstream) {
    char buf[16384];
    for (;;) {
      pollfd fds[] = {{fd, POLLIN, 0}, {upstream, POLLIN, 0}};
      if (SSL_pending(ssl) == 0 && poll(fds, 2, -1) < 0) return;
      if (SSL_pending(ssl) > 0 || (fds[0].revents & (POLLIN | POLLHUP))) {
        const int n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0) {
          // Handshake messages (a TLS 1.3 ticket) carry no data.
          if (SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ) continue;
          return;
        }
        if (!SendAll(upstream, std::string_view(buf, static_cast<size_t>(n)))) {
          return;
        }
      }
      if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        const ssize_t n = recv(upstream, buf, sizeof(buf), 0);
        if (n <= 0 || SSL_write(ssl, buf, static_cast<int>(n)) <= 0) return;
      }
    }
  }

  const int target_port_;
  SSL_CTX* const ctx_;
  bool ok_ = false;
  std::atomic<int> failed_handshakes_{0};
  std::atomic<int> connections_{0};
  // Last: its threads, which use the above, end first.
  std::unique_ptr<LoopbackServer> server_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_TLS_TERMINATOR_H_
