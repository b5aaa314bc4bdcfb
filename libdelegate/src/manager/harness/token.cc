#include "manager/harness/token.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cctype>
#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

constexpr std::string_view kProtectedHeader =
    R"({"alg":"dir","enc":"A128GCM","typ":"JWT"})";
constexpr size_t kIvBytes = 12;
constexpr size_t kTagBytes = 16;

bool IsHex32(std::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string Base64Url(std::string_view bytes) {
  std::string out;
  absl::WebSafeBase64Escape(AbslView(bytes), &out);  // no padding
  return out;
}

absl::StatusOr<std::string> FromBase64Url(std::string_view text,
                                          std::string_view what) {
  std::string out;
  if (!absl::WebSafeBase64Unescape(AbslView(text), &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request token: ", AbslView(what), " is not base64url"));
  }
  return out;
}

// The 16 key bytes, or empty when the token is not 32 hex characters.
std::string KeyBytes(const SecretString& token) {
  if (!IsHex32(token.reveal())) return "";
  return absl::HexStringToBytes(token.reveal());
}

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n));
  return out;
}

std::string RandomUuid() {
  std::string b = RandomBytes(16);
  b[6] = static_cast<char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  const std::string hex = absl::BytesToHexString(b);
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-",
                      hex.substr(12, 4), "-", hex.substr(16, 4), "-",
                      hex.substr(20));
}

struct CipherCtx {
  CipherCtx() : ctx(EVP_CIPHER_CTX_new()) {}
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
  EVP_CIPHER_CTX* ctx;
};

}  // namespace

absl::StatusOr<SecretString> NormalizeDelegateToken(const SecretString& raw,
                                                    std::string_view variable) {
  const std::string trimmed = Trim(raw.reveal());
  if (IsHex32(trimmed)) return SecretString(trimmed);
  std::string decoded;
  // Base64Unescape takes padded and unpadded text alike.
  if (absl::Base64Unescape(trimmed, &decoded)) {
    decoded = Trim(decoded);
    if (IsHex32(decoded)) return SecretString(decoded);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      AbslView(variable),
      ": expected the delegate token from Harness (32 hexadecimal "
      "characters, or the base64 text the Harness UI shows); the value set "
      "is neither"));
}

std::string DelegateTokenHash(const SecretString& normalized_token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(
      reinterpret_cast<const unsigned char*>(normalized_token.reveal().data()),
      normalized_token.reveal().size(), digest);
  std::string hex = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  const size_t first = hex.find_first_not_of('0');
  hex = first == std::string::npos ? "0" : hex.substr(first);
  if (hex.size() < 32) hex.insert(0, 32 - hex.size(), '0');
  return hex;
}

absl::StatusOr<std::string> MintRequestToken(
    const SecretString& normalized_token, std::string_view account_id,
    absl::Time now, absl::Duration lifetime) {
  const std::string key = KeyBytes(normalized_token);
  if (key.size() != 16) {
    return absl::InvalidArgumentError(
        "the delegate token must be 32 hexadecimal characters");
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  w.Key("sub");
  w.String(account_id.data(),
           static_cast<rapidjson::SizeType>(account_id.size()));
  w.Key("iss");
  w.String("issuer");
  w.Key("aud");
  w.StartArray();
  w.String("audience");
  w.EndArray();
  w.Key("exp");
  w.Int64(absl::ToUnixSeconds(now + lifetime));
  w.Key("iat");
  w.Int64(absl::ToUnixSeconds(now));
  w.Key("jti");
  const std::string jti = RandomUuid();
  w.String(jti.c_str());
  w.EndObject();
  const std::string_view claims(buffer.GetString(), buffer.GetSize());

  const std::string header = Base64Url(kProtectedHeader);
  const std::string iv = RandomBytes(kIvBytes);
  std::string ciphertext(claims.size(), '\0');
  unsigned char tag[kTagBytes];
  CipherCtx c;
  int len = 0;
  const auto* k = reinterpret_cast<const unsigned char*>(key.data());
  const auto* ivp = reinterpret_cast<const unsigned char*>(iv.data());
  if (!c.ctx ||
      EVP_EncryptInit_ex(c.ctx, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) !=
          1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kIvBytes, nullptr) !=
          1 ||
      EVP_EncryptInit_ex(c.ctx, nullptr, nullptr, k, ivp) != 1 ||
      EVP_EncryptUpdate(c.ctx, nullptr, &len,
                        reinterpret_cast<const unsigned char*>(header.data()),
                        static_cast<int>(header.size())) != 1 ||
      EVP_EncryptUpdate(
          c.ctx, reinterpret_cast<unsigned char*>(ciphertext.data()), &len,
          reinterpret_cast<const unsigned char*>(claims.data()),
          static_cast<int>(claims.size())) != 1 ||
      EVP_EncryptFinal_ex(c.ctx, nullptr, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) != 1) {
    return absl::InternalError("AES-128-GCM encryption failed (OpenSSL)");
  }
  return absl::StrCat(
      header, "..", Base64Url(iv), ".", Base64Url(ciphertext), ".",
      Base64Url(std::string_view(reinterpret_cast<char*>(tag), kTagBytes)));
}

