#include "manager/harness/base64.h"

#include "absl/strings/escaping.h"
#include "util/strings.h"

namespace delegate::harness {

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  absl::Base64Escape(AbslView(bytes), &out);
  return out;
}

std::optional<std::string> Base64Decode(std::string_view text) {
  std::string out;
  if (!absl::Base64Unescape(AbslView(text), &out)) return std::nullopt;
  return out;
}

}  // namespace delegate::harness
