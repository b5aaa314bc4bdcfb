// The scheduler: a waiting queue by priority, a cached pool of stage threads
// bounded by MAX_STAGES, and the transaction runner that keeps init, steps and
// cleanup of one stage on one executor instance.
#include "delegate/scheduler.h"

#include <atomic>
#include <deque>
#include <limits>
#include <map>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "logs/masker.h"
#include "logs/output_pipeline.h"
#include "stage/check.h"
#include "stage/secrets.h"
#include "util/strings.h"

namespace delegate {
namespace {

// Why a stage's stop was requested.
enum class StopCause : int { kNone = 0, kCancel = 1, kShutdown = 2 };

// A worker with nothing to do for this long leaves the pool.
constexpr absl::Duration kIdleThreadLifetime = absl::Seconds(30);
// How long an idle worker polls for new work before it sleeps (a few tens of
// microseconds).
constexpr int kSpinRounds = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

std::string Readable(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(1)));
}

}  // namespace

StageFeed::StageFeed(std::function<void(const absl::Status&)> on_initialized,
                     absl::Duration idle_timeout)
    : idle_timeout_(idle_timeout), on_initialized_(std::move(on_initialized)) {}

absl::Status StageFeed::Push(Step step, std::vector<std::string> masks,
                             StepDone done) {
  {
    std::lock_guard lock(mu_);
    if (ended_) {
      return absl::FailedPreconditionError(
          "the stage has ended on this delegate (cleaned up); initialize it "
          "again");
    }
    if (closed_) {
      return absl::FailedPreconditionError(
          "the stage's cleanup was already requested");
    }
    queue_.push_back({std::move(step), std::move(masks), std::move(done)});
  }
  cv_.notify_all();
  return absl::OkStatus();
}

void StageFeed::Close(Cleaned cleaned) {
  absl::Status status;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    if (!ended_) {
      cleaned_.push_back(std::move(cleaned));
      cv_.notify_all();
      return;
    }
    status = cleanup_status_;
  }
  if (cleaned) cleaned(status);
}

bool StageFeed::ended() const {
  std::lock_guard lock(mu_);
  return ended_;
}

void StageFeed::Initialized(const absl::Status& status) {
  std::function<void(const absl::Status&)> callback;
  {
    std::lock_guard lock(mu_);
    callback.swap(on_initialized_);
  }
  if (callback) callback(status);
}

std::optional<StageFeed::Pending> StageFeed::Next(const std::stop_token& stop,
                                                  Clock& clock,
                                                  absl::Time deadline,
                                                  bool* idle) {
  *idle = false;
  // The stage deadline is on the stage's clock (a fake one in tests), the
  // idle timeout in real time: wake at least every second to look at both.
  const auto idle_until = std::chrono::steady_clock::now() +
                          absl::ToChronoMilliseconds(
                              std::min(idle_timeout_, absl::Hours(24 * 365)));
  std::unique_lock lock(mu_);
  while (true) {
    if (!queue_.empty()) {
      Pending next = std::move(queue_.front());
      queue_.pop_front();
      return next;
    }
    if (closed_ || stop.stop_requested() || clock.Now() >= deadline) {
      return std::nullopt;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= idle_until) {
      *idle = true;
      return std::nullopt;
    }
    cv_.wait_until(lock, stop,
                   std::min(idle_until, now + std::chrono::seconds(1)),
                   [&] { return !queue_.empty() || closed_; });
  }
}

void StageFeed::Ended(const absl::Status& status, StepStatus leftover,
                      const std::string& why) {
  std::deque<Pending> left;
  std::vector<Cleaned> cleaned;
  {
    std::lock_guard lock(mu_);
    ended_ = true;
    cleanup_status_ = status;
    left.swap(queue_);
    cleaned.swap(cleaned_);
  }
  Initialized(absl::FailedPreconditionError(why));  // no-op once called
  for (Pending& p : left) {
    StepResult r;
    r.id = p.step.id;
    r.status = leftover;
    r.error = why;
    if (p.done) p.done(r);
  }
  for (Cleaned& c : cleaned) {
    if (c) c(status);
  }
}

