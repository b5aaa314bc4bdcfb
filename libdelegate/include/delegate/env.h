// The environment a delegate reads its settings from: variables as a map,
// from the process or from an env file.
#ifndef DELEGATE_ENV_H_
#define DELEGATE_ENV_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/export.h"

namespace delegate {

// Variables as name -> value. Lookup of a name that is absent gives nullopt.
using EnvMap = std::map<std::string, std::string, std::less<>>;

// The process environment (environ) as a map.
DELEGATE_EXPORT EnvMap ProcessEnvironment();

// Removes `names` from this process's environment and overwrites their
// values with NUL bytes where the kernel shows them (the block that
// /proc/<pid>/environ reads) and in any copy environ points to, so that
// neither getenv nor another process reading /proc sees them. Call it at
// start-up, once the configuration is read and before threads are started
// (like setenv, it is not thread-safe). Returns how many values it cleared.
DELEGATE_EXPORT int ScrubEnvironment(const std::vector<std::string>& names);

// Reads KEY=VALUE lines: blank lines and lines starting with '#' are skipped,
// an optional leading "export " is dropped, values may be wrapped in single or
// double quotes. Errors name the file and line number and never echo the
// line's value.
DELEGATE_EXPORT absl::StatusOr<EnvMap> ReadEnvFile(const std::string& path);

}  // namespace delegate

#endif  // DELEGATE_ENV_H_
