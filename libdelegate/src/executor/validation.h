// The checks that run before a stage creates anything, shared by
// ValidateForPlatform and the scheduler.
#ifndef DELEGATE_EXECUTOR_VALIDATION_H_
#define DELEGATE_EXECUTOR_VALIDATION_H_

#include "absl/status/status.h"
#include "delegate/executor.h"
#include "delegate/policy.h"
#include "delegate/stage.h"

namespace delegate {

// `resolved` (secrets substituted) against the volume and security policy,
// then `executor->Validate`; a null `executor` means none is registered for
// the platform. InvalidArgument lists every problem, one per line.
absl::Status CheckResolvedStage(const ExecutorRegistry& registry,
                                Executor* executor, const Stage& resolved,
                                const OperatorPolicy& policy);

}  // namespace delegate

#endif  // DELEGATE_EXECUTOR_VALIDATION_H_
