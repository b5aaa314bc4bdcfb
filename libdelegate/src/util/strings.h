// Debian's Abseil is built with its own absl::string_view, which does not
// convert to or from std::string_view. The library's API speaks
// std::string_view; these bridge the two at the Abseil calls.
#ifndef DELEGATE_UTIL_STRINGS_H_
#define DELEGATE_UTIL_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace delegate {

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

// A map key that can be written as ".key" in a field path: letters, digits,
// '_' and '-'. Others are written ["key"].
inline bool IsPlainKey(std::string_view key) {
  if (key.empty()) return false;
  for (char c : key) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9');
    if (!alnum && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace delegate

#endif  // DELEGATE_UTIL_STRINGS_H_
