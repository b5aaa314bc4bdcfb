// SchedulerStageRunner: RuntimeService's stages on the delegate's scheduler,
// each with an observer that tells its StageEvents.
#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "delegate/runtime_service.h"
#include "delegate/scheduler.h"
#include "logs/masker.h"
#include "stage/secrets.h"
#include "util/strings.h"

namespace delegate {
namespace {

// RuntimeService's clients choose task ids, and may use one again once the
// service has forgotten it. On the scheduler, which may be shared with a
// manager connection and remembers the ids it ran, each submission gets an
// id of its own: this prefix, the task id and a number. Nothing outside
// the runner sees it.
constexpr std::string_view kIdPrefix = "runtime:";

std::string Masked(const std::shared_ptr<const logs::SecretMasker>& masker,
                   std::string_view text) {
  return masker ? masker->Mask(text) : std::string(text);
}

// Stages by state, as their events tell it: a watcher that has seen
// stage_finished finds the stage counted as completed.
struct Counts {
  size_t queued = 0;
  size_t running = 0;
  uint64_t completed = 0;
};

}  // namespace

class SchedulerStageRunner::Impl {
 public:
  Impl(Scheduler& scheduler, SchedulerStageRunnerOptions options)
      : options_(std::move(options)), group_(scheduler) {}

  absl::Status Submit(std::string task_id, Stage stage, Priority priority,
                      std::shared_ptr<StageEvents> events);
  absl::Status Cancel(std::string_view task_id, std::string_view reason);
  RuntimeCapacity Capacity() const;
  RuntimeHealth Health() const;
  void Drain(absl::Duration drain);

 private:
  class Route;
  std::shared_ptr<Route> Find(std::string_view task_id) const {
    absl::ReaderMutexLock lock(&mu_);
    auto it = routes_.find(AbslView(task_id));
    return it == routes_.end() ? nullptr : it->second;
  }
  void Unroute(const std::string& task_id, const Route* route) {
    absl::MutexLock lock(&mu_);
    auto it = routes_.find(task_id);
    if (it != routes_.end() && it->second.get() == route) routes_.erase(it);
  }
  template <typename F>
  void Count(F change) {
    absl::MutexLock lock(&counts_mu_);
    change(counts_);
  }
  const SchedulerOptions& scheduler_options() const {
    return group_.scheduler().options();
  }

  const SchedulerStageRunnerOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> submissions_{0};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Route>> routes_
      ABSL_GUARDED_BY(mu_);
  mutable absl::Mutex counts_mu_;
  Counts counts_ ABSL_GUARDED_BY(counts_mu_);
  // Last: it goes first, cancelling and waiting for the stages whose
  // observers use the members above.
  mutable StageGroup group_;
};

// One stage's way to its StageEvents. Every call to `events` is made under
// `mu_`, so that calls for one stage never overlap, whichever thread (the
// stage's, one reading a step's output, a canceller's) makes them.
class SchedulerStageRunner::Impl::Route final : public StageObserver {
 public:
  Route(Impl& runner, std::string task_id, uint64_t submission,
        std::string platform, std::shared_ptr<StageEvents> events,
        std::shared_ptr<const logs::SecretMasker> masker)
      : runner_(runner),
        task_id_(std::move(task_id)),
        scheduler_id_(
            absl::StrCat(AbslView(kIdPrefix), task_id_, "#", submission)),
        platform_(std::move(platform)),
        events_(std::move(events)),
        masker_(std::move(masker)) {}

  void Started() override {
    absl::MutexLock lock(&mu_);
    started_ = true;
    runner_.Count([](Counts& c) {
      --c.queued;
      ++c.running;
    });
    events_->Started(platform_, runner_.scheduler_options().delegate_name);
  }
  void StepStarted(const Step& step, size_t) override {
    absl::MutexLock lock(&mu_);
    events_->StepStarted(step.id, step.name.empty() ? step.id : step.name);
  }
  void StepDone(const StepResult& result) override {
    absl::MutexLock lock(&mu_);
    events_->StepFinished(result);
    ++steps_reported_;
  }
  void Append(const LogLine& line) override {
    LogLine own = line;
    own.task_id = task_id_;
    {
      absl::MutexLock lock(&mu_);
      if (!finished_) events_->Log(own);
    }
    if (runner_.options_.also_log_to) runner_.options_.also_log_to->Append(own);
  }
  void Close(std::string_view, std::string_view step_id) override {
    if (runner_.options_.also_log_to) {
      runner_.options_.also_log_to->Close(task_id_, step_id);
    }
  }
  void Done(const StageResult& done) override {
    // No line comes after Done; a new stage may take the id at once.
    runner_.Unroute(task_id_, this);
    StageResult result = done;
    result.task_id = task_id_;
    absl::MutexLock lock(&mu_);
    // The scheduler reports steps that ran in order, then the skipped ones.
    for (size_t i = steps_reported_; i < result.steps.size(); ++i) {
      events_->StepFinished(result.steps[i]);
    }
    if (result.status == StepStatus::kCancelled && reason_) {
      result.error = *reason_;
    }
    finished_ = true;
    runner_.Count([started = started_](Counts& c) {
      if (started) {
        --c.running;
      } else {
        --c.queued;
      }
      ++c.completed;
    });
    events_->Finished(result);
  }

