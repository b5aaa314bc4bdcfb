// The scheduler runs stage transactions on executors from a registry, with a
// capacity limit, a priority queue, timeouts, cancel and a graceful drain.
#ifndef DELEGATE_SCHEDULER_H_
#define DELEGATE_SCHEDULER_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/log_sink.h"
#include "delegate/policy.h"
#include "delegate/result.h"
#include "delegate/stage.h"

namespace delegate {

struct SchedulerOptions {
  ExecutorRegistry* registry = nullptr;  // REQUIRES: non-null, outlives
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
  // Masked in every stage's logs, errors, outputs and results, with their
  // encoded forms, on top of each stage's own secrets: the credentials the
  // delegate itself holds (DelegateConfig::MaskedValues()), which a step may
  // still come by (a value pasted into a stage, a file it can read).
  std::vector<std::string> masked_values;
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
class DELEGATE_EXPORT StageFeed {
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
  // Push for the step an earlier process of this delegate was running when
  // it stopped, in a stage submitted with StageTask::resume: the executor
  // re-attaches to it (StepContext::reattach) instead of starting it.
  absl::Status Reattach(Step step, std::vector<std::string> masks,
                        StepDone done);

  // No more steps: cleanup runs once the queued steps are done. `cleaned` is
  // called with cleanup's status, at once when the stage has already been
  // cleaned up (then with that cleanup's status). Idempotent: every call's
  // `cleaned` is called.
  void Close(Cleaned cleaned);

  // True once cleanup has run.
  bool ended() const;

 private:
  friend class StageTransaction;
  friend class Scheduler;
  struct Pending {
    Step step;
    std::vector<std::string> masks;
    StepDone done;
    bool reattach = false;
  };
  absl::Status Queue(Pending pending);
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
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::function<void(const absl::Status&)> on_initialized_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status cleanup_status_ ABSL_GUARDED_BY(mu_);
  std::vector<Cleaned> cleaned_ ABSL_GUARDED_BY(mu_);
};

// Hears what happens to one submitted stage: its progress, its result and
// every log line it writes (init, steps, cleanup), already masked. The
// progress calls come in order from the stage's thread; Append and Close
// (LogSink) also come from the threads that read a step's output, so they
// are thread-safe and quick. Done comes last, exactly once: on the stage's
// thread, or on the caller's when a queued stage is cancelled or shut down;
// it must not call Scheduler::Shutdown. Not called at all when Submit
// refuses the stage. One observer may serve many stages (LogLine::task_id
// and StageResult::task_id tell them apart); its calls then come from many
// threads at once.
class DELEGATE_EXPORT StageObserver : public LogSink {
 public:
  // The stage left the queue and is about to initialize (not called for a
  // stage that never leaves it).
  virtual void Started() {}
  // Before a step runs, with the step as it runs (secrets substituted, stage
  // env merged) and its position.
  virtual void StepStarted(const Step& step, size_t index) {
    (void)step;
    (void)index;
  }
  // After each step that ran or was refused; the skipped ones appear only in
  // the final StageResult.
  virtual void StepDone(const StepResult& result) { (void)result; }
  virtual void Done(const StageResult& result) = 0;
  // LogSink: lines are dropped unless a subclass keeps them.
  void Append(const LogLine& line) override { (void)line; }
};

// Forwards every call to another observer (none when null): the base of an
// observer that adds to what a stage's own observer hears. Override what
// you add to, and call the base there too.
class DELEGATE_EXPORT ForwardingObserver : public StageObserver {
 public:
  explicit ForwardingObserver(std::shared_ptr<StageObserver> inner)
      : inner_(std::move(inner)) {}
  void Started() override;
  void StepStarted(const Step& step, size_t index) override;
  void StepDone(const StepResult& result) override;
  void Done(const StageResult& result) override;
  void Append(const LogLine& line) override;
  void Close(std::string_view task_id, std::string_view step_id) override;