class Scheduler::Impl {
 public:
  explicit Impl(SchedulerOptions options)
      : options_(std::move(options)),
        clock_(options_.clock ? *options_.clock : Clock::Real()) {
    // Views into the ring must stay valid.
    finished_ring_.reserve(options_.dedup_window);
  }

  ~Impl() { Shutdown(absl::ZeroDuration()); }

  absl::Status Submit(StageTask task);
  std::vector<absl::Status> SubmitAll(std::vector<StageTask> tasks);
  absl::Status Cancel(std::string_view task_id);
  void Shutdown(absl::Duration drain);
  SchedulerStats stats() const {
    absl::MutexLock lock(&mu_);
    return {queued_, running_, completed_};
  }

 private:
  struct Entry {
    explicit Entry(StageTask t) : task(std::move(t)) {}
    StageTask task;
    std::stop_source stop;
    std::atomic<int> cause{0};
    bool running = false;    // guarded by mu_
    bool cancelled = false;  // guarded by mu_; a queued entry to skip
  };
  using EntryPtr = std::shared_ptr<Entry>;

  // What Submit checks without the lock. `known_platform` is a platform
  // already found in the registry, or empty.
  absl::Status Check(const StageTask& task,
                     std::string_view* known_platform) const;
  absl::Status Enqueue(StageTask& task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After `added` stages were queued: a free worker takes them, or one starts.
  void WakeWorkers(size_t added) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  std::shared_ptr<Entry> PopRunnable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SpawnWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DecrementQueued() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (--queued_ == 0) has_work_.store(false, std::memory_order_relaxed);
  }
  // Starts a worker when work waits and no worker is free or on its way.
  void MaybeSpawnWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void JoinExited() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  StageResult RunStage(Entry& entry);
  static StageResult NotRun(const StageTask& task, StepStatus status,
                            const std::string& why);
  // A queued stage that will not run: CANCELLED with `why`.
  static void Abandon(const StageTask& task, const std::string& why) {
    if (task.on_done) task.on_done(NotRun(task, StepStatus::kCancelled, why));
    if (task.feed)
      task.feed->Ended(absl::OkStatus(), StepStatus::kCancelled, why);
  }

  const SchedulerOptions options_;
  Clock& clock_;

  alignas(64) mutable absl::Mutex mu_;
  absl::CondVar work_cv_;  // work queued, or shutdown
  absl::CondVar done_cv_;  // a stage finished, or a worker left
  std::deque<EntryPtr> queues_[3] ABSL_GUARDED_BY(mu_);
  // Queued and running stages, keyed by a view of their own task id.
  absl::flat_hash_map<absl::string_view, EntryPtr> active_ ABSL_GUARDED_BY(mu_);
  // The last dedup_window finished ids: a ring of strings, and a set of views
  // into it.
  std::vector<std::string> finished_ring_ ABSL_GUARDED_BY(mu_);
  size_t finished_next_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<absl::string_view> finished_ ABSL_GUARDED_BY(mu_);
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  size_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;      // blocked on work_cv_
  size_t spinning_ ABSL_GUARDED_BY(mu_) = 0;  // polling has_work_
  size_t starting_ ABSL_GUARDED_BY(mu_) = 0;
  // queued_ > 0, readable without the lock by a spinning worker. On a cache
  // line of its own, so that polling it does not slow down the lock.
  alignas(64) std::atomic<bool> has_work_{false};
  char pad_[63];
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::thread::id, std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_ ABSL_GUARDED_BY(mu_);
};

