// The Harness delegate's credentials on the wire: the normalised delegate
// token, the per-request JWE (alg "dir", enc "A128GCM") that goes in
// "Authorization: Delegate <jwe>", and the delegateTokenHash header.
#ifndef DELEGATE_MANAGER_HARNESS_TOKEN_H_
#define DELEGATE_MANAGER_HARNESS_TOKEN_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/config.h"

namespace delegate::harness {

// The Harness UI shows the token base64-encoded; Kubernetes secrets deliver
// it decoded. Accepts 32 hex characters as they are, or their base64
// (standard alphabet, padded or not), surrounding whitespace ignored.
// InvalidArgument naming `variable` otherwise; the value never appears.
absl::StatusOr<SecretString> NormalizeDelegateToken(
    const SecretString& raw, std::string_view variable = "HARNESS_TOKEN");

// The manager's form of the token's hash (Java BigInteger.toString(16) of
// SHA-256 over the normalised token's text): lower-case hex without leading
// zeros, left-padded with '0' to at least 32 characters.
std::string DelegateTokenHash(const SecretString& normalized_token);

struct RequestClaims {
  std::string sub;               // account id
  std::string iss;               // "issuer"
  std::vector<std::string> aud;  // {"audience"}
  absl::Time iat;
  absl::Time exp;
  std::string jti;  // a random UUID
};

// A JWE compact serialisation: base64url(protected header), an empty
// encrypted key, base64url(96-bit IV), base64url(ciphertext of the claims
// JSON), base64url(128-bit tag); AES-128-GCM under the token's 16 bytes, with
// the encoded header as additional data.
absl::StatusOr<std::string> MintRequestToken(
    const SecretString& normalized_token, std::string_view account_id,
    absl::Time now, absl::Duration lifetime = absl::Minutes(20));

// The manager's side: checks the header, decrypts and authenticates with the
// token, and parses the claims. Does not judge expiry (the caller compares
// exp with its clock). Errors say what is wrong, never with key material.
absl::StatusOr<RequestClaims> DecryptRequestToken(
    std::string_view jwe, const SecretString& normalized_token);

// Mints on first use and again once half the lifetime has passed, as the
// Harness runner does (20 min tokens, re-minted after 10). Thread-safe.
class RequestTokenCache {
 public:
  RequestTokenCache(SecretString normalized_token, std::string account_id,
                    Clock& clock, absl::Duration lifetime = absl::Minutes(20));
  absl::StatusOr<std::string> Get();

 private:
  const SecretString token_;
  const std::string account_id_;
  Clock& clock_;
  const absl::Duration lifetime_;
  absl::Mutex mu_;
  std::string current_ ABSL_GUARDED_BY(mu_);
  absl::Time minted_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_TOKEN_H_
