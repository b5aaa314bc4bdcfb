#include "stage/check.h"

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "stage/secrets.h"
#include "util/strings.h"

namespace delegate {
namespace {

absl::Status Masked(const absl::Status& status,
                    const std::shared_ptr<const logs::SecretMasker>& masker) {
  if (status.ok() || masker == nullptr) return status;
  return absl::Status(status.code(), masker->Mask(StdView(status.message())));
}

}  // namespace

absl::Status CheckResolvedStage(const ExecutorRegistry& registry,
                                Executor* executor, const Stage& resolved,
                                const OperatorPolicy& policy) {
  std::vector<std::string> problems;
  // Results, logs and outputs are keyed by step id: a repeated one would mix
  // two steps' (stage files are refused earlier, with the file's lines).
  // A stage of a few steps is compared pairwise, without allocating; a long
  // one goes through a map.
  const std::vector<Step>& steps = resolved.steps;
  auto duplicate = [&](size_t i, size_t first) {
    problems.push_back(absl::StrCat("steps[", i, "].id: duplicate step id '",
                                    steps[i].id, "' (first at steps[", first,
                                    "])"));
  };
  constexpr size_t kPairwiseSteps = 32;
  if (steps.size() <= kPairwiseSteps) {
    for (size_t i = 1; i < steps.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (steps[j].id == steps[i].id) {
          duplicate(i, j);
          break;
        }
      }
    }
  } else {
    std::map<std::string_view, size_t> first_index;
    for (size_t i = 0; i < steps.size(); ++i) {
      if (auto [it, inserted] = first_index.emplace(steps[i].id, i);
          !inserted) {
        duplicate(i, it->second);
      }
    }
  }
  for (const PolicyViolation& v : CheckStagePolicy(
           resolved, policy, registry.Profile(resolved.platform))) {
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

absl::StatusOr<PreparedStage> PrepareStage(
    const ExecutorRegistry& registry, Stage stage, const OperatorPolicy& policy,
    const std::vector<std::string>& masked_values) {
  PreparedStage prepared;
  prepared.masker = MaskerFor(stage, masked_values);
  if (absl::Status s = ResolveStage(stage); !s.ok()) {
    return Masked(s, prepared.masker);
  }
  prepared.executor = registry.Create(stage.platform);
  if (absl::Status s =
          CheckResolvedStage(registry, prepared.executor.get(), stage, policy);
      !s.ok()) {
    return Masked(s, prepared.masker);
  }
  prepared.notes = StageNotes(stage, registry.Profile(stage.platform));
  for (std::string& note : prepared.executor->Notes(stage)) {
    prepared.notes.push_back(std::move(note));
  }
  if (prepared.masker) {
    for (std::string& note : prepared.notes) {
      note = prepared.masker->Mask(note);
    }
  }
  prepared.stage = std::move(stage);
  return prepared;
}

absl::Status ValidateForPlatform(const ExecutorRegistry& registry,
                                 const Stage& stage,
                                 const OperatorPolicy& policy,
                                 std::vector<std::string>* notes) {
  absl::StatusOr<PreparedStage> prepared =
      PrepareStage(registry, stage, policy);
  if (!prepared.ok()) return prepared.status();
  if (notes != nullptr) *notes = std::move(prepared->notes);
  return absl::OkStatus();
}

}  // namespace delegate
