// The scheduler runs stage transactions on executors from a registry, with a
// capacity limit, a priority queue, timeouts, cancel and a graceful drain.
#ifndef DELEGATE_SCHEDULER_H_
#define DELEGATE_SCHEDULER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/executor.h"
#include "delegate/log_sink.h"
#include "delegate/policy.h"
#include "delegate/result.h"
#include "delegate/stage.h"

namespace delegate {

struct SchedulerOptions {
  ExecutorRegistry* registry = nullptr;  // REQUIRES: non-null, outlives
  LogSink* log_sink = nullptr;           // REQUIRES: non-null, outlives
  Clock* clock = nullptr;                // nullptr: Clock::Real()
  std::string delegate_name = "harness-delegate";
  // Stages that may run at once (MAX_STAGES); unset: no limit.
  std::optional<int> max_stages;
  // How many finished task ids are remembered to refuse a second delivery.
  size_t dedup_window = 100000;
  // Longest log line before it is split (bytes).
  size_t max_line_bytes = 64 * 1024;
  // Narrows what the platforms allow; every stage is checked against it
  // (with its platform's profile) before anything is created.
  OperatorPolicy policy;
};

struct StageTask {
  std::string id;  // unique per delivery source; a repeat is refused
  Stage stage;
  Priority priority = Priority::kNormal;
  // Called once with the final result, on the stage's thread (or on the
  // caller's thread when a queued task is cancelled or shut down). Must not
  // call back into the scheduler's Shutdown.
  std::function<void(const StageResult&)> on_done;
};

struct SchedulerStats {
  size_t queued = 0;
  size_t running = 0;
  size_t completed = 0;
};

// Thread-safe.
class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  // Shutdown(absl::ZeroDuration()) if it was not called.
  ~Scheduler();

  // Queues a stage. Returns AlreadyExists when the task id was seen before
  // (running, queued or among the last dedup_window finished), InvalidArgument
  // when no executor is registered for the stage's platform, Unavailable after
  // Shutdown began.
  absl::Status Submit(StageTask task);

  // Submit for several tasks under one lock, for a source that receives them
  // in batches (a poll that returns many events). Returns one status per task,
  // in order; a failed task does not stop the others. Within one priority the
  // tasks queue in the order given.
  std::vector<absl::Status> SubmitAll(std::vector<StageTask> tasks);

  // Cancels a queued or running stage: a queued one finishes CANCELLED at
  // once; a running one has its current step stopped, the rest skipped and
  // cleanup run. NotFound when the id is neither queued nor running.
  absl::Status Cancel(std::string_view task_id);

  // Graceful drain: takes nothing new; cancels the queued stages that wait
  // for capacity (those accepted while a slot was free still start); lets
  // the running ones finish for up to `drain`, then cancels them and whatever
  // is still queued; returns when every stage's cleanup has finished.
  // Idempotent.
  void Shutdown(absl::Duration drain);

  SchedulerStats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace delegate

#endif  // DELEGATE_SCHEDULER_H_
