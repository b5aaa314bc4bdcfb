// The JWE decoder (DecryptRequestToken), the reference manager's check of
// the delegate's "Authorization: Delegate <jwe>". Half the inputs are taken
// as a JWE as they are; the other half become the protected header and the
// claims of a JWE encrypted under the test token here, so that the
// decoder's header and claims parsing is reached past the AES-GCM tag. A
// token minted by the delegate always decrypts to its claims.
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/time/time.h"
#include "fuzz_input.h"
#include "manager/harness/token.h"

namespace h = delegate::harness;

namespace {

const char kToken[] = "0123456789abcdef0123456789abcdef";

std::string B64(std::string_view bytes) {
  std::string out;
  absl::WebSafeBase64Escape(absl::string_view(bytes.data(), bytes.size()),
                            &out);
  return out;
}

// header.."iv"."ciphertext"."tag" under kToken, as MintRequestToken makes
// it, for any header and claims.
std::string Encrypt(const std::string& header_json, std::string_view claims,
                    std::string_view iv) {
  const std::string header = B64(header_json);
  const std::string key = absl::HexStringToBytes(kToken);
  std::string ciphertext(claims.size(), '\0');
  unsigned char tag[16];
  int len = 0;
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  const bool ok =
      c != nullptr &&
      EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) ==
          1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr) == 1 &&
      EVP_EncryptInit_ex(c, nullptr, nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(iv.data())) ==
          1 &&
      EVP_EncryptUpdate(c, nullptr, &len,
                        reinterpret_cast<const unsigned char*>(header.data()),
                        static_cast<int>(header.size())) == 1 &&
      EVP_EncryptUpdate(c, reinterpret_cast<unsigned char*>(ciphertext.data()),
                        &len,
                        reinterpret_cast<const unsigned char*>(claims.data()),
                        static_cast<int>(claims.size())) == 1 &&
      EVP_EncryptFinal_ex(c, nullptr, &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(c);
  FUZZ_CHECK(ok, "encryption failed");
  return header + ".." + B64(iv) + "." + B64(ciphertext) + "." +
         B64(std::string_view(reinterpret_cast<char*>(tag), 16));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const delegate::SecretString token{std::string(kToken)};
  const uint8_t mode = in.Byte() % 3;
  if (mode == 0) {
    (void)h::DecryptRequestToken(in.Rest(), token);
    return 0;
  }
  if (mode == 1) {
    std::string header = in.String(256);
    if (in.Bool()) header = R"({"alg":"dir","enc":"A128GCM","typ":"JWT"})";
    const std::string iv(12, static_cast<char>(in.Byte()));
    const std::string jwe = Encrypt(header, in.Rest(), iv);
    absl::StatusOr<h::RequestClaims> claims =
        h::DecryptRequestToken(jwe, token);
    if (!claims.ok()) {
      // Errors never carry key material.
      FUZZ_CHECK(claims.status().message().find(kToken) == std::string::npos,
                 "the token in an error");
    }
    return 0;
  }
  // A minted token, for any account id, decrypts to what was minted.
  const std::string account = in.String(512);
  // An account id is required: the configuration refuses an empty one, and
  // the manager a token without "sub".
  if (account.empty()) return 0;
  const absl::Time now =
      absl::FromUnixSeconds(static_cast<int64_t>(in.Range(0, 4102444800)));
  absl::StatusOr<std::string> jwe = h::MintRequestToken(token, account, now);
  FUZZ_CHECK(jwe.ok(), jwe.status().ToString());
  absl::StatusOr<h::RequestClaims> claims = h::DecryptRequestToken(*jwe, token);
  FUZZ_CHECK(claims.ok(), claims.status().ToString());
  FUZZ_CHECK(claims->sub == account, "the account id changed");
  FUZZ_CHECK(claims->iat == now, "iat changed");
  return 0;
}
