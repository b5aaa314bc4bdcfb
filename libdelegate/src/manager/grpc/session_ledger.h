// The delegate's ledger of a DelegateSession (proto/delegate/v1/session.proto):
// what it keeps per dispatched stage until the manager has accepted the
// stage's result, and the messages that follow from it. The stream (dialling,
// Hello, reading, writing, pings, reconnecting) is the connection's
// (session_connection.cc); the ledger sees neither gRPC nor the scheduler,
// and takes the time from its caller.
//
// Per dispatch of a stage (a run, named by its task id STAGE_ID#TOKEN):
// - The lease. Renewed at a third of its length (Renewals). Lost when it
//   lapses by the caller's clock (ExpireLeases), when the manager says so
//   (LeaseLost, HelloAck.lost, an Ack refusing a report for a stale fencing
//   token or an unknown lease), when the stage is dispatched again, or when a
//   new stream does not resume it. A lost run reports nothing more: its
//   reports and log lines are dropped, and a running one is returned in
//   Stops::cancels.
// - The reports (step started, step result, stage result), each under an
//   idempotency key, kept until the manager acknowledges it. Step reports
//   are due kProgressDelay after they were made, and are dropped unsent when
//   the stage's result is ready first: it holds every step's result.
// - Each step's log (the stage's own under an empty step id), every line
//   kept in the log spool (logs/log_spool.h) from 0 until the manager
//   confirms the whole log (LogAck.closed), sent from the manager's last
//   LogAck on in chunks of at most kMaxChunkLines lines of one stream, with
//   offsets; the chunk that ends a closed log says so, with the whole log's
//   CRC-32 and size. A manager whose copy differs acknowledges a lower
//   offset, and the log goes again from there. Lines the spool has no room
//   for are dropped and counted, and the log ends with a line saying so.
// - Credit: a slot is busy while its stage runs, lease or not. Collect
//   grants the slots freed since its last call, after Resume all free ones,
//   and none after StopGranting.
//
// A run is forgotten once it has stopped running and either its result was
// accepted and its closed logs confirmed, or its lease lost; its RunPtr stays
// valid, and calls with it change nothing then.
//
// Not thread-safe: the connection calls it under its lock. No call waits
// on the network; the log calls write and read the spool's files (64 KiB
// at a time), and the EventLog is called for lost leases and refused
// reports.
#ifndef DELEGATE_MANAGER_GRPC_SESSION_LEDGER_H_
#define DELEGATE_MANAGER_GRPC_SESSION_LEDGER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "delegate/event_log.h"
#include "delegate/log_sink.h"
#include "delegate/result.h"
#include "delegate/v1/session.pb.h"
#include "logs/log_spool.h"
#include "manager/grpc/session_journal.h"

namespace delegate::grpcv1 {

class SessionLedger {
 public:
  // Most lines in one LogChunk, and the text after which a chunk takes no
  // more lines; most chunks of one log out and not yet acknowledged.
  static constexpr size_t kMaxChunkLines = 1000;
  static constexpr size_t kMaxChunkBytes = 1 << 20;
  static constexpr size_t kMaxChunksInFlight = 8;
  // How long step reports wait before they are due: a stage that ends by
  // then sends its result alone, so a burst of short stages costs one report
  // each, not three.
  static constexpr absl::Duration kProgressDelay = absl::Milliseconds(10);
  // A dispatch's lease when it names none (or a malformed one).
  static constexpr absl::Duration kDefaultLease = absl::Seconds(30);

  // One dispatch of a stage. Opaque: the caller holds it for the scheduler's
  // callbacks (AppendLine ... StageDone).
  struct Run;
  using RunPtr = std::shared_ptr<Run>;

  // What a call that can stop stages leaves to the caller, once it has
  // released its lock (cancelling a stage that is still queued runs its
  // StageDone on the cancelling thread).
  struct Stops {
    // Task ids of running stages whose lease was lost or that the manager
    // cancelled: cancel each through the scheduler (StageGroup::Cancel).
    std::vector<std::string> cancels;
    // Leases lost by the call (each logged already): for
    // delegate_session_leases_lost_total.
    int leases_lost = 0;
  };

