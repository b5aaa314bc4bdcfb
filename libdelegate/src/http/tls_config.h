// The TLS settings every manager connection takes from the delegate's
// configuration: the CAs in HARNESS_CERTS_DIR (trusted on top of the
// system's store) and the client certificate for mutual TLS.
#ifndef DELEGATE_HTTP_TLS_CONFIG_H_
#define DELEGATE_HTTP_TLS_CONFIG_H_

#include "absl/status/statusor.h"
#include "delegate/config.h"
#include "http/http_client.h"

namespace delegate {

// extra_ca_files: the readable regular files of HARNESS_CERTS_DIR (no dot
// files), sorted; client_cert/client_key: HARNESS_CLIENT_CERT_FILE/KEY.
// FailedPrecondition naming the variable when the folder or a client file
// cannot be read.
absl::StatusOr<http::TlsOptions> TlsFromConfig(const DelegateConfig& config);

}  // namespace delegate

#endif  // DELEGATE_HTTP_TLS_CONFIG_H_
