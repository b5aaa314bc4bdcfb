#include "scheduler/secrets.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "util/strings.h"

namespace delegate {
namespace {

constexpr std::string_view kOpen = "${{";
constexpr std::string_view kClose = "}}";
constexpr std::string_view kPrefix = "secrets.";

absl::Status UnknownSecret(absl::string_view path, absl::string_view id,
                           const std::map<std::string, std::string>& secrets) {
  std::string known;
  for (const auto& [name, value] : secrets) {
    absl::StrAppend(&known, known.empty() ? "" : ", ", name);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": unknown secret '", id, "'; ",
      known.empty() ? "the stage defines no secrets"
                    : absl::StrCat("the stage defines: ", known)));
}

bool HasReference(const Step& step) {
  auto any = [](const std::vector<std::string>& values) {
    for (const std::string& v : values) {
      if (v.find(kOpen) != std::string::npos) return true;
    }
    return false;
  };
  for (const auto& [key, value] : step.envs) {
    if (value.find(kOpen) != std::string::npos) return true;
  }
  return any(step.commands) || any(step.entrypoint) || any(step.args);
}

}  // namespace

absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view text, const std::map<std::string, std::string>& secrets,
    std::string_view path) {
  size_t open = text.find(kOpen);
  if (open == std::string_view::npos) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (open != std::string_view::npos) {
    size_t close = text.find(kClose, open + kOpen.size());
    if (close == std::string_view::npos) break;
    absl::string_view inner = absl::StripAsciiWhitespace(AbslView(
        text.substr(open + kOpen.size(), close - open - kOpen.size())));
    if (!absl::StartsWith(inner, AbslView(kPrefix))) {
      // Some other expression: left for the step to see as written.
      out.append(text.substr(pos, close + kClose.size() - pos));
    } else {
      absl::string_view id = inner.substr(kPrefix.size());
      auto it = secrets.find(std::string(id));
      if (it == secrets.end()) return UnknownSecret(AbslView(path), id, secrets);
      out.append(text.substr(pos, open - pos));
      out.append(it->second);
    }
    pos = close + kClose.size();
    open = text.find(kOpen, pos);
  }
  out.append(text.substr(pos));
  return out;
}

absl::Status ResolveStage(Stage& stage) {
  Stage& out = stage;
  auto substitute_all = [&](std::vector<std::string>& values,
                            const std::string& path) -> absl::Status {
    for (size_t i = 0; i < values.size(); ++i) {
      auto v = SubstituteSecrets(values[i], stage.secrets,
                                 absl::StrCat(path, "[", i, "]"));
      if (!v.ok()) return v.status();
      values[i] = *std::move(v);
    }
    return absl::OkStatus();
  };
  for (size_t i = 0; i < out.steps.size(); ++i) {
    Step& step = out.steps[i];
    const std::string at = absl::StrCat("steps[", i, "]");
    if (stage.env.empty() && stage.secrets.empty() &&
        !HasReference(step)) {
      continue;
    }
    std::map<std::string, std::string> env;
    for (const auto& [key, value] : stage.env) {
      auto v = SubstituteSecrets(value, stage.secrets,
                                 absl::StrCat("env.", key));
      if (!v.ok()) return v.status();
      env[key] = *std::move(v);
    }
    for (const auto& [key, value] : step.envs) {
      auto v = SubstituteSecrets(value, stage.secrets,
                                 absl::StrCat(at, ".envs.", key));
      if (!v.ok()) return v.status();
      env[key] = *std::move(v);
    }
    step.envs = std::move(env);
    if (absl::Status s = substitute_all(step.commands, at + ".commands");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = substitute_all(step.entrypoint, at + ".entrypoint");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = substitute_all(step.args, at + ".args"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace delegate
