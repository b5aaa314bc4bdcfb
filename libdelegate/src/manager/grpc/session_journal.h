// What a DelegateSession connection must not forget when the delegate
// process dies: the stages it held under a lease, and the step each had
// reached. Kept in a RecordLog under the state directory
// (session-runs.journal). After a restart, each run the journal still holds
// is reported FAILED once ("the delegate restarted during step X"), under
// its own lease and the idempotency key its result would have had, so the
// manager applies one outcome per dispatch however often the delegate
// restarts. A run leaves the journal when the ledger retires it.
#ifndef DELEGATE_MANAGER_GRPC_SESSION_JOURNAL_H_
#define DELEGATE_MANAGER_GRPC_SESSION_JOURNAL_H_

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
#include "absl/time/time.h"
#include "util/record_log.h"

namespace delegate::grpcv1 {

// Thread-safe.
class SessionJournal {
 public:
  // Opens (or creates) the journal at `path`; an error names the file and
  // what to do.
  static absl::StatusOr<std::unique_ptr<SessionJournal>> Open(
      const std::string& path);

  struct Interrupted {
    std::string stage_id;
    std::string lease_id;
    uint64_t fencing_token = 0;
    int64_t lease_ms = 0;  // the dispatch's lease
    std::string step_id;   // the last step started; empty: none had
    // The stage's result (a serialized v1::StageResultReport) when it had
    // finished: it is sent as it was.
    std::optional<std::string> result;
  };
  // Runs held before this process and never retired.
  const std::vector<Interrupted>& interrupted() const { return interrupted_; }
  size_t torn_bytes() const { return torn_bytes_; }

  // Each is kept in memory until Flush writes it (group commit): the
  // caller flushes before it runs what it recorded as dispatched. A
  // retirement lost with the process only makes the next report a stage
  // the manager has already settled; it answers with its first answer.
  void Dispatched(const std::string& stage_id, const std::string& lease_id,
                  uint64_t fencing_token, absl::Duration lease);
  void Finished(const std::string& stage_id, uint64_t fencing_token,
                const std::string& result);
  void StepStarted(const std::string& stage_id, uint64_t fencing_token,
                   const std::string& step_id);
  void Retired(const std::string& stage_id, uint64_t fencing_token);
  // Writes what is pending with one write(2); an error (a full disk) is
  // returned for the caller to report.
  absl::Status Flush();
  ~SessionJournal();  // flushes

 private:
  struct Entry {
    std::string lease_id;
    int64_t lease_ms = 0;
    std::string step_id;
    std::optional<std::string> result;
  };
  using Key = std::pair<std::string, uint64_t>;  // stage id, fencing token
  SessionJournal() = default;
  bool Apply(std::string_view record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  std::vector<std::string> Snapshot() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void Add(std::string record);

  std::unique_ptr<RecordLog> log_;
  std::vector<Interrupted> interrupted_;
  size_t torn_bytes_ = 0;
  // Flush's: the file and what it holds open.
  mutable absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::map<Key, Entry> open_ ABSL_GUARDED_BY(write_mu_);
  size_t since_rewrite_ ABSL_GUARDED_BY(write_mu_) = 0;
  // Add's: what waits for the next Flush.
  absl::Mutex mu_;
  std::vector<std::string> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::grpcv1

#endif  // DELEGATE_MANAGER_GRPC_SESSION_JOURNAL_H_
