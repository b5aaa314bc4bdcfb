// Percent-encoding for URL paths and query values.
#ifndef DELEGATE_UTIL_URL_H_
#define DELEGATE_UTIL_URL_H_

#include <string>
#include <string_view>

namespace delegate {

// Percent-encodes everything but RFC 3986 unreserved characters and those
// in `keep` (e.g. "/" for a path).
std::string UrlEncode(std::string_view s, std::string_view keep = "");

}  // namespace delegate

#endif  // DELEGATE_UTIL_URL_H_