  // Keeps the first reason given; false once the stage has finished.
  bool SetReason(std::string_view reason) {
    absl::MutexLock lock(&mu_);
    if (finished_) return false;
    if (!reason_) {
      reason_ =
          reason.empty() ? std::string("cancelled") : Masked(masker_, reason);
    }
    return true;
  }
  bool started() const {
    absl::MutexLock lock(&mu_);
    return started_;
  }
  const std::string& scheduler_id() const { return scheduler_id_; }

 private:
  Impl& runner_;
  const std::string task_id_;
  const std::string scheduler_id_;
  const std::string platform_;
  const std::shared_ptr<StageEvents> events_;
  // The stage's secret values, for the cancel reason; null without secrets.
  const std::shared_ptr<const logs::SecretMasker> masker_;
  mutable absl::Mutex mu_;
  // Steps whose StepFinished has been sent; the rest of StageResult.steps
  // (skipped ones) are sent before Finished.
  size_t steps_reported_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<std::string> reason_ ABSL_GUARDED_BY(mu_);  // Cancel's
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status SchedulerStageRunner::Impl::Submit(
    std::string task_id, Stage stage, Priority priority,
    std::shared_ptr<StageEvents> events) {
  if (draining_) {
    return absl::UnavailableError(
        "the runtime is draining: it finishes the stages it has and takes no "
        "new ones");
  }
  auto route = std::make_shared<Route>(
      *this, task_id, submissions_.fetch_add(1), stage.platform,
      std::move(events), MaskerFor(stage));
  {
    absl::MutexLock lock(&mu_);
    if (!routes_.try_emplace(task_id, route).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("task_id: ", task_id, " is queued or running already"));
    }
  }
  StageTask task;
  task.id = route->scheduler_id();
  task.stage = std::move(stage);
  task.priority = priority;
  task.observer = route;
  // Counted first: a stage may start before Submit returns.
  Count([](Counts& c) { ++c.queued; });
  // The scheduler checks the stage as `delegate validate` does and refuses
  // it before anything is created.
  absl::Status s = group_.Submit(std::move(task));
  if (!s.ok()) {
    Count([](Counts& c) { --c.queued; });
    Unroute(task_id, route.get());
  }
  return s;
}

absl::Status SchedulerStageRunner::Impl::Cancel(std::string_view task_id,
                                                std::string_view reason) {
  std::shared_ptr<Route> route = Find(task_id);
  if (!route || !route->SetReason(reason)) {
    return absl::NotFoundError(absl::StrCat("task_id: ", AbslView(task_id),
                                            " is neither queued nor running"));
  }
  // Not under the route's lock: a queued stage finishes inside this call.
  return group_.Cancel(route->scheduler_id());
}

void SchedulerStageRunner::Impl::Drain(absl::Duration drain) {
  draining_ = true;
  // The stages that wait for a slot do not start now; the running ones get
  // `drain` to finish.
  std::vector<std::shared_ptr<Route>> routes;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, route] : routes_) routes.push_back(route);
  }
  for (const std::shared_ptr<Route>& route : routes) {
    if (!route->started()) {
      (void)group_.Cancel(route->scheduler_id(),
                          Scheduler::CancelKind::kShutdown);
    }
  }
  if (!group_.WaitUntilEmpty(absl::Now() + drain)) {
    group_.CancelAll(Scheduler::CancelKind::kShutdown);
    group_.WaitUntilEmpty();
  }
}

RuntimeCapacity SchedulerStageRunner::Impl::Capacity() const {
  Counts counts;
  {
    absl::MutexLock lock(&counts_mu_);
    counts = counts_;
  }
  constexpr size_t kMax = std::numeric_limits<uint32_t>::max();
  RuntimeCapacity capacity;
  const std::optional<int>& max_stages = scheduler_options().max_stages;
  if (max_stages && *max_stages > 0) {
    capacity.max_stages = static_cast<uint32_t>(*max_stages);
  }
  capacity.running = static_cast<uint32_t>(std::min(counts.running, kMax));
  capacity.queued = static_cast<uint32_t>(std::min(counts.queued, kMax));
  capacity.completed = counts.completed;
  capacity.platforms = scheduler_options().registry->Names();
  capacity.draining = draining_;
  return capacity;
}

RuntimeHealth SchedulerStageRunner::Impl::Health() const {
  RuntimeHealth health;
  health.delegate_name = scheduler_options().delegate_name;
  if (draining_) {
    health.state = RuntimeHealth::State::kDraining;
    health.message =
        "draining: finishing the stages it has, taking no new ones";
  }
  return health;
}

SchedulerStageRunner::SchedulerStageRunner(Scheduler& scheduler,
                                           SchedulerStageRunnerOptions options)
    : impl_(std::make_unique<Impl>(scheduler, std::move(options))) {}

SchedulerStageRunner::~SchedulerStageRunner() {
  impl_->Drain(absl::ZeroDuration());
}

absl::Status SchedulerStageRunner::Submit(std::string task_id, Stage stage,
                                          Priority priority,
                                          std::shared_ptr<StageEvents> events) {
  return impl_->Submit(std::move(task_id), std::move(stage), priority,
                       std::move(events));
}

absl::Status SchedulerStageRunner::Cancel(std::string_view task_id,
                                          std::string_view reason) {
  return impl_->Cancel(task_id, reason);
}

RuntimeCapacity SchedulerStageRunner::Capacity() const {
  return impl_->Capacity();
}

RuntimeHealth SchedulerStageRunner::Health() const { return impl_->Health(); }

void SchedulerStageRunner::Drain(absl::Duration drain) { impl_->Drain(drain); }

}  // namespace delegate
