#include "util/env.h"

#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "util/strings.h"

namespace delegate {

std::optional<std::string> EnvValue(const EnvMap& env, std::string_view name) {
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  absl::string_view v = absl::StripAsciiWhitespace(it->second);
  if (v.empty()) return std::nullopt;
  return std::string(v);
}

std::vector<std::string> SplitList(std::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(AbslView(list), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

}  // namespace delegate
