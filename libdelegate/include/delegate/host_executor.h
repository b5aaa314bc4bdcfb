// The executors in the core library: "host", steps as host processes, and
// "local", Harness's local infrastructure over "host" and a container
// platform.
#ifndef DELEGATE_HOST_EXECUTOR_H_
#define DELEGATE_HOST_EXECUTOR_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/policy.h"
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
  // This process's instance (delegate/instance.h), in each stage
  // directory's name (delegate-INSTANCE-TASK-XXXXXX) so that a stage
  // directory left by a crash is found by instance. Empty: none.
  std::string instance;
  // Where instances are recorded. When set, the delegate's start removes the
  // stage directories its own instance (a crashed earlier run) and every
  // gone instance recorded there left. Empty: none are removed at start.
  std::string state_dir;
};

// Registers "host": steps without an image, run by /bin/sh as host processes.
// A stage resumed after the delegate restarted (Executor::Resume) goes on in
// its stage directory; the step that was running died with the delegate,
// and fails saying so.
DELEGATE_EXPORT absl::Status RegisterHostExecutor(ExecutorRegistry& registry,
                                                  HostExecutorOptions options);

// Removes the stage directories under `workdir` ($TMPDIR or /tmp when
// empty) that the instances `instances` left (a crash or SIGKILL skipped
// their cleanup), and returns them, one "workspace PATH" each. Those of the
// stages `resuming` (ExecutorStartup::resuming) of `own_instance` are kept.
DELEGATE_EXPORT std::vector<std::string> ReapHostLeftovers(
    const std::string& workdir, const std::vector<std::string>& instances,
    const std::string& own_instance = "",
    const std::vector<std::string>& resuming = {});

// Registers "local", Harness's local infrastructure: within one stage, a
// step with an image runs on the executor registered as `docker_platform`,
// one without on `host_platform`, each a single instance for the stage. The
// container side is set up at the stage's first container step, so host
// steps run on a delegate without a Docker Engine; in a resumed stage, it
// is resumed there. REQUIRES: `registry` outlives every stage run on
// "local".
DELEGATE_EXPORT absl::Status RegisterLocalExecutor(
    ExecutorRegistry& registry, std::string host_platform = "host",
    std::string docker_platform = "docker");

// What "host" runs: no images, no privilege or read-only root, no
// capabilities, no EFS; relative working dirs stay in the workspace.
DELEGATE_EXPORT const PlatformProfile& HostPlatformProfile();

}  // namespace delegate

#endif  // DELEGATE_HOST_EXECUTOR_H_
