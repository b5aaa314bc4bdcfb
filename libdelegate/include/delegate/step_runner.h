// `delegate runner`: the runner of a stage that runs as one ECS task
// (target delegate::runner). The task's runner container runs it; the step
// containers run `delegate-step`, which it puts where they find it. See
// proto/delegate/v1/runner.proto for the service, and README "One ECS task
// per stage" for the task's layout.
#ifndef DELEGATE_STEP_RUNNER_H_
#define DELEGATE_STEP_RUNNER_H_

#include <string>

#include "absl/status/status.h"
#include "delegate/env.h"
#include "delegate/export.h"

namespace delegate {

// Serves StepRunner until the delegate says Shutdown, or no call came for
// DELEGATE_RUNNER_IDLE_SECONDS (default 1800). From `env`:
//   DELEGATE_RUNNER_CLIENT_SHA256  REQUIRED: the SHA-256 of the only client
//                                  certificate accepted (the stage's)
//   DELEGATE_RUNNER_LISTEN         default 0.0.0.0:9079
//   DELEGATE_RUNNER_DIR            default /delegate: the volume the task's
//                                  containers share; gets delegate-step and
//                                  the agents' socket runner.sock
//   DELEGATE_STEP_AGENT            the static delegate-step to copy there;
//                                  default: beside `self_exe`, or in
//                                  ../libexec/delegate/ from it
// Errors name the variable and what to set.
DELEGATE_EXPORT absl::Status ServeStepRunner(const EnvMap& env,
                                             const std::string& self_exe);

// `delegate runner --install`: puts delegate-step into DELEGATE_RUNNER_DIR
// (as ServeStepRunner does first) and returns; the task's short-lived
// install container runs it, and the step containers wait for its success.
DELEGATE_EXPORT absl::Status InstallStepAgent(const EnvMap& env,
                                              const std::string& self_exe);

// The task's health check of the runner container (`delegate runner
// --check`): OK once the agents' socket exists.
DELEGATE_EXPORT absl::Status CheckStepRunner(const EnvMap& env);

}  // namespace delegate

#endif  // DELEGATE_STEP_RUNNER_H_
