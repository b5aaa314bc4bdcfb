// Reading settings from variables (an EnvMap), the same way everywhere, and
// the machine's name.
#ifndef DELEGATE_UTIL_ENV_H_
#define DELEGATE_UTIL_ENV_H_

#include <optional>
#include <span>
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

// The proxy variables of curl, Go's net/http and the AWS SDKs, each pair in
// the order libdelegate reads it: upper case first, as Go does (botocore
// and curl prefer lower case; the AWS CLI's guide advises setting only one).
inline constexpr std::string_view kHttpsProxyVars[] = {"HTTPS_PROXY",
                                                       "https_proxy"};
inline constexpr std::string_view kHttpProxyVars[] = {"HTTP_PROXY",
                                                      "http_proxy"};
inline constexpr std::string_view kNoProxyVars[] = {"NO_PROXY", "no_proxy"};

// A variable that is set, and its value.
struct EnvSetting {
  std::string_view name;
  std::string value;  // trimmed, non-empty (EnvValue)
};

// The first of `names` that is set (EnvValue), or nullopt.
std::optional<EnvSetting> FirstSet(const EnvMap& env,
                                   std::span<const std::string_view> names);

// "a, b,,c" -> {"a", "b", "c"}: comma-separated, trimmed, empties dropped,
// order and repeats kept.
std::vector<std::string> SplitList(std::string_view list);

// gethostname(), or "unknown".
std::string HostName();

}  // namespace delegate

#endif  // DELEGATE_UTIL_ENV_H_