  // `capacity`: the slots the delegate has (MAX_STAGES or PARALLEL_WORKERS).
  // Lost leases and refused reports are logged to `log`; logs are kept in
  // `spool`. Both must outlive the ledger.
  SessionLedger(uint32_t capacity, EventLog& log, LogSpool& spool);
  SessionLedger(const SessionLedger&) = delete;
  SessionLedger& operator=(const SessionLedger&) = delete;
  ~SessionLedger();

  // ------------------------------------------------------------ dispatch

  // Holds a stage the manager dispatched at `now`, its lease running from
  // then. A previous run of the same stage loses its lease (into `stops`).
  // Returns null for a repeat (a run the ledger holds already): nothing
  // runs, and its slot goes back to the manager with the next Collect (the
  // caller wakes its writer).
  RunPtr Dispatch(const v1::Dispatch& dispatch, absl::Time now, Stops* stops);
  // Records every dispatch, step started and retirement in `journal`
  // (which must outlive the ledger) from now on; the caller flushes it.
  void SetJournal(SessionJournal* journal) { journal_ = journal; }
  // Holds a run an earlier process held when it died (its journal's
  // interrupted()): not running, its result FAILED ("the delegate restarted
  // during step X") due at once under the key its result would have had,
  // its lease in HeldLeases for the manager to resume or declare lost.
  void Adopt(const SessionJournal::Interrupted& interrupted, absl::Time now);
  // The run's scheduler task id: STAGE_ID#TOKEN, unique per dispatch.
  static const std::string& TaskId(const Run& run);
  // The run held under `task_id`; null when none is.
  RunPtr Find(std::string_view task_id) const;
  // Task ids of the runs whose stage is still running.
  std::vector<std::string> RunningTaskIds() const;
  // Holds no run: every result was accepted or given up.
  bool empty() const { return runs_.empty(); }

  // ------------------------------------------------------------ the stage
  //
  // What the scheduler reports of a run, at `now`. Nothing is kept for a run
  // whose lease was lost. Calls that return bool return true when they made
  // messages due at once: the caller wakes its writer.

  // A line of the run's log (line.step_id names the step; empty: the
  // stage's own).
  bool AppendLine(const RunPtr& run, const LogLine& line);
  // The step writes no more: the chunk that ends its log says `closed`. A
  // step that wrote no line has no log to close.
  bool CloseLog(const RunPtr& run, std::string_view step_id);
  // Due at now + kProgressDelay (NextDue).
  void StepStarted(const RunPtr& run, std::string_view step_id, absl::Time now);
  // `result`: ToProto(StepResult), converted by the caller outside its lock.
  // Due at now + kProgressDelay.
  void StepDone(const RunPtr& run, v1::StepResult result, absl::Time now);
  // The stage stopped running, or was never run (the scheduler refused it):
  // its slot is free, and its result (task_id set to the stage id; a
  // cancelled one's error set to the manager's Cancel reason) is due at once.
  bool StageDone(const RunPtr& run, StageResult result, absl::Time now);

  // ------------------------------------------------------------ the manager