 private:
  const std::shared_ptr<StageObserver> inner_;
};

// A StageObserver from functions, each optional; lines also go to `log`
// when it is set. REQUIRES: `log` outlives the stage.
struct StageCallbacks {
  std::function<void()> started = nullptr;
  std::function<void(const Step& step, size_t index)> step_started = nullptr;
  std::function<void(const StepResult&)> step_done = nullptr;
  std::function<void(const StageResult&)> done = nullptr;
  LogSink* log = nullptr;
};
DELEGATE_EXPORT std::shared_ptr<StageObserver> ObserveWith(
    StageCallbacks callbacks);

struct StageTask {
  std::string id;  // unique among the scheduler's recent ids; see Submit
  Stage stage;
  // Set for a stage whose steps arrive one by one (stage.steps is then
  // ignored); see StageFeed.
  std::shared_ptr<StageFeed> feed;
  Priority priority = Priority::kNormal;
  // Hears the stage's progress, result and log lines; null: nobody does.
  std::shared_ptr<StageObserver> observer;
  // The stage was initialized by an earlier process of this delegate that
  // stopped (killed, crashed), under the same id: the executor adopts what
  // that process made (Executor::Resume) instead of initializing it. For a
  // fed stage only; its feed's on_initialized hears how that went.
  bool resume = false;
};

struct SchedulerStats {
  size_t queued = 0;
  size_t running = 0;
  size_t completed = 0;
};

// Thread-safe.
class DELEGATE_EXPORT Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  // Shutdown(absl::ZeroDuration()) if it was not called.
  ~Scheduler();

  // Checks the stage and queues it. The check is the whole one a stage
  // passes before anything of it is created (PrepareStage): its platform is
  // registered, every ${{secrets.ID}} is defined, the platform's profile and
  // the operator policy allow it, and its executor's Validate accepts it;
  // InvalidArgument lists every problem, one per line, with secret values
  // masked. AlreadyExists when the task id was seen before (running, queued
  // or among the last dedup_window finished), Unavailable after Shutdown
  // began. A refused stage's observer is not called.
  absl::Status Submit(StageTask task);

  // Submit for several tasks under one lock, for a source that receives them
  // in batches (a poll that returns many events). Returns one status per task,
  // in order; a failed task does not stop the others. Within one priority the
  // tasks queue in the order given.
  std::vector<absl::Status> SubmitAll(std::vector<StageTask> tasks);

  // Why a stage is cancelled, for its result's error.
  enum class CancelKind {
    kCancel,    // "cancelled"
    kShutdown,  // "cancelled: the delegate is shutting down"
  };
  // Cancels a queued or running stage: a queued one finishes CANCELLED at
  // once; a running one has its current step stopped, the rest skipped and
  // cleanup run. NotFound when the id is neither queued nor running.
  absl::Status Cancel(std::string_view task_id,
                      CancelKind kind = CancelKind::kCancel);

  // Graceful drain: takes nothing new; cancels the queued stages that wait
  // for capacity (those accepted while a slot was free still start); lets
  // the running ones finish for up to `drain`, then cancels them and whatever
  // is still queued; returns when every stage's cleanup has finished.
  // Idempotent.
  void Shutdown(absl::Duration drain);

  SchedulerStats stats() const;
  // What the scheduler was built with.
  const SchedulerOptions& options() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// The stages one source (a manager connection, a RuntimeService) submitted to
// a Scheduler it shares with others: each counts from its Submit until its
// observer's Done, so that the source can cancel its own and wait for them
// without touching anyone else's. Thread-safe.
class DELEGATE_EXPORT StageGroup {
 public:
  // REQUIRES: `scheduler` outlives the group.
  explicit StageGroup(Scheduler& scheduler);
  // CancelAll(kShutdown), then waits for every stage of the group.
  ~StageGroup();
  StageGroup(const StageGroup&) = delete;
  StageGroup& operator=(const StageGroup&) = delete;

  // Scheduler::Submit and SubmitAll for stages of this group.
  absl::Status Submit(StageTask task);
  std::vector<absl::Status> SubmitAll(std::vector<StageTask> tasks);
  // Scheduler::Cancel, for a stage of this group only (NotFound otherwise).
  absl::Status Cancel(
      std::string_view task_id,
      Scheduler::CancelKind kind = Scheduler::CancelKind::kCancel);
  // Cancels every stage of the group that has not finished.
  void CancelAll(Scheduler::CancelKind kind = Scheduler::CancelKind::kCancel);
  // Blocks until no stage of the group is left, or `deadline` passes (real
  // time). True when none is left.
  bool WaitUntilEmpty(absl::Time deadline = absl::InfiniteFuture());
  // Stages submitted and not yet done.
  size_t size() const;
  Scheduler& scheduler() { return scheduler_; }

 private:
  class Tracker;
  StageTask Track(StageTask task);
  void Untrack(const std::string& task_id);

  Scheduler& scheduler_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> open_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate

#endif  // DELEGATE_SCHEDULER_H_
