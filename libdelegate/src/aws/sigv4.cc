#include "aws/sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::aws {
namespace {

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

using Digest = std::array<unsigned char, 32>;

void AppendHex(const unsigned char* data, size_t n, std::string* out) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const size_t at = out->size();
  out->resize(at + n * 2);
  char* p = out->data() + at;
  for (size_t i = 0; i < n; ++i) {
    *p++ = kDigits[data[i] >> 4];
    *p++ = kDigits[data[i] & 0xf];
  }
}

// SHA-256 through one digest context per thread and an algorithm fetched
// once: OpenSSL 3's one-shot SHA256() and HMAC() look the algorithm up
// (under a lock) on every call, which cost as much as the hashing itself.
const EVP_MD* Sha256Md() {
  static const EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

Digest Sha256(std::initializer_list<std::string_view> parts) {
  thread_local const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>
      ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  Digest out{};
  const EVP_MD* md = Sha256Md();
  if (md == nullptr || ctx == nullptr ||
      EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) {
    // Not expected of any OpenSSL 3; the one-shot call still works.
    std::string all;
    for (std::string_view p : parts) all.append(p);
    SHA256(reinterpret_cast<const unsigned char*>(all.data()), all.size(),
           out.data());
    return out;
  }
  for (std::string_view p : parts) {
    EVP_DigestUpdate(ctx.get(), p.data(), p.size());
  }
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), out.data(), &n);
  return out;
}

void AppendHexSha256(std::string_view data, std::string* out) {
  const Digest digest = Sha256({data});
  AppendHex(digest.data(), digest.size(), out);
}

// HMAC-SHA256 (RFC 2104) over Sha256.
Digest Hmac(const void* key, size_t key_size, std::string_view data) {
  constexpr size_t kBlock = 64;
  unsigned char k[kBlock] = {};
  if (key_size > kBlock) {
    const Digest hashed =
        Sha256({std::string_view(static_cast<const char*>(key), key_size)});
    std::copy(hashed.begin(), hashed.end(), k);
  } else {
    std::copy_n(static_cast<const unsigned char*>(key), key_size, k);
  }
  unsigned char ipad[kBlock];
  unsigned char opad[kBlock];
  for (size_t i = 0; i < kBlock; ++i) {
    ipad[i] = k[i] ^ 0x36;
    opad[i] = k[i] ^ 0x5c;
  }
  const Digest inner =
      Sha256({std::string_view(reinterpret_cast<char*>(ipad), kBlock), data});
  const Digest mac =
      Sha256({std::string_view(reinterpret_cast<char*>(opad), kBlock),
              std::string_view(reinterpret_cast<const char*>(inner.data()),
                               inner.size())});
  OPENSSL_cleanse(k, sizeof(k));
  OPENSSL_cleanse(ipad, sizeof(ipad));
  OPENSSL_cleanse(opad, sizeof(opad));
  return mac;
}

Digest Hmac(const Digest& key, std::string_view data) {
  return Hmac(key.data(), key.size(), data);
}

// The signing key of a secret for one date, region and service: four
// HMACs, the same all day. Sign keeps the last few instead of deriving
// them for every request. Holds copies of the secrets it was given, as
// their holders do; compares them in constant time.
class SigningKeys {
 public:
  Digest Get(const SecretString& secret, std::string_view date,
             std::string_view region, std::string_view service)
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      for (const Entry& e : entries_) {
        if (e.date == date && e.region == region && e.service == service &&
            e.secret.size() == secret.reveal().size() &&
            CRYPTO_memcmp(e.secret.data(), secret.reveal().data(),
                          e.secret.size()) == 0 &&
            !e.secret.empty()) {
          return e.key;
        }
      }
    }
    const std::string k = "AWS4" + secret.reveal();
    Digest key = Hmac(k.data(), k.size(), date);
    key = Hmac(key, region);
    key = Hmac(key, service);
    key = Hmac(key, "aws4_request");
    absl::MutexLock lock(&mu_);
    Entry& e = entries_[next_];
    next_ = (next_ + 1) % entries_.size();
    e.secret = secret.reveal();
    e.date = std::string(date);
    e.region = std::string(region);
    e.service = std::string(service);
    e.key = key;
    return key;
  }

 private:
  struct Entry {
    std::string secret;
    std::string date;
    std::string region;
    std::string service;
    Digest key{};
  };
  absl::Mutex mu_;
  // A delegate signs for one or two services in one region with one
  // credential at a time; four covers a credential rotation at midnight.
  std::array<Entry, 4> entries_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
};

SigningKeys& Keys() {
  static SigningKeys* const keys = new SigningKeys;
  return *keys;
}

// RFC 3986 remove_dot_segments, and no empty segments.
std::string NormalizePath(std::string_view path) {
  std::vector<std::string_view> out;
  for (absl::string_view seg : absl::StrSplit(AbslView(path), '/')) {
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") {
      if (!out.empty()) out.pop_back();
      continue;
    }
    out.push_back(StdView(seg));
  }
  std::string result = "/";
  for (size_t i = 0; i < out.size(); ++i) {
    if (i > 0) result += '/';
    result.append(out[i]);
  }
  // A trailing slash stays ("/example/").
  if (!out.empty() && path.size() > 1 && path.back() == '/') result += '/';
  return result;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Sequential spaces become one; leading and trailing ones go.
