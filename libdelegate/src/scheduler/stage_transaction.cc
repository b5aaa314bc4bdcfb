#include "scheduler/stage_transaction.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "stage/result.h"
#include "stage/secrets.h"

namespace delegate {
namespace {

std::string Readable(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(1)));
}

// Where the lines of a stage nobody observes go.
class DiscardLines final : public LogSink {
 public:
  void Append(const LogLine&) override {}
};

}  // namespace

// The stage transaction itself; a friend of StageFeed.
class StageTransaction {
 public:
  StageTransaction(const SchedulerOptions& options, Clock& clock,
                   AcceptedStage& accepted)
      : options_(options),
        clock_(clock),
        accepted_(accepted),
        task_(accepted.task),
        stage_(accepted.prepared.stage),
        executor_(*accepted.prepared.executor),
        masker_(accepted.prepared.masker),
        observer_(task_.observer.get()),
        sink_(observer_ ? static_cast<LogSink&>(*observer_) : discard_),
        start_(clock.Now()),
        deadline_(stage_.timeout ? start_ + *stage_.timeout
                                 : absl::InfiniteFuture()),
        stage_output_(sink_, clock_, masker_, task_.id, "",
                      options.max_line_bytes),
        context_{stage_,        task_.id, options.delegate_name,
                 stage_output_, clock_,   accepted.stop.get_token(),
                 deadline_} {
    result_.task_id = task_.id;
    result_.stage = stage_.name;
  }

  StageResult Run();
  // See AbandonQueuedStage.
  static void Abandon(AcceptedStage& stage, const std::string& why);

 private:
  // How a failed step bears on the rest of the stage.
  enum class OnFailure {
    kStop,      // the steps after it are skipped (a whole stage)
    kTolerate,  // continue_on_error: neither the status nor the rest change
    kGoOn,      // the manager decides what comes next (a fed stage)
  };

  std::string Mask(std::string text) const {
    return masker_ ? masker_->Mask(text) : text;
  }
  std::string StopReason() const {
    return accepted_.cause.load() == static_cast<int>(StopCause::kShutdown)
               ? "cancelled: the delegate is shutting down"
               : "cancelled";
  }
  void SkipFrom(size_t from, const std::string& why) {
    for (size_t i = from; i < stage_.steps.size(); ++i) {
      StepResult r;
      r.id = stage_.steps[i].id;
      r.status = StepStatus::kSkipped;
      r.error = why;
      result_.steps.push_back(std::move(r));
    }
  }
  StepResult RunStep(const Step& step, size_t index, bool reattach,
                     const std::shared_ptr<const logs::SecretMasker>& masker);
  // Folds a finished step into the stage's result: the one place that says
  // what a step's status means for its stage. Returns why the steps after
  // it must not run, or "" when they may.
  std::string Record(const StepResult& r, OnFailure on_failure,
                     const std::string& step_id);
  // Why no more steps may start: a stop was requested, or the deadline
  // passed (recorded in the result); "" when they may.
  std::string StoppedOrLate();
  void RunSteps();
  // The steps of a fed stage as they arrive; returns why the ones still
  // queued when it ends are not run.
  std::string RunFed();
  StepResult RunFedStep(StageFeed::Pending& next, size_t index);

  const SchedulerOptions& options_;
  Clock& clock_;
  AcceptedStage& accepted_;
  StageTask& task_;
  const Stage& stage_;
  Executor& executor_;
  const std::shared_ptr<const logs::SecretMasker> masker_;
  StageObserver* const observer_;
  DiscardLines discard_;
  LogSink& sink_;
  const absl::Time start_;
  const absl::Time deadline_;
  logs::StepOutputWriter stage_output_;
  const StageContext context_;
  StageResult result_;
  bool timed_out_ = false;
};

