// A stage submitted to a Scheduler, and its result once it is done: what
// every test that runs stages through the scheduler needs.
#ifndef DELEGATE_TESTS_FAKES_STAGE_RUN_H_
#define DELEGATE_TESTS_FAKES_STAGE_RUN_H_

#include <future>
#include <memory>
#include <string>

#include "delegate/scheduler.h"
#include "gtest/gtest.h"

namespace delegate::testing {

class StageRun {
 public:
  StageRun(Scheduler& scheduler, std::string id, Stage stage)
      : done_(std::make_shared<std::promise<StageResult>>()),
        result_(done_->get_future()) {
    StageTask task;
    task.id = std::move(id);
    task.stage = std::move(stage);
    task.on_done = [done = done_](const StageResult& r) { done->set_value(r); };
    submitted_ = scheduler.Submit(std::move(task));
  }

  const absl::Status& submitted() const { return submitted_; }
  // REQUIRES: submitted().ok().
  StageResult Wait() { return result_.get(); }

 private:
  std::shared_ptr<std::promise<StageResult>> done_;
  std::future<StageResult> result_;
  absl::Status submitted_;
};

// Submits the stage and waits for its result; a refused submission fails
// the test.
inline StageResult RunStage(Scheduler& scheduler, std::string id, Stage stage) {
  StageRun run(scheduler, std::move(id), std::move(stage));
  EXPECT_TRUE(run.submitted().ok()) << run.submitted();
  if (!run.submitted().ok()) return {};
  return run.Wait();
}

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_STAGE_RUN_H_
