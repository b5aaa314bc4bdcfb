// Percent-encoding for URL paths and query values, and the user info of a
// URL (which may hold a password).
#ifndef DELEGATE_UTIL_URL_H_
#define DELEGATE_UTIL_URL_H_

#include <optional>
#include <string>
#include <string_view>

namespace delegate {

// Percent-encodes everything but RFC 3986 unreserved characters and those
// in `keep` (e.g. "/" for a path).
std::string UrlEncode(std::string_view s, std::string_view keep = "");

// Undoes percent-encoding; a "%" not followed by two hex digits is kept as
// written.
std::string UrlDecode(std::string_view s);

// The password in `url`'s user info ("scheme://user:PASSWORD@host/..."),
// percent-decoded; nullopt when there is none. A URL without "scheme://" is
// read as starting with its authority ("user:pw@host:port").
std::optional<std::string> UrlPassword(std::string_view url);

// `url` fit to print: the password of its user info replaced by "***"
// ("https://user:***@host/path"); everything else as it is.
std::string RedactUrl(std::string_view url);

}  // namespace delegate

#endif  // DELEGATE_UTIL_URL_H_
