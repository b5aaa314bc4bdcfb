// Everything that ships with the library, registered in one call: what the
// `delegate` binary runs, and what a host program calls when it wants the
// same delegate with its own executors or connections added (target
// delegate::delegate).
#ifndef DELEGATE_BUILTINS_H_
#define DELEGATE_BUILTINS_H_

#include "absl/status/status.h"
#include "delegate/config.h"
#include "delegate/env.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/manager.h"

namespace delegate {

// Registers the built-in executors, configured from `config` and `env`:
//   "host"                   HARNESS_WORKDIR, CLEANUP_GRACE_PERIOD_SECONDS
//   "docker"                 CLEANUP_GRACE_PERIOD_SECONDS (and $DOCKER_HOST)
//   "local"                  over "host" and "docker"
//   "ecs-fargate", "ecs-ec2" DELEGATE_ECS_* and AWS_* (LoadEcsExecutorOptions)
// and, when `managers` is not null, the manager connections "harness",
// "grpc" and "grpcs". Nothing is contacted here: Docker at the executors'
// start-up hook and first stage, AWS at the first ECS stage. InvalidArgument
// naming the variable for a malformed value; AlreadyExists when a name is
// taken (register your own under other names, before or after).
DELEGATE_EXPORT absl::Status RegisterBuiltins(const DelegateConfig& config,
                                              const EnvMap& env,
                                              ExecutorRegistry& executors,
                                              ManagerRegistry* managers);

}  // namespace delegate

#endif  // DELEGATE_BUILTINS_H_
