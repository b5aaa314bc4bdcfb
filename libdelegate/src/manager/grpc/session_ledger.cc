#include "manager/grpc/session_ledger.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manager/grpc/convert.h"
#include "util/record_log.h"
#include "util/strings.h"

namespace delegate::grpcv1 {
namespace {

// One step's log (or the stage's own, with an empty step id): every line
// from 0, in the spool, until the manager confirms the whole log.
struct LogBuffer {
  std::unique_ptr<LogSpool::File> file;  // null before the first line, and
                                         // once confirmed
  uint64_t lines = 0;   // written (the spool's dropped ones not counted)
  uint64_t acked = 0;   // the manager's last LogAck.offset
  uint64_t sent = 0;    // lines below this went out on the current stream
  uint32_t crc = 0;     // of the whole log: LogChunk.crc32
  uint64_t bytes = 0;   // LogChunk.size_bytes
  bool broken = false;  // lines were lost: the close carries no CRC
  // The chunks out on this stream and not yet acknowledged, [start, end),
  // in order: the manager answers each (or several at once) in turn.
  std::deque<std::pair<uint64_t, uint64_t>> inflight;
  // After a resend from `resent_from`: acks still owed for the chunks it
  // abandoned, which say resent_from again and ask for nothing.
  uint64_t resent_from = 0;
  size_t owed = 0;
  bool closed = false;      // the step writes no more
  bool close_sent = false;  // a chunk with `closed` went out on this stream
  bool confirmed = false;   // the manager holds the whole log
  uint64_t end() const { return lines; }
};

// Adds a line to the log's CRC-32 and size, as LogChunk.crc32 defines them.
void Account(LogBuffer& b, std::string_view text, bool partial) {
  b.crc = Crc32(text, b.crc);
  b.bytes += text.size();
  if (!partial) {
    b.crc = Crc32("\n", b.crc);
    ++b.bytes;
  }
}

}  // namespace

struct SessionLedger::Run {
  struct Report {
    ReportKind kind;
    std::string key;
    v1::DelegateMessage message;
    bool sent = false;  // on the current stream
    absl::Time due;     // not sent before this
  };

