// The scheduler runs stage transactions on executors from a registry, with a
// capacity limit, a priority queue, timeouts, cancel and a graceful drain.
#ifndef DELEGATE_SCHEDULER_H_
#define DELEGATE_SCHEDULER_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
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
  // An idle worker polls briefly for the next stage before it sleeps, which
  // saves both sides a futex wake when stages come in a tight stream from
  // one thread. Turn it off when the submitting side needs the CPU (a
  // network reader on a small machine).
  bool spin_when_idle = true;
};

// The steps of a stage that arrive one at a time, for a manager that sends a
// stage's init, each step and its cleanup as separate tasks (Harness's
// local_init, local_execute, local_cleanup). Submit the stage with its feed
// and no steps: the scheduler initializes it, then runs each pushed step as it
// arrives, on the same executor instance, until Close (or a cancel, a
// shutdown, the stage deadline or `idle_timeout` without a step) ends it, and
// then runs cleanup. A failed step does not end the stage: the manager decides
// what comes next. Thread-safe.
class StageFeed {
 public:
  using StepDone = std::function<void(const StepResult&)>;
  using Cleaned = std::function<void(const absl::Status&)>;

  // `on_initialized` is called once: with OK when the stage is ready for
  // steps, or with why it will take none (initialize failed, the stage was
  // refused, cancelled while queued, the delegate shut down).
  explicit StageFeed(std::function<void(const absl::Status&)> on_initialized,
                     absl::Duration idle_timeout = absl::Hours(1));
  StageFeed(const StageFeed&) = delete;
  StageFeed& operator=(const StageFeed&) = delete;

  // Queues a step behind those pushed before. `masks` are more values to mask
  // in its output and result, on top of the stage's secrets. `done` is called
  // once with the step's result, also when the stage ends before the step
  // runs (kSkipped, or kCancelled). FailedPrecondition when the stage has
  // ended or Close was called; `done` is then not called.
  absl::Status Push(Step step, std::vector<std::string> masks, StepDone done);

  // No more steps: cleanup runs once the queued steps are done. `cleaned` is
  // called with cleanup's status, at once when the stage has already been
  // cleaned up (then with that cleanup's status). Idempotent: every call's
  // `cleaned` is called.
  void Close(Cleaned cleaned);

  // True once cleanup has run.
  bool ended() const;

 private:
  friend class Scheduler;
  struct Pending {
    Step step;
    std::vector<std::string> masks;
    StepDone done;
  };
  // The scheduler's side.
  void Initialized(const absl::Status& status);
  // The next step, or nullopt when the stage is over: closed and drained,
  // stopped, past `deadline` (on `clock`), or idle for idle_timeout.
  // `idle` is set when the last reason applies.
  std::optional<Pending> Next(const std::stop_token& stop, Clock& clock,
                              absl::Time deadline, bool* idle);
  // Cleanup ran with `status`; queued steps are answered with `leftover`.
  void Ended(const absl::Status& status, StepStatus leftover,
             const std::string& why);

  const absl::Duration idle_timeout_;
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::function<void(const absl::Status&)> on_initialized_;  // guarded by mu_
  std::deque<Pending> queue_;                                // guarded by mu_
  bool closed_ = false;                                      // guarded by mu_
  bool ended_ = false;                                       // guarded by mu_
  absl::Status cleanup_status_;                              // guarded by mu_
  std::vector<Cleaned> cleaned_;                             // guarded by mu_
};

struct StageTask {
  std::string id;  // unique per delivery source; a repeat is refused
  Stage stage;
  // Set for a stage whose steps arrive one by one (stage.steps is then
  // ignored); see StageFeed.
  std::shared_ptr<StageFeed> feed;
  Priority priority = Priority::kNormal;
  // Called once with the final result, on the stage's thread (or on the
  // caller's thread when a queued task is cancelled or shut down). Must not
  // call back into the scheduler's Shutdown.
  std::function<void(const StageResult&)> on_done;
  // Progress, for a watcher (RuntimeService, a manager session). Each is
  // optional and called on the stage's thread, in order, before on_done:
  // on_started when the stage leaves the queue (before initialize; not for a
  // stage that never leaves it), on_step_started before a step runs (with the
  // step as resolved, secrets still as references), on_step_done with the
  // result of each step that ran or was refused (the skipped ones appear only
  // in the final StageResult).
  std::function<void()> on_started;
  std::function<void(const Step& step, size_t index)> on_step_started;
  std::function<void(const StepResult&)> on_step_done;
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
