// The "docker" executor (target delegate::docker): every step in a container
// on a Docker Engine.
#ifndef DELEGATE_DOCKER_EXECUTOR_H_
#define DELEGATE_DOCKER_EXECUTOR_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/policy.h"

namespace delegate {

struct DockerExecutorOptions {
  // Where the Docker Engine listens: "unix:///path" or "tcp://host:port".
  // Empty: $DOCKER_HOST, or unix:///var/run/docker.sock.
  std::string docker_host;
  // A stopped step's container gets SIGTERM, then SIGKILL after this long.
  absl::Duration grace_period = absl::Seconds(10);
  // When the Engine stops answering during a stage's cleanup (a dockerd
  // restart), how long cleanup waits for it to come back before it leaves
  // what it could not remove to the next start or `delegate cleanup`.
  absl::Duration engine_wait = absl::Seconds(60);
  // This process's instance (delegate/instance.h), labelled
  // io.libdelegate.instance on everything the executor makes. Empty: none.
  std::string instance;
  // Where instances are recorded. When set, the delegate's start removes
  // what its own instance (a crashed earlier run) and every gone instance
  // recorded there left; nothing of a live instance, nor of one recorded
  // elsewhere. Empty: nothing is removed at start.
  std::string state_dir;
};

// Registers "docker": every step runs in a container of its image, on a
// network of the stage's own, with the stage's volumes; all of it labelled
// with the delegate name, stage and task id, and removed at cleanup. The
// daemon is contacted at the first stage, not here. A stage resumed after
// the delegate restarted (Executor::Resume) goes on with its network and
// volumes, found by name; one whose workspace volume is gone fails. Its
// interrupted step is re-attached by its container's name: its log from
// the start, its exit and outputs. A step that ran in a shared container
// (reuse_containers), or whose container is not there, fails saying so.
DELEGATE_EXPORT absl::Status RegisterDockerExecutor(
    ExecutorRegistry& registry, DockerExecutorOptions options);

// Removes everything labelled with the delegate name `delegate_name` on the
// Docker Engine, of every instance, live ones too (`delegate cleanup
// --all-instances`), and returns what it removed, one
// "container 0123456789ab" / "network ..." / "volume ..." each.
DELEGATE_EXPORT absl::StatusOr<std::vector<std::string>> ReapDockerLeftovers(
    const DockerExecutorOptions& options, const std::string& delegate_name);

// Removes what the instances `instances` left on the Docker Engine (after a
// crash or SIGKILL), and returns what it removed, as above. What the
// stages `resuming` (ExecutorStartup::resuming) of options.instance made
// is kept; of any other instance, nothing is.
DELEGATE_EXPORT absl::StatusOr<std::vector<std::string>> ReapDockerInstances(
    const DockerExecutorOptions& options,
    const std::vector<std::string>& instances,
    const std::vector<std::string>& resuming = {});

// What "docker" runs: everything the policy knows.
DELEGATE_EXPORT const PlatformProfile& DockerPlatformProfile();

}  // namespace delegate

#endif  // DELEGATE_DOCKER_EXECUTOR_H_
