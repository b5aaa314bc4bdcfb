// One stage run to its end on a Scheduler: what `delegate exec` does, and
// what a host program does to run a stage and wait for its result, with a
// graceful drain and a cancel for its own signal handling.
#ifndef DELEGATE_STAGE_RUN_H_
#define DELEGATE_STAGE_RUN_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/export.h"
#include "delegate/result.h"
#include "delegate/scheduler.h"

namespace delegate {

class DELEGATE_EXPORT StageRun {
 public:
  // Submits `task`; its observer, when it has one, still hears everything.
  // REQUIRES: `scheduler` outlives the run.
  StageRun(Scheduler& scheduler, StageTask task);
  // Cancels a stage still running and waits for its cleanup.
  ~StageRun();
  StageRun(const StageRun&) = delete;
  StageRun& operator=(const StageRun&) = delete;

  // What Submit answered: InvalidArgument lists every problem with the
  // stage, one per line.
  const absl::Status& submitted() const { return submitted_; }

  // Stops the stage, gracefully first. The first call lets it go on for up
  // to `drain` (still running its steps and its cleanup), then cancels it as
  // the delegate shutting down; any later call cancels it at once. Returns
  // at once; thread-safe. Returns false once the stage has finished.
  bool Interrupt(absl::Duration drain);

  // REQUIRES: submitted().ok(). Blocks until the stage has been cleaned up.
  StageResult Wait();

 private:
  struct State;
  class Observer;
  Scheduler& scheduler_;
  const std::string task_id_;
  // Shared with the stage's observer, which may be the last to let go.
  const std::shared_ptr<State> state_;
  absl::Status submitted_;
  absl::Mutex mu_;
  int interrupts_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread drain_timer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate

#endif  // DELEGATE_STAGE_RUN_H_
