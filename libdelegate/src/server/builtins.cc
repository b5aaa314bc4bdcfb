#include "delegate/builtins.h"

#include <utility>

#include "delegate/builtin_executors.h"
#include "delegate/delegate_session.h"
#include "delegate/harness.h"

namespace delegate {

absl::Status RegisterBuiltins(const DelegateConfig& config, const EnvMap& env,
                              ExecutorRegistry& executors,
                              ManagerRegistry* managers) {
  HostExecutorOptions host;
  host.workdir = config.workdir;
  host.grace_period = config.cleanup_grace_period;
  host.instance = config.instance;
  DockerExecutorOptions docker;
  docker.grace_period = config.cleanup_grace_period;
  docker.instance = config.instance;
  // Leftovers are looked for at start only by a program that holds an
  // instance lease (the delegate binary does).
  if (!config.instance.empty()) {
    docker.state_dir = config.StateDir();
    host.state_dir = config.StateDir();
  }
  absl::StatusOr<EcsExecutorOptions> ecs = LoadEcsExecutorOptions(env);
  if (!ecs.ok()) return ecs.status();
  ecs->grace_period = config.cleanup_grace_period;

  absl::Status s = RegisterHostExecutor(executors, std::move(host));
  if (s.ok()) s = RegisterDockerExecutor(executors, std::move(docker));
  if (s.ok()) s = RegisterLocalExecutor(executors);
  if (s.ok()) s = RegisterEcsExecutors(executors, *std::move(ecs));
  if (s.ok() && managers != nullptr) {
    s = RegisterHarnessManager(*managers);
    if (s.ok()) s = RegisterGrpcManager(*managers);
  }
  return s;
}

}  // namespace delegate
