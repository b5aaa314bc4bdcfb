// One stage driven through an executor by hand, the way the scheduler drives
// it (Initialize or Resume, Execute, Cleanup), for tests that play a
// delegate restart: one executor instance stands for the process that was
// killed, another for the one that resumes the stage.
#ifndef DELEGATE_TESTS_FAKES_HAND_RUN_H_
#define DELEGATE_TESTS_FAKES_HAND_RUN_H_

#include <string>
#include <string_view>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/executor.h"
#include "delegate/log_sink.h"

namespace delegate::testing {

// Everything written to it, every stream, as one text. Thread-safe.
class TextOutput final : public OutputWriter {
 public:
  void Write(LogStream stream, std::string_view bytes) override {
    (void)stream;
    absl::MutexLock lock(&mu_);
    text_.append(bytes);
  }
  void Flush() override {}
  std::string Text() const {
    absl::MutexLock lock(&mu_);
    return text_;
  }

 private:
  mutable absl::Mutex mu_;
  std::string text_ ABSL_GUARDED_BY(mu_);
};

// The contexts of one stage (its steps' output in one TextOutput).
// REQUIRES: outlives the executors it is passed to.
class HandRun {
 public:
  HandRun(Stage stage, std::string task_id, std::string delegate_name,
          Clock& clock = Clock::Real())
      : stage_(std::move(stage)),
        task_id_(std::move(task_id)),
        delegate_name_(std::move(delegate_name)),
        context_{stage_, task_id_, delegate_name_,        output_,
                 clock,  {},       absl::InfiniteFuture()} {}
  HandRun(const HandRun&) = delete;
  HandRun& operator=(const HandRun&) = delete;

  const StageContext& context() const { return context_; }
  const Stage& stage() const { return stage_; }

  // Runs steps[index] on `executor`; with `reattach`, as the step an earlier
  // process was running (StepContext::reattach).
  StepResult Step(Executor& executor, size_t index, bool reattach = false) {
    const StepContext ctx{context_, stage_.steps.at(index), index,
                          output_,  absl::InfiniteFuture(), {},
                          reattach};
    StepResult r = executor.Execute(ctx);
    output_.Flush();
    return r;
  }

  // Everything the stage and its steps wrote so far.
  std::string Text() const { return output_.Text(); }

 private:
  const Stage stage_;
  const std::string task_id_;
  const std::string delegate_name_;
  TextOutput output_;
  const StageContext context_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_HAND_RUN_H_
