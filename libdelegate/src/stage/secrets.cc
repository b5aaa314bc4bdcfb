#include "stage/secrets.h"

#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "logs/held_credentials.h"
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
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": unknown secret '", id, "'; ",
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
  if (step.registry &&
      (step.registry->username.find(kOpen) != std::string::npos ||
       step.registry->password.find(kOpen) != std::string::npos)) {
    return true;
  }
  return any(step.commands) || any(step.entrypoint) || any(step.args);
}

}  // namespace

namespace {

// One reference: [begin, end) in the text and the id inside it.
struct Reference {
  size_t begin;
  size_t end;
  std::string_view id;
};

// The next reference at or after `from`, or nullopt.
std::optional<Reference> NextReference(std::string_view text, size_t from) {
  size_t open = text.find(kOpen, from);
  while (open != std::string_view::npos) {
    const size_t close = text.find(kClose, open + kOpen.size());
    if (close == std::string_view::npos) return std::nullopt;
    std::string_view inner = StdView(absl::StripAsciiWhitespace(AbslView(
        text.substr(open + kOpen.size(), close - open - kOpen.size()))));
    if (inner.starts_with(kPrefix)) {
      return Reference{open, close + kClose.size(),
                       inner.substr(kPrefix.size())};
    }
    open = text.find(kOpen, close + kClose.size());
  }
  return std::nullopt;
}

}  // namespace

void ForEachSecretReference(
    std::string_view text,
    const std::function<void(std::string_view)>& on_reference) {
  for (auto ref = NextReference(text, 0); ref;
       ref = NextReference(text, ref->end)) {
    on_reference(ref->id);
  }
}

absl::StatusOr<std::string> SubstituteSecrets(
    std::string_view text, const std::map<std::string, std::string>& secrets,
    std::string_view path) {
  std::optional<Reference> ref = NextReference(text, 0);
  if (!ref) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (; ref; ref = NextReference(text, ref->end)) {
    auto it = secrets.find(std::string(ref->id));
    if (it == secrets.end()) {
      return UnknownSecret(AbslView(path), AbslView(ref->id), secrets);
    }
    out.append(text.substr(pos, ref->begin - pos));
    out.append(it->second);
    pos = ref->end;
  }
  out.append(text.substr(pos));
  return out;
}

std::vector<std::string> SecretValues(const Stage& stage) {
  std::vector<std::string> values;
  for (const auto& [id, value] : stage.secrets) values.push_back(value);
  for (const Step& step : stage.steps) {
    if (step.registry &&
        step.registry->password.find("${{") == std::string::npos) {
      values.push_back(step.registry->password);
    }
  }
  return values;
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
    if (stage.env.empty() && stage.secrets.empty() && !HasReference(step)) {
      continue;
    }
    std::map<std::string, std::string> env;
    for (const auto& [key, value] : stage.env) {
      auto v =
          SubstituteSecrets(value, stage.secrets, absl::StrCat("env.", key));
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
    if (step.registry) {
      for (auto [field, value] :
           {std::pair{"username", &step.registry->username},
            std::pair{"password", &step.registry->password}}) {
        auto v = SubstituteSecrets(*value, stage.secrets,
                                   absl::StrCat(at, ".registry.", field));
        if (!v.ok()) return v.status();
        *value = *std::move(v);
      }
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<const logs::SecretMasker> MaskerFor(
    const Stage& stage, const std::vector<std::string>& more) {
  std::vector<std::string> values = SecretValues(stage);
  values.insert(values.end(), more.begin(), more.end());
  std::vector<std::string> held = logs::HeldCredentials();
  values.insert(values.end(), held.begin(), held.end());
  if (values.empty()) return nullptr;
  return std::make_shared<logs::SecretMasker>(values);
}

}  // namespace delegate