  // A new stream's HelloAck, received at `now`. The leases in ack.resumed
  // run from `now`; those in ack.lost, and every other one HeldLeases named,
  // are lost. What the remaining runs have not had acknowledged is due
  // again: their reports, and each step's log from its offset in
  // ack.log_acks (else from the oldest line held). Credit becomes the free
  // slots.
  Stops Resume(const v1::HelloAck& ack, absl::Time now);
  // The lease lasts renewed.lease_duration from `now` (when the message
  // came), unless it is lost or not the run's current lease.
  void Renewed(const v1::LeaseRenewed& renewed, absl::Time now);
  // For the stage's current run under that fencing token only.
  Stops LeaseLost(const v1::LeaseLost& lost);
  // The report under ack.idempotency_key is settled, accepted or not (a key
  // not held: a repeat, ignored). A refusal for a stale fencing token or an
  // unknown lease loses the lease; an accepted or refused stage result ends
  // the run once it stopped running.
  Stops Ack(const v1::Ack& ack);
  // The stage's running run, when cancel.lease_id is empty or its lease, is
  // returned for cancelling; its result's error will be cancel.reason.
  Stops Cancel(const v1::Cancel& cancel);
  // The manager keeps the lines below ack.offset. When it keeps fewer than
  // went out (it refused a gap, lost what it had, or found its copy damaged
  // at the close), the rest is sent again from ack.offset. With
  // ack.closed, once the close went out, the log is confirmed and leaves the
  // spool. For the stage's current run under that fencing token only.
  bool LogAck(const v1::LogAck& ack);

  // ------------------------------------------------------------ time

  // Loses the leases that reached their end by `now` without a renewal.
  Stops ExpireLeases(absl::Time now);
  // Loses the leases of the stages that stopped and whose results wait for
  // an acknowledgement: a delegate forced to stop waits no longer.
  Stops GiveUpWaiting();
  // The slots freed from now on are not granted; nor are any on Resume.
  void StopGranting() { granting_ = false; }

  // ------------------------------------------------------------ messages

  // Adds to hello.held_leases every lease not lost (resent on a new stream).
  void HeldLeases(v1::Hello* hello) const;
  // Appends a LeaseRenew for each lease due one at `now` (at a third of its
  // length, then a third of it after each renewal), not lost, not lapsed,
  // whose run's result is not accepted. Called while a stream is up.
  void Renewals(absl::Time now, std::vector<v1::DelegateMessage>* out);
  // Appends what is due at `now`, each once per stream: for each run with
  // news its log chunks, then its reports in the order made; then a Credit
  // for the slots to grant.
  void Collect(absl::Time now, std::vector<v1::DelegateMessage>* out);
  // When the next step report falls due (absl::InfiniteFuture: none
  // waits). Collect before then returns nothing more for it.
  absl::Time NextDue() const;

 private:
  enum class ReportKind { kStepStarted, kStepResult, kStageResult };

  void AddReport(const RunPtr& run, ReportKind kind, std::string key,
                 v1::DelegateMessage message, absl::Time now);
  // Both take the run by value: callers pass the RunPtr held in runs_ or
  // by_stage_, which retiring erases, and the run must outlive that.
  void Lose(RunPtr run, std::string_view why, Stops* stops);
  // An accepted run whose closed logs the manager has not confirmed: they
  // are dropped (with a warning naming them) and the run retires.
  void DropUnconfirmed(RunPtr run, std::string_view why);
  void MaybeRetire(RunPtr run);
  void MarkDirty(const RunPtr& run);
  void CollectRun(Run& run, absl::Time now,
                  std::vector<v1::DelegateMessage>* out);
  bool SlotFreed();

  const uint32_t capacity_;
  EventLog& log_;
  LogSpool& spool_;
  SessionJournal* journal_ = nullptr;
  std::vector<LogSpool::Line> batch_;  // CollectRun's, kept for its capacity
  bool granting_ = true;
  uint32_t credit_ = 0;  // slots to grant with the next Collect
  // Runs with news for Collect.
  std::vector<RunPtr> dirty_;
  // Runs with step reports that become due, in due order.
  std::deque<std::pair<absl::Time, RunPtr>> delayed_;
  // By task id, the current run of each stage, and by report key.
  absl::flat_hash_map<std::string, RunPtr> runs_;
  absl::flat_hash_map<std::string, RunPtr> by_stage_;
  absl::flat_hash_map<std::string, RunPtr> by_key_;
};

}  // namespace delegate::grpcv1

#endif  // DELEGATE_MANAGER_GRPC_SESSION_LEDGER_H_
