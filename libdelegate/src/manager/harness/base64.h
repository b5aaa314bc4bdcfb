// Base64 as the Harness manager speaks it: task data and response data are
// Go []byte, which encoding/json writes as standard base64 with padding.
#ifndef DELEGATE_MANAGER_HARNESS_BASE64_H_
#define DELEGATE_MANAGER_HARNESS_BASE64_H_

#include <optional>
#include <string>
#include <string_view>

namespace delegate::harness {

// Standard alphabet with padding.
std::string Base64Encode(std::string_view bytes);
// Standard alphabet, padded or not, whitespace ignored; nullopt when `text`
// is not base64.
std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_BASE64_H_