absl::Status Scheduler::Impl::Check(const StageTask& task,
                                    std::string_view* known_platform) const {
  if (task.id.empty()) {
    return absl::InvalidArgumentError("task id must not be empty");
  }
  // A batch usually names one platform: look it up once.
  if (*known_platform == task.stage.platform) return absl::OkStatus();
  if (!options_.registry->Contains(task.stage.platform)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "platform: no executor is registered for '", task.stage.platform,
        "'; registered: ", absl::StrJoin(options_.registry->Names(), ", ")));
  }
  *known_platform = task.stage.platform;
  return absl::OkStatus();
}

absl::Status Scheduler::Impl::Enqueue(StageTask& task) {
  if (shutting_down_) {
    return absl::UnavailableError(
        "the delegate is shutting down and takes no new stages");
  }
  if (active_.contains(AbslView(task.id)) ||
      finished_.contains(AbslView(task.id))) {
    return absl::AlreadyExistsError(
        absl::StrCat("task ", task.id, " was already delivered"));
  }
  const int queue = static_cast<int>(task.priority);
  auto entry = std::make_shared<Entry>(std::move(task));
  queues_[queue].push_back(entry);
  const absl::string_view key = AbslView(entry->task.id);
  active_.emplace(key, std::move(entry));
  ++queued_;
  has_work_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

void Scheduler::Impl::WakeWorkers(size_t added) {
  if (added == 0 || spinning_ > 0) return;
  if (idle_ > 0) {
    if (added == 1) {
      work_cv_.Signal();
    } else {
      work_cv_.SignalAll();
    }
  } else {
    MaybeSpawnWorker();
  }
}

absl::Status Scheduler::Impl::Submit(StageTask task) {
  std::string_view platform;
  if (absl::Status s = Check(task, &platform); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  absl::Status s = Enqueue(task);
  if (s.ok()) WakeWorkers(1);
  return s;
}

std::vector<absl::Status> Scheduler::Impl::SubmitAll(
    std::vector<StageTask> tasks) {
  std::vector<absl::Status> results(tasks.size());
  std::string_view platform;
  for (size_t i = 0; i < tasks.size(); ++i) {
    results[i] = Check(tasks[i], &platform);
  }
  absl::MutexLock lock(&mu_);
  size_t added = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (!results[i].ok()) continue;
    results[i] = Enqueue(tasks[i]);
    added += results[i].ok();
  }
  WakeWorkers(added);
  return results;
}

absl::Status Scheduler::Impl::Cancel(std::string_view task_id) {
  EntryPtr entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(AbslView(task_id));
    if (it == active_.end() || it->second->cancelled) {
      return absl::NotFoundError(absl::StrCat(
          "task ", AbslView(task_id), " is neither queued nor running"));
    }
    entry = it->second;
    if (entry->running) {
      int none = 0;
      entry->cause.compare_exchange_strong(
          none, static_cast<int>(StopCause::kCancel));
      entry->stop.request_stop();
      return absl::OkStatus();
    }
    entry->cancelled = true;
    DecrementQueued();
    ++completed_;
    Forget(entry->task.id);
  }
  Abandon(entry->task, "cancelled while queued");
  return absl::OkStatus();
}

