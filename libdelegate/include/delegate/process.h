// Spawning host processes, behind an interface so that executors can be
// tested with a scripted process and a fake clock.
#ifndef DELEGATE_PROCESS_H_
#define DELEGATE_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"

namespace delegate {

struct ProcessSpec {
  std::vector<std::string> argv;  // argv[0] is a path; PATH is not searched
  std::vector<std::string> env;   // "KEY=VALUE"; the whole environment
  std::string working_dir;        // must exist
  std::optional<uid_t> uid;       // switch user before exec (needs root)
  std::optional<gid_t> gid;
};

struct ExitInfo {
  int exit_code = -1;   // -1 when killed by a signal
  int term_signal = 0;  // 0 when it exited normally
};

// A running child that leads its own process group.
class DELEGATE_EXPORT Process {
 public:
  virtual ~Process() = default;
  virtual pid_t pid() const = 0;
  // Delivers output to the callback given at launch while waiting. Returns the
  // exit information once the child has exited and its output is drained; at
  // exit, whatever is left of what it started is killed (with Default(),
  // also processes that left its group). Returns nullopt when `timeout`
  // elapsed or Interrupt() was called first.
  virtual std::optional<ExitInfo> Wait(absl::Duration timeout) = 0;
  // Sends `sig` to the whole process group.
  virtual void Signal(int sig) = 0;
  // Makes a current or the next Wait return early. Thread-safe.
  virtual void Interrupt() = 0;
};

// Called with raw output bytes, from the thread that calls Process::Wait.
using OutputCallback = std::function<void(LogStream, std::string_view)>;

class DELEGATE_EXPORT ProcessLauncher {
 public:
  virtual ~ProcessLauncher() = default;
  // Starts argv[0] in a new process group with stdin from /dev/null.
  virtual absl::StatusOr<std::unique_ptr<Process>> Launch(
      const ProcessSpec& spec, OutputCallback on_output) = 0;

  // Each child under a keeper process, the subreaper of the child's whole
  // tree: it kills what the child leaves when the child exits, and kills the
  // tree when this process dies (a lifeline pipe hangs up). pidfd and poll.
  // Never destroyed.
  static ProcessLauncher& Default();
};

}  // namespace delegate

#endif  // DELEGATE_PROCESS_H_