void AppendTrimmed(std::string_view v, std::string* out) {
  while (!v.empty() && IsSpace(v.front())) v.remove_prefix(1);
  while (!v.empty() && IsSpace(v.back())) v.remove_suffix(1);
  // Most values (a token, a host) have nothing inside to fold: one append.
  bool plain = true;
  for (size_t i = 0; i < v.size() && plain; ++i) {
    plain = !IsSpace(v[i]) || (v[i] == ' ' && !IsSpace(v[i + 1]));
  }
  if (plain) {
    out->append(v);
    return;
  }
  bool space = false;
  for (char c : v) {
    if (IsSpace(c)) {
      space = true;
      continue;
    }
    if (space) out->push_back(' ');
    space = false;
    out->push_back(c);
  }
}

}  // namespace

std::string UriEncode(std::string_view s, bool keep_slash) {
  return UrlEncode(s, keep_slash ? "/" : "");
}

std::string HexSha256(std::string_view data) {
  std::string out;
  AppendHexSha256(data, &out);
  return out;
}

std::string AmzDate(absl::Time t) {
  return absl::FormatTime("%Y%m%dT%H%M%SZ", t, absl::UTCTimeZone());
}

std::string CanonicalRequest(const SignableRequest& request,
                             const SigningOptions& options,
                             std::string* signed_headers) {
  std::string out;
  out.reserve(256 + request.path.size() + request.query.size());
  out.append(request.method).push_back('\n');
  out.append(UriEncode(
      options.normalize_path ? NormalizePath(request.path) : request.path,
      true));
  out.push_back('\n');
  // Query: each name and value decoded, encoded the AWS way, sorted. (The
  // JSON APIs the delegate calls send none.)
  if (!request.query.empty()) {
    std::vector<std::pair<std::string, std::string>> params;
    for (absl::string_view part :
         absl::StrSplit(AbslView(request.query), '&')) {
      if (part.empty()) continue;
      const size_t eq = part.find('=');
      std::string_view name = StdView(part.substr(0, eq));
      std::string_view value =
          eq == absl::string_view::npos ? "" : StdView(part.substr(eq + 1));
      params.emplace_back(UriEncode(UrlDecode(name), false),
                          UriEncode(UrlDecode(value), false));
    }
    std::sort(params.begin(), params.end());
    for (size_t i = 0; i < params.size(); ++i) {
      if (i > 0) out.push_back('&');
      out.append(params[i].first).push_back('=');
      out.append(params[i].second);
    }
  }
  out.push_back('\n');

  // Headers: lower-case names in order, trimmed values, repeats joined by
  // ','. A request has a handful: an index sorted by name, no map.
  std::vector<std::pair<std::string, size_t>> names;
  names.reserve(request.headers.size());
  for (size_t i = 0; i < request.headers.size(); ++i) {
    names.emplace_back(absl::AsciiStrToLower(request.headers[i].first), i);
  }
  std::stable_sort(
      names.begin(), names.end(),
      [](const auto& a, const auto& b) { return a.first < b.first; });
  signed_headers->clear();
  for (size_t i = 0; i < names.size(); ++i) {
    const bool repeat = i > 0 && names[i].first == names[i - 1].first;
    if (repeat) {
      out.push_back(',');
    } else {
      if (i > 0) {
        out.push_back('\n');
        signed_headers->push_back(';');
      }
      out.append(names[i].first).push_back(':');
      signed_headers->append(names[i].first);
    }
    AppendTrimmed(request.headers[names[i].second].second, &out);
  }
  if (!names.empty()) out.push_back('\n');
  out.push_back('\n');
  out.append(*signed_headers).push_back('\n');
  AppendHexSha256(request.body, &out);
  return out;
}

std::string StringToSign(const std::string& canonical_request,
                         const std::string& amz_date,
                         const std::string& scope) {
  std::string out;
  out.reserve(sizeof(kAlgorithm) + amz_date.size() + scope.size() + 68);
  out.append(kAlgorithm).push_back('\n');
  out.append(amz_date).push_back('\n');
  out.append(scope).push_back('\n');
  AppendHexSha256(canonical_request, &out);
  return out;
}

std::string Signature(const SecretString& secret_access_key,
                      const std::string& date, const std::string& region,
                      const std::string& service,
                      const std::string& string_to_sign) {
  const Digest mac = Hmac(Keys().Get(secret_access_key, date, region, service),
                          string_to_sign);
  std::string out;
  AppendHex(mac.data(), mac.size(), &out);
  return out;
}

void Sign(const Credentials& credentials, const SigningOptions& options,
          SignableRequest& request) {
  std::string amz_date;
  for (const auto& [name, value] : request.headers) {
    if (absl::EqualsIgnoreCase(name, "x-amz-date")) amz_date = value;
  }
  if (amz_date.empty()) {
    amz_date = AmzDate(options.time);
    request.headers.emplace_back("X-Amz-Date", amz_date);
  }
  const bool token = !credentials.session_token.empty();
  if (token && options.sign_session_token) {
    request.headers.emplace_back("X-Amz-Security-Token",
                                 credentials.session_token.reveal());
  }
  const std::string date = amz_date.substr(0, 8);
  const std::string scope = absl::StrCat(date, "/", options.region, "/",
                                         options.service, "/aws4_request");
  std::string signed_headers;
  const std::string canonical =
      CanonicalRequest(request, options, &signed_headers);
  const std::string signature =
      Signature(credentials.secret_access_key, date, options.region,
                options.service, StringToSign(canonical, amz_date, scope));
  if (token && !options.sign_session_token) {
    request.headers.emplace_back("X-Amz-Security-Token",
                                 credentials.session_token.reveal());
  }
  request.headers.emplace_back(
      "Authorization",
      absl::StrCat(kAlgorithm, " Credential=", credentials.access_key_id, "/",
                   scope, ", SignedHeaders=", signed_headers,
                   ", Signature=", signature));
}

}  // namespace delegate::aws
