// A stage run to its end through a Scheduler, for tests: the library's
// StageRun, with the test failing when the stage is refused.
#ifndef DELEGATE_TESTS_FAKES_STAGE_RUN_H_
#define DELEGATE_TESTS_FAKES_STAGE_RUN_H_

#include <string>
#include <utility>

#include "delegate/scheduler.h"
#include "delegate/stage_run.h"
#include "gtest/gtest.h"

namespace delegate::testing {

// The task for `stage`, its lines going to `lines` when it is set.
inline StageTask TaskFor(std::string id, Stage stage,
                         LogSink* lines = nullptr) {
  StageTask task;
  task.id = std::move(id);
  task.stage = std::move(stage);
  if (lines != nullptr) task.observer = ObserveWith({.log = lines});
  return task;
}

// Submits the stage and waits for its result; a refused submission fails
// the test.
inline StageResult RunStage(Scheduler& scheduler, std::string id, Stage stage,
                            LogSink* lines = nullptr) {
  StageRun run(scheduler, TaskFor(std::move(id), std::move(stage), lines));
  EXPECT_TRUE(run.submitted().ok()) << run.submitted();
  if (!run.submitted().ok()) return {};
  return run.Wait();
}

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_STAGE_RUN_H_