  std::string stage_id;
  std::string lease_id;
  uint64_t token = 0;
  std::string task_id;  // STAGE_ID#TOKEN: unique per dispatch
  absl::Duration lease_duration;
  absl::Time lease_end;   // by the delegate's clock
  absl::Time next_renew;  // when the next LeaseRenew is due
  bool running = true;    // StageDone has not been called
  bool lost = false;      // the lease is gone: nothing more is reported
  bool result_accepted = false;
  bool dirty = false;  // in SessionLedger::dirty_
  std::string cancel_reason;
  std::list<Report> reports;  // not yet acknowledged, in the order made
  std::map<std::string, LogBuffer, std::less<>> logs;  // by step id
};

namespace {

using Run = SessionLedger::Run;

std::string ReportKey(const Run& run, std::string_view what,
                      std::string_view step_id = {}) {
  return step_id.empty()
             ? absl::StrCat(run.stage_id, "/", run.token, "/", AbslView(what))
             : absl::StrCat(run.stage_id, "/", run.token, "/", AbslView(what),
                            "/", AbslView(step_id));
}

void FillHeader(const Run& run, const std::string& key,
                v1::ReportHeader* header) {
  header->set_stage_id(run.stage_id);
  header->set_lease_id(run.lease_id);
  header->set_fencing_token(run.token);
  header->set_idempotency_key(key);
}

// The run's StageResultReport under `key`.
v1::DelegateMessage StageResultMessage(const Run& run, const std::string& key,
                                       const StageResult& result) {
  v1::DelegateMessage m;
  FillHeader(run, key, m.mutable_stage_result()->mutable_header());
  *m.mutable_stage_result()->mutable_result() = ToProto(result);
  return m;
}

}  // namespace

SessionLedger::SessionLedger(uint32_t capacity, EventLog& log, LogSpool& spool)
    : capacity_(capacity), log_(log), spool_(spool) {}

SessionLedger::~SessionLedger() {
  // The spool may go before a run an observer still holds.
  for (const auto& [id, run] : runs_) run->logs.clear();
}

const std::string& SessionLedger::TaskId(const Run& run) { return run.task_id; }

SessionLedger::RunPtr SessionLedger::Dispatch(const v1::Dispatch& dispatch,
                                              absl::Time now, Stops* stops) {
  std::string task_id =
      absl::StrCat(dispatch.stage_id(), "#", dispatch.fencing_token());
  if (runs_.contains(task_id)) {
    SlotFreed();  // a repeat: not run, so the slot stays free
    return nullptr;
  }
  auto run = std::make_shared<Run>();
  run->stage_id = dispatch.stage_id();
  run->lease_id = dispatch.lease_id();
  run->token = dispatch.fencing_token();
  run->task_id = std::move(task_id);
  absl::StatusOr<absl::Duration> lease =
      DurationFromProto(dispatch.lease_duration(), "dispatch.lease_duration");
  run->lease_duration =
      lease.ok() && *lease > absl::ZeroDuration() ? *lease : kDefaultLease;
  run->lease_end = now + run->lease_duration;
  run->next_renew = now + run->lease_duration / 3;
  auto previous = by_stage_.find(run->stage_id);
  if (previous != by_stage_.end() && !previous->second->lost) {
    Lose(previous->second, "the stage was dispatched again", stops);
  }
  runs_[run->task_id] = run;
  by_stage_[run->stage_id] = run;
  // Recorded (and flushed by the caller) before it runs: if the process
  // dies then, the next one reports it.
  if (journal_) {
    journal_->Dispatched(run->stage_id, run->lease_id, run->token,
                         run->lease_duration);
  }
  return run;
}

void SessionLedger::Adopt(const SessionJournal::Interrupted& interrupted,
                          absl::Time now) {
  auto run = std::make_shared<Run>();
  run->stage_id = interrupted.stage_id;
  run->lease_id = interrupted.lease_id;
  run->token = interrupted.fencing_token;
  run->task_id = absl::StrCat(run->stage_id, "#", run->token);
  run->lease_duration = interrupted.lease_ms > 0
                            ? absl::Milliseconds(interrupted.lease_ms)
                            : kDefaultLease;
  run->lease_end = now + run->lease_duration;
  run->next_renew = now + run->lease_duration / 3;
  run->running = false;
  auto previous = by_stage_.find(run->stage_id);
  if (previous != by_stage_.end()) {  // the journal lists them by token
    Stops ignored;
    Lose(previous->second, "a later dispatch was in the journal", &ignored);
  }
  runs_[run->task_id] = run;
  by_stage_[run->stage_id] = run;
  const std::string key = ReportKey(*run, "stage");
  v1::DelegateMessage m;
  if (interrupted.result &&
      m.mutable_stage_result()->ParseFromString(*interrupted.result)) {
    // It had finished: its result goes as it was.
    log_.Info(
        "sending again the result of a stage that finished before the "
        "delegate stopped",
        {{"stage", run->stage_id},
         {"fencing_token", absl::StrCat(run->token)}});
    AddReport(run, ReportKind::kStageResult, key, std::move(m), now);
    return;
  }
  StageResult result;
  result.status = StepStatus::kFailure;
  result.error = absl::StrCat(
      "the delegate restarted ",
      interrupted.step_id.empty() ? std::string("while it ran the stage")
                                  : "during step " + interrupted.step_id,
      "; what it ran was stopped and what it made removed");
  log_.Warn("reporting a stage the delegate was running when it stopped",
            {{"stage", run->stage_id},
             {"fencing_token", absl::StrCat(run->token)},
             {"error", result.error}});
  result.task_id = run->stage_id;
  AddReport(run, ReportKind::kStageResult, key,
            StageResultMessage(*run, key, result), now);
}

SessionLedger::RunPtr SessionLedger::Find(std::string_view task_id) const {
  auto it = runs_.find(AbslView(task_id));
  return it == runs_.end() ? nullptr : it->second;
}

std::vector<std::string> SessionLedger::RunningTaskIds() const {
  std::vector<std::string> ids;
  for (const auto& [id, run] : runs_) {
    if (run->running) ids.push_back(id);
  }
  return ids;
}

bool SessionLedger::AppendLine(const RunPtr& run, const LogLine& line) {
  if (run->lost) return false;
  auto buf = run->logs.find(line.step_id);
  if (buf == run->logs.end()) {
    buf = run->logs.emplace(std::string(line.step_id), LogBuffer{}).first;
  }
  LogBuffer& b = buf->second;
  if (b.closed) return false;
  if (b.file == nullptr) {
    absl::StatusOr<std::unique_ptr<LogSpool::File>> file = spool_.NewFile();
    if (!file.ok()) {
      if (!b.broken) {  // said once
        log_.Error("cannot spool a step's log; its lines are dropped",
                   {{"stage", run->stage_id},
                    {"step", std::string(line.step_id)},
                    {"error", file.status().message()}});
      }
      b.broken = true;
      return false;
    }
    b.file = *std::move(file);
  }
  if (!b.file->Append(line.time, line.text, line.stream, line.partial)) {
    if (b.file->dropped_lines() == 1) {
      log_.Warn("the log spool is full; dropping lines until it has room",
                {{"stage", run->stage_id},
                 {"step", std::string(line.step_id)},
                 {"limit_mib", absl::StrCat(spool_.max_bytes() >> 20)}});
    }
    return false;
  }
  ++b.lines;
  Account(b, line.text, line.partial);
  MarkDirty(run);
  return true;
}

bool SessionLedger::CloseLog(const RunPtr& run, std::string_view step_id) {
  if (run->lost) return false;
  auto buf = run->logs.find(step_id);
  if (buf == run->logs.end()) return false;  // no lines: nothing to close
  LogBuffer& b = buf->second;
  if (b.closed) return false;
  // Nothing is dropped without a word in the log itself.
  const uint64_t dropped_lines = b.file ? b.file->dropped_lines() : 0;
  if (dropped_lines > 0 && !b.file->broken()) {
    const uint64_t max = spool_.max_bytes();
    const std::string notice = absl::StrCat(
        "[delegate] ", dropped_lines, " lines (", b.file->dropped_bytes(),
        " bytes) of this log were dropped: the log spool (",
        max % (1 << 20) == 0 ? absl::StrCat(max >> 20, " MiB")
                             : absl::StrCat(max, " bytes"),
        ", DELEGATE_LOG_SPOOL_MIB) was full");
    if (b.file->Append(absl::Now(), notice, LogStream::kSystem,
                       /*partial=*/false, /*force=*/true)) {
      ++b.lines;
      Account(b, notice, false);
    }
  }
  b.closed = true;
  MarkDirty(run);
  return true;
}

void SessionLedger::StepStarted(const RunPtr& run, std::string_view step_id,
                                absl::Time now) {
  v1::DelegateMessage m;
  const std::string key = ReportKey(*run, "started", step_id);
  v1::StepStartedReport& report = *m.mutable_step_started();
  FillHeader(*run, key, report.mutable_header());
  report.set_step_id(std::string(step_id));
  *report.mutable_time() = TimeToProto(now);
  AddReport(run, ReportKind::kStepStarted, key, std::move(m), now);
  if (journal_ && !run->lost) {
    journal_->StepStarted(run->stage_id, run->token, std::string(step_id));
  }
}

void SessionLedger::StepDone(const RunPtr& run, v1::StepResult result,
                             absl::Time now) {
  v1::DelegateMessage m;
  const std::string key = ReportKey(*run, "step", result.id());
  FillHeader(*run, key, m.mutable_step_result()->mutable_header());
  *m.mutable_step_result()->mutable_result() = std::move(result);
  AddReport(run, ReportKind::kStepResult, key, std::move(m), now);
}

bool SessionLedger::StageDone(const RunPtr& run, StageResult result,
                              absl::Time now) {
  result.task_id = run->stage_id;
  run->running = false;
  const bool granted = SlotFreed();
  if (result.status == StepStatus::kCancelled && !run->cancel_reason.empty()) {
    result.error = run->cancel_reason;
  }
  if (run->lost) {
    MaybeRetire(run);
    return granted;
  }
  const std::string key = ReportKey(*run, "stage");
  v1::DelegateMessage m = StageResultMessage(*run, key, result);
  // Kept with the run: a process that dies before the manager takes it
  // leaves the next one this result to send, not a restart's.
  if (journal_) {
    journal_->Finished(run->stage_id, run->token,
                       m.stage_result().SerializeAsString());
  }
  AddReport(run, ReportKind::kStageResult, key, std::move(m), now);
  return true;
}

SessionLedger::Stops SessionLedger::Resume(const v1::HelloAck& ack,
                                           absl::Time now) {
  Stops stops;
  absl::flat_hash_set<std::string> answered;
  for (const v1::LeaseRenewed& resumed : ack.resumed()) {
    auto it = by_stage_.find(resumed.stage_id());
    if (it == by_stage_.end() || it->second->token != resumed.fencing_token()) {
      continue;
    }
    Run& run = *it->second;
    absl::StatusOr<absl::Duration> d =
        DurationFromProto(resumed.lease_duration(), "lease_duration");
    if (d.ok()) run.lease_duration = *d;
    run.lease_end = now + run.lease_duration;
    run.next_renew = now + run.lease_duration / 3;
    answered.insert(run.task_id);
  }
  for (const v1::LeaseLost& lost : ack.lost()) {
    auto it = by_stage_.find(lost.stage_id());
    if (it != by_stage_.end() && it->second->token == lost.fencing_token()) {
      Lose(it->second, lost.message(), &stops);
    }
  }
  std::vector<RunPtr> unanswered;  // Lose may erase from runs_
  for (const auto& [id, run] : runs_) {
    if (!run->lost && !answered.contains(id)) unanswered.push_back(run);
  }
  for (const RunPtr& run : unanswered) {
    Lose(run, "the manager did not resume its lease", &stops);
  }
  for (const auto& [id, run] : runs_) {  // resend what the manager lacks
    if (run->lost) continue;
    for (auto& [step, buf] : run->logs) {
      if (buf.confirmed) continue;
      buf.sent = buf.acked;  // log_acks below move it to what it keeps
      buf.inflight.clear();
      buf.close_sent = false;
    }
    for (Run::Report& r : run->reports) r.sent = false;
    MarkDirty(run);
  }
  for (const v1::LogAck& log_ack : ack.log_acks()) LogAck(log_ack);
  size_t busy = 0;
  for (const auto& [id, run] : runs_) busy += run->running ? 1 : 0;
  credit_ = !granting_ || busy >= capacity_
                ? 0
                : static_cast<uint32_t>(capacity_ - busy);
  return stops;
}

void SessionLedger::Renewed(const v1::LeaseRenewed& renewed, absl::Time now) {
  auto it = by_stage_.find(renewed.stage_id());
  if (it == by_stage_.end() || it->second->lease_id != renewed.lease_id() ||
      it->second->lost) {
    return;
  }
  absl::StatusOr<absl::Duration> d =
      DurationFromProto(renewed.lease_duration(), "lease_duration");
  if (d.ok()) it->second->lease_duration = *d;
  it->second->lease_end = now + it->second->lease_duration;
}

SessionLedger::Stops SessionLedger::LeaseLost(const v1::LeaseLost& lost) {
  Stops stops;
  auto it = by_stage_.find(lost.stage_id());
  if (it != by_stage_.end() && it->second->token == lost.fencing_token()) {
    Lose(it->second,
         absl::StrCat(v1::LeaseLost::Reason_Name(lost.reason()), ": ",
                      lost.message()),
         &stops);
  }
  return stops;
}

SessionLedger::Stops SessionLedger::Ack(const v1::Ack& ack) {
  Stops stops;
  auto it = by_key_.find(ack.idempotency_key());
  if (it == by_key_.end()) return stops;  // a repeat
  RunPtr run = it->second;
  by_key_.erase(it);
  ReportKind kind = ReportKind::kStepStarted;
  for (auto r = run->reports.begin(); r != run->reports.end(); ++r) {
    if (r->key == ack.idempotency_key()) {
      kind = r->kind;
      run->reports.erase(r);
      break;
    }
  }
  if (!ack.accepted()) {
    log_.Warn("the manager refused a report",
              {{"stage", run->stage_id},
               {"key", ack.idempotency_key()},
               {"refusal", v1::Ack::Refusal_Name(ack.refusal())},
               {"message", ack.message()}});
    if (ack.refusal() == v1::Ack::REFUSAL_STALE_FENCING_TOKEN ||
        ack.refusal() == v1::Ack::REFUSAL_UNKNOWN_LEASE) {
      Lose(run, "the manager refused its report", &stops);
    }
  }
  if (kind == ReportKind::kStageResult) {
    run->result_accepted = true;
    MaybeRetire(run);
  }
  return stops;
}

SessionLedger::Stops SessionLedger::Cancel(const v1::Cancel& cancel) {
  Stops stops;
  auto it = by_stage_.find(cancel.stage_id());
  if (it == by_stage_.end() || !it->second->running ||
      (!cancel.lease_id().empty() &&
       cancel.lease_id() != it->second->lease_id)) {
    return stops;
  }
  it->second->cancel_reason =
      cancel.reason().empty() ? "cancelled" : cancel.reason();
  stops.cancels.push_back(it->second->task_id);
  return stops;
}

bool SessionLedger::LogAck(const v1::LogAck& ack) {
  auto it = by_stage_.find(ack.stage_id());
  if (it == by_stage_.end() || it->second->token != ack.fencing_token()) {
    return false;
  }
  const RunPtr run = it->second;
  auto buf = run->logs.find(ack.step_id());
  if (buf == run->logs.end()) return false;
  LogBuffer& b = buf->second;
  if (b.confirmed) return false;
  b.acked = std::min(ack.offset(), b.end());
  if (ack.closed() && b.closed && b.acked == b.end()) {
    // The manager holds it all, checked: the spool gives its room back.
    b.confirmed = true;
    b.file.reset();
    b.inflight.clear();
    MaybeRetire(run);
    return false;
  }
  if (b.owed > 0) {
    if (b.acked == b.resent_from) {  // for a chunk the resend abandoned
      --b.owed;
      return false;
    }
    if (b.acked > b.resent_from) b.owed = 0;  // the resend is arriving
  }
  if (b.broken) {  // nothing to send again
    b.inflight.clear();
    b.sent = std::max(b.sent, b.acked);
    return false;
  }
  // The ack answers the oldest chunk out. Keeping less than that chunk's end
  // (it refused a gap, lost what it had kept, or found its copy damaged at
  // the close), the manager wants the rest again from its offset; an ack
  // that only trails later chunks still on their way does not.
  const bool behind = b.inflight.empty() ? b.acked < b.sent
                                         : b.acked < b.inflight.front().second;
  while (!b.inflight.empty() && b.inflight.front().second <= b.acked) {
    b.inflight.pop_front();
  }
  if (behind) {
    // The ack answered the oldest chunk; the others' acks are still owed.
    b.owed = b.inflight.empty() ? 0 : b.inflight.size() - 1;
    b.resent_from = b.acked;
    b.sent = b.acked;
    b.inflight.clear();
    b.close_sent = false;
    MarkDirty(run);
    return true;
  }
  // It has more than went out on this stream (an earlier one's): not again.
  b.sent = std::max(b.sent, b.acked);
  // Room in flight again: what waits for it is due.
  if (b.inflight.size() < kMaxChunksInFlight &&
      (b.sent < b.end() || (b.closed && !b.close_sent))) {
    MarkDirty(run);
    return true;
  }
  return false;
}

SessionLedger::Stops SessionLedger::ExpireLeases(absl::Time now) {
  Stops stops;
  std::vector<RunPtr> expired;  // Lose may erase from runs_
  for (const auto& [id, run] : runs_) {
    if (!run->lost && !run->result_accepted && now >= run->lease_end) {
      expired.push_back(run);
    }
  }
  for (const RunPtr& run : expired) {
    Lose(run, "its lease lapsed without a renewal from the manager", &stops);
  }
  // Accepted, its logs not all confirmed by the end of its last lease: the
  // manager will not ask for them again.
  std::vector<RunPtr> unconfirmed;  // retiring erases from runs_
  for (const auto& [id, run] : runs_) {
    if (!run->lost && run->result_accepted && now >= run->lease_end) {
      unconfirmed.push_back(run);
    }
  }
  for (const RunPtr& run : unconfirmed) {
    DropUnconfirmed(run, "its lease ended");
  }
  return stops;
}

void SessionLedger::DropUnconfirmed(RunPtr run, std::string_view why) {
  std::vector<std::string> steps;
  for (const auto& [step, buf] : run->logs) {
    if (!buf.confirmed) steps.push_back(step.empty() ? "(stage)" : step);
  }
  if (!steps.empty()) {
    log_.Warn(
        "the manager did not confirm these logs; dropping them from the "
        "spool",
        {{"stage", run->stage_id},
         {"steps", absl::StrJoin(steps, ",")},
         {"why", why}});
  }
  run->lost = true;  // nothing more goes out for it
  run->logs.clear();
  MaybeRetire(run);
}

SessionLedger::Stops SessionLedger::GiveUpWaiting() {
  Stops stops;
  std::vector<RunPtr> waiting;  // Lose erases from runs_
  for (const auto& [id, run] : runs_) {
    if (!run->running && !run->lost) waiting.push_back(run);
  }
  for (const RunPtr& run : waiting) {
    if (run->result_accepted) {
      DropUnconfirmed(run, "the delegate is stopping");
    } else {
      Lose(run, "the delegate is stopping", &stops);
    }
  }
  return stops;
}

void SessionLedger::HeldLeases(v1::Hello* hello) const {
  for (const auto& [id, run] : runs_) {
    if (run->lost) continue;
    v1::HeldLease& held = *hello->add_held_leases();
    held.set_stage_id(run->stage_id);
    held.set_lease_id(run->lease_id);
    held.set_fencing_token(run->token);
    held.set_running(run->running);
  }
}

void SessionLedger::Renewals(absl::Time now,
                             std::vector<v1::DelegateMessage>* out) {
  for (const auto& [id, run] : runs_) {
    if (run->lost || run->result_accepted || now >= run->lease_end) continue;
    if (now >= run->next_renew) {
      v1::LeaseRenew& renew = *out->emplace_back().mutable_lease_renew();
      renew.set_stage_id(run->stage_id);
      renew.set_lease_id(run->lease_id);
      renew.set_fencing_token(run->token);
      run->next_renew = now + run->lease_duration / 3;
    }
  }
}

void SessionLedger::Collect(absl::Time now,
                            std::vector<v1::DelegateMessage>* out) {
  while (!delayed_.empty() && delayed_.front().first <= now) {
    MarkDirty(delayed_.front().second);
    delayed_.pop_front();
  }
  std::vector<RunPtr> dirty;
  dirty.swap(dirty_);
  for (const RunPtr& run : dirty) {
    run->dirty = false;
    if (!run->lost) CollectRun(*run, now, out);
  }
  if (credit_ > 0 && granting_) {
    out->emplace_back().mutable_credit()->set_slots(credit_);
  }
  credit_ = 0;
}

absl::Time SessionLedger::NextDue() const {
  return delayed_.empty() ? absl::InfiniteFuture() : delayed_.front().first;
}

void SessionLedger::CollectRun(Run& run, absl::Time now,
                               std::vector<v1::DelegateMessage>* out) {
  // Logs first: the manager has a step's lines before its result.
  for (auto& entry : run.logs) {
    // Not a structured binding: clang 14 (tsa-check) cannot capture one.
    const std::string& step_id = entry.first;
    LogBuffer& buf = entry.second;
    // A chunk of this step from `offset`, in a new message.
    auto new_chunk = [&](uint64_t offset) -> v1::LogChunk& {
      v1::LogChunkReport& report = *out->emplace_back().mutable_log();
      report.set_lease_id(run.lease_id);
      report.set_fencing_token(run.token);
      v1::LogChunk& chunk = *report.mutable_chunk();
      chunk.set_task_id(run.stage_id);
      chunk.set_step_id(step_id);
      chunk.set_offset(offset);
      return chunk;
    };
    if (buf.confirmed) continue;
    auto close = [&](v1::LogChunk& chunk) {
      chunk.set_closed(true);
      if (!buf.broken) {  // a log with lines lost has nothing to check
        chunk.set_crc32(buf.crc);
        chunk.set_size_bytes(buf.bytes);
      }
      buf.close_sent = true;
    };
    // At most kMaxChunksInFlight chunks of kMaxChunkBytes out at once: a
    // long log (a resend of all of it, say) goes as the manager takes it.
    while (buf.sent < buf.end() && buf.file != nullptr &&
           buf.inflight.size() < kMaxChunksInFlight) {
      if (absl::Status s =
              buf.file->Read(buf.sent, kMaxChunkLines, kMaxChunkBytes, batch_);
          !s.ok() || batch_.empty()) {
        // Not to be had again: the log goes out without them, and its close
        // without a CRC.
        log_.Error(
            "cannot read a step's log back from the spool; the rest "
            "of it is lost",
            {{"stage", run.stage_id},
             {"step", step_id},
             {"error", s.ok() ? "no lines" : s.message()}});
        buf.broken = true;
        buf.sent = buf.end();
        break;
      }
      for (size_t i = 0; i < batch_.size();) {
        v1::LogChunk& chunk = new_chunk(buf.sent);
        const LogStream stream = batch_[i].stream;
        chunk.set_stream(ToProto(stream));
        for (; i < batch_.size() && batch_[i].stream == stream; ++i) {
          LogSpool::Line& line = batch_[i];
          v1::LogLine& l = *chunk.add_lines();
          *l.mutable_time() = TimeToProto(line.time);
          l.set_text(std::move(line.text));
          l.set_partial(line.partial);
          ++buf.sent;
        }
        if (buf.closed && buf.sent == buf.end()) close(chunk);
        buf.inflight.emplace_back(chunk.offset(), buf.sent);
      }
    }
    if (buf.closed && !buf.close_sent && buf.sent == buf.end() &&
        buf.inflight.size() < kMaxChunksInFlight) {
      v1::LogChunk& chunk = new_chunk(buf.end());
      chunk.set_stream(v1::LOG_STREAM_SYSTEM);
      close(chunk);
      buf.inflight.emplace_back(buf.end(), buf.end());
    }
  }
  // A stage result holds every step's result: the step reports not yet
  // sent would tell the manager nothing new.
  const bool finished = !run.reports.empty() &&
                        run.reports.back().kind == ReportKind::kStageResult;
  for (auto it = run.reports.begin(); it != run.reports.end();) {
    if (it->sent) {
      ++it;
      continue;
    }
    if (finished && it->kind != ReportKind::kStageResult) {
      by_key_.erase(it->key);
      it = run.reports.erase(it);
      continue;
    }
    if (it->due > now) {  // a later delayed_ entry brings it
      ++it;
      continue;
    }
    out->push_back(it->message);
    it->sent = true;
    ++it;
  }
}

void SessionLedger::AddReport(const RunPtr& run, ReportKind kind,
                              std::string key, v1::DelegateMessage message,
                              absl::Time now) {
  if (run->lost) return;
  by_key_[key] = run;
  const bool progress = kind != ReportKind::kStageResult;
  const absl::Time due = progress ? now + kProgressDelay : now;
  run->reports.push_back(
      Run::Report{kind, std::move(key), std::move(message), false, due});
  if (progress) {
    delayed_.emplace_back(due, run);
  } else {
    MarkDirty(run);
  }
}

void SessionLedger::Lose(RunPtr run, std::string_view why, Stops* stops) {
  if (run->lost) return;
  run->lost = true;
  for (const Run::Report& r : run->reports) by_key_.erase(r.key);
  run->reports.clear();
  run->logs.clear();
  ++stops->leases_lost;
  log_.Warn("lease lost: stopping the stage",
            {{"stage", run->stage_id},
             {"fencing_token", absl::StrCat(run->token)},
             {"why", why}});
  if (run->running) {
    stops->cancels.push_back(run->task_id);
  } else {
    MaybeRetire(run);
  }
}

void SessionLedger::MaybeRetire(RunPtr run) {
  if (run->running || !(run->lost || run->result_accepted)) return;
  // A closed log stays until the manager confirms it: it may still ask for
  // it again (its lease, no longer renewed, bounds the wait).
  if (!run->lost) {
    for (const auto& entry : run->logs) {
      if (entry.second.closed && !entry.second.confirmed) return;
    }
  }
  // Nothing more of it goes out, and no spool file outlives the ledger
  // (an observer may hold the run a little longer).
  run->lost = true;
  run->logs.clear();
  if (runs_.erase(run->task_id) == 0) return;
  if (journal_) journal_->Retired(run->stage_id, run->token);
  auto it = by_stage_.find(run->stage_id);
  if (it != by_stage_.end() && it->second == run) by_stage_.erase(it);
  for (const Run::Report& r : run->reports) by_key_.erase(r.key);
}

void SessionLedger::MarkDirty(const RunPtr& run) {
  if (!run->dirty) {
    run->dirty = true;
    dirty_.push_back(run);
  }
}

bool SessionLedger::SlotFreed() {
  if (!granting_) return false;
  ++credit_;
  return true;
}

}  // namespace delegate::grpcv1
