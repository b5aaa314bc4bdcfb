// The keys of the channel between a delegate and the runner of a stage task:
// each side makes a self-signed certificate for itself (EC P-256), and the
// runner accepts only the client certificate whose SHA-256 it was started
// with. Nothing secret is in the task's definition: the fingerprint is, the
// key never leaves the delegate.
#ifndef DELEGATE_RUNNER_IDENTITY_H_
#define DELEGATE_RUNNER_IDENTITY_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace delegate::runner {

struct Identity {
  std::string key_pem;   // PKCS#8; a secret
  std::string cert_pem;  // self-signed, valid for `days` from an hour ago
  std::string sha256;    // of the certificate's DER, 64 lowercase hex digits
};

// A fresh key and a self-signed certificate for it.
absl::StatusOr<Identity> MakeIdentity(std::string_view common_name,
                                      int days = 7);

// The SHA-256 of a PEM certificate's DER, as Identity::sha256 has it.
// InvalidArgument when it is not one.
absl::StatusOr<std::string> CertificateSha256(std::string_view cert_pem);

// Whether `text` is 64 hex digits (either case).
bool IsSha256Hex(std::string_view text);

}  // namespace delegate::runner

#endif  // DELEGATE_RUNNER_IDENTITY_H_
