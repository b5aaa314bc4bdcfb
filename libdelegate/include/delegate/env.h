// The environment a delegate reads its settings from: variables as a map,
// from the process or from an env file.
#ifndef DELEGATE_ENV_H_
#define DELEGATE_ENV_H_

#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "delegate/export.h"

namespace delegate {

// Variables as name -> value. Lookup of a name that is absent gives nullopt.
using EnvMap = std::map<std::string, std::string, std::less<>>;

// The process environment (environ) as a map.
DELEGATE_EXPORT EnvMap ProcessEnvironment();

// Reads KEY=VALUE lines: blank lines and lines starting with '#' are skipped,
// an optional leading "export " is dropped, values may be wrapped in single or
// double quotes. Errors name the file and line number and never echo the
// line's value.
DELEGATE_EXPORT absl::StatusOr<EnvMap> ReadEnvFile(const std::string& path);

}  // namespace delegate

#endif  // DELEGATE_ENV_H_