StepResult StageTransaction::RunStep(
    const Step& step, size_t index, bool reattach,
    const std::shared_ptr<const logs::SecretMasker>& masker) {
  const absl::Time step_start = clock_.Now();
  const absl::Time step_deadline = std::min(
      step.timeout ? step_start + *step.timeout : absl::InfiniteFuture(),
      deadline_);
  if (observer_) observer_->StepStarted(step, index);
  StepResult r;
  {
    logs::StepOutputWriter output(sink_, clock_, masker, task_.id, step.id,
                                  options_.max_line_bytes);
    const StepContext step_context{context_,      step,
                                   index,         output,
                                   step_deadline, accepted_.stop.get_token(),
                                   reattach};
    r = executor_.Execute(step_context);
    output.Flush();
  }
  r.id = step.id;
  r.duration = clock_.Now() - step_start;
  if (masker) {
    r.error = masker->Mask(r.error);
    for (auto& [key, value] : r.outputs) value = masker->Mask(value);
  }
  return r;
}

std::string StageTransaction::Record(const StepResult& r, OnFailure on_failure,
                                     const std::string& step_id) {
  if (r.status == StepStatus::kCancelled) {
    result_.status = StepStatus::kCancelled;
    result_.error = StopReason();
    return "skipped: the stage was " + StopReason();
  }
  if (r.status == StepStatus::kTimeout && clock_.Now() >= deadline_) {
    timed_out_ = true;
    return "skipped: the stage timed out";
  }
  const bool failed =
      r.status == StepStatus::kFailure || r.status == StepStatus::kTimeout;
  if (!failed || on_failure == OnFailure::kTolerate) return "";
  if (result_.status == StepStatus::kSuccess) result_.status = r.status;
  if (on_failure == OnFailure::kGoOn) return "";
  return absl::StrCat("skipped: step ", step_id, " failed");
}

std::string StageTransaction::StoppedOrLate() {
  if (accepted_.stop.stop_requested()) {
    result_.status = StepStatus::kCancelled;
    result_.error = StopReason();
    return "skipped: the stage was " + StopReason();
  }
  if (clock_.Now() >= deadline_) {
    timed_out_ = true;
    return "skipped: the stage timed out";
  }
  return "";
}

void StageTransaction::RunSteps() {
  std::string blocked;  // why the remaining steps do not run
  for (size_t i = 0; i < stage_.steps.size(); ++i) {
    const Step& step = stage_.steps[i];
    if (blocked.empty()) blocked = StoppedOrLate();
    if (!blocked.empty()) {
      SkipFrom(i, blocked);
      return;
    }
    StepResult r = RunStep(step, i, /*reattach=*/false, masker_);
    if (observer_) observer_->StepDone(r);
    blocked = Record(
        r, step.continue_on_error ? OnFailure::kTolerate : OnFailure::kStop,
        step.id);
    result_.steps.push_back(std::move(r));
  }
}

StepResult StageTransaction::RunFedStep(StageFeed::Pending& next,
                                        size_t index) {
  // Each step is checked as it arrives, as a whole stage is when it is
  // submitted: its secrets, the policy, the executor.
  Stage view = stage_;  // steps is empty for a fed stage
  view.steps.push_back(std::move(next.step));
  // A step that brings values of its own to mask gets a masker of them and
  // of all the stage's masker holds (built the same way, by MaskerFor).
  std::shared_ptr<const logs::SecretMasker> masker = masker_;
  if (!next.masks.empty()) {
    std::vector<std::string> more = std::move(next.masks);
    more.insert(more.end(), options_.masked_values.begin(),
                options_.masked_values.end());
    masker = MaskerFor(view, more);
  }
  absl::Status checked = ResolveStage(view);
  if (checked.ok()) {
    checked = CheckResolvedStage(*options_.registry, &executor_, view,
                                 options_.policy);
  }
  // The earlier steps of the stage are in result_: a fed step may not reuse
  // one's id, as whole stages may not.
  for (size_t k = 0; checked.ok() && k < result_.steps.size(); ++k) {
    if (result_.steps[k].id == view.steps[0].id) {
      checked = absl::InvalidArgumentError(
          absl::StrCat("steps[", index, "].id: duplicate step id '",
                       view.steps[0].id, "' (first at steps[", k, "])"));
    }
  }
  if (checked.ok()) {
    return RunStep(view.steps[0], index, next.reattach, masker);
  }
  StepResult r;
  r.id = view.steps[0].id;
  r.status = StepStatus::kFailure;
  r.error = std::string(checked.message());
  if (masker) r.error = masker->Mask(r.error);
  return r;
}

