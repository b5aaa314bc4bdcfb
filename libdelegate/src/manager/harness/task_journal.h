// What the Harness connection must not forget when the delegate process
// dies: which tasks it was running (with their payloads, sealed), the
// stages it had open, the answers it gave, and the id the manager gave it.
// Kept in a RecordLog under the state directory. After a restart, an open
// stage is resumed and the step it was running re-attached where its
// platform can; another task that was running is answered FAILED once
// ("the delegate restarted during step X"), an answer the manager had not
// taken is sent again, and a task the manager delivers again is answered
// from the journal, never run twice.
#ifndef DELEGATE_MANAGER_HARNESS_TASK_JOURNAL_H_
#define DELEGATE_MANAGER_HARNESS_TASK_JOURNAL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "util/record_log.h"

namespace delegate::harness {

// Thread-safe.
class TaskJournal {
 public:
  // Opens (or creates) the journal at `path`; an error names the file and
  // what to do. Keeps at most `keep_answers` answers delivered.
  static absl::StatusOr<std::unique_ptr<TaskJournal>> Open(
      const std::string& path, size_t keep_answers = 2000);

  struct Interrupted {
    std::string task_id;
    std::string type;
    std::string step_id;     // local_execute's step; empty for others
    std::string stage_key;   // local_*'s transaction key; empty for others
    std::string payload;     // what Started kept; empty when nothing
    uint64_t log_lines = 0;  // LogLinesHandled's last count
  };
  // A stage an earlier process opened (its local_init succeeded) and did
  // not begin to clean up: the delegate may resume it.
  struct OpenStage {
    std::string key;  // the transaction key
    std::string init_task_id;
    std::string init_payload;  // what Started kept for the init
  };
  // Tasks started and never answered before this process: the delegate
  // stopped while it ran them.
  const std::vector<Interrupted>& interrupted() const { return interrupted_; }
  // Answers given before this process that the manager had not taken:
  // (task id, response body).
  const std::vector<std::pair<std::string, std::string>>& undelivered() const {
    return undelivered_;
  }
  size_t torn_bytes() const { return torn_bytes_; }
  // Stages open when the earlier process stopped, oldest first. Their
  // inits' payloads are kept until their cleanup starts.
  const std::vector<OpenStage>& open_stages() const { return open_stages_; }
  // The id the manager gave this instance last (Registered), or empty.
  std::string delegate_id() const;

  // The answer given to `task_id`, if any (this process or an earlier one).
  std::optional<std::string> AnswerOf(const std::string& task_id) const;

  // Each records before the step it names: an error (a full disk) is
  // returned for the caller to report; the task still runs.
  // `payload` (the task as fetched, sealed by the caller: it holds secret
  // values) is kept while the task runs, and for a local_init while its
  // stage is open, so that a restarted delegate can resume the stage.
  // A local_cleanup closes the stage `stage_key` names.
  absl::Status Started(const std::string& task_id, const std::string& type,
                       const std::string& step_id,
                       const std::string& stage_key = "",
                       const std::string& payload = "");
  // The stage `stage_key` opened by the local_init `init_task_id`: written
  // with that task's answer (Answered, next).
  absl::Status StageOpened(const std::string& stage_key,
                           const std::string& init_task_id);
  // `lines` complete output lines of the running task `task_id` have left
  // its log stream (LogServiceStream::OnOutputHandled): a re-attached step
  // skips that many when its output is read again.
  absl::Status LogLinesHandled(const std::string& task_id, uint64_t lines);
  // The stage `stage_key` that the local_init `init_task_id` opened has
  // ended here (cleaned up, or given up): nothing to resume.
  absl::Status StageClosed(const std::string& stage_key,
                           const std::string& init_task_id);
  // The manager gave this instance `delegate_id`; kept so that a restart
  // registers as the same delegate.
  absl::Status Registered(const std::string& delegate_id);
  absl::Status Answered(const std::string& task_id, const std::string& body);
  // Written with the next record (group commit): if the process dies first,
  // the answer is sent again after the restart, and the manager, which
  // de-duplicates, records a repeat.
  absl::Status Delivered(const std::string& task_id);
  // Writes what Delivered left pending.
  ~TaskJournal();

 private:
  struct Entry {
    uint64_t seq = 0;
    std::string type;
    std::string step_id;
    std::string stage_key;
    std::string payload;
    uint64_t log_lines = 0;
    std::optional<std::string> answer;
    bool delivered = false;
  };
  // Whether `id` is the local_init of a stage still open.
  bool OpensAStageLocked(const std::string& id, const Entry& e) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  explicit TaskJournal(size_t keep_answers) : keep_answers_(keep_answers) {}
  // Applies one record; false when it is not one.
  bool Apply(std::string_view record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The records that rebuild what is kept.
  std::vector<std::string> Snapshot() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `record` with what is pending, or (`defer`) only adds it to what
  // is pending.
  absl::Status Write(std::string record, bool defer = false)
      ABSL_LOCKS_EXCLUDED(mu_);

  const size_t keep_answers_;
  std::unique_ptr<RecordLog> log_;
  std::vector<Interrupted> interrupted_;
  std::vector<std::pair<std::string, std::string>> undelivered_;
  std::vector<OpenStage> open_stages_;
  size_t torn_bytes_ = 0;
  // Held through a whole Write, so that a compaction's snapshot and the
  // file's replacement see every record written before it and lose none
  // written beside it. Taken before mu_.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Entry> tasks_ ABSL_GUARDED_BY(mu_);
  // Open stages: transaction key -> the local_init that opened it.
  std::map<std::string, std::string> open_ ABSL_GUARDED_BY(mu_);
  std::string delegate_id_ ABSL_GUARDED_BY(mu_);
  size_t since_compaction_ ABSL_GUARDED_BY(mu_) = 0;
  size_t since_compaction_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Delivered records not written yet.
  std::vector<std::string> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_TASK_JOURNAL_H_
