// The byte stream of one server connection: TLS over OpenSSL (handshake,
// reads, writes, close_notify), or the same calls in the clear for a server
// without TLS. OpenSSL's headers stay out of this one, so that the server's
// users need none.
#ifndef DELEGATE_HTTP_TLS_STREAM_H_
#define DELEGATE_HTTP_TLS_STREAM_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct ssl_st;      // OpenSSL's SSL
struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace delegate::http {

struct ServerTlsOptions {
  std::string cert_file;  // PEM: the certificate, then any intermediates
  std::string key_file;   // PEM private key for cert_file
  // Non-empty: a PEM bundle of CAs; every client must present a certificate
  // that one of them signed, or the handshake fails.
  std::string client_ca_file;
};

// A server's TLS settings, loaded: TLS 1.2 or later, its certificate chain
// and key, and for mutual TLS the CAs its clients' certificates must chain
// to. Thread-safe: every connection's stream uses the one context.
class ServerTlsContext {
 public:
  // Fails with InvalidArgument, naming the file, when a certificate, key or
  // CA file is missing, unreadable or does not match; Internal when OpenSSL
  // cannot make a context.
  static absl::StatusOr<std::unique_ptr<ServerTlsContext>> Create(
      const ServerTlsOptions& tls);

  ~ServerTlsContext();
  ServerTlsContext(const ServerTlsContext&) = delete;
  ServerTlsContext& operator=(const ServerTlsContext&) = delete;

 private:
  friend class TlsStream;
  explicit ServerTlsContext(ssl_ctx_st* ctx) : ctx_(ctx) {}

  ssl_ctx_st* const ctx_;
};

enum class StreamResult {
  kOk,
  kEof,      // the peer closed its end, or reset the connection
  kTimeout,  // the deadline passed first
  kStopped,  // the stop descriptor became readable first
  kError,    // the connection or its TLS session broke
};

// Byte I/O on one accepted, non-blocking socket: through TLS when made with
// a context, in the clear otherwise. Every wait also watches `stop_fd`, an
// eventfd that becomes readable once the server stops. Used from one thread
// at a time.
class TlsStream {
 public:
  // Neither `fd` nor `stop_fd` is taken: both must outlive the stream, as
  // must `tls` when not null.
  TlsStream(int fd, const ServerTlsContext* tls, int stop_fd);
  // Frees the TLS session; the socket stays open.
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // False when TLS was asked for and OpenSSL could not make a session; the
  // stream must not be used then.
  bool ok() const { return ok_; }
  // True when made with a context.
  bool tls() const { return ssl_ != nullptr; }

  // The server's side of the TLS handshake. kEof when the client left
  // without one (a probe, or it gave up); on kError, *error holds what
  // OpenSSL said. REQUIRES: tls().
  StreamResult Handshake(absl::Time deadline, std::string* error);
  // After the handshake: the common name of the client's verified
  // certificate, or its whole subject when it has none; empty without a
  // verified certificate (or without TLS).
  std::string PeerCertificateSubject() const;

  // Appends what arrives next (at least one byte) to *out.
  StreamResult Read(std::string* out, absl::Time deadline);
  // Sends all of `data`. Once the stop descriptor is readable, the deadline
  // shrinks to a second from then: a response in flight when the server
  // stops gets that long to be taken.
  StreamResult Write(std::string_view data, absl::Time deadline);
  // True when the peer has closed its end or the connection broke. Does not
  // wait.
  bool PeerClosed() const;
  // Ends the conversation: close_notify, FIN, then, when `linger`, reads and
  // discards what the client still sends for up to a second. Closing with
  // unread input makes the kernel send a reset, which can destroy the last
  // response (or a TLS alert) before the client reads it.
  void Finish(bool linger);

 private:
  StreamResult Wait(short events, absl::Time deadline, bool watch_stop);

  const int fd_;
  const int stop_fd_;
  ssl_st* ssl_ = nullptr;
  bool ok_ = true;
  bool tls_up_ = false;  // close_notify may be sent
};

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_TLS_STREAM_H_
