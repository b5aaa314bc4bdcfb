// LoadOperatorPolicy: DELEGATE_POLICY_* variables, from the environment and
// an optional file, into an OperatorPolicy.
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "delegate/env.h"
#include "delegate/policy.h"
#include "policy/host_paths.h"
#include "util/strings.h"

namespace delegate {
namespace {

constexpr absl::string_view kPolicyPrefix = "DELEGATE_POLICY_";

constexpr std::string_view kKnownVars[] = {kPolicyFileVar,
                                           kPolicyForbidPrivilegedVar,
                                           kPolicyAllowedHostPathsVar,
                                           kPolicyForbidCapAddVar,
                                           kPolicyMaxCpusVar,
                                           kPolicyMaxMemoryMibVar};

// A set value and where it came from, for error messages.
struct Setting {
  std::string value;   // trimmed, never empty
  std::string origin;  // "DELEGATE_POLICY_X" or "DELEGATE_POLICY_X (in F)"
};

class Settings {
 public:
  Settings(const EnvMap& env, const EnvMap& file, std::string file_path)
      : env_(env), file_(file), file_path_(std::move(file_path)) {}

  // env wins over the file; empty (after trimming) counts as unset.
  std::optional<Setting> Get(std::string_view name) const {
    const std::string key(name);
    if (std::optional<std::string> v = Value(env_, key)) {
      return Setting{*std::move(v), key};
    }
    if (std::optional<std::string> v = Value(file_, key)) {
      return Setting{*std::move(v),
                     absl::StrCat(key, " (in ", file_path_, ")")};
    }
    return std::nullopt;
  }

 private:
  static std::optional<std::string> Value(const EnvMap& map,
                                          const std::string& key) {
    auto it = map.find(key);
    if (it == map.end()) return std::nullopt;
    absl::string_view v = absl::StripAsciiWhitespace(it->second);
    if (v.empty()) return std::nullopt;
    return std::string(v);
  }

  const EnvMap& env_;
  const EnvMap& file_;
  const std::string file_path_;
};

bool IsKnownVar(absl::string_view name) {
  for (std::string_view known : kKnownVars) {
    if (AbslView(known) == name) return true;
  }
  return false;
}

// A mistyped DELEGATE_POLICY_* name would silently drop a restriction, so
// it is an error rather than ignored.
absl::Status CheckNames(const EnvMap& map, absl::string_view where) {
  for (const auto& [name, value] : map) {
    absl::string_view n(name.data(), name.size());
    if (!absl::StartsWith(n, kPolicyPrefix) || IsKnownVar(n)) continue;
    std::vector<std::string> known;
    for (std::string_view k : kKnownVars) known.emplace_back(k);
    return absl::InvalidArgumentError(
        absl::StrCat(name, where, ": unknown policy setting; expected one of ",
                     absl::StrJoin(known, ", ")));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ParseBool(const Setting& s) {
  const std::string v = absl::AsciiStrToLower(s.value);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return absl::InvalidArgumentError(
      absl::StrCat(s.origin, ": expected true or false, got '", s.value, "'"));
}

absl::StatusOr<std::vector<std::string>> ParseHostPaths(const Setting& s) {
  std::vector<std::string> out;
  for (absl::string_view piece : absl::StrSplit(s.value, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    if (piece.empty()) continue;
    std::string norm = NormalizeHostPath(StdView(piece));
    if (norm.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          s.origin,
          ": expected absolute paths separated by commas, like /data,/cache; "
          "got '",
          piece, "'"));
    }
    bool seen = false;
    for (const std::string& p : out) seen = seen || p == norm;
    if (!seen) out.push_back(std::move(norm));
  }
  // Only separators: most likely a template that expanded to nothing. An
  // empty list would allow every path, so fail closed.
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        s.origin,
        ": expected absolute paths separated by commas, like /data,/cache; "
        "got no paths (unset it to allow any host path)"));
  }
  return out;
}

absl::StatusOr<double> ParseCpus(const Setting& s) {
  double cpus = 0;
  if (!absl::SimpleAtod(s.value, &cpus) || !std::isfinite(cpus) ||
      !(cpus > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        s.origin, ": expected a positive number of CPUs like 2 or 0.5, got '",
        s.value, "'"));
  }
  return cpus;
}

absl::StatusOr<int64_t> ParseMemory(const Setting& s) {
  int64_t mib = 0;
  if (!absl::SimpleAtoi(s.value, &mib) || mib < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        s.origin, ": expected a positive whole number of MiB like 4096, got '",
        s.value, "'"));
  }
  return mib;
}

}  // namespace

absl::StatusOr<OperatorPolicy> LoadOperatorPolicy(const EnvMap& env) {
  if (absl::Status s = CheckNames(env, ""); !s.ok()) return s;

  EnvMap file;
  std::string file_path;
  {
    auto it = env.find(kPolicyFileVar);
    if (it != env.end()) {
      file_path = std::string(absl::StripAsciiWhitespace(it->second));
    }
  }
  if (!file_path.empty()) {
    absl::StatusOr<EnvMap> read = ReadEnvFile(file_path);
    if (!read.ok()) {
      return absl::Status(
          read.status().code(),
          absl::StrCat(AbslView(kPolicyFileVar), ": ", read.status().message(),
                       "; set it to a readable KEY=VALUE file or unset it"));
    }
    file = *std::move(read);
    // The file cannot point at another file: one level keeps it obvious
    // where a value came from.
    file.erase(std::string(kPolicyFileVar));
    if (absl::Status s =
            CheckNames(file, absl::StrCat(" (in ", file_path, ")"));
        !s.ok()) {
      return s;
    }
  }

  const Settings settings(env, file, file_path);
  OperatorPolicy policy;
  if (std::optional<Setting> s = settings.Get(kPolicyForbidPrivilegedVar)) {
    absl::StatusOr<bool> b = ParseBool(*s);
    if (!b.ok()) return b.status();
    policy.forbid_privileged = *b;
  }
  if (std::optional<Setting> s = settings.Get(kPolicyAllowedHostPathsVar)) {
    absl::StatusOr<std::vector<std::string>> paths = ParseHostPaths(*s);
    if (!paths.ok()) return paths.status();
    policy.allowed_host_paths = *std::move(paths);
  }
  if (std::optional<Setting> s = settings.Get(kPolicyForbidCapAddVar)) {
    absl::StatusOr<bool> b = ParseBool(*s);
    if (!b.ok()) return b.status();
    policy.forbid_capability_add = *b;
  }
  if (std::optional<Setting> s = settings.Get(kPolicyMaxCpusVar)) {
    absl::StatusOr<double> cpus = ParseCpus(*s);
    if (!cpus.ok()) return cpus.status();
    policy.max_cpus = *cpus;
  }
  if (std::optional<Setting> s = settings.Get(kPolicyMaxMemoryMibVar)) {
    absl::StatusOr<int64_t> mib = ParseMemory(*s);
    if (!mib.ok()) return mib.status();
    policy.max_memory_mib = *mib;
  }
  return policy;
}

}  // namespace delegate
