// The scheduler: a waiting queue by priority, a cached pool of stage threads
// bounded by MAX_STAGES, and the transaction runner that keeps init, steps and
// cleanup of one stage on one executor instance.
#include "delegate/scheduler.h"

#include <atomic>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/stage_transaction.h"
#include "stage/check.h"
#include "util/strings.h"

namespace delegate {
namespace {

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

}  // namespace

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
  absl::Status Cancel(std::string_view task_id, CancelKind kind);
  void Shutdown(absl::Duration drain);
  const SchedulerOptions& options() const { return options_; }
  SchedulerStats stats() const {
    absl::MutexLock lock(&mu_);
    return {queued_, running_, completed_};
  }

 private:
  using Entry = AcceptedStage;
  using EntryPtr = std::shared_ptr<Entry>;

  // What Submit checks without the lock: the task id, then the stage
  // (PrepareStage). Returns the accepted stage, or why it is refused.
  absl::StatusOr<EntryPtr> Check(StageTask& task) const;
  absl::Status Enqueue(EntryPtr& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After `added` stages were queued: a free worker takes them, or one starts.
  void WakeWorkers(size_t added) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  // A queued stage that was cancelled is skipped and moved to `released`:
  // the caller drops it after unlocking, since its last reference may own an
  // executor whose destructor must not run under the scheduler's lock.
  std::shared_ptr<Entry> PopRunnable(std::vector<EntryPtr>& released)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SpawnWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DecrementQueued() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (--queued_ == 0) has_work_.store(false, std::memory_order_relaxed);
  }
  // Starts a worker when work waits and no worker is free or on its way.
  void MaybeSpawnWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void JoinExited() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  [[maybe_unused]] char pad_[63];
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::thread::id, std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<Scheduler::Impl::EntryPtr> Scheduler::Impl::Check(
    StageTask& task) const {
  if (task.id.empty()) {
    return absl::InvalidArgumentError("task id must not be empty");
  }
  absl::StatusOr<PreparedStage> prepared =
      PrepareStage(*options_.registry, std::move(task.stage), options_.policy,
                   options_.masked_values);
  if (!prepared.ok()) return prepared.status();
  return std::make_shared<Entry>(std::move(task), *std::move(prepared));
}

absl::Status Scheduler::Impl::Enqueue(EntryPtr& entry) {
  if (shutting_down_) {
    return absl::UnavailableError(
        "the delegate is shutting down and takes no new stages");
  }
  const std::string& id = entry->task.id;
  if (active_.contains(AbslView(id)) || finished_.contains(AbslView(id))) {
    return absl::AlreadyExistsError(
        absl::StrCat("task ", id, " was already delivered"));
  }
  queues_[static_cast<int>(entry->task.priority)].push_back(entry);
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
  absl::StatusOr<EntryPtr> entry = Check(task);
  if (!entry.ok()) return entry.status();
  absl::MutexLock lock(&mu_);
  absl::Status s = Enqueue(*entry);
  if (s.ok()) WakeWorkers(1);
  return s;
}

std::vector<absl::Status> Scheduler::Impl::SubmitAll(
    std::vector<StageTask> tasks) {
  std::vector<absl::Status> results(tasks.size());
  std::vector<EntryPtr> entries(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    absl::StatusOr<EntryPtr> entry = Check(tasks[i]);
    if (entry.ok()) {
      entries[i] = *std::move(entry);
    } else {
      results[i] = entry.status();
    }
  }
  absl::MutexLock lock(&mu_);
  size_t added = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (!entries[i]) continue;
    results[i] = Enqueue(entries[i]);
    added += results[i].ok();
  }
  WakeWorkers(added);
  return results;
}

absl::Status Scheduler::Impl::Cancel(std::string_view task_id,
                                     CancelKind kind) {
  EntryPtr entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(AbslView(task_id));
    if (it == active_.end() || it->second->cancelled || it->second->ended) {
      return absl::NotFoundError(absl::StrCat(
          "task ", AbslView(task_id), " is neither queued nor running"));
    }
    entry = it->second;
    if (entry->running) {
      entry->RequestStop(kind == CancelKind::kShutdown ? StopCause::kShutdown
                                                       : StopCause::kCancel);
      return absl::OkStatus();
    }
    entry->cancelled = true;
    DecrementQueued();
    ++completed_;
    Forget(entry->task.id);
  }
  AbandonQueuedStage(*entry, kind == CancelKind::kShutdown
                                 ? "the delegate shut down before it started"
                                 : "cancelled while queued");
  return absl::OkStatus();
}

void Scheduler::Impl::Shutdown(absl::Duration drain) {
  // Stages that were accepted while a slot was free still run; those waiting
  // for capacity are cancelled now, and so is whatever remains queued when
  // the drain ends.
  // Cancelled entries still queued go to `released`, to be dropped after
  // the lock (see PopRunnable).
  std::vector<EntryPtr> released;
  auto drop_queued = [this, &released](size_t keep)
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<EntryPtr> dropped;
    for (auto& queue : queues_) {
      std::deque<EntryPtr> kept;
      for (EntryPtr& entry : queue) {
        if (entry->cancelled) {
          released.push_back(std::move(entry));
          continue;
        }
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
      AbandonQueuedStage(*entry, "the delegate shut down before it started");
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
  released.clear();
  absl::MutexLock lock(&mu_);
  for (auto& [id, entry] : active_) {
    if (!entry->running) continue;
    entry->RequestStop(StopCause::kShutdown);
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

Scheduler::Impl::EntryPtr Scheduler::Impl::PopRunnable(
    std::vector<EntryPtr>& released) {
  if (options_.max_stages &&
      running_ >= static_cast<size_t>(*options_.max_stages)) {
    return nullptr;
  }
  for (auto& queue : queues_) {
    while (!queue.empty()) {
      EntryPtr entry = std::move(queue.front());
      queue.pop_front();
      if (!entry->cancelled) return entry;
      // Possibly its last reference: dropped once the lock is released.
      released.push_back(std::move(entry));
    }
  }
  return nullptr;
}

void Scheduler::Impl::WorkerLoop() {
  mu_.Lock();
  --starting_;
  bool spun = false;  // polled once since the last stage
  std::vector<EntryPtr> released;
  while (true) {
    EntryPtr entry = PopRunnable(released);
    if (!entry && !released.empty()) {
      mu_.Unlock();
      released.clear();
      mu_.Lock();
      continue;
    }
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
    released.clear();
    {
      StageResult result = RunStageTransaction(options_, clock_, *entry);
      entry->ended.store(true, std::memory_order_release);
      if (entry->task.observer) entry->task.observer->Done(result);
    }
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

Scheduler::Scheduler(SchedulerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Scheduler::~Scheduler() = default;
absl::Status Scheduler::Submit(StageTask task) {
  return impl_->Submit(std::move(task));
}
std::vector<absl::Status> Scheduler::SubmitAll(std::vector<StageTask> tasks) {
  return impl_->SubmitAll(std::move(tasks));
}
absl::Status Scheduler::Cancel(std::string_view task_id, CancelKind kind) {
  return impl_->Cancel(task_id, kind);
}
void Scheduler::Shutdown(absl::Duration drain) { impl_->Shutdown(drain); }
SchedulerStats Scheduler::stats() const { return impl_->stats(); }
const SchedulerOptions& Scheduler::options() const { return impl_->options(); }

}  // namespace delegate