std::string StageTransaction::RunFed() {
  StageFeed& feed = *task_.feed;
  size_t index = 0;
  bool idle = false;
  while (std::optional<StageFeed::Pending> next =
             feed.Next(accepted_.stop.get_token(), clock_, deadline_, &idle)) {
    StepResult r = RunFedStep(*next, index++);
    if (observer_) observer_->StepDone(r);
    result_.steps.push_back(r);
    const bool stop = !Record(r, OnFailure::kGoOn, r.id).empty();
    if (next->done) next->done(r);
    if (stop) break;
  }
  if (std::string why = StoppedOrLate(); !why.empty()) return why;
  if (idle) {
    result_.status = StepStatus::kCancelled;
    result_.error = absl::StrCat("no step and no cleanup arrived for ",
                                 Readable(feed.idle_timeout_),
                                 "; the stage was cleaned up");
    return "skipped: " + result_.error;
  }
  return "skipped: the stage was cleaned up";
}

StageResult StageTransaction::Run() {
  if (observer_) observer_->Started();
  // What the platform accepts without applying it as written, before
  // anything else: the stage's log says it, not only `delegate validate`.
  for (const std::string& note : accepted_.prepared.notes) {
    stage_output_.SystemLine("note: " + note);
  }
  const absl::Status initialized = task_.resume && task_.feed
                                       ? executor_.Resume(context_)
                                       : executor_.Initialize(context_);
  if (task_.feed) {
    task_.feed->Initialized(
        initialized.ok()
            ? initialized
            : absl::Status(initialized.code(),
                           Mask(std::string(initialized.message()))));
  }
  std::string feed_end;  // why a fed stage's remaining steps do not run
  if (!initialized.ok()) {
    result_.status = StepStatus::kFailure;
    const char* what = task_.resume ? "resume" : "initialize";
    result_.error = Mask(absl::StrCat(what, ": ", initialized.message()));
    SkipFrom(0, absl::StrCat("skipped: ", what, " failed"));
    feed_end = absl::StrCat("skipped: ", what, " failed");
  } else if (task_.feed) {
    feed_end = RunFed();
  } else {
    RunSteps();
  }
  if (timed_out_ && result_.status != StepStatus::kCancelled) {
    result_.status = StepStatus::kTimeout;
    result_.error =
        absl::StrCat("the stage timed out after ", Readable(*stage_.timeout));
  }

  // Cleanup runs whatever happened, and is not itself cancellable.
  const StageContext cleanup_context{
      stage_, task_.id,          options_.delegate_name, stage_output_,
      clock_, std::stop_token(), absl::InfiniteFuture()};
  absl::Status cleaned = executor_.Cleanup(cleanup_context);
  if (!cleaned.ok()) {
    const std::string what = Mask(absl::StrCat("cleanup: ", cleaned.message()));
    stage_output_.SystemLine(what);
    result_.error =
        result_.error.empty() ? what : absl::StrCat(result_.error, "; ", what);
    cleaned = absl::Status(cleaned.code(), what);
  }
  if (task_.feed) {
    task_.feed->Ended(cleaned,
                      result_.status == StepStatus::kCancelled
                          ? StepStatus::kCancelled
                          : StepStatus::kSkipped,
                      feed_end.empty() ? "skipped: the stage ended" : feed_end);
  }
  result_.duration = clock_.Now() - start_;
  return std::move(result_);
}

StageResult RunStageTransaction(const SchedulerOptions& options, Clock& clock,
                                AcceptedStage& stage) {
  return StageTransaction(options, clock, stage).Run();
}

void AbandonQueuedStage(AcceptedStage& stage, const std::string& why) {
  StageTransaction::Abandon(stage, why);
}

void StageTransaction::Abandon(AcceptedStage& stage, const std::string& why) {
  if (stage.task.observer) {
    stage.task.observer->Done(NotRunResult(stage.task.id, stage.stage(),
                                           StepStatus::kCancelled, why, why));
  }
  if (stage.task.feed) {
    stage.task.feed->Ended(absl::OkStatus(), StepStatus::kCancelled, why);
  }
}

}  // namespace delegate
