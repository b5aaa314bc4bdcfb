// ForwardingObserver, and StageCallbacks as a StageObserver.
#include <memory>
#include <utility>

#include "delegate/scheduler.h"

namespace delegate {
namespace {

class CallbackObserver final : public StageObserver {
 public:
  explicit CallbackObserver(StageCallbacks callbacks)
      : callbacks_(std::move(callbacks)) {}
  void Started() override {
    if (callbacks_.started) callbacks_.started();
  }
  void StepStarted(const Step& step, size_t index) override {
    if (callbacks_.step_started) callbacks_.step_started(step, index);
  }
  void StepDone(const StepResult& result) override {
    if (callbacks_.step_done) callbacks_.step_done(result);
  }
  void Done(const StageResult& result) override {
    if (callbacks_.done) callbacks_.done(result);
  }
  void Append(const LogLine& line) override {
    if (callbacks_.log) callbacks_.log->Append(line);
  }
  void Close(std::string_view task_id, std::string_view step_id) override {
    if (callbacks_.log) callbacks_.log->Close(task_id, step_id);
  }

 private:
  const StageCallbacks callbacks_;
};

}  // namespace

void ForwardingObserver::Started() {
  if (inner_) inner_->Started();
}
void ForwardingObserver::StepStarted(const Step& step, size_t index) {
  if (inner_) inner_->StepStarted(step, index);
}
void ForwardingObserver::StepDone(const StepResult& result) {
  if (inner_) inner_->StepDone(result);
}
void ForwardingObserver::Done(const StageResult& result) {
  if (inner_) inner_->Done(result);
}
void ForwardingObserver::Append(const LogLine& line) {
  if (inner_) inner_->Append(line);
}
void ForwardingObserver::Close(std::string_view task_id,
                               std::string_view step_id) {
  if (inner_) inner_->Close(task_id, step_id);
}

std::shared_ptr<StageObserver> ObserveWith(StageCallbacks callbacks) {
  return std::make_shared<CallbackObserver>(std::move(callbacks));
}

}  // namespace delegate
