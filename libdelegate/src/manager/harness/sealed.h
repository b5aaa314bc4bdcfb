// Authenticated encryption for what the delegate keeps on disk that must not
// be readable there: a task's payload in the journal holds secret values.
// AES-256-GCM under a key derived (HMAC-SHA256) from a secret the delegate
// is started with, such as its token; a random 96-bit nonce per message.
// Without that secret a sealed message can be neither read nor altered
// unnoticed.
#ifndef DELEGATE_MANAGER_HARNESS_SEALED_H_
#define DELEGATE_MANAGER_HARNESS_SEALED_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace delegate::harness {

class SealKey {
 public:
  // The key for `purpose` (a fixed label, such as "harness task journal v1")
  // under `secret`. An empty secret gives a key all the same: the caller
  // decides whether that is acceptable.
  static SealKey Derive(std::string_view secret, std::string_view purpose);
  SealKey(const SealKey&) = default;
  SealKey& operator=(const SealKey&) = default;
  ~SealKey();

  // Nonce, ciphertext and tag: 28 bytes more than `plaintext`. `bound`
  // (for example the record's task id) is authenticated with it, not
  // stored: Open must be given the same, so that a sealed message cannot
  // be passed off as another's.
  std::string Seal(std::string_view plaintext,
                   std::string_view bound = "") const;
  // DataLoss when `sealed` was not sealed under this key (another secret)
  // with `bound`, or was altered; the error never holds any of the
  // plaintext.
  absl::StatusOr<std::string> Open(std::string_view sealed,
                                   std::string_view bound = "") const;

 private:
  SealKey() = default;
  unsigned char key_[32] = {};
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_SEALED_H_
