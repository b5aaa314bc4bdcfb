// The executors that ship with the library, registered by name. A host
// program calls these for the platforms it wants, next to its own
// ExecutorRegistry::Register lines.
#ifndef DELEGATE_BUILTIN_EXECUTORS_H_
#define DELEGATE_BUILTIN_EXECUTORS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
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

}  // namespace delegate

#endif  // DELEGATE_BUILTIN_EXECUTORS_H_
