#include "delegate/stage_run.h"

#include <future>
#include <memory>
#include <utility>

#include "absl/synchronization/notification.h"

namespace delegate {

struct StageRun::State {
  std::promise<StageResult> promise;
  std::shared_future<StageResult> result = promise.get_future().share();
  absl::Notification finished;
};

// Tells the task's own observer, then keeps the result.
class StageRun::Observer final : public ForwardingObserver {
 public:
  Observer(std::shared_ptr<StageRun::State> state,
           std::shared_ptr<StageObserver> inner)
      : ForwardingObserver(std::move(inner)), state_(std::move(state)) {}
  void Done(const StageResult& result) override {
    ForwardingObserver::Done(result);
    // Finished before the result is out: whoever Wait() wakes finds the run
    // over (Interrupt answers false).
    state_->finished.Notify();
    state_->promise.set_value(result);
  }

 private:
  const std::shared_ptr<StageRun::State> state_;
};

StageRun::StageRun(Scheduler& scheduler, StageTask task)
    : scheduler_(scheduler),
      task_id_(task.id),
      state_(std::make_shared<State>()) {
  task.observer = std::make_shared<Observer>(state_, std::move(task.observer));
  submitted_ = scheduler_.Submit(std::move(task));
}

StageRun::~StageRun() {
  if (submitted_.ok() && !state_->finished.HasBeenNotified()) {
    (void)scheduler_.Cancel(task_id_);
    state_->finished.WaitForNotification();
  }
  std::thread timer;
  {
    absl::MutexLock lock(&mu_);
    timer.swap(drain_timer_);
  }
  if (timer.joinable()) timer.join();
}

bool StageRun::Interrupt(absl::Duration drain) {
  if (!submitted_.ok() || state_->finished.HasBeenNotified()) return false;
  absl::MutexLock lock(&mu_);
  if (interrupts_++ > 0) {
    (void)scheduler_.Cancel(task_id_);
    return true;
  }
  drain_timer_ = std::thread([this, drain, state = state_] {
    if (!state->finished.WaitForNotificationWithTimeout(drain)) {
      (void)scheduler_.Cancel(task_id_, Scheduler::CancelKind::kShutdown);
    }
  });
  return true;
}

StageResult StageRun::Wait() { return state_->result.get(); }

}  // namespace delegate
