#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "delegate/manager.h"
#include "util/strings.h"

namespace delegate {

absl::Status ManagerRegistry::Register(std::string scheme,
                                       ManagerFactory factory) {
  if (scheme.empty()) {
    return absl::InvalidArgumentError("a manager scheme must not be empty");
  }
  absl::MutexLock lock(&mu_);
  if (!factories_.emplace(scheme, std::move(factory)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("manager '", scheme, "' is already registered"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ManagerConnection>> ManagerRegistry::Create(
    std::string_view scheme, ManagerEnvironment env) const {
  ManagerFactory factory;
  {
    absl::MutexLock lock(&mu_);
    auto it = factories_.find(AbslView(scheme));
    if (it != factories_.end()) factory = it->second;
  }
  if (!factory) {
    return absl::NotFoundError(absl::StrCat(
        "--manager: no manager connection is registered for '",
        AbslView(scheme), "'; registered: ", absl::StrJoin(Names(), ", ")));
  }
  return factory(std::move(env));
}

std::vector<std::string> ManagerRegistry::Names() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [name, f] : factories_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace delegate
