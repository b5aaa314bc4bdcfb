// The one check a stage passes before anything of it is created, shared by
// the scheduler (Submit), `delegate validate` (ValidateForPlatform) and
// fed steps that arrive one at a time.
#ifndef DELEGATE_STAGE_CHECK_H_
#define DELEGATE_STAGE_CHECK_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "delegate/executor.h"
#include "delegate/policy.h"
#include "delegate/stage.h"
#include "logs/masker.h"

namespace delegate {

// A stage ready to run: secrets substituted and stage env merged into its
// steps (ResolveStage), checked, and an executor of its platform made (the
// one instance that runs it).
struct PreparedStage {
  Stage stage;
  std::unique_ptr<Executor> executor;
  // Masks the stage's secret values; null when it has none.
  std::shared_ptr<const logs::SecretMasker> masker;
  // What the platform accepts without applying it as written (StageNotes of
  // its profile, then Executor::Notes), masked.
  std::vector<std::string> notes;
};

// Resolves `stage`, then checks it (CheckResolvedStage) with a new executor
// of its platform. InvalidArgument lists every problem, one per line, with
// the stage's secret values and `masked_values` masked; the masker masks
// both.
absl::StatusOr<PreparedStage> PrepareStage(
    const ExecutorRegistry& registry, Stage stage, const OperatorPolicy& policy,
    const std::vector<std::string>& masked_values = {});

// `resolved` (secrets substituted) against its platform's registered
// profile, the rules common to every platform and `policy`, then
// `executor->Validate`; a null `executor` means none is registered for the
// platform. InvalidArgument lists every problem, one per line, unmasked.
absl::Status CheckResolvedStage(const ExecutorRegistry& registry,
                                Executor* executor, const Stage& resolved,
                                const OperatorPolicy& policy);

}  // namespace delegate

#endif  // DELEGATE_STAGE_CHECK_H_
