// SchedulerStageRunner: a Scheduler of its own whose progress hooks and log
// lines go to each stage's StageEvents.
#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <mutex>
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

// One stage's way to its StageEvents. Every call to `events` is made under
// `mu`, so that calls for one stage never overlap, whichever thread (the
// stage's, one reading a step's output, a canceller's) makes them.
struct Route {
  std::shared_ptr<StageEvents> events;
  // The stage's secret values, for the cancel reason; null without secrets.
  std::shared_ptr<const logs::SecretMasker> masker;
  std::mutex mu;
  // Steps whose StepFinished has been sent; the rest of StageResult.steps
  // (skipped ones) are sent before Finished.
  size_t steps_reported = 0;          // guarded by mu
  std::optional<std::string> reason;  // Cancel's; guarded by mu
  bool started = false;               // guarded by mu
  bool finished = false;              // guarded by mu
};

// Stages by state, as their events tell it: a watcher that has seen
// stage_finished finds the stage counted as completed.
struct Counts {
  size_t queued = 0;
  size_t running = 0;
  uint64_t completed = 0;
};

std::string Masked(const std::shared_ptr<const logs::SecretMasker>& masker,
                   std::string_view text) {
  return masker ? masker->Mask(text) : std::string(text);
}

}  // namespace

class SchedulerStageRunner::Impl final : public LogSink {
 public:
  explicit Impl(SchedulerStageRunnerOptions options)
      : options_(std::move(options)), scheduler_(SchedulerOptionsFor(this)) {}

  absl::Status Submit(std::string task_id, Stage stage, Priority priority,
                      std::shared_ptr<StageEvents> events);
  absl::Status Cancel(std::string_view task_id, std::string_view reason);
  RuntimeCapacity Capacity() const;
  RuntimeHealth Health() const;
  void Drain(absl::Duration drain) {
    draining_ = true;
    scheduler_.Shutdown(drain);
  }

  void Append(const LogLine& line) override;
  void Close(std::string_view task_id, std::string_view step_id) override {
    if (options_.also_log_to) options_.also_log_to->Close(task_id, step_id);
  }

 private:
  SchedulerOptions SchedulerOptionsFor(LogSink* sink) const {
    SchedulerOptions s;
    s.registry = options_.executors;
    s.log_sink = sink;
    s.clock = options_.clock;
    s.delegate_name = options_.delegate_name;
    s.max_stages = options_.max_stages;
    s.policy = options_.policy;
    // RuntimeService makes task ids unique and remembers the finished ones.
    s.dedup_window = 0;
    return s;
  }
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
  StageTask TaskFor(std::string task_id, Stage stage, Priority priority,
                    const std::shared_ptr<Route>& route);
  template <typename F>
  void Count(F change) {
    std::lock_guard lock(counts_mu_);
    change(counts_);
  }

  const SchedulerStageRunnerOptions options_;
  std::atomic<bool> draining_{false};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Route>> routes_
      ABSL_GUARDED_BY(mu_);
  mutable std::mutex counts_mu_;
  Counts counts_;  // guarded by counts_mu_
  // Last: it goes first, while the routes it calls into are still there.
  Scheduler scheduler_;
};

StageTask SchedulerStageRunner::Impl::TaskFor(
    std::string task_id, Stage stage, Priority priority,
    const std::shared_ptr<Route>& route) {
  StageTask task;
  task.id = std::move(task_id);
  task.priority = priority;
  task.on_started = [this, route, platform = stage.platform,
                     name = options_.delegate_name] {
    std::lock_guard lock(route->mu);
    route->started = true;
    Count([](Counts& c) {
      --c.queued;
      ++c.running;
    });
    route->events->Started(platform, name);
  };
  task.on_step_started = [route](const Step& step, size_t) {
    std::lock_guard lock(route->mu);
    route->events->StepStarted(step.id,
                               step.name.empty() ? step.id : step.name);
  };
  task.on_step_done = [route](const StepResult& result) {
    std::lock_guard lock(route->mu);
    route->events->StepFinished(result);
    ++route->steps_reported;
  };
  task.on_done = [this, route, id = task.id](const StageResult& done) {
    // No line comes after on_done; a new stage may take the id at once.
    Unroute(id, route.get());
    StageResult result = done;
    std::lock_guard lock(route->mu);
    // The scheduler reports steps that ran in order, then the skipped ones.
    for (size_t i = route->steps_reported; i < result.steps.size(); ++i) {
      route->events->StepFinished(result.steps[i]);
    }
    if (result.status == StepStatus::kCancelled && route->reason) {
      result.error = *route->reason;
    }
    route->finished = true;
    Count([started = route->started](Counts& c) {
      if (started) {
        --c.running;
      } else {
        --c.queued;
      }
      ++c.completed;
    });
    route->events->Finished(result);
  };
  task.stage = std::move(stage);
  return task;
}

