#include <algorithm>

#include "absl/strings/str_cat.h"
#include "delegate/executor.h"
#include "util/strings.h"

namespace delegate {

absl::Status ExecutorRegistry::Register(std::string name,
                                        ExecutorFactory factory) {
  if (name.empty()) {
    return absl::InvalidArgumentError("executor name must not be empty");
  }
  if (!factory) {
    return absl::InvalidArgumentError(
        absl::StrCat("executor '", name, "': factory must not be empty"));
  }
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = factories_.try_emplace(name, std::move(factory));
  if (!inserted) {
    return absl::AlreadyExistsError(
        absl::StrCat("an executor named '", name, "' is already registered"));
  }
  return absl::OkStatus();
}

std::unique_ptr<Executor> ExecutorRegistry::Create(
    std::string_view name) const {
  ExecutorFactory factory;
  {
    absl::MutexLock lock(&mu_);
    auto it = factories_.find(AbslView(name));
    if (it == factories_.end()) return nullptr;
    factory = it->second;
  }
  return factory();
}

bool ExecutorRegistry::Contains(std::string_view name) const {
  absl::MutexLock lock(&mu_);
  return factories_.contains(AbslView(name));
}

std::vector<std::string> ExecutorRegistry::Names() const {
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, factory] : factories_) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace delegate

#include "absl/strings/str_join.h"
#include "executor/validation.h"
#include "scheduler/secrets.h"

namespace delegate {

std::optional<StepStatus> StopReason(const StepContext& ctx) {
  if (ctx.stop.stop_requested()) return StepStatus::kCancelled;
  if (ctx.stage.clock.Now() >= ctx.deadline) return StepStatus::kTimeout;
  return std::nullopt;
}

absl::Status CheckResolvedStage(const ExecutorRegistry& registry,
                                Executor* executor, const Stage& resolved,
                                const OperatorPolicy& policy) {
  std::vector<std::string> problems;
  for (const PolicyViolation& v : CheckStagePolicy(resolved, policy)) {
    problems.push_back(v.ToString());
  }
  if (!executor) {
    problems.push_back(absl::StrCat(
        "platform: no executor is registered for '", resolved.platform,
        "'; registered: ", absl::StrJoin(registry.Names(), ", ")));
  } else if (absl::Status s = executor->Validate(resolved); !s.ok()) {
    problems.push_back(std::string(s.message()));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

absl::Status ValidateForPlatform(const ExecutorRegistry& registry,
                                 const Stage& stage,
                                 const OperatorPolicy& policy) {
  Stage resolved = stage;
  if (absl::Status s = ResolveStage(resolved); !s.ok()) return s;
  std::unique_ptr<Executor> executor = registry.Create(stage.platform);
  return CheckResolvedStage(registry, executor.get(), resolved, policy);
}

}  // namespace delegate
