// A reference Harness manager: the server side of the Delegate 3.x REST
// contract (harness-protocol.md §2 to §8), for tests, benchmarks and trying
// the delegate without a Harness account. It checks what the real manager
// checks (the JWE decrypts under the account's delegate token and has not
// expired, its sub is the account, the delegateTokenHash matches), orders a
// stage's tasks the way the manager does (init, then each step, then cleanup,
// all on the delegate that took the init), serves a log service, and records
// every response and log line so that tests can compare.
//
// Admin API (no auth; loopback only): POST /admin/stages (StageSpec JSON),
// GET /admin/stages/ID, GET /admin/tasks/ID, GET /admin/logs?key=,
// GET /admin/delegates, POST /admin/faults.
#ifndef APPS_REFERENCE_MANAGER_REFERENCE_MANAGER_H_
#define APPS_REFERENCE_MANAGER_REFERENCE_MANAGER_H_

#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/config.h"
#include "http/http_server.h"

namespace delegate::reference {

struct ManagerOptions {
  std::string address = "127.0.0.1";
  int port = 0;
  std::optional<http::ServerTlsOptions> tls;
  std::string account_id;
  SecretString token;  // the delegate token (normalised or as the UI shows it)
  // Where the state is kept across restarts (JSON); empty: memory only. The
  // log service's streams and lines go to STATE_FILE.logs, a record a line,
  // appended as they come.
  std::string state_file;
  // Sent as task data: base64 of JSON (true, as Go's []byte) or inline JSON.
  bool base64_data = true;
  // A registered delegate not heard from (register, heartbeat, poll, fetch,
  // response) for this long is lost: unregistered, and its open stages
  // failed with that reason.
  absl::Duration lost_after = absl::Seconds(60);
};

// Injected failures, set through POST /admin/faults or Faults().
struct Faults {
  // The next N delegate API calls (not admin, not logs) answer this status.
  int fail_next = 0;
  int fail_status = 503;
  // Every event is listed twice in each runner-events answer.
  bool duplicate_events = false;
  // Each of the next `delay_next` delegate API calls waits `delay` first
  // (-1: every call).
  absl::Duration delay = absl::ZeroDuration();
  int delay_next = -1;
  // This share of log service calls (0 to 100) answers 503: half of them
  // before taking the call, half after it (a write kept whose answer is
  // lost, as when a connection drops).
  int log_fail_percent = 0;
};

class ReferenceManager {
 public:
  static absl::StatusOr<std::unique_ptr<ReferenceManager>> Start(
      ManagerOptions options);
  ~ReferenceManager();

  int port() const { return server_->port(); }
  std::string url() const { return server_->url(); }
  void Stop();

  // POST /admin/stages, in process: returns the stage id or why the spec is
  // unusable.
  absl::StatusOr<std::string> SubmitStage(const std::string& spec_json);
  // GET /admin/stages/ID: the stage's JSON, or NotFound.
  absl::StatusOr<std::string> StageJson(const std::string& id);
  // GET /admin/logs?key=KEY, in process: what the log service kept under
  // KEY ("STAGE/step-N", "STAGE/init", ...), a line each.
  std::vector<std::string> LogLines(const std::string& key);
  // Blocks until every submitted stage has finished, or `timeout`.
  bool WaitAllDone(absl::Duration timeout);
  void SetFaults(const Faults& faults);
  // Total task responses recorded, duplicates included.
  size_t responses() const;
  // For each answered task: from being queued to its first response.
  std::vector<absl::Duration> TaskLatencies() const;

 private:
  struct TaskRecord;
  struct StageRecord;
  struct DelegateRecord;
  explicit ReferenceManager(ManagerOptions options);
  http::ServerResponse Handle(const http::ServerRequest& req);
  // A new stream under `key`: its earlier lines are dropped.
  void OpenStreamLocked(const std::string& key);
  http::ServerResponse HandleLogsLocked(const http::ServerRequest& req,
                                        const std::string& key);
  http::ServerResponse HandleAgent(const http::ServerRequest& req);
  http::ServerResponse HandleLogs(const http::ServerRequest& req);
  http::ServerResponse HandleAdmin(const http::ServerRequest& req);
  // REQUIRES: mu_ held.
  std::string QueueTask(StageRecord& stage, const std::string& type,
                        const std::string& data_json);
  void Advance(StageRecord& stage, const TaskRecord& answered);
  std::string StageToJsonLocked(const StageRecord& stage) const;
  void SaveLocked() const;
  // Notes that `delegate_id` was heard from.
  void SeenLocked(const std::string& delegate_id);
  // Marks the delegates silent for longer than lost_after lost, and fails
  // their open stages.
  void ExpireLostLocked();
  void LoadState();

  const ManagerOptions options_;
  SecretString token_;  // normalised
  std::string token_hash_;
  std::unique_ptr<http::HttpServer> server_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Faults faults_;
  std::string base_url_;  // the server's URL, once Start has it
  uint64_t next_id_ = 1;
  std::map<std::string, std::shared_ptr<DelegateRecord>> delegates_;
  std::map<std::string, std::shared_ptr<StageRecord>> stages_;
  std::map<std::string, std::shared_ptr<TaskRecord>> tasks_;
  std::deque<std::string> queue_;  // task ids not yet answered, in order
  // Appends one record to STATE_FILE.logs (and flushes it).
  void LogRecordLocked(const std::string& json);
  void LoadLogs();

  std::map<std::string, std::vector<std::string>> logs_;  // key -> lines
  std::map<std::string, int> open_streams_;               // key -> opens
  // Lines already taken, by key: "pos|time|out". A write the delegate sends
  // again (its answer was lost) adds nothing.
  std::map<std::string, std::set<std::string>> seen_lines_;
  std::ofstream logs_out_;
  std::mt19937 log_faults_rng_{7};
  size_t responses_ = 0;
};

}  // namespace delegate::reference

#endif  // APPS_REFERENCE_MANAGER_REFERENCE_MANAGER_H_
