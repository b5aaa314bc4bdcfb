#include "aws/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::aws {
namespace {

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

std::string Hex(const unsigned char* data, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0xf]);
  }
  return out;
}

std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out,
       &n);
  return std::string(reinterpret_cast<char*>(out), n);
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

// Sequential spaces become one; leading and trailing ones go.
std::string TrimValue(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

}  // namespace

std::string UriEncode(std::string_view s, bool keep_slash) {
  return UrlEncode(s, keep_slash ? "/" : "");
}

std::string HexSha256(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         digest);
  return Hex(digest, sizeof(digest));
}

std::string AmzDate(absl::Time t) {
  return absl::FormatTime("%Y%m%dT%H%M%SZ", t, absl::UTCTimeZone());
}

std::string CanonicalRequest(const SignableRequest& request,
                             const SigningOptions& options,
                             std::string* signed_headers) {
  const std::string path =
      options.normalize_path ? NormalizePath(request.path) : request.path;
  // Query: each name and value decoded, encoded the AWS way, sorted.
  std::vector<std::pair<std::string, std::string>> params;
  if (!request.query.empty()) {
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
  }
  std::sort(params.begin(), params.end());
  std::vector<std::string> query;
  for (const auto& [k, v] : params) query.push_back(absl::StrCat(k, "=", v));

  // Headers: lower-case names, trimmed values, repeats joined by ','.
  std::map<std::string, std::string> headers;
  for (const auto& [name, value] : request.headers) {
    std::string key = absl::AsciiStrToLower(name);
    std::string v = TrimValue(value);
    auto [it, inserted] = headers.emplace(key, v);
    if (!inserted) absl::StrAppend(&it->second, ",", v);
  }
  std::string canonical_headers;
  std::vector<std::string> names;
  for (const auto& [name, value] : headers) {
    absl::StrAppend(&canonical_headers, name, ":", value, "\n");
    names.push_back(name);
  }
  *signed_headers = absl::StrJoin(names, ";");
  return absl::StrCat(request.method, "\n", UriEncode(path, true), "\n",
                      absl::StrJoin(query, "&"), "\n", canonical_headers, "\n",
                      *signed_headers, "\n", HexSha256(request.body));
}

std::string StringToSign(const std::string& canonical_request,
                         const std::string& amz_date,
                         const std::string& scope) {
  return absl::StrCat(kAlgorithm, "\n", amz_date, "\n", scope, "\n",
                      HexSha256(canonical_request));
}

std::string Signature(const SecretString& secret_access_key,
                      const std::string& date, const std::string& region,
                      const std::string& service,
                      const std::string& string_to_sign) {
  std::string key = Hmac("AWS4" + secret_access_key.reveal(), date);
  key = Hmac(key, region);
  key = Hmac(key, service);
  key = Hmac(key, "aws4_request");
  const std::string mac = Hmac(key, string_to_sign);
  return Hex(reinterpret_cast<const unsigned char*>(mac.data()), mac.size());
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
