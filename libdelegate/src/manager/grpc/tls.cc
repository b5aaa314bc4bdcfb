#include "manager/grpc/tls.h"

#include <grpcpp/security/server_credentials.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "util/files.h"
#include "util/strings.h"

namespace delegate::grpcv1 {
namespace {

// The file's content, or InvalidArgument naming `option`. PEM keys are
// secret: the content never appears in a message.
absl::StatusOr<std::string> ReadPem(const std::string& path,
                                    std::string_view option, bool key) {
  absl::StatusOr<std::string> read = ReadSettingFile(path, option);
  if (!read.ok()) return read.status();
  std::string pem = *std::move(read);
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  bool parsed = false;
  if (key) {
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    parsed = pkey != nullptr;
    EVP_PKEY_free(pkey);
  } else {
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    parsed = cert != nullptr;
    X509_free(cert);
  }
  BIO_free(bio);
  if (!parsed) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(option), ": ", path, " holds no PEM ",
                     key ? "private key (unencrypted)" : "certificate"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(
    const ServerTlsFiles& files) {
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(files.cert_file.empty() ? files.cert_option
                                                      : files.key_option),
                     ": not set; TLS needs both the certificate and its key"));
  }
  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert =
      ReadPem(files.cert_file, files.cert_option, false);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key =
      ReadPem(files.key_file, files.key_option, true);
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPem(files.client_ca_file, files.client_ca_option, false);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
    ssl.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace delegate::grpcv1
