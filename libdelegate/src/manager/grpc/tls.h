// gRPC server credentials from PEM files, for every gRPC server of the
// project (RuntimeServer, the reference manager).
#ifndef DELEGATE_MANAGER_GRPC_TLS_H_
#define DELEGATE_MANAGER_GRPC_TLS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace delegate::grpcv1 {

// The files, and the names of the options that set them (for messages).
struct ServerTlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;  // set: mutual TLS
  std::string_view cert_option = "tls_cert_file";
  std::string_view key_option = "tls_key_file";
  std::string_view client_ca_option = "client_ca_file";
};

// True when a certificate or key is set: then both must be.
inline bool WantsTls(const ServerTlsFiles& files) {
  return !files.cert_file.empty() || !files.key_file.empty();
}

// SslServerCredentials from the files, each checked to hold what it should
// (a certificate, an unencrypted key); InvalidArgument naming the option
// when one is missing, unreadable or not PEM. REQUIRES: WantsTls(files).
// A key's content never appears in a message.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(
    const ServerTlsFiles& files);

}  // namespace delegate::grpcv1

#endif  // DELEGATE_MANAGER_GRPC_TLS_H_