void Scheduler::Impl::Shutdown(absl::Duration drain) {
  // Stages that were accepted while a slot was free still run; those waiting
  // for capacity are cancelled now, and so is whatever remains queued when
  // the drain ends.
  auto drop_queued = [this](size_t keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<EntryPtr> dropped;
    for (auto& queue : queues_) {
      std::deque<EntryPtr> kept;
      for (EntryPtr& entry : queue) {
        if (entry->cancelled) continue;
        if (keep > 0) {
          --keep;
          kept.push_back(std::move(entry));
          continue;
        }
        entry->cancelled = true;
        DecrementQueued();
        ++completed_;
        Forget(entry->task.id);
        dropped.push_back(std::move(entry));
      }
      queue.swap(kept);
    }
    return dropped;
  };
  auto report = [](const std::vector<EntryPtr>& dropped) {
    for (const EntryPtr& entry : dropped) {
      Abandon(entry->task, "the delegate shut down before it started");
    }
  };
  std::vector<EntryPtr> dropped;
  {
    absl::MutexLock lock(&mu_);
    if (!shutting_down_) {
      shutting_down_ = true;
      size_t free_slots = std::numeric_limits<size_t>::max();
      if (options_.max_stages) {
        const size_t cap = static_cast<size_t>(*options_.max_stages);
        free_slots = running_ < cap ? cap - running_ : 0;
      }
      dropped = drop_queued(free_slots);
      work_cv_.SignalAll();
    }
  }
  report(dropped);
  {
    absl::MutexLock lock(&mu_);
    const absl::Time drain_until = absl::Now() + drain;
    while ((running_ > 0 || queued_ > 0) && absl::Now() < drain_until) {
      done_cv_.WaitWithDeadline(&mu_, drain_until);
    }
    dropped = drop_queued(0);
  }
  report(dropped);
  absl::MutexLock lock(&mu_);
  for (auto& [id, entry] : active_) {
    if (!entry->running) continue;
    int none = 0;
    entry->cause.compare_exchange_strong(
        none, static_cast<int>(StopCause::kShutdown));
    entry->stop.request_stop();
  }
  // Cleanup has no bound here: leaving a stage half cleaned is worse.
  while (!workers_.empty()) {
    work_cv_.SignalAll();
    done_cv_.Wait(&mu_);
    JoinExited();
  }
  JoinExited();
}

void Scheduler::Impl::MaybeSpawnWorker() {
  // One thread starts at a time, and a new one is only needed when every
  // worker is running a stage: a burst of short stages is served by the
  // workers there are instead of a thread each.
  if (queued_ == 0 || idle_ > 0 || spinning_ > 0 || starting_ > 0) return;
  if (options_.max_stages &&
      workers_.size() >= static_cast<size_t>(*options_.max_stages)) {
    return;
  }
  SpawnWorker();
}

void Scheduler::Impl::SpawnWorker() {
  JoinExited();
  ++starting_;
  std::thread t([this] { WorkerLoop(); });
  std::thread::id id = t.get_id();
  workers_.emplace(id, std::move(t));
}

void Scheduler::Impl::JoinExited() {
  std::vector<std::thread> exited;
  exited.swap(exited_);
  for (std::thread& t : exited) t.join();
}

void Scheduler::Impl::Forget(const std::string& id) {
  // REQUIRES: the caller holds a reference to the entry that owns `id`.
  active_.erase(AbslView(id));
  if (options_.dedup_window == 0) return;
  std::string* slot;
  if (finished_ring_.size() < options_.dedup_window) {
    slot = &finished_ring_.emplace_back();  // never reallocates: reserved
  } else {
    slot = &finished_ring_[finished_next_];
    finished_.erase(AbslView(*slot));
    finished_next_ = (finished_next_ + 1) % options_.dedup_window;
  }
  *slot = id;
  finished_.insert(AbslView(*slot));
}

Scheduler::Impl::EntryPtr Scheduler::Impl::PopRunnable() {
  if (options_.max_stages &&
      running_ >= static_cast<size_t>(*options_.max_stages)) {
    return nullptr;
  }
  for (auto& queue : queues_) {
    while (!queue.empty()) {
      EntryPtr entry = std::move(queue.front());
      queue.pop_front();
      if (!entry->cancelled) return entry;
    }
  }
  return nullptr;
}

