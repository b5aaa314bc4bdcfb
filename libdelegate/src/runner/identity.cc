#include "runner/identity.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"

namespace delegate::runner {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, Free>;

std::string Drain(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : "";
}

absl::StatusOr<std::string> Sha256Of(X509* cert) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (X509_digest(cert, EVP_sha256(), digest, &size) != 1 || size != 32) {
    return absl::InternalError("cannot hash the certificate");
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), size));
}

}  // namespace

absl::StatusOr<Identity> MakeIdentity(std::string_view common_name, int days) {
  Owned<EVP_PKEY> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Owned<X509> cert(X509_new());
  Owned<BIGNUM> serial(BN_new());
  const std::string cn(common_name);
  bool ok =
      key && cert && serial &&
      X509_set_version(cert.get(), X509_VERSION_3) == 1 &&
      BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) !=
          nullptr &&
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) != nullptr &&
      X509_gmtime_adj(X509_getm_notAfter(cert.get()),
                      static_cast<long>(days) * 86400) != nullptr &&
      X509_set_pubkey(cert.get(), key.get()) == 1;
  X509_NAME* name = ok ? X509_get_subject_name(cert.get()) : nullptr;
  ok =
      ok &&
      X509_NAME_add_entry_by_txt(
          name, "CN", MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1 &&
      X509_set_issuer_name(cert.get(), name) == 1 &&
      X509_sign(cert.get(), key.get(), EVP_sha256()) > 0;
  if (!ok) return absl::InternalError("cannot make a key and certificate");

  Identity out;
  Owned<BIO> key_bio(BIO_new(BIO_s_mem()));
  Owned<BIO> cert_bio(BIO_new(BIO_s_mem()));
  if (!key_bio || !cert_bio ||
      PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0,
                               nullptr, nullptr) != 1 ||
      PEM_write_bio_X509(cert_bio.get(), cert.get()) != 1) {
    return absl::InternalError("cannot write the key and certificate");
  }
  out.key_pem = Drain(key_bio.get());
  out.cert_pem = Drain(cert_bio.get());
  absl::StatusOr<std::string> sha = Sha256Of(cert.get());
  if (!sha.ok()) return sha.status();
  out.sha256 = *std::move(sha);
  return out;
}

absl::StatusOr<std::string> CertificateSha256(std::string_view cert_pem) {
  Owned<BIO> bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  Owned<X509> cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                       : nullptr);
  if (!cert) return absl::InvalidArgumentError("not a PEM certificate");
  return Sha256Of(cert.get());
}

bool IsSha256Hex(std::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace delegate::runner
