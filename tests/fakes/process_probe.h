// Looking at processes from a test: the pids a step wrote to a file, and
// whether they still run.
#ifndef DELEGATE_TESTS_FAKES_PROCESS_PROBE_H_
#define DELEGATE_TESTS_FAKES_PROCESS_PROBE_H_

#include <sys/types.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace delegate::testing {

// The pids written to `path`, one per line.
inline std::vector<pid_t> PidsIn(const std::string& path) {
  std::ifstream in(path);
  std::vector<pid_t> pids;
  for (pid_t pid; in >> pid;) pids.push_back(pid);
  return pids;
}

// Whether `pid` runs. A zombie runs nothing: whether it is reaped depends
// on the machine's init, not on the delegate.
inline bool Running(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() &&
         stat[paren + 2] != 'Z';
}

// Waits up to `timeout` for `pid` to stop running; whether it did.
inline bool AwaitGone(pid_t pid, absl::Duration timeout = absl::Seconds(5)) {
  const absl::Time until = absl::Now() + timeout;
  while (Running(pid) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return !Running(pid);
}

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_PROCESS_PROBE_H_