void Scheduler::Impl::WorkerLoop() {
  mu_.Lock();
  --starting_;
  bool spun = false;  // polled once since the last stage
  while (true) {
    EntryPtr entry = PopRunnable();
    if (!entry) {
      if (shutting_down_) break;
      if (options_.spin_when_idle && !spun && spinning_ == 0 && queued_ == 0) {
        spun = true;
        // Stages often arrive in bursts: polling a little before sleeping
        // saves a futex wake per stage for both sides.
        ++spinning_;
        mu_.Unlock();
        for (int i = 0;
             i < kSpinRounds && !has_work_.load(std::memory_order_acquire);
             ++i) {
          CpuRelax();
        }
        mu_.Lock();
        --spinning_;
        continue;
      }
      ++idle_;
      const bool timed_out =
          work_cv_.WaitWithTimeout(&mu_, kIdleThreadLifetime);
      --idle_;
      if (timed_out && !shutting_down_ && queued_ == 0) break;
      continue;
    }
    spun = false;
    DecrementQueued();
    ++running_;
    entry->running = true;
    // More work behind this one: pass it on rather than leave it waiting
    // behind a stage that may run for hours.
    if (queued_ > 0 && spinning_ == 0) {
      if (idle_ > 0) {
        work_cv_.Signal();
      } else {
        MaybeSpawnWorker();
      }
    }
    mu_.Unlock();
    StageResult result = RunStage(*entry);
    if (entry->task.on_done) entry->task.on_done(result);
    mu_.Lock();
    entry->running = false;
    --running_;
    ++completed_;
    Forget(entry->task.id);
    if (shutting_down_) done_cv_.SignalAll();
  }
  auto self = workers_.find(std::this_thread::get_id());
  exited_.push_back(std::move(self->second));
  workers_.erase(self);
  done_cv_.SignalAll();
  mu_.Unlock();
}

StageResult Scheduler::Impl::NotRun(const StageTask& task, StepStatus status,
                                    const std::string& why) {
  StageResult result;
  result.task_id = task.id;
  result.stage = task.stage.name;
  result.status = status;
  result.error = why;
  for (const Step& step : task.stage.steps) {
    StepResult r;
    r.id = step.id;
    r.status = StepStatus::kSkipped;
    r.error = why;
    result.steps.push_back(std::move(r));
  }
  return result;
}

