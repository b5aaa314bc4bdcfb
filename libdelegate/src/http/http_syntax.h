// Pieces of HTTP's grammar (RFC 9110) that the request parser and the server
// share: tokens, optional whitespace, comma-separated header lists and
// percent-decoding.
#ifndef DELEGATE_HTTP_HTTP_SYNTAX_H_
#define DELEGATE_HTTP_HTTP_SYNTAX_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "http/http_client.h"  // Header
#include "util/strings.h"

namespace delegate::http {

// True for a non-empty run of tchars (letters, digits and
// "!#$%&'*+-.^_`|~"): a method or a header name.
bool IsToken(std::string_view s);

// The value of the hex digit `c`; -1 when `c` is not one.
int HexValue(char c);

// Decodes %XX escapes (and '+' as a space when `plus_is_space`). Returns
// false for a malformed escape, leaving *out undefined.
bool PercentDecode(std::string_view s, bool plus_is_space, std::string* out);

// `s` without the spaces and tabs around it.
std::string_view TrimOws(std::string_view s);

// Calls `f` with each element of the comma-separated header lists of every
// header named `name` (compared case-insensitively), trimmed, empty elements
// skipped.
template <typename F>
void ForEachListElement(const std::vector<Header>& headers,
                        std::string_view name, F f) {
  for (const auto& [key, value] : headers) {
    if (!absl::EqualsIgnoreCase(AbslView(key), AbslView(name))) continue;
    for (absl::string_view part : absl::StrSplit(AbslView(value), ',')) {
      std::string_view element = TrimOws(StdView(part));
      if (!element.empty()) f(element);
    }
  }
}

}  // namespace delegate::http

#endif  // DELEGATE_HTTP_HTTP_SYNTAX_H_
