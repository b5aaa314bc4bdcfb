// A throwaway certificate authority for TLS tests: a CA, a server
// certificate for localhost / 127.0.0.1 / ::1 and a client certificate, as
// PEM files in a temporary directory that lives as long as the TestCa. Made
// in-process with OpenSSL (ECDSA P-256 keys, so it takes milliseconds).
#ifndef DELEGATE_TESTS_FAKES_TEST_CA_H_
#define DELEGATE_TESTS_FAKES_TEST_CA_H_

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace delegate::testing {

struct CertAndKey {
  std::string cert_file;  // PEM certificate
  std::string key_file;   // PEM private key (PKCS#8, unencrypted)
};

class TestCa {
 public:
  enum class Purpose { kServer, kClient };

  // Makes the directory, the CA (subject CN `ca_name`), server() and
  // client() (CN "test-client").
  static absl::StatusOr<std::unique_ptr<TestCa>> Create(
      std::string_view ca_name = "libdelegate test CA") {
    std::string tmpl = "/tmp/delegate-test-ca.XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError("mkdtemp failed for the test CA");
    }
    std::unique_ptr<TestCa> ca(new TestCa(tmpl));
    ca->ca_key_ = NewKey();
    if (ca->ca_key_ == nullptr) return Error("generate the CA key");
    ca->ca_cert_ =
        ca->Make(ca_name, ca->ca_key_, /*is_ca=*/true, Purpose::kServer, {});
    if (ca->ca_cert_ == nullptr) return Error("make the CA certificate");
    ca->ca_file_ = ca->dir_ + "/ca.crt";
    if (!WriteCert(ca->ca_file_, ca->ca_cert_)) {
      return Error("write the CA certificate");
    }
    auto server = ca->Issue("server", "localhost", Purpose::kServer);
    if (!server.ok()) return server.status();
    ca->server_ = *server;
    auto client = ca->Issue("client", "test-client", Purpose::kClient);
    if (!client.ok()) return client.status();
    ca->client_ = *client;
    return ca;
  }

  ~TestCa() {
    X509_free(ca_cert_);
    EVP_PKEY_free(ca_key_);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& ca_file() const { return ca_file_; }  // PEM
  // CN=localhost; subjectAltName DNS:localhost, IP:127.0.0.1, IP:::1.
  const CertAndKey& server() const { return server_; }
  // CN=test-client; extendedKeyUsage clientAuth.
  const CertAndKey& client() const { return client_; }

  // Signs a new certificate for `common_name` as dir()/<stem>.crt and
  // <stem>.key. A server certificate names localhost, 127.0.0.1 and ::1
  // besides `extra_dns_names`.
  absl::StatusOr<CertAndKey> Issue(
      std::string_view stem, std::string_view common_name, Purpose purpose,
      const std::vector<std::string>& extra_dns_names = {}) {
    EVP_PKEY* key = NewKey();
    if (key == nullptr) return Error("generate a key");
    X509* cert = Make(common_name, key, false, purpose, extra_dns_names);
    const std::string base = dir_ + "/" + std::string(stem);
    CertAndKey out{base + ".crt", base + ".key"};
    bool ok = cert != nullptr && WriteCert(out.cert_file, cert) &&
              WriteKey(out.key_file, key);
    X509_free(cert);
    EVP_PKEY_free(key);
    if (!ok) return Error("issue " + std::string(stem));
    return out;
  }

 private:
  explicit TestCa(std::string dir) : dir_(std::move(dir)) {}

  static absl::Status Error(std::string_view what) {
    std::string detail;
    while (unsigned long e = ERR_get_error()) {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof(buf));
      absl::StrAppend(&detail, "; ", buf);
    }
    return absl::InternalError(
        absl::StrCat("test CA: cannot ",
                     absl::string_view(what.data(), what.size()), detail));
  }

  static EVP_PKEY* NewKey() {
    return EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  }

  static bool AddExtension(X509* cert, X509* issuer, int nid,
                           const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext =
        X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str());
    if (ext == nullptr) return false;
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
  }

  // A certificate for `key`, signed by the CA (self-signed when `is_ca`).
  X509* Make(std::string_view common_name, EVP_PKEY* key, bool is_ca,
             Purpose purpose, const std::vector<std::string>& dns_names) {
    X509* cert = X509_new();
    bool ok = cert != nullptr && X509_set_version(cert, X509_VERSION_3) == 1;
    BIGNUM* serial = BN_new();
    ok = ok && serial != nullptr &&
         BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
         BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)) != nullptr;
    BN_free(serial);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nullptr &&
         X509_gmtime_adj(X509_getm_notAfter(cert), 2 * 86400) != nullptr &&
         X509_set_pubkey(cert, key) == 1;
    X509_NAME* name = ok ? X509_get_subject_name(cert) : nullptr;
    std::string cn(common_name);
    ok =
        ok &&
        X509_NAME_add_entry_by_txt(
            name, "O", MBSTRING_UTF8,
            reinterpret_cast<const unsigned char*>("libdelegate tests"), -1, -1,
            0) == 1 &&
        X509_NAME_add_entry_by_txt(
            name, "CN", MBSTRING_UTF8,
            reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1;
    X509* issuer = is_ca ? cert : ca_cert_;
    ok = ok && X509_set_issuer_name(cert, X509_get_subject_name(issuer)) == 1;
    if (ok && is_ca) {
      ok = AddExtension(cert, issuer, NID_basic_constraints,
                        "critical,CA:TRUE") &&
           AddExtension(cert, issuer, NID_key_usage,
                        "critical,keyCertSign,cRLSign") &&
           AddExtension(cert, issuer, NID_subject_key_identifier, "hash");
    } else if (ok) {
      std::string san = "DNS:localhost,IP:127.0.0.1,IP:::1";
      for (const std::string& dns : dns_names) {
        absl::StrAppend(&san, ",DNS:", dns);
      }
      ok = AddExtension(cert, issuer, NID_basic_constraints,
                        "critical,CA:FALSE") &&
           AddExtension(cert, issuer, NID_key_usage,
                        "critical,digitalSignature") &&
           AddExtension(
               cert, issuer, NID_ext_key_usage,
               purpose == Purpose::kServer ? "serverAuth" : "clientAuth") &&
           AddExtension(cert, issuer, NID_subject_key_identifier, "hash") &&
           AddExtension(cert, issuer, NID_authority_key_identifier,
                        "keyid:always") &&
           (purpose != Purpose::kServer ||
            AddExtension(cert, issuer, NID_subject_alt_name, san));
    }
    EVP_PKEY* signer = is_ca ? key : ca_key_;
    ok = ok && X509_sign(cert, signer, EVP_sha256()) > 0;
    if (!ok) {
      X509_free(cert);
      return nullptr;
    }
    return cert;
  }

  static bool WriteCert(const std::string& path, X509* cert) {
    BIO* bio = BIO_new_file(path.c_str(), "w");
    if (bio == nullptr) return false;
    bool ok = PEM_write_bio_X509(bio, cert) == 1;
    return BIO_free(bio) == 1 && ok;
  }

  static bool WriteKey(const std::string& path, EVP_PKEY* key) {
    BIO* bio = BIO_new_file(path.c_str(), "w");
    if (bio == nullptr) return false;
    chmod(path.c_str(), 0600);
    bool ok = PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr,
                                       nullptr) == 1;
    return BIO_free(bio) == 1 && ok;
  }

  std::string dir_;
  std::string ca_file_;
  EVP_PKEY* ca_key_ = nullptr;
  X509* ca_cert_ = nullptr;
  CertAndKey server_;
  CertAndKey client_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_TEST_CA_H_