StageResult Scheduler::Impl::RunStage(Entry& entry) {
  StageTask& task = entry.task;
  Stage& stage = task.stage;
  const absl::Time start = clock_.Now();
  StageResult result;
  result.task_id = task.id;
  result.stage = stage.name;
  auto finish = [&]() -> StageResult {
    result.duration = clock_.Now() - start;
    return std::move(result);
  };

  std::shared_ptr<const logs::SecretMasker> masker;
  if (std::vector<std::string> values = SecretValues(stage); !values.empty()) {
    masker = std::make_shared<logs::SecretMasker>(values);
  }
  auto mask = [&](std::string text) {
    return masker ? masker->Mask(text) : text;
  };
  auto skip_rest = [&](size_t from, const std::string& why) {
    for (size_t i = from; i < stage.steps.size(); ++i) {
      StepResult r;
      r.id = stage.steps[i].id;
      r.status = StepStatus::kSkipped;
      r.error = why;
      result.steps.push_back(std::move(r));
    }
  };
  auto fail_before_start = [&](const std::string& why) {
    result.status = StepStatus::kFailure;
    result.error = mask(why);
    skip_rest(0, "skipped: " + result.error);
    if (task.feed) {
      task.feed->Initialized(absl::FailedPreconditionError(result.error));
      task.feed->Ended(absl::OkStatus(), StepStatus::kSkipped,
                       "skipped: " + result.error);
    }
    return finish();
  };

  if (task.on_started) task.on_started();
  if (absl::Status s = ResolveStage(stage); !s.ok()) {
    return fail_before_start(std::string(s.message()));
  }
  std::unique_ptr<Executor> executor =
      options_.registry->Create(stage.platform);
  if (absl::Status s = CheckResolvedStage(*options_.registry, executor.get(),
                                          stage, options_.policy);
      !s.ok()) {
    return fail_before_start(std::string(s.message()));
  }

  const absl::Time stage_deadline =
      stage.timeout ? start + *stage.timeout : absl::InfiniteFuture();
  logs::StepOutputWriter stage_output(*options_.log_sink, clock_, masker,
                                      task.id, "", options_.max_line_bytes);
  const StageContext context{stage,         task.id, options_.delegate_name,
                             stage_output,  clock_,  entry.stop.get_token(),
                             stage_deadline};

  auto stop_reason = [&]() -> std::string {
    return entry.cause.load() == static_cast<int>(StopCause::kShutdown)
               ? "cancelled: the delegate is shutting down"
               : "cancelled";
  };
  // Runs one resolved step on the executor.
  auto run_step = [&](const Step& step, size_t index,
                      const std::shared_ptr<const logs::SecretMasker>& m) {
    const absl::Time step_start = clock_.Now();
    const absl::Time step_deadline = std::min(
        step.timeout ? step_start + *step.timeout : absl::InfiniteFuture(),
        stage_deadline);
    if (task.on_step_started) task.on_step_started(step, index);
    StepResult r;
    {
      logs::StepOutputWriter output(*options_.log_sink, clock_, m, task.id,
                                    step.id, options_.max_line_bytes);
      const StepContext step_context{
          context, step, index, output, step_deadline, entry.stop.get_token()};
      r = executor->Execute(step_context);
      output.Flush();
    }
    r.id = step.id;
    r.duration = clock_.Now() - step_start;
    if (m) {
      r.error = m->Mask(r.error);
      for (auto& [key, value] : r.outputs) value = m->Mask(value);
    }
    return r;
  };

  bool stage_timed_out = false;
  const absl::Status initialized = executor->Initialize(context);
  if (task.feed) {
    task.feed->Initialized(
        initialized.ok()
            ? initialized
            : absl::Status(initialized.code(),
                           mask(std::string(initialized.message()))));
  }
  std::string feed_end;  // why a fed stage's remaining steps do not run
  if (!initialized.ok()) {
    result.status = StepStatus::kFailure;
    result.error = mask(absl::StrCat("initialize: ", initialized.message()));
    skip_rest(0, "skipped: initialize failed");
    feed_end = "skipped: initialize failed";
  } else if (task.feed) {
    size_t index = 0;
    bool idle = false;
    while (std::optional<StageFeed::Pending> next = task.feed->Next(
               entry.stop.get_token(), clock_, stage_deadline, &idle)) {
      // Each step is checked as it arrives, as a whole stage is before it
      // starts: its secrets, the policy, the executor.
      Stage view = stage;  // steps is empty for a fed stage
      view.steps.push_back(std::move(next->step));
      std::shared_ptr<const logs::SecretMasker> step_masker = masker;
      if (!next->masks.empty()) {
        std::vector<std::string> values = std::move(next->masks);
        for (const auto& [id, value] : stage.secrets) values.push_back(value);
        step_masker = std::make_shared<logs::SecretMasker>(values);
      }
      StepResult r;
      absl::Status checked = ResolveStage(view);
      if (checked.ok()) {
        checked = CheckResolvedStage(*options_.registry, executor.get(), view,
                                     options_.policy);
      }
      if (!checked.ok()) {
        r.id = view.steps[0].id;
        r.status = StepStatus::kFailure;
        r.error = std::string(checked.message());
        if (step_masker) r.error = step_masker->Mask(r.error);
      } else {
        r = run_step(view.steps[0], index, step_masker);
      }
      ++index;
      if (task.on_step_done) task.on_step_done(r);
      result.steps.push_back(r);
      if (r.status == StepStatus::kCancelled) {
        result.status = StepStatus::kCancelled;
        result.error = stop_reason();
      } else if (r.status == StepStatus::kTimeout &&
                 clock_.Now() >= stage_deadline) {
        stage_timed_out = true;
      } else if ((r.status == StepStatus::kFailure ||
                  r.status == StepStatus::kTimeout) &&
                 result.status == StepStatus::kSuccess) {
        result.status = r.status;
      }
      if (next->done) next->done(r);
      if (r.status == StepStatus::kCancelled || stage_timed_out) break;
    }
    if (entry.stop.stop_requested()) {
      result.status = StepStatus::kCancelled;
      result.error = stop_reason();
      feed_end = "skipped: the stage was " + stop_reason();
    } else if (clock_.Now() >= stage_deadline) {
      stage_timed_out = true;
      feed_end = "skipped: the stage timed out";
    } else if (idle) {
      result.status = StepStatus::kCancelled;
      result.error = absl::StrCat("no step and no cleanup arrived for ",
                                  Readable(task.feed->idle_timeout_),
                                  "; the stage was cleaned up");
      feed_end = "skipped: " + result.error;
    } else {
      feed_end = "skipped: the stage was cleaned up";
    }
  } else {
    std::string blocked;  // why the remaining steps do not run
    for (size_t i = 0; i < stage.steps.size(); ++i) {
      const Step& step = stage.steps[i];
      if (blocked.empty()) {
        if (entry.stop.stop_requested()) {
          result.status = StepStatus::kCancelled;
          result.error = stop_reason();
          blocked = "skipped: the stage was " + stop_reason();
        } else if (clock_.Now() >= stage_deadline) {
          stage_timed_out = true;
          blocked = "skipped: the stage timed out";
        }
      }
      if (!blocked.empty()) {
        skip_rest(i, blocked);
        break;
      }
      StepResult r = run_step(step, i, masker);
      if (task.on_step_done) task.on_step_done(r);
      const StepStatus status = r.status;
      result.steps.push_back(std::move(r));
      if (status == StepStatus::kCancelled) {
        result.status = StepStatus::kCancelled;
        result.error = stop_reason();
        blocked = "skipped: the stage was " + stop_reason();
      } else if (status == StepStatus::kTimeout &&
                 clock_.Now() >= stage_deadline) {
        stage_timed_out = true;
        blocked = "skipped: the stage timed out";
      } else if ((status == StepStatus::kFailure ||
                  status == StepStatus::kTimeout) &&
                 !step.continue_on_error) {
        if (result.status == StepStatus::kSuccess) result.status = status;
        blocked = absl::StrCat("skipped: step ", step.id, " failed");
      }
    }
  }
  if (stage_timed_out && result.status != StepStatus::kCancelled) {
    result.status = StepStatus::kTimeout;
    result.error =
        absl::StrCat("the stage timed out after ", Readable(*stage.timeout));
  }

  // Cleanup runs whatever happened, and is not itself cancellable.
  const StageContext cleanup_context{
      stage,  task.id,           options_.delegate_name, stage_output,
      clock_, std::stop_token(), absl::InfiniteFuture()};
  absl::Status cleaned = executor->Cleanup(cleanup_context);
  if (!cleaned.ok()) {
    const std::string what = mask(absl::StrCat("cleanup: ", cleaned.message()));
    stage_output.SystemLine(what);
    result.error =
        result.error.empty() ? what : absl::StrCat(result.error, "; ", what);
    cleaned = absl::Status(cleaned.code(), what);
  }
  if (task.feed) {
    task.feed->Ended(cleaned,
                     result.status == StepStatus::kCancelled
                         ? StepStatus::kCancelled
                         : StepStatus::kSkipped,
                     feed_end.empty() ? "skipped: the stage ended" : feed_end);
  }
  return finish();
}

Scheduler::Scheduler(SchedulerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Scheduler::~Scheduler() = default;
absl::Status Scheduler::Submit(StageTask task) {
  return impl_->Submit(std::move(task));
}
std::vector<absl::Status> Scheduler::SubmitAll(std::vector<StageTask> tasks) {
  return impl_->SubmitAll(std::move(tasks));
}
absl::Status Scheduler::Cancel(std::string_view task_id) {
  return impl_->Cancel(task_id);
}
void Scheduler::Shutdown(absl::Duration drain) { impl_->Shutdown(drain); }
SchedulerStats Scheduler::stats() const { return impl_->stats(); }

}  // namespace delegate
