// DelegateSession: what a manager sends down the stream (ManagerMessage,
// batches included), as bytes, driven through the session's ledger the way
// SessionConnection drives it (dispatches converted and held, leases
// renewed, lost and expired, reports acknowledged, cancels), interleaved
// with the scheduler's reports of the runs it holds (steps started and
// done, log lines, stage results) and the writer collecting what is due.
// The ledger never holds more running stages than were dispatched, and
// what it sends parses back.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "delegate/event_log.h"
#include "delegate/v1/session.pb.h"
#include "fuzz_input.h"
#include "manager/grpc/convert.h"
#include "manager/grpc/session_ledger.h"

namespace g = delegate::grpcv1;
namespace v1 = delegate::v1;
using delegate::grpcv1::SessionLedger;

namespace {

// One spool for every input, in the fuzzer's temporary directory.
delegate::LogSpool& Spool() {
  static delegate::LogSpool* spool = [] {
    const char* tmp = getenv("TMPDIR");
    auto opened = delegate::LogSpool::Open(
        std::string(tmp && *tmp ? tmp : "/tmp") + "/delegate-fuzz-spool",
        uint64_t{64} << 20);
    if (!opened.ok()) abort();
    return opened->release();
  }();
  return *spool;
}

struct Driver {
  delegate::EventLog log{[](std::string_view) {}};
  SessionLedger ledger{4, log, Spool()};
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  std::vector<SessionLedger::RunPtr> runs;
  size_t dispatches = 0;
  uint64_t line = 0;

  void Handle(const v1::ManagerMessage& m) {
    switch (m.body_case()) {
      case v1::ManagerMessage::kBatch:
        for (const v1::ManagerMessage& inner : m.batch().messages()) {
          if (inner.body_case() != v1::ManagerMessage::kBatch) Handle(inner);
        }
        break;
      case v1::ManagerMessage::kHelloAck:
        (void)g::DurationFromProto(m.hello_ack().ping_interval(), "ping");
        (void)ledger.Resume(m.hello_ack(), now);
        break;
      case v1::ManagerMessage::kDispatch: {
        (void)g::FromProto(m.dispatch().stage(), "dispatch.stage");
        SessionLedger::Stops stops;
        SessionLedger::RunPtr run = ledger.Dispatch(m.dispatch(), now, &stops);
        ++dispatches;
        if (run != nullptr) runs.push_back(run);
        break;
      }
      case v1::ManagerMessage::kLeaseRenewed:
        ledger.Renewed(m.lease_renewed(), now);
        break;
      case v1::ManagerMessage::kLeaseLost:
        (void)ledger.LeaseLost(m.lease_lost());
        break;
      case v1::ManagerMessage::kAck:
        (void)ledger.Ack(m.ack());
        break;
      case v1::ManagerMessage::kCancel:
        (void)ledger.Cancel(m.cancel());
        break;
      case v1::ManagerMessage::kLogAck:
        (void)ledger.LogAck(m.log_ack());
        break;
      default:
        break;
    }
  }

  // One thing the scheduler reports of a run it holds.
  void Report(uint8_t action, uint8_t which) {
    if (runs.empty()) return;
    const SessionLedger::RunPtr& run = runs[which % runs.size()];
    const std::string step = (action & 8) != 0 ? "build" : "test";
    switch (action % 6) {
      case 0:
        ledger.StepStarted(run, step, now);
        break;
      case 1: {
        delegate::LogLine l;
        l.task_id = SessionLedger::TaskId(*run);
        l.step_id = step;
        l.time = now;
        l.number = ++line;
        l.text = "a line";
        (void)ledger.AppendLine(run, l);
        break;
      }
      case 2:
        (void)ledger.CloseLog(run, step);
        break;
      case 3: {
        delegate::StepResult r;
        r.id = step;
        r.status = delegate::StepStatus::kFailure;
        r.exit_code = 1;
        ledger.StepDone(run, g::ToProto(r), now);
        break;
      }
      case 4: {
        delegate::StageResult r;
        r.task_id = SessionLedger::TaskId(*run);
        r.status = delegate::StepStatus::kSuccess;
        (void)ledger.StageDone(run, r, now);
        break;
      }
      default:
        now += absl::Seconds(which % 64);
        (void)ledger.ExpireLeases(now);
        break;
    }
  }

  void Collect() {
    std::vector<v1::DelegateMessage> out;
    ledger.Renewals(now, &out);
    ledger.Collect(now, &out);
    for (const v1::DelegateMessage& m : out) {
      v1::DelegateMessage back;
      FUZZ_CHECK(back.ParseFromString(m.SerializeAsString()), "unparseable");
      FUZZ_CHECK(m.body_case() != v1::DelegateMessage::BODY_NOT_SET,
                 "an empty message");
    }
    FUZZ_CHECK(ledger.RunningTaskIds().size() <= dispatches,
               "more running than dispatched");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  // The scheduler's side from the back of the input, the manager's
  // messages (a ManagerBatch) from the front.
  std::vector<std::pair<uint8_t, uint8_t>> actions;
  for (int n = in.Byte() % 32; n > 0; --n)
    actions.emplace_back(in.Byte(), in.Byte());
  std::string_view bytes = in.Rest();
  v1::ManagerBatch batch;
  if (!batch.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return 0;
  }
  Driver d;
  size_t next = 0;
  for (const v1::ManagerMessage& m : batch.messages()) {
    d.Handle(m);
    if (next < actions.size()) {
      d.Report(actions[next].first, actions[next].second);
      ++next;
    }
    d.Collect();
  }
  for (; next < actions.size(); ++next) {
    d.Report(actions[next].first, actions[next].second);
    d.Collect();
  }
  (void)d.ledger.GiveUpWaiting();
  d.Collect();
  return 0;
}
