#include "manager/harness/sealed.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <memory>

#include "absl/status/status.h"

namespace delegate::harness {
namespace {

constexpr int kNonceBytes = 12;
constexpr int kTagBytes = 16;

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using Ctx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

const unsigned char* Bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

SealKey SealKey::Derive(std::string_view secret, std::string_view purpose) {
  SealKey key;
  unsigned int len = sizeof(key.key_);
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       Bytes(purpose), purpose.size(), key.key_, &len);
  return key;
}

SealKey::~SealKey() { OPENSSL_cleanse(key_, sizeof(key_)); }

std::string SealKey::Seal(std::string_view plaintext,
                          std::string_view bound) const {
  std::string out(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  RAND_bytes(p, kNonceBytes);
  Ctx c(EVP_CIPHER_CTX_new());
  int len = 0;
  // Failures here are out of memory or a broken libcrypto: an empty result
  // then opens as damage, never as a plaintext.
  if (!c ||
      EVP_EncryptInit_ex(c.get(), EVP_aes_256_gcm(), nullptr, key_, p) != 1 ||
      (!bound.empty() &&
       EVP_EncryptUpdate(c.get(), nullptr, &len, Bytes(bound),
                         static_cast<int>(bound.size())) != 1) ||
      EVP_EncryptUpdate(c.get(), p + kNonceBytes, &len, Bytes(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(c.get(), p + kNonceBytes + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          p + kNonceBytes + plaintext.size()) != 1) {
    return "";
  }
  return out;
}

absl::StatusOr<std::string> SealKey::Open(std::string_view sealed,
                                          std::string_view bound) const {
  if (sealed.size() < kNonceBytes + kTagBytes) {
    return absl::DataLossError("sealed data too short");
  }
  const size_t n = sealed.size() - kNonceBytes - kTagBytes;
  std::string out(n, '\0');
  std::string tag(sealed.substr(kNonceBytes + n));
  Ctx c(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!c ||
      EVP_DecryptInit_ex(c.get(), EVP_aes_256_gcm(), nullptr, key_,
                         Bytes(sealed)) != 1 ||
      (!bound.empty() &&
       EVP_DecryptUpdate(c.get(), nullptr, &len, Bytes(bound),
                         static_cast<int>(bound.size())) != 1) ||
      EVP_DecryptUpdate(c.get(), reinterpret_cast<unsigned char*>(out.data()),
                        &len, Bytes(sealed) + kNonceBytes,
                        static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes,
                          tag.data()) != 1 ||
      EVP_DecryptFinal_ex(c.get(),
                          reinterpret_cast<unsigned char*>(out.data()) + len,
                          &len) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    return absl::DataLossError(
        "sealed under another key (another delegate token) or damaged");
  }
  return out;
}

}  // namespace delegate::harness
