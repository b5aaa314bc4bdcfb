// Names derived from ids that users choose (task ids, step ids, volume
// names) for files and Docker objects.
#ifndef DELEGATE_EXECUTOR_NAMES_H_
#define DELEGATE_EXECUTOR_NAMES_H_

#include <string>
#include <string_view>

namespace delegate {

// `s` with every character outside [A-Za-z0-9_.-] replaced by `replacement`,
// cut to `max_bytes`.
inline std::string SanitizeName(std::string_view s, char replacement,
                                size_t max_bytes) {
  std::string out;
  for (char c : s.substr(0, max_bytes)) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    out += ok ? c : replacement;
  }
  return out;
}

}  // namespace delegate

#endif  // DELEGATE_EXECUTOR_NAMES_H_
