// One stage transaction, as the scheduler runs it on a worker: initialize,
// each step in order (or each fed step as it arrives), cleanup whatever
// happened, all on one executor instance.
#ifndef DELEGATE_SCHEDULER_STAGE_TRANSACTION_H_
#define DELEGATE_SCHEDULER_STAGE_TRANSACTION_H_

#include <atomic>
#include <memory>
#include <stop_token>
#include <string>

#include "delegate/clock.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"
#include "logs/output_pipeline.h"
#include "stage/check.h"

namespace delegate {

// Why a stage's stop was requested.
enum class StopCause : int { kNone = 0, kCancel = 1, kShutdown = 2 };

// A stage the scheduler accepted: its task, what PrepareStage made of its
// stage, and how to stop it.
struct AcceptedStage {
  AcceptedStage(StageTask t, PreparedStage p)
      : task(std::move(t)), prepared(std::move(p)) {}
  // Stops the stage; the first cause given is the one reported.
  void RequestStop(StopCause why) {
    int none = static_cast<int>(StopCause::kNone);
    cause.compare_exchange_strong(none, static_cast<int>(why));
    stop.request_stop();
  }
  const Stage& stage() const { return prepared.stage; }

  StageTask task;  // its stage moved into prepared.stage
  PreparedStage prepared;
  std::stop_source stop;
  std::atomic<int> cause{static_cast<int>(StopCause::kNone)};
  // The scheduler's bookkeeping, changed under its lock.
  std::atomic<bool> running{false};
  std::atomic<bool> cancelled{false};  // a queued stage to skip
  // Its transaction has returned (cleaned up): a Cancel from now on is
  // NotFound, although the id stays active until its observer's Done returns.
  std::atomic<bool> ended{false};
};

// Runs `stage` to its end and returns its result. The observer hears the
// progress and every line, but not Done: the caller tells it.
StageResult RunStageTransaction(const SchedulerOptions& options, Clock& clock,
                                AcceptedStage& stage);

// Ends a stage that never left the queue: CANCELLED with `why`, each step
// skipped; its observer's Done and its feed are told.
void AbandonQueuedStage(AcceptedStage& stage, const std::string& why);

}  // namespace delegate

#endif  // DELEGATE_SCHEDULER_STAGE_TRANSACTION_H_
