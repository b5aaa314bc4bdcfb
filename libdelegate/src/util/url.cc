#include "util/url.h"

#include "absl/strings/ascii.h"

namespace delegate {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Where the user info's password lies in `url`: [begin, end), or begin ==
// npos when there is none.
struct PasswordSpan {
  size_t begin = std::string_view::npos;
  size_t end = std::string_view::npos;
};

PasswordSpan FindPassword(std::string_view url) {
  size_t start = url.find("://");
  start = start == std::string_view::npos ? 0 : start + 3;
  size_t stop = url.find_first_of("/?#", start);
  if (stop == std::string_view::npos) stop = url.size();
  const std::string_view authority = url.substr(start, stop - start);
  const size_t at = authority.rfind('@');
  if (at == std::string_view::npos) return {};
  const size_t colon = authority.substr(0, at).find(':');
  if (colon == std::string_view::npos) return {};
  return {start + colon + 1, start + at};
}

}  // namespace

std::string UrlEncode(std::string_view s, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' ||
        c == '~' || keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

std::string UrlDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = HexValue(s[i + 1]);
      const int lo = HexValue(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

std::optional<std::string> UrlPassword(std::string_view url) {
  const PasswordSpan span = FindPassword(url);
  if (span.begin == std::string_view::npos) return std::nullopt;
  return UrlDecode(url.substr(span.begin, span.end - span.begin));
}

std::string RedactUrl(std::string_view url) {
  const PasswordSpan span = FindPassword(url);
  if (span.begin == std::string_view::npos) return std::string(url);
  std::string out(url.substr(0, span.begin));
  out += "***";
  out += url.substr(span.end);
  return out;
}

}  // namespace delegate
