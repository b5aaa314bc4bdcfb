#include "executor/ecs/task_poller.h"

#include <algorithm>
#include <utility>

namespace delegate::ecs {

std::vector<std::vector<std::string>> Chunks(
    const std::vector<std::string>& items, size_t n) {
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < items.size(); i += n) {
    out.emplace_back(items.begin() + i,
                     items.begin() + std::min(items.size(), i + n));
  }
  return out;
}

TaskPoller::TaskPoller(Describe describe, absl::Duration interval)
    : describe_(std::move(describe)), interval_(interval) {}

TaskPoller::~TaskPoller() {
  std::thread thread;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    thread = std::move(thread_);
  }
  if (thread.joinable()) thread.join();
}

void TaskPoller::Watch(const std::string& arn) {
  absl::MutexLock lock(&mu_);
  watched_.emplace(arn, TaskState{});
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void TaskPoller::Unwatch(const std::string& arn) {
  absl::MutexLock lock(&mu_);
  watched_.erase(arn);
}

TaskState TaskPoller::WaitForChange(const std::string& arn, uint64_t seen,
                                    absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = watched_.find(arn);
    return stopping_ || it == watched_.end() || it->second.version > seen;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), wait);
  auto it = watched_.find(arn);
  return it == watched_.end() ? TaskState{} : it->second;
}

void TaskPoller::Loop() {
  absl::Duration interval = interval_;
  for (;;) {
    std::vector<std::string> arns;
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), interval);
      if (stopping_) return;
      for (const auto& [arn, state] : watched_) arns.push_back(arn);
    }
    bool failed = false;
    for (const std::vector<std::string>& chunk :
         Chunks(arns, kMaxDescribeTasks)) {
      absl::StatusOr<TaskStates> states = describe_(chunk);
      if (!states.ok()) {
        failed = true;
        continue;
      }
      absl::MutexLock lock(&mu_);
      for (auto& [arn, now] : *states) {
        auto it = watched_.find(arn);
        if (it == watched_.end()) continue;
        TaskState& old = it->second;
        if (now.last_status != old.last_status ||
            now.exit_code != old.exit_code || now.missing != old.missing ||
            now.private_ip != old.private_ip || old.version == 0) {
          now.version = old.version + 1;
          old = now;
        }
      }
    }
    // Back off while ECS refuses or cannot be reached, up to 30 s.
    interval = failed ? std::min(interval * 2, absl::Seconds(30)) : interval_;
  }
}

}  // namespace delegate::ecs
