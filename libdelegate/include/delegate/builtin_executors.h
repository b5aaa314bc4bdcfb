// The executors that ship with the library, registered by name. A host
// program calls these for the platforms it wants, next to its own
// ExecutorRegistry::Register lines.
#ifndef DELEGATE_BUILTIN_EXECUTORS_H_
#define DELEGATE_BUILTIN_EXECUTORS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/executor.h"
#include "delegate/process.h"

namespace delegate {

struct HostExecutorOptions {
  // Root under which each stage gets a fresh directory (workspace, output
  // files, empty_dir volumes), removed at cleanup. Empty: $TMPDIR or /tmp.
  std::string workdir;
  // A stopped step gets SIGTERM, then SIGKILL after this long.
  absl::Duration grace_period = absl::Seconds(10);
  // nullptr: ProcessLauncher::Default(). REQUIRES: outlives the registry.
  ProcessLauncher* launcher = nullptr;
  // The environment steps start from, "KEY=VALUE". Unset: the delegate's own
  // environment without the delegate token variables.
  std::optional<std::vector<std::string>> base_env;
};

// Registers "host": steps without an image, run by /bin/sh as host processes.
absl::Status RegisterHostExecutor(ExecutorRegistry& registry,
                                  HostExecutorOptions options);

struct DockerExecutorOptions {
  // Where the Docker Engine listens: "unix:///path" or "tcp://host:port".
  // Empty: $DOCKER_HOST, or unix:///var/run/docker.sock.
  std::string docker_host;
  // A stopped step's container gets SIGTERM, then SIGKILL after this long.
  absl::Duration grace_period = absl::Seconds(10);
};

// Registers "docker": every step runs in a container of its image, on a
// network of the stage's own, with the stage's volumes; all of it labelled
// with the delegate name, stage and task id, and removed at cleanup. The
// daemon is contacted at the first stage, not here.
absl::Status RegisterDockerExecutor(ExecutorRegistry& registry,
                                    DockerExecutorOptions options);

// Registers "local", Harness's local infrastructure: within one stage, a
// step with an image runs on the executor registered as `docker_platform`,
// one without on `host_platform`, each a single instance for the stage. The
// container side is set up at the stage's first container step, so host
// steps run on a delegate without a Docker Engine. REQUIRES: `registry`
// outlives every stage run on "local".
absl::Status RegisterLocalExecutor(ExecutorRegistry& registry,
                                   std::string host_platform = "host",
                                   std::string docker_platform = "docker");

// Removes what an earlier run of the delegate `delegate_name` left on the
// Docker Engine (after a crash or SIGKILL) and returns what it removed, one
// "container 0123456789ab" / "network ..." / "volume ..." each.
absl::StatusOr<std::vector<std::string>> ReapDockerLeftovers(
    const DockerExecutorOptions& options, const std::string& delegate_name);

}  // namespace delegate

#endif  // DELEGATE_BUILTIN_EXECUTORS_H_