absl::Status SchedulerStageRunner::Impl::Submit(
    std::string task_id, Stage stage, Priority priority,
    std::shared_ptr<StageEvents> events) {
  if (draining_) {
    return absl::UnavailableError(
        "the runtime is draining: it finishes the stages it has and takes no "
        "new ones");
  }
  auto route = std::make_shared<Route>();
  route->events = std::move(events);
  route->masker = MaskerFor(stage);
  // Refused here rather than failed after it started: nothing is created.
  if (absl::Status s =
          ValidateForPlatform(*options_.executors, stage, options_.policy);
      !s.ok()) {
    return absl::Status(s.code(), Masked(route->masker, StdView(s.message())));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!routes_.try_emplace(task_id, route).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("task_id: ", task_id, " is queued or running already"));
    }
  }
  const std::string id = task_id;
  // Counted first: a stage may start before Submit returns.
  Count([](Counts& c) { ++c.queued; });
  absl::Status s = scheduler_.Submit(
      TaskFor(std::move(task_id), std::move(stage), priority, route));
  if (!s.ok()) {
    Count([](Counts& c) { --c.queued; });
    Unroute(id, route.get());
  }
  return s;
}

absl::Status SchedulerStageRunner::Impl::Cancel(std::string_view task_id,
                                                std::string_view reason) {
  std::shared_ptr<Route> route = Find(task_id);
  if (route) {
    std::lock_guard lock(route->mu);
    if (route->finished) {
      route = nullptr;
    } else if (!route->reason) {
      route->reason = reason.empty() ? std::string("cancelled")
                                     : Masked(route->masker, reason);
    }
  }
  if (!route) {
    return absl::NotFoundError(absl::StrCat("task_id: ", AbslView(task_id),
                                            " is neither queued nor running"));
  }
  // Not under route->mu: a queued stage finishes inside this call.
  return scheduler_.Cancel(task_id);
}

RuntimeCapacity SchedulerStageRunner::Impl::Capacity() const {
  Counts counts;
  {
    std::lock_guard lock(counts_mu_);
    counts = counts_;
  }
  constexpr size_t kMax = std::numeric_limits<uint32_t>::max();
  RuntimeCapacity capacity;
  if (options_.max_stages && *options_.max_stages > 0) {
    capacity.max_stages = static_cast<uint32_t>(*options_.max_stages);
  }
  capacity.running = static_cast<uint32_t>(std::min(counts.running, kMax));
  capacity.queued = static_cast<uint32_t>(std::min(counts.queued, kMax));
  capacity.completed = counts.completed;
  capacity.platforms = options_.executors->Names();
  capacity.draining = draining_;
  return capacity;
}

RuntimeHealth SchedulerStageRunner::Impl::Health() const {
  RuntimeHealth health;
  health.delegate_name = options_.delegate_name;
  if (draining_) {
    health.state = RuntimeHealth::State::kDraining;
    health.message =
        "draining: finishing the stages it has, taking no new ones";
  }
  return health;
}

void SchedulerStageRunner::Impl::Append(const LogLine& line) {
  if (std::shared_ptr<Route> route = Find(line.task_id)) {
    std::lock_guard lock(route->mu);
    if (!route->finished) route->events->Log(line);
  }
  if (options_.also_log_to) options_.also_log_to->Append(line);
}

SchedulerStageRunner::SchedulerStageRunner(SchedulerStageRunnerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

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
