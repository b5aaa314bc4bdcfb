// Reading settings from variables (an EnvMap), the same way everywhere, and
// the machine's name.
#ifndef DELEGATE_UTIL_ENV_H_
#define DELEGATE_UTIL_ENV_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/env.h"

namespace delegate {

// The text of an env file (see ReadEnvFile), without the 1 MiB cap on the
// file; errors start with `source` (a path) and a line number.
absl::StatusOr<EnvMap> ParseEnvText(std::string_view text,
                                    std::string_view source);

// The value of `name` trimmed, or nullopt when absent or blank: a blank value
// counts as not set, so an alias or the default applies.
std::optional<std::string> EnvValue(const EnvMap& env, std::string_view name);

// "a, b,,c" -> {"a", "b", "c"}: comma-separated, trimmed, empties dropped,
// order and repeats kept.
std::vector<std::string> SplitList(std::string_view list);

// gethostname(), or "unknown".
std::string HostName();

}  // namespace delegate

#endif  // DELEGATE_UTIL_ENV_H_
