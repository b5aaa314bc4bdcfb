#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "delegate/scheduler.h"
#include "util/strings.h"

namespace delegate {

// Forwards everything to the stage's own observer and takes the stage out
// of its group once Done has been told.
class StageGroup::Tracker final : public ForwardingObserver {
 public:
  Tracker(StageGroup& group, std::string task_id,
          std::shared_ptr<StageObserver> inner)
      : ForwardingObserver(std::move(inner)),
        group_(group),
        task_id_(std::move(task_id)) {}
  void Done(const StageResult& result) override {
    ForwardingObserver::Done(result);
    group_.Untrack(task_id_);
  }

 private:
  StageGroup& group_;
  const std::string task_id_;
};

StageGroup::StageGroup(Scheduler& scheduler) : scheduler_(scheduler) {}

StageGroup::~StageGroup() {
  CancelAll(Scheduler::CancelKind::kShutdown);
  WaitUntilEmpty();
}

StageTask StageGroup::Track(StageTask task) {
  task.observer =
      std::make_shared<Tracker>(*this, task.id, std::move(task.observer));
  return task;
}

void StageGroup::Untrack(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  open_.erase(task_id);
}

absl::Status StageGroup::Submit(StageTask task) {
  std::vector<StageTask> one;
  one.push_back(std::move(task));
  return SubmitAll(std::move(one))[0];
}

std::vector<absl::Status> StageGroup::SubmitAll(std::vector<StageTask> tasks) {
  // Counted before they are submitted: a stage may finish before SubmitAll
  // returns.
  std::vector<std::string> ids;
  ids.reserve(tasks.size());
  {
    absl::MutexLock lock(&mu_);
    for (StageTask& task : tasks) {
      ids.push_back(task.id);
      // A repeat of an open id is refused by the scheduler; keep the first.
      if (!open_.insert(task.id).second) ids.back().clear();
      task = Track(std::move(task));
    }
  }
  std::vector<absl::Status> statuses = scheduler_.SubmitAll(std::move(tasks));
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (!statuses[i].ok() && !ids[i].empty()) open_.erase(ids[i]);
  }
  return statuses;
}

absl::Status StageGroup::Cancel(std::string_view task_id,
                                Scheduler::CancelKind kind) {
  {
    absl::MutexLock lock(&mu_);
    if (!open_.contains(AbslView(task_id))) {
      return absl::NotFoundError(absl::StrCat(
          "task ", AbslView(task_id), " is neither queued nor running"));
    }
  }
  return scheduler_.Cancel(task_id, kind);
}

void StageGroup::CancelAll(Scheduler::CancelKind kind) {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    ids.assign(open_.begin(), open_.end());
  }
  // Not under the lock: a queued stage's Done runs inside Cancel.
  for (const std::string& id : ids) (void)scheduler_.Cancel(id, kind);
}

bool StageGroup::WaitUntilEmpty(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto empty = [this]()
                   ABSL_SHARED_LOCKS_REQUIRED(mu_) { return open_.empty(); };
  return mu_.AwaitWithDeadline(absl::Condition(&empty), deadline);
}

size_t StageGroup::size() const {
  absl::MutexLock lock(&mu_);
  return open_.size();
}

}  // namespace delegate
