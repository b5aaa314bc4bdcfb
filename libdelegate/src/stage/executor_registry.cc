#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "delegate/executor.h"
#include "util/strings.h"

namespace delegate {

absl::Status ExecutorRegistry::Register(std::string name,
                                        ExecutorFactory factory,
                                        ExecutorTraits traits) {
  if (name.empty()) {
    return absl::InvalidArgumentError("executor name must not be empty");
  }
  if (!factory) {
    return absl::InvalidArgumentError(
        absl::StrCat("executor '", name, "': factory must not be empty"));
  }
  absl::MutexLock lock(&mu_);
  const size_t order = entries_.size();
  auto [it, inserted] = entries_.try_emplace(
      name, Entry{std::move(factory), std::move(traits), order, false});
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
    auto it = entries_.find(AbslView(name));
    if (it == entries_.end()) return nullptr;
    factory = it->second.factory;
  }
  return factory();
}

bool ExecutorRegistry::Contains(std::string_view name) const {
  absl::MutexLock lock(&mu_);
  return entries_.contains(AbslView(name));
}

std::vector<std::string> ExecutorRegistry::Names() const {
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

const PlatformProfile* ExecutorRegistry::Profile(std::string_view name) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(AbslView(name));
  return it == entries_.end() ? nullptr : it->second.traits.profile;
}

void ExecutorRegistry::Start(const ExecutorStartup& startup) {
  std::vector<std::pair<size_t, std::function<void(const ExecutorStartup&)>>>
      hooks;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, entry] : entries_) {
      if (entry.started || !entry.traits.on_start) continue;
      entry.started = true;
      hooks.emplace_back(entry.order, entry.traits.on_start);
    }
  }
  std::sort(hooks.begin(), hooks.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  // Outside the lock: a hook may take long (a Docker Engine that answers
  // slowly) and may look at the registry.
  for (const auto& [order, hook] : hooks) hook(startup);
}

}  // namespace delegate
