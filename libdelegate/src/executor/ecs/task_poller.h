// The one DescribeTasks loop that follows every running step task of the
// delegate, so that the calls grow with the running steps / 100, not with
// the steps.
#ifndef DELEGATE_EXECUTOR_ECS_TASK_POLLER_H_
#define DELEGATE_EXECUTOR_ECS_TASK_POLLER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace delegate::ecs {

// What DescribeTasks last said about a task.
struct TaskState {
  uint64_t version = 0;  // bumped at every change
  std::string last_status;
  std::string stop_code;
  std::string stopped_reason;
  std::optional<int> exit_code;
  std::string container_reason;
  std::string missing;  // a failure reason ("MISSING") instead of a task
  // Only from Describe: the tags (when asked for) and the awsvpc subnets.
  std::map<std::string, std::string> tags;
  std::vector<std::string> subnets;
  std::string private_ip;  // the task's, on its ENI (awsvpc)
};
using TaskStates = std::map<std::string, TaskState>;  // by task ARN

// DescribeTasks takes at most this many tasks per call.
inline constexpr size_t kMaxDescribeTasks = 100;

// `items` in pieces of at most `n` (the API's limits per call).
std::vector<std::vector<std::string>> Chunks(
    const std::vector<std::string>& items, size_t n);

// Thread-safe. Its thread starts at the first Watch.
class TaskPoller {
 public:
  // DescribeTasks of at most kMaxDescribeTasks ARNs.
  using Describe = std::function<absl::StatusOr<TaskStates>(
      const std::vector<std::string>& arns)>;

  // Describes every watched task each `interval` (real time), chunk by
  // chunk; while a call fails the interval doubles, up to 30 s.
  TaskPoller(Describe describe, absl::Duration interval);
  // Stops the thread; waiters return at once.
  ~TaskPoller();
  TaskPoller(const TaskPoller&) = delete;
  TaskPoller& operator=(const TaskPoller&) = delete;

  // The poller follows `arn` until Unwatch.
  void Watch(const std::string& arn) ABSL_LOCKS_EXCLUDED(mu_);
  void Unwatch(const std::string& arn) ABSL_LOCKS_EXCLUDED(mu_);
  // The task's state once its version passes `seen`, or after `wait`; an
  // empty state for a task not watched.
  TaskState WaitForChange(const std::string& arn, uint64_t seen,
                          absl::Duration wait) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const Describe describe_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, TaskState> watched_ ABSL_GUARDED_BY(mu_);
  std::thread thread_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::ecs

#endif  // DELEGATE_EXECUTOR_ECS_TASK_POLLER_H_
