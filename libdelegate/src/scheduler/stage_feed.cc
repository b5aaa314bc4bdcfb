// StageFeed: the steps of a stage that arrive one at a time.
#include <chrono>
#include <stop_token>

#include "delegate/scheduler.h"

namespace delegate {

StageFeed::StageFeed(std::function<void(const absl::Status&)> on_initialized,
                     absl::Duration idle_timeout)
    : idle_timeout_(idle_timeout), on_initialized_(std::move(on_initialized)) {}

absl::Status StageFeed::Push(Step step, std::vector<std::string> masks,
                             StepDone done) {
  return Queue({std::move(step), std::move(masks), std::move(done), false});
}

absl::Status StageFeed::Reattach(Step step, std::vector<std::string> masks,
                                 StepDone done) {
  return Queue({std::move(step), std::move(masks), std::move(done), true});
}

absl::Status StageFeed::Queue(Pending pending) {
  absl::MutexLock lock(&mu_);
  if (ended_) {
    return absl::FailedPreconditionError(
        "the stage has ended on this delegate (cleaned up); initialize it "
        "again");
  }
  if (closed_) {
    return absl::FailedPreconditionError(
        "the stage's cleanup was already requested");
  }
  queue_.push_back(std::move(pending));
  cv_.SignalAll();
  return absl::OkStatus();
}

void StageFeed::Close(Cleaned cleaned) {
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    if (!ended_) {
      cleaned_.push_back(std::move(cleaned));
      cv_.SignalAll();
      return;
    }
    status = cleanup_status_;
  }
  if (cleaned) cleaned(status);
}

bool StageFeed::ended() const {
  absl::MutexLock lock(&mu_);
  return ended_;
}

void StageFeed::Initialized(const absl::Status& status) {
  std::function<void(const absl::Status&)> callback;
  {
    absl::MutexLock lock(&mu_);
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
  const absl::Time idle_until =
      absl::Now() + std::min(idle_timeout_, absl::Hours(24 * 365));
  // Made before the lock is taken and gone after it is let go: the callback
  // takes the lock, and runs at once when the stop was already requested.
  std::stop_callback wake(stop, [this] {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  });
  absl::MutexLock lock(&mu_);
  while (true) {
    if (!queue_.empty()) {
      Pending next = std::move(queue_.front());
      queue_.pop_front();
      return next;
    }
    if (closed_ || stop.stop_requested() || clock.Now() >= deadline) {
      return std::nullopt;
    }
    const absl::Time now = absl::Now();
    if (now >= idle_until) {
      *idle = true;
      return std::nullopt;
    }
    cv_.WaitWithDeadline(&mu_, std::min(idle_until, now + absl::Seconds(1)));
  }
}

void StageFeed::Ended(const absl::Status& status, StepStatus leftover,
                      const std::string& why) {
  std::deque<Pending> left;
  std::vector<Cleaned> cleaned;
  {
    absl::MutexLock lock(&mu_);
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

}  // namespace delegate
