// The reference manager's DelegateSession side (proto/delegate/v1/
// session.proto): delegates dial in and keep one stream each; stages come in
// through RuntimeService (the same gRPC port), from stage files, or from
// Submit in process, and go out to the delegates by tags, platform and the
// credit each delegate granted. Every dispatch carries a lease with a fencing
// token; a stage whose lease lapses (its delegate died or went quiet) is
// queued again under a greater token, and whatever arrives under the old
// token is refused. Reports are applied once per idempotency key; log chunks
// are kept once per line by offset. Enough to run several delegates against
// one manager on one machine, and strict enough to test the delegate side.
#ifndef APPS_REFERENCE_MANAGER_SESSION_MANAGER_H_
#define APPS_REFERENCE_MANAGER_SESSION_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/event_log.h"
#include "delegate/result.h"
#include "delegate/runtime_service.h"
#include "delegate/stage.h"

namespace delegate::reference {

struct SessionManagerOptions {
  // "HOST:PORT" (port 0: a free one). Serves DelegateSession and
  // RuntimeService.
  std::string listen = "127.0.0.1:0";
  // PEM files; both set: TLS (with client_ca_file: mutual TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string client_ca_file;
  // How long a lease lasts unless renewed.
  absl::Duration lease_duration = absl::Seconds(30);
  // HelloAck.ping_interval: a session quiet for three of these ends.
  absl::Duration ping_interval = absl::Seconds(10);
  // The protocol versions spoken (tests narrow it to provoke a mismatch).
  std::vector<uint32_t> supported_versions = {1};
  // Where the manager's own events go; nullptr: EventLog::Stdout().
  EventLog* log = nullptr;
  // Fault injection: the first copy of every log is kept with its first
  // line altered, as a store that damaged it would. The CRC-32 check at the
  // log's close then fails, and the log is asked for again from offset 0.
  bool damage_logs = false;
};

// What the manager knows of one stage.
struct StageSnapshot {
  std::string id;
  enum class State { kQueued, kLeased, kDone } state = State::kQueued;
  uint32_t attempts = 0;               // dispatches so far
  uint64_t fencing_token = 0;          // of the latest dispatch
  std::string delegate;                // of the latest dispatch
  std::vector<std::string> delegates;  // of every dispatch, in order
  uint32_t results_applied = 0;        // StageResultReports applied (at most 1)
  std::optional<StageResult> result;
  // Every step's log as kept, by step id ("" for the stage's own lines).
  std::vector<std::pair<std::string, std::vector<std::string>>> logs;
  // Logs whose copy did not match the CRC-32 and size at their close, and
  // were asked for again; and closes that matched.
  uint32_t logs_resent = 0;
  uint32_t logs_checked = 0;
};

struct DelegateSnapshot {
  std::string name;
  std::string session_id;
  std::vector<std::string> executors;
  std::vector<std::string> tags;
  uint32_t credit = 0;  // granted and not used
  size_t leased = 0;    // stages it holds leases for
};

class SessionManager : public StageRunner {
 public:
  static absl::StatusOr<std::unique_ptr<SessionManager>> Start(
      SessionManagerOptions options);
  ~SessionManager() override;

  // "HOST:PORT" as bound.
  std::string address() const;
  // Ends every session and stops serving. Idempotent.
  void Stop();

  // StageRunner (what RuntimeService submits through). A stage goes to a
  // delegate whose executors include its platform and whose tags include
  // all of the stage's tags.
  absl::Status Submit(std::string task_id, Stage stage, Priority priority,
                      std::shared_ptr<StageEvents> events) override;
  absl::Status Cancel(std::string_view task_id,
                      std::string_view reason) override;
  RuntimeCapacity Capacity() const override;
  RuntimeHealth Health() const override;

  // Blocks until every submitted stage is done, or `timeout`.
  bool WaitAllDone(absl::Duration timeout);
  absl::StatusOr<StageSnapshot> Snapshot(const std::string& id) const;
  std::vector<StageSnapshot> Stages() const;
  std::vector<DelegateSnapshot> Delegates() const;
  // Why each refused Hello was refused, oldest first.
  std::vector<std::string> Rejections() const;
  // From each stage's submit to its result, for the stages done since the
  // last ForgetDone.
  std::vector<absl::Duration> Latencies() const;
  // Drops what is kept of the finished stages (a benchmark's rounds).
  void ForgetDone();

 private:
  class Impl;
  explicit SessionManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace delegate::reference

#endif  // APPS_REFERENCE_MANAGER_SESSION_MANAGER_H_
