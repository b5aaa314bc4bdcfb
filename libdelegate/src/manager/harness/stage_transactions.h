// The local stages the manager runs on this delegate (harness-protocol.md
// §6.2 to §6.4), each a transaction of several tasks tied by a transaction
// key: local_init opens it as one fed stage in the shared Scheduler,
// local_execute pushes a step to it, local_cleanup closes it and removes the
// host directories its init declared. While a task runs, the stage's output
// goes to the log stream that task names (a StageLogRouter per stage).
#ifndef DELEGATE_MANAGER_HARNESS_STAGE_TRANSACTIONS_H_
#define DELEGATE_MANAGER_HARNESS_STAGE_TRANSACTIONS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "delegate/event_log.h"
#include "delegate/log_sink.h"
#include "delegate/scheduler.h"
#include "manager/harness/local_payloads.h"
#include "manager/harness/log_stream.h"
#include "manager/harness/task_request.h"

namespace delegate::harness {

// What a task is answered: code OK, or FAILED with `error`, and the response
// data. Neither is masked yet.
struct TaskAnswer {
  bool ok = true;
  std::string error;
  std::string data_json;
  // local_init: this task opened its stage (not: it failed, or the stage
  // was open already).
  bool opened_stage = false;
};

// Thread-safe: tasks of one stage and of many may come from several threads.
class StageTransactions {
 public:
  // Opens the log stream a task names (its logger has an address);
  // `existing` for one an earlier process opened (LogService::Open).
  using LogOpener = std::function<std::shared_ptr<LogServiceStream>(
      const TaskLogger&, bool existing)>;

  // REQUIRES: `scheduler`, `log` and `console` outlive this, and so does
  // whatever `open_log` uses. `console` takes the lines no task's log
  // stream does.
  StageTransactions(Scheduler& scheduler, EventLog& log, LogSink& console,
                    LogOpener open_log);
  StageTransactions(const StageTransactions&) = delete;
  StageTransactions& operator=(const StageTransactions&) = delete;
  // Cancels the stages still running and waits for their cleanup.
  ~StageTransactions() = default;

  // local_init: opens the stage `data` describes, `masks` being secret
  // values of the task, and blocks until it is initialized. An init of a
  // stage already open answers that it is ready. A payload that does not
  // parse, or an init while new stages are refused, is a FAILED task. A
  // stage that could not be set up is an OK task whose data says FAILURE
  // (as lite-engine answers); one the scheduler refuses, or whose host
  // directories cannot be made, leaves nothing behind (no directory).
  // `delegate_id` goes into the data.
  // `init_task_id` names the stage in the scheduler (with its key), so
  // that a restarted delegate resuming it finds what it made; empty: a
  // number of this process.
  TaskAnswer Init(const TaskLogger& logger, std::string_view data,
                  const std::vector<std::string>& masks,
                  const std::string& delegate_id,
                  const std::string& init_task_id = "");

  // After a restart of the delegate: opens again the stage the local_init
  // `init_task_id` opened in an earlier process (`data` and `masks` as it
  // ran them), adopting what that process made for it instead of making it
  // (StageTask::resume); its next steps then run as usual, and the step it
  // was running is re-attached by Execute with `reattach`. Not OK when it
  // cannot be resumed (its platform cannot, or what it made is gone): the
  // stage is then cleaned up, and the host directories its init marked
  // remove are removed.
  absl::Status Resume(std::string_view data,
                      const std::vector<std::string>& masks,
                      const std::string& init_task_id);

  // local_execute: runs the step on its open stage and blocks until it is
  // done; a failed step is an OK task whose data says FAILURE. A stage that
  // is not open here is a FAILED task naming the transaction key.
  // `reattach`: the step an earlier process was running when it stopped,
  // in a stage resumed with Resume (StageFeed::Reattach); its output, read
  // again from the start, goes to the log stream without its first
  // `skip_output_lines` lines, which the earlier process delivered.
  TaskAnswer Execute(const TaskLogger& logger, std::string_view data,
                     const std::vector<std::string>& masks,
                     bool reattach = false, uint64_t skip_output_lines = 0);

  // local_cleanup: closes the stage, waits for its cleanup, and removes the
  // host directories its init declared that are marked remove, or that the
  // cleanup lists. Paths the init did not declare are never removed, and a
  // stage unknown here has none removed.
  TaskAnswer Cleanup(const TaskLogger& logger, std::string_view data);

  // From now on, Init opens no stage: the delegate is shutting down.
  // (Resume still does: those stages are not new.)
  void RefuseNewStages();

  // Called with a stage's key and the id of the local_init that opened it
  // once the stage has ended here (cleaned up, however it ended), or could
  // not be resumed. Set before the first stage; it runs on the stage's
  // thread and must not call back into this.
  using StageClosed = std::function<void(const std::string& key,
                                         const std::string& init_task_id)>;
  void OnStageClosed(StageClosed closed);

  // Stages open here. One that ended without a local_cleanup (init failed,
  // cancelled, timed out, idle) is not open; a late cleanup still removes
  // its directories.
  size_t OpenStages() const;

  // Whether the stage `key` is open here (initialized, not ended).
  bool IsOpen(const std::string& key) const;

  // For a stage whose local_cleanup will not come (the manager forgot the
  // delegate): cancels it, waits for its cleanup, removes the host
  // directories its init marked remove, and forgets it. `why` is logged.
  void Abandon(const std::string& key, std::string_view why);
  // Abandon for every open stage.
  void AbandonOpen(std::string_view why);

  // Cancels every stage as the delegate shuts down, and waits until each
  // has been cleaned up.
  void Shutdown();

 private:
  class StageObserverImpl;
  struct Transaction {
    std::string scheduler_id;
    std::shared_ptr<StageFeed> feed;
    std::vector<HostDir> dirs;
    std::shared_ptr<StageObserverImpl> observer;
  };

  std::shared_ptr<LogServiceStream> OpenLog(const TaskLogger& logger,
                                            bool existing = false);
  // Init and Resume: opens the stage. `logger` (null: none) gets the
  // stage's lines while it initializes. `task_failed` is set where the task
  // itself fails (an unusable payload, a delegate shutting down), rather
  // than the stage; `submitted` once the stage got as far as initializing
  // (its observer then reports its end).
  absl::Status Open(const TaskLogger* logger, std::string_view data,
                    const std::vector<std::string>& masks,
                    const std::string& init_task_id, bool resume,
                    bool* task_failed, bool* submitted);
  // Removes the directories marked remove, logging what it cannot.
  void RemoveDeclaredDirs(const std::vector<HostDir>& dirs);
  // Forgets the transaction under `key` when it is still the one of `feed`.
  void Forget(const std::string& key, const std::shared_ptr<StageFeed>& feed);
  // The transaction open under `key`: an init that finds one answers ready.
  bool IsOpenLocked(const std::string& key) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  EventLog& log_;
  LogSink& console_;
  const LogOpener open_log_;

  // Nothing outside this class is called while it is held, so that an owner
  // may call OpenStages under a lock of its own.
  mutable absl::Mutex mu_;
  bool refusing_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Transaction> transactions_ ABSL_GUARDED_BY(mu_);
  // Shared with the observers, which outlive a call.
  std::shared_ptr<StageClosed> on_closed_ ABSL_GUARDED_BY(mu_);
  uint64_t next_stage_ ABSL_GUARDED_BY(mu_) = 0;
  // Last: destroyed first, it cancels and waits for the stages, whose
  // observers use the event log.
  StageGroup group_;
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_STAGE_TRANSACTIONS_H_
