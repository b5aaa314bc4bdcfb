#include "manager/harness/stage_transactions.h"

#include <algorithm>
#include <filesystem>
#include <future>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manager/harness/task_responses.h"

namespace delegate::harness {
namespace {

// Makes the directories a stage's local_init asks for.
absl::Status MakeHostDirs(const std::vector<HostDir>& dirs) {
  for (const HostDir& dir : dirs) {
    if (!dir.create) continue;
    std::error_code ec;
    std::filesystem::create_directories(dir.path, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("creating ", dir.path, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// Removes a stage's host directory, refusing paths no stage should own.
absl::Status RemoveHostDir(const std::string& raw) {
  std::filesystem::path p = std::filesystem::path(raw).lexically_normal();
  const std::string s = p.string();
  if (!p.is_absolute() || p == p.root_path() || s.size() < 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("not removing '", raw, "': not a stage directory"));
  }
  std::error_code ec;
  std::filesystem::remove_all(p, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("removing ", s, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

// The scheduler's side of one stage: its lines go to the log stream of the
// task running for it, and its end is logged.
class StageTransactions::StageObserverImpl final : public StageObserver {
 public:
  StageObserverImpl(EventLog& log, LogSink& console, std::string key,
                    std::string init_task_id,
                    std::shared_ptr<StageClosed> closed)
      : router(console),
        log_(log),
        key_(std::move(key)),
        init_task_id_(std::move(init_task_id)),
        closed_(std::move(closed)) {}
  void Append(const LogLine& line) override { router.Append(line); }
  void Done(const StageResult& result) override {
    log_.Info("stage ended", {{"stage", key_},
                              {"status", StepStatusName(result.status)},
                              {"error", result.error}});
    if (closed_ && *closed_) (*closed_)(key_, init_task_id_);
  }
  StageLogRouter router;

 private:
  EventLog& log_;
  const std::string key_;
  const std::string init_task_id_;
  const std::shared_ptr<StageClosed> closed_;
};

StageTransactions::StageTransactions(Scheduler& scheduler, EventLog& log,
                                     LogSink& console, LogOpener open_log)
    : log_(log),
      console_(console),
      open_log_(std::move(open_log)),
      group_(scheduler) {}

std::shared_ptr<LogServiceStream> StageTransactions::OpenLog(
    const TaskLogger& logger, bool existing) {
  if (logger.address.empty()) return nullptr;
  return open_log_(logger, existing);
}

bool StageTransactions::IsOpenLocked(const std::string& key) const {
  auto it = transactions_.find(key);
  return it != transactions_.end() && !it->second.feed->ended();
}

void StageTransactions::Forget(const std::string& key,
                               const std::shared_ptr<StageFeed>& feed) {
  absl::MutexLock lock(&mu_);
  auto it = transactions_.find(key);
  if (it != transactions_.end() && it->second.feed == feed) {
    transactions_.erase(it);
  }
}

TaskAnswer StageTransactions::Init(const TaskLogger& logger,
                                   std::string_view data,
                                   const std::vector<std::string>& masks,
                                   const std::string& delegate_id,
                                   const std::string& init_task_id) {
  TaskAnswer answer;
  bool task_failed = false;
  bool submitted = false;
  absl::Status s = Open(&logger, data, masks, init_task_id, /*resume=*/false,
                        &task_failed, &submitted);
  answer.opened_stage = submitted && s.ok();
  answer.ok = !task_failed;
  answer.error = std::string(s.message());
  answer.data_json = InitResponseData(s.ok(), answer.error, delegate_id);
  return answer;
}

absl::Status StageTransactions::Resume(std::string_view data,
                                       const std::vector<std::string>& masks,
                                       const std::string& init_task_id) {
  bool task_failed = false;
  bool submitted = false;
  absl::Status s = Open(nullptr, data, masks, init_task_id, /*resume=*/true,
                        &task_failed, &submitted);
  if (!s.ok() && !submitted) {
    // It never reached the scheduler (its stage observer says nothing).
    std::shared_ptr<StageClosed> closed;
    {
      absl::MutexLock lock(&mu_);
      closed = on_closed_;
    }
    absl::StatusOr<InitPayload> p = ParseInitPayload(data);
    if (closed && *closed && p.ok())
      (*closed)(p->transaction_key, init_task_id);
  }
  return s;
}

absl::Status StageTransactions::Open(const TaskLogger* logger,
                                     std::string_view data,
                                     const std::vector<std::string>& masks,
                                     const std::string& init_task_id,
                                     bool resume, bool* task_failed,
                                     bool* submitted) {
  *submitted = false;
  absl::StatusOr<InitPayload> p = ParseInitPayload(data);
  if (!p.ok()) {
    *task_failed = true;
    return p.status();
  }
  {
    absl::MutexLock lock(&mu_);
    if (refusing_ && !resume) {
      *task_failed = true;
      return absl::UnavailableError(
          "the delegate is shutting down and takes no new stages");
    }
    // The same stage initialized again (a retried init): it is ready.
    if (IsOpenLocked(p->transaction_key)) return absl::OkStatus();
  }
  Stage stage = p->stage;
  for (size_t i = 0; i < masks.size(); ++i) {
    stage.secrets[absl::StrCat("__task_secret_", i)] = masks[i];
  }
  auto initialized = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> init_done = initialized->get_future();
  auto feed = std::make_shared<StageFeed>(
      [initialized](const absl::Status& s) { initialized->set_value(s); });
  const std::string key = p->transaction_key;
  StageTask task;
  std::shared_ptr<StageObserverImpl> observer;
  {
    absl::MutexLock lock(&mu_);
    observer = std::make_shared<StageObserverImpl>(log_, console_, key,
                                                   init_task_id, on_closed_);
    // Checked again: two init tasks of one stage may have got this far at
    // once, and only one may open it.
    if (IsOpenLocked(key)) return absl::OkStatus();
    // The same id after a restart: what the stage made is found by it.
    task.id = init_task_id.empty() ? absl::StrCat(key, "#", ++next_stage_)
                                   : absl::StrCat(key, "#", init_task_id);
    transactions_[key] = {task.id, feed, p->host_dirs, observer};
  }
  const std::string task_id = task.id;
  task.stage = std::move(stage);
  task.feed = feed;
  task.observer = observer;
  task.resume = resume;
  std::shared_ptr<LogServiceStream> log = logger ? OpenLog(*logger) : nullptr;
  if (log) observer->router.Route("", log);
  auto close_log = [&] {
    if (!log) return;
    observer->router.Unroute("");
    log->Close();
  };
  // Submit checks the stage (secrets, policy, the executor) before anything
  // of it exists: a refused stage gets no directories either. They are
  // needed by the steps only, which come after this task's answer.
  absl::Status s = group_.Submit(std::move(task));
  std::string refused;
  if (!s.ok()) {
    refused = absl::StrCat("local_init: ", s.message());
  } else if (absl::Status made = MakeHostDirs(p->host_dirs); !made.ok()) {
    refused = absl::StrCat("local_init: ", made.message());
    (void)group_.Cancel(task_id);
    (void)init_done.get();  // the stage ends without running a step
  }
  if (!refused.empty()) {
    Forget(key, feed);
    close_log();
    if (resume) RemoveDeclaredDirs(p->host_dirs);
    return absl::FailedPreconditionError(refused);
  }
  s = init_done.get();
  *submitted = true;  // its observer reports its end
  close_log();
  const char* what =
      resume ? "stage resumed after a restart" : "stage initialized";
  log_.Info(s.ok()   ? what
            : resume ? "stage resume failed; it was cleaned up"
                     : "stage initialize failed",
            {{"stage", key}, {"error", s.message()}});
  // Like lite-engine: a failed setup is an OK task whose body says FAILURE.
  // The stage stays known: a late cleanup still removes its directories.
  if (!s.ok() && resume) RemoveDeclaredDirs(p->host_dirs);
  return s;
}

void StageTransactions::RemoveDeclaredDirs(const std::vector<HostDir>& dirs) {
  for (const HostDir& dir : dirs) {
    if (!dir.remove) continue;
    if (absl::Status s = RemoveHostDir(dir.path); !s.ok()) {
      log_.Warn("cannot remove a host directory of a stage",
                {{"error", s.message()}});
    }
  }
}

TaskAnswer StageTransactions::Execute(const TaskLogger& logger,
                                      std::string_view data,
                                      const std::vector<std::string>& masks,
                                      bool reattach,
                                      uint64_t skip_output_lines) {
  TaskAnswer answer;
  absl::StatusOr<ExecutePayload> p = ParseExecutePayload(data);
  if (!p.ok()) {
    answer.ok = false;
    answer.error = std::string(p.status().message());
    return answer;
  }
  std::shared_ptr<StageFeed> feed;
  std::shared_ptr<StageObserverImpl> observer;
  {
    absl::MutexLock lock(&mu_);
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end()) {
      feed = it->second.feed;
      observer = it->second.observer;
    }
  }
  StepResult failed;
  failed.id = p->step.id;
  failed.status = StepStatus::kFailure;
  if (!feed) {
    answer.ok = false;
    answer.error = absl::StrCat(
        "stage ", p->transaction_key,
        " is not open on this delegate: its local_init must run here first");
    failed.error = answer.error;
    answer.data_json = ExecutionResponseData(failed);
    return answer;
  }
  std::vector<std::string> step_masks = p->masks;
  step_masks.insert(step_masks.end(), masks.begin(), masks.end());
  std::shared_ptr<LogServiceStream> log = OpenLog(logger, reattach);
  if (log && reattach) log->SkipOutputLines(skip_output_lines);
  if (log && !observer->router.Route(p->step.id, log)) {
    log->Close();
    answer.ok = false;
    answer.error =
        absl::StrCat("stage ", p->transaction_key, ": duplicate step id '",
                     p->step.id, "': a step of that id is running");
    failed.error = answer.error;
    answer.data_json = ExecutionResponseData(failed);
    return answer;
  }
  auto promise = std::make_shared<std::promise<StepResult>>();
  std::future<StepResult> done = promise->get_future();
  const std::string step_id = p->step.id;
  auto step_done = [promise](const StepResult& r) { promise->set_value(r); };
  absl::Status pushed =
      reattach
          ? feed->Reattach(std::move(p->step), std::move(step_masks), step_done)
          : feed->Push(std::move(p->step), std::move(step_masks), step_done);
  StepResult r;
  if (pushed.ok()) {
    r = done.get();
  } else {
    r = failed;
    r.error =
        absl::StrCat("stage ", p->transaction_key, ": ", pushed.message());
  }
  if (log) {
    observer->router.Unroute(step_id);
    log->Close();
  }
  answer.data_json = ExecutionResponseData(r);
  return answer;
}

TaskAnswer StageTransactions::Cleanup(const TaskLogger& logger,
                                      std::string_view data) {
  TaskAnswer answer;
  absl::StatusOr<CleanupPayload> p = ParseCleanupPayload(data);
  if (!p.ok()) {
    answer.ok = false;
    answer.error = std::string(p.status().message());
    answer.data_json = CleanupResponseData(false, answer.error);
    return answer;
  }
  std::optional<Transaction> txn;
  {
    absl::MutexLock lock(&mu_);
    auto it = transactions_.find(p->transaction_key);
    if (it != transactions_.end()) txn = it->second;
  }
  std::vector<std::string> problems;
  // Only directories this stage's local_init declared are removed: a
  // cleanup payload cannot make the delegate delete other host paths.
  std::vector<std::string> remove;
  if (txn) {
    std::shared_ptr<LogServiceStream> log = OpenLog(logger);
    if (log) txn->observer->router.Route("", log);
    auto promise = std::make_shared<std::promise<absl::Status>>();
    std::future<absl::Status> cleaned = promise->get_future();
    txn->feed->Close(
        [promise](const absl::Status& s) { promise->set_value(s); });
    absl::Status s = cleaned.get();
    if (log) {
      txn->observer->router.Unroute("");
      log->Close();
    }
    if (!s.ok()) problems.push_back(std::string(s.message()));
    for (const HostDir& dir : txn->dirs) {
      const bool listed = std::find(p->host_paths.begin(), p->host_paths.end(),
                                    dir.path) != p->host_paths.end();
      if (dir.remove || listed) remove.push_back(dir.path);
    }
    Forget(p->transaction_key, txn->feed);
  }
  if (!txn && !p->host_paths.empty()) {
    log_.Warn(
        "cleanup of a stage this delegate does not know: its host "
        "directories are left in place",
        {{"stage", p->transaction_key},
         {"paths", absl::StrJoin(p->host_paths, ",")}});
  }
  std::sort(remove.begin(), remove.end());
  remove.erase(std::unique(remove.begin(), remove.end()), remove.end());
  for (const std::string& path : remove) {
    if (absl::Status s = RemoveHostDir(path); !s.ok()) {
      problems.push_back(std::string(s.message()));
    }
  }
  answer.error = absl::StrJoin(problems, "; ");
  answer.data_json = CleanupResponseData(problems.empty(), answer.error);
  return answer;
}

void StageTransactions::OnStageClosed(StageClosed closed) {
  absl::MutexLock lock(&mu_);
  on_closed_ = std::make_shared<StageClosed>(std::move(closed));
}

void StageTransactions::RefuseNewStages() {
  absl::MutexLock lock(&mu_);
  refusing_ = true;
}

size_t StageTransactions::OpenStages() const {
  absl::MutexLock lock(&mu_);
  size_t open = 0;
  for (const auto& [key, txn] : transactions_) open += !txn.feed->ended();
  return open;
}

bool StageTransactions::IsOpen(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  return IsOpenLocked(key);
}

void StageTransactions::Abandon(const std::string& key, std::string_view why) {
  std::optional<Transaction> txn;
  {
    absl::MutexLock lock(&mu_);
    auto it = transactions_.find(key);
    if (it == transactions_.end()) return;
    txn = it->second;
  }
  log_.Warn("abandoning a stage", {{"stage", key}, {"why", why}});
  (void)group_.Cancel(txn->scheduler_id);
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> cleaned = promise->get_future();
  txn->feed->Close([promise](const absl::Status& s) { promise->set_value(s); });
  (void)cleaned.get();
  RemoveDeclaredDirs(txn->dirs);
  Forget(key, txn->feed);
}

void StageTransactions::AbandonOpen(std::string_view why) {
  std::vector<std::string> open;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, txn] : transactions_) {
      if (!txn.feed->ended()) open.push_back(key);
    }
  }
  for (const std::string& key : open) Abandon(key, why);
}

void StageTransactions::Shutdown() {
  group_.CancelAll(Scheduler::CancelKind::kShutdown);
  group_.WaitUntilEmpty();
}

}  // namespace delegate::harness