absl::StatusOr<RequestClaims> DecryptRequestToken(
    std::string_view jwe, const SecretString& normalized_token) {
  std::vector<std::string> parts = absl::StrSplit(AbslView(jwe), '.');
  if (parts.size() != 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request token: expected 5 dot-separated parts, got ", parts.size()));
  }
  if (!parts[1].empty()) {
    return absl::InvalidArgumentError(
        "request token: the encrypted key must be empty with alg \"dir\"");
  }
  absl::StatusOr<std::string> header = FromBase64Url(parts[0], "the header");
  if (!header.ok()) return header.status();
  rapidjson::Document h;
  h.Parse(header->data(), header->size());
  if (h.HasParseError() || !h.IsObject() || !h.HasMember("alg") ||
      !h["alg"].IsString() || std::string_view(h["alg"].GetString()) != "dir" ||
      !h.HasMember("enc") || !h["enc"].IsString() ||
      std::string_view(h["enc"].GetString()) != "A128GCM") {
    return absl::InvalidArgumentError(
        "request token: the header must say alg \"dir\" and enc \"A128GCM\"");
  }
  absl::StatusOr<std::string> iv = FromBase64Url(parts[2], "the IV");
  absl::StatusOr<std::string> ciphertext =
      FromBase64Url(parts[3], "the ciphertext");
  absl::StatusOr<std::string> tag = FromBase64Url(parts[4], "the tag");
  if (!iv.ok()) return iv.status();
  if (!ciphertext.ok()) return ciphertext.status();
  if (!tag.ok()) return tag.status();
  if (iv->size() != kIvBytes || tag->size() != kTagBytes) {
    return absl::InvalidArgumentError(
        "request token: the IV must be 12 bytes and the tag 16");
  }
  const std::string key = KeyBytes(normalized_token);
  if (key.size() != 16) {
    return absl::InvalidArgumentError(
        "the delegate token must be 32 hexadecimal characters");
  }
  std::string plain(ciphertext->size(), '\0');
  CipherCtx c;
  int len = 0;
  if (!c.ctx ||
      EVP_DecryptInit_ex(c.ctx, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) !=
          1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kIvBytes, nullptr) !=
          1 ||
      EVP_DecryptInit_ex(c.ctx, nullptr, nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(iv->data())) !=
          1 ||
      EVP_DecryptUpdate(c.ctx, nullptr, &len,
                        reinterpret_cast<const unsigned char*>(parts[0].data()),
                        static_cast<int>(parts[0].size())) != 1 ||
      EVP_DecryptUpdate(
          c.ctx, reinterpret_cast<unsigned char*>(plain.data()), &len,
          reinterpret_cast<const unsigned char*>(ciphertext->data()),
          static_cast<int>(ciphertext->size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes,
                          tag->data()) != 1 ||
      EVP_DecryptFinal_ex(c.ctx, nullptr, &len) != 1) {
    return absl::UnauthenticatedError(
        "request token: it does not decrypt with this delegate token (wrong "
        "token, or altered in transit)");
  }
  rapidjson::Document d;
  d.Parse(plain.c_str(), plain.size());
  if (d.HasParseError() || !d.IsObject()) {
    return absl::InvalidArgumentError("request token: the claims are not JSON");
  }
  RequestClaims claims;
  // By length: a claim with a NUL in it is kept whole, not cut at the NUL
  // (found by tests/fuzz/jwe_fuzz.cc).
  auto text = [](const rapidjson::Value& v) {
    return std::string(v.GetString(), v.GetStringLength());
  };
  auto str = [&](const char* name, std::string& out) {
    if (d.HasMember(name) && d[name].IsString()) out = text(d[name]);
  };
  str("sub", claims.sub);
  str("iss", claims.iss);
  str("jti", claims.jti);
  if (d.HasMember("aud") && d["aud"].IsArray()) {
    for (const auto& a : d["aud"].GetArray()) {
      if (a.IsString()) claims.aud.push_back(text(a));
    }
  }
  if (!d.HasMember("exp") || !d["exp"].IsInt64() || !d.HasMember("iat") ||
      !d["iat"].IsInt64() || claims.sub.empty()) {
    return absl::InvalidArgumentError(
        "request token: the claims need sub, iat and exp");
  }
  claims.exp = absl::FromUnixSeconds(d["exp"].GetInt64());
  claims.iat = absl::FromUnixSeconds(d["iat"].GetInt64());
  return claims;
}

RequestTokenCache::RequestTokenCache(SecretString normalized_token,
                                     std::string account_id, Clock& clock,
                                     absl::Duration lifetime)
    : token_(std::move(normalized_token)),
      account_id_(std::move(account_id)),
      clock_(clock),
      lifetime_(lifetime) {}

absl::StatusOr<std::string> RequestTokenCache::Get() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  if (!current_.empty() && now - minted_ < lifetime_ / 2) return current_;
  absl::StatusOr<std::string> minted =
      MintRequestToken(token_, account_id_, now, lifetime_);
  if (!minted.ok()) return minted.status();
  current_ = *std::move(minted);
  minted_ = now;
  return current_;
}

}  // namespace delegate::harness
