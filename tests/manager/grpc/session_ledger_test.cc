#include "manager/grpc/session_ledger.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "delegate/event_log.h"
#include "delegate/v1/session.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manager/grpc/convert.h"
#include "util/record_log.h"

namespace delegate::grpcv1 {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::UnorderedElementsAre;
using RunPtr = SessionLedger::RunPtr;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

// A ledger with a log the tests can read, and the manager's side of it: what
// the manager would receive from Collect, and the messages it answers with.
class SessionLedgerTest : public ::testing::Test {
 protected:
  explicit SessionLedgerTest(uint32_t capacity = 4,
                             uint64_t spool_bytes = uint64_t{64} << 20)
      : log_([this](std::string_view line) { log_lines_.emplace_back(line); }),
        spool_(OpenSpool(spool_bytes)),
        ledger_(capacity, log_, *spool_) {}

  static std::unique_ptr<LogSpool> OpenSpool(uint64_t bytes) {
    auto spool = LogSpool::Open(::testing::TempDir() + "/ledger-spool", bytes);
    EXPECT_TRUE(spool.ok()) << spool.status();
    return spool.ok() ? *std::move(spool) : nullptr;
  }

  RunPtr Dispatch(const std::string& stage_id, uint64_t token,
                  absl::Duration lease = absl::Seconds(30),
                  absl::Time now = kT0) {
    SessionLedger::Stops stops;
    RunPtr run =
        ledger_.Dispatch(DispatchOf(stage_id, token, lease), now, &stops);
    EXPECT_THAT(stops.cancels, IsEmpty());
    return run;
  }
  static v1::Dispatch DispatchOf(const std::string& stage_id, uint64_t token,
                                 absl::Duration lease = absl::Seconds(30)) {
    v1::Dispatch d;
    d.set_stage_id(stage_id);
    d.set_lease_id(absl::StrCat("lease-", stage_id, "-", token));
    d.set_fencing_token(token);
    *d.mutable_lease_duration() = DurationToProto(lease);
    return d;
  }

  // What the manager receives when the writer wakes at `now`.
  std::vector<v1::DelegateMessage> Collect(absl::Time now) {
    std::vector<v1::DelegateMessage> out;
    ledger_.Collect(now, &out);
    return out;
  }

  bool Line(const RunPtr& run, std::string_view step_id, std::string_view text,
            LogStream stream = LogStream::kStdout) {
    // The task id and number are the scheduler's: the ledger does not read
    // them.
    return ledger_.AppendLine(
        run, {.step_id = step_id, .stream = stream, .time = kT0, .text = text});
  }

  static v1::Ack AckOf(
      const std::string& key, bool accepted = true,
      v1::Ack::Refusal refusal = v1::Ack::REFUSAL_UNSPECIFIED) {
    v1::Ack ack;
    ack.set_idempotency_key(key);
    ack.set_accepted(accepted);
    ack.set_refusal(refusal);
    return ack;
  }
  static v1::LogAck LogAckOf(const std::string& stage_id, uint64_t token,
                             const std::string& step_id, uint64_t offset) {
    v1::LogAck ack;
    ack.set_stage_id(stage_id);
    ack.set_fencing_token(token);
    ack.set_step_id(step_id);
    ack.set_offset(offset);
    return ack;
  }
  // A new stream whose HelloAck resumes only stage_id's lease-STAGE-TOKEN;
  // what is due then.
  std::vector<v1::DelegateMessage> ResumeOnly(const std::string& stage_id,
                                              uint64_t token) {
    v1::HelloAck ack;
    v1::LeaseRenewed& resumed = *ack.add_resumed();
    resumed.set_stage_id(stage_id);
    resumed.set_lease_id(absl::StrCat("lease-", stage_id, "-", token));
    resumed.set_fencing_token(token);
    EXPECT_THAT(ledger_.Resume(ack, kT0).cancels, IsEmpty());
    return Collect(kT0);
  }
  void SendThreeChunks(const RunPtr& run);
  void KeepThreeChunks();

  static StageResult Success() {
    StageResult result;
    result.stage = "build";
    result.status = StepStatus::kSuccess;
    return result;
  }

  std::vector<std::string> log_lines_;
  EventLog log_;
  std::unique_ptr<LogSpool> spool_;
  SessionLedger ledger_;
};

// A message as "KIND key-or-detail", so a test reads like the wire.
std::string Describe(const v1::DelegateMessage& m) {
  switch (m.body_case()) {
    case v1::DelegateMessage::kCredit:
      return absl::StrCat("credit ", m.credit().slots());
    case v1::DelegateMessage::kLeaseRenew:
      return absl::StrCat("renew ", m.lease_renew().stage_id(), "#",
                          m.lease_renew().fencing_token());
    case v1::DelegateMessage::kStepStarted:
      return absl::StrCat("started ",
                          m.step_started().header().idempotency_key());
    case v1::DelegateMessage::kStepResult:
      return absl::StrCat("step ", m.step_result().header().idempotency_key());
    case v1::DelegateMessage::kStageResult:
      return absl::StrCat("stage ",
                          m.stage_result().header().idempotency_key());
    case v1::DelegateMessage::kLog: {
      const v1::LogChunk& c = m.log().chunk();
      std::string s =
          absl::StrCat("log ", c.task_id(), "/", c.step_id(), "@", c.offset(),
                       " ", v1::LogStream_Name(c.stream()), " [");
      for (int i = 0; i < c.lines_size(); ++i) {
        absl::StrAppend(&s, i ? "," : "", c.lines(i).text());
      }
      absl::StrAppend(&s, "]", c.closed() ? " closed" : "");
      return s;
    }
    default:
      return absl::StrCat("other ", m.body_case());
  }
}

std::vector<std::string> Describe(const std::vector<v1::DelegateMessage>& ms) {
  std::vector<std::string> out;
  for (const v1::DelegateMessage& m : ms) out.push_back(Describe(m));
  return out;
}

// ------------------------------------------------------------ logs

TEST_F(SessionLedgerTest, LinesGoOutInChunksWithOffsetsAndAClosedFlag) {
  RunPtr run = Dispatch("s1", 1);
  EXPECT_TRUE(Line(run, "a", "one"));
  EXPECT_TRUE(Line(run, "a", "two"));
  EXPECT_TRUE(Line(run, "a", "oops", LogStream::kStderr));
  EXPECT_TRUE(ledger_.CloseLog(run, "a"));
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  EXPECT_THAT(Describe(out),
              ElementsAre("log s1/a@0 LOG_STREAM_STDOUT [one,two]",
                          "log s1/a@2 LOG_STREAM_STDERR [oops] closed"));
  EXPECT_EQ(out[0].log().lease_id(), "lease-s1-1");
  EXPECT_EQ(out[0].log().fencing_token(), 1u);
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());  // each once per stream

  // The stage's own lines (no step), and a close after everything went out:
  // an empty closed chunk at the end.
  EXPECT_TRUE(Line(run, "", "cleanup"));
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/@0 LOG_STREAM_STDOUT [cleanup]"));
  EXPECT_TRUE(ledger_.CloseLog(run, ""));
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/@1 LOG_STREAM_SYSTEM [] closed"));
  // A step that wrote nothing has no log to close.
  EXPECT_FALSE(ledger_.CloseLog(run, "silent"));
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());
}

TEST_F(SessionLedgerTest, AChunkHoldsAtMostMaxChunkLines) {
  RunPtr run = Dispatch("s1", 1);
  const size_t n = SessionLedger::kMaxChunkLines + 1;
  for (size_t i = 0; i < n; ++i) Line(run, "a", absl::StrCat(i));
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].log().chunk().offset(), 0u);
  EXPECT_EQ(static_cast<size_t>(out[0].log().chunk().lines_size()),
            SessionLedger::kMaxChunkLines);
  EXPECT_EQ(out[1].log().chunk().offset(), SessionLedger::kMaxChunkLines);
  EXPECT_EQ(out[1].log().chunk().lines(0).text(), absl::StrCat(n - 1));
}

TEST_F(SessionLedgerTest, ALogAckBelowWhatWentOutResendsFromThere) {
  RunPtr run = Dispatch("s1", 1);
  for (const char* text : {"l0", "l1", "l2"}) Line(run, "a", text);
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@0 LOG_STREAM_STDOUT [l0,l1,l2]"));
  // The manager keeps all three: nothing more is due.
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 1, "a", 3)));
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());

  for (const char* text : {"l3", "l4", "l5"}) Line(run, "a", text);
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@3 LOG_STREAM_STDOUT [l3,l4,l5]"));
  // It kept one of them (it refused a gap): the rest again, from its offset.
  EXPECT_TRUE(ledger_.LogAck(LogAckOf("s1", 1, "a", 4)));
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@4 LOG_STREAM_STDOUT [l4,l5]"));
  // An ack below what the manager had kept (it lost lines, or found its
  // copy damaged): the spool still holds them, and they go again.
  EXPECT_TRUE(ledger_.LogAck(LogAckOf("s1", 1, "a", 2)));
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@2 LOG_STREAM_STDOUT [l2,l3,l4,l5]"));
  // Acks for another dispatch of the stage, or a step without a log: ignored.
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 2, "a", 4)));
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 1, "b", 0)));
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("other", 1, "a", 0)));

  // A new stream resends from the manager's last word on the log (2), as
  // its HelloAck names none.
  v1::HelloAck hello;
  v1::LeaseRenewed& resumed = *hello.add_resumed();
  resumed.set_stage_id("s1");
  resumed.set_fencing_token(1);
  EXPECT_THAT(ledger_.Resume(hello, kT0).cancels, IsEmpty());
  EXPECT_THAT(
      Describe(Collect(kT0)),
      ElementsAre("log s1/a@2 LOG_STREAM_STDOUT [l2,l3,l4,l5]", "credit 3"));
}

// Step "a" of stage s1: a closed log of three chunks, sent.
constexpr uint64_t kThreeChunks = 2 * SessionLedger::kMaxChunkLines + 1;
void SessionLedgerTest::SendThreeChunks(const RunPtr& run) {
  for (uint64_t i = 0; i < kThreeChunks; ++i) Line(run, "a", absl::StrCat(i));
  ledger_.CloseLog(run, "a");
  ASSERT_EQ(Collect(kT0).size(), 3u);
}

// The manager's answer to each of the three chunks, in order, each behind
// what went out after it; the last confirms the log.
void SessionLedgerTest::KeepThreeChunks() {
  EXPECT_FALSE(
      ledger_.LogAck(LogAckOf("s1", 1, "a", SessionLedger::kMaxChunkLines)));
  EXPECT_FALSE(ledger_.LogAck(
      LogAckOf("s1", 1, "a", 2 * SessionLedger::kMaxChunkLines)));
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());
  v1::LogAck last = LogAckOf("s1", 1, "a", kThreeChunks);
  last.set_closed(true);
  EXPECT_FALSE(ledger_.LogAck(last));
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());
  EXPECT_EQ(spool_->used_bytes(), 0u);  // confirmed: out of the spool
}

TEST_F(SessionLedgerTest, AcksTrailingChunksStillOnTheirWayResendNothing) {
  RunPtr run = Dispatch("s1", 1);
  SendThreeChunks(run);
  KeepThreeChunks();
}

TEST_F(SessionLedgerTest, AcksForTheChunksAResendAbandonedAskForNothing) {
  RunPtr run = Dispatch("s1", 1);
  SendThreeChunks(run);
  // The manager kept nothing of the first chunk (a gap): all again.
  EXPECT_TRUE(ledger_.LogAck(LogAckOf("s1", 1, "a", 0)));
  ASSERT_EQ(Collect(kT0).size(), 3u);
  // Its answers to the two chunks that were abandoned: nothing more.
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 1, "a", 0)));
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 1, "a", 0)));
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());
  // Then the resent ones, kept.
  KeepThreeChunks();
}

TEST_F(SessionLedgerTest, ALongLogGoesOutAsTheManagerTakesIt) {
  RunPtr run = Dispatch("s1", 1);
  const uint64_t chunks = SessionLedger::kMaxChunksInFlight + 2;
  for (uint64_t i = 0; i < chunks * SessionLedger::kMaxChunkLines; ++i) {
    Line(run, "a", absl::StrCat(i));
  }
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  ASSERT_EQ(out.size(), SessionLedger::kMaxChunksInFlight);
  // Each ack makes room for one more.
  for (uint64_t k = 1; k <= 2; ++k) {
    EXPECT_TRUE(ledger_.LogAck(
        LogAckOf("s1", 1, "a", k * SessionLedger::kMaxChunkLines)));
    out = Collect(kT0);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].log().chunk().offset(),
              (SessionLedger::kMaxChunksInFlight + k - 1) *
                  SessionLedger::kMaxChunkLines);
  }
  // A chunk stops taking lines at kMaxChunkBytes of text.
  RunPtr wide = Dispatch("s2", 1);
  const std::string line(SessionLedger::kMaxChunkBytes / 2 + 1, 'w');
  for (int i = 0; i < 3; ++i) Line(wide, "b", line);
  out = Collect(kT0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].log().chunk().lines_size(), 2);
  EXPECT_EQ(out[1].log().chunk().lines_size(), 1);
}

TEST_F(SessionLedgerTest, ALogConfirmedInTheHelloAckIsNotClosedAgain) {
  RunPtr run = Dispatch("s1", 1);
  Line(run, "a", "only");
  ledger_.CloseLog(run, "a");
  ASSERT_EQ(Collect(kT0).size(), 1u);
  v1::HelloAck hello;
  v1::LeaseRenewed& resumed = *hello.add_resumed();
  resumed.set_stage_id("s1");
  resumed.set_fencing_token(1);
  v1::LogAck whole = LogAckOf("s1", 1, "a", 1);
  whole.set_closed(true);
  *hello.add_log_acks() = whole;
  EXPECT_THAT(ledger_.Resume(hello, kT0).cancels, IsEmpty());
  EXPECT_THAT(Describe(Collect(kT0)), ElementsAre("credit 3"));
  EXPECT_EQ(spool_->used_bytes(), 0u);
}

TEST_F(SessionLedgerTest, TheClosingChunkCarriesTheWholeLogsCrcAndSize) {
  RunPtr run = Dispatch("s1", 1);
  Line(run, "a", "one");
  ASSERT_TRUE(ledger_.AppendLine(
      run, {.step_id = "a", .time = kT0, .text = "tw", .partial = true}));
  Line(run, "a", "o", LogStream::kStderr);
  ledger_.CloseLog(run, "a");
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_FALSE(out[0].log().chunk().has_crc32());  // only at the close
  const v1::LogChunk& last = out[1].log().chunk();
  ASSERT_TRUE(last.closed());
  ASSERT_TRUE(last.has_crc32());
  EXPECT_EQ(last.crc32(), Crc32("one\ntwo\n"));  // a partial line: no newline
  EXPECT_EQ(last.size_bytes(), 8u);
}

TEST_F(SessionLedgerTest, ACopyTheManagerFindsDamagedGoesAgainAndTheRunWaits) {
  RunPtr run = Dispatch("s1", 1);
  for (const char* text : {"l0", "l1", "l2"}) Line(run, "a", text);
  ledger_.CloseLog(run, "a");
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@0 LOG_STREAM_STDOUT [l0,l1,l2] closed"));
  // The manager kept the lines as they came, and the result.
  EXPECT_FALSE(ledger_.LogAck(LogAckOf("s1", 1, "a", 3)));
  ledger_.StageDone(run, Success(), kT0);
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("stage s1/1/stage", "credit 1"));
  EXPECT_THAT(ledger_.Ack(AckOf("s1/1/stage")).cancels, IsEmpty());
  // Its check at the close failed: it wants it all again. The run is still
  // held, the log still spooled.
  EXPECT_FALSE(ledger_.empty());
  EXPECT_GT(spool_->used_bytes(), 0u);
  EXPECT_TRUE(ledger_.LogAck(LogAckOf("s1", 1, "a", 0)));
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("log s1/a@0 LOG_STREAM_STDOUT [l0,l1,l2] closed"));
  // Whole this time: the run goes, and the spool gives the room back.
  v1::LogAck whole = LogAckOf("s1", 1, "a", 3);
  whole.set_closed(true);
  EXPECT_FALSE(ledger_.LogAck(whole));
  EXPECT_TRUE(ledger_.empty());
  EXPECT_EQ(spool_->used_bytes(), 0u);
}

class SessionLedgerSmallSpoolTest : public SessionLedgerTest {
 protected:
  // Two lines of 10 bytes (14-byte record headers).
  SessionLedgerSmallSpoolTest() : SessionLedgerTest(4, 2 * (14 + 10)) {}
};

TEST_F(SessionLedgerSmallSpoolTest, AFullSpoolDropsLinesAndTheLogSaysHowMany) {
  RunPtr run = Dispatch("s1", 1);
  EXPECT_TRUE(Line(run, "a", "0123456789"));
  EXPECT_TRUE(Line(run, "a", "0123456789"));
  EXPECT_FALSE(Line(run, "a", "dropped"));
  EXPECT_FALSE(Line(run, "a", "dropped too"));
  ASSERT_THAT(log_lines_, ::testing::Not(IsEmpty()));
  EXPECT_THAT(log_lines_.back(), HasSubstr("the log spool is full"));
  ledger_.CloseLog(run, "a");
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  ASSERT_EQ(out.size(), 2u);
  const v1::LogChunk& last = out[1].log().chunk();
  ASSERT_EQ(last.lines_size(), 1);
  const std::string notice = last.lines(0).text();
  EXPECT_EQ(notice,
            "[delegate] 2 lines (20 bytes) of this log were dropped: the log "
            "spool (48 bytes, DELEGATE_LOG_SPOOL_MIB) was full");
  EXPECT_EQ(last.stream(), v1::LOG_STREAM_SYSTEM);
  EXPECT_TRUE(last.closed());
  EXPECT_EQ(last.crc32(),
            Crc32(absl::StrCat("0123456789\n0123456789\n", notice, "\n")));
}

TEST_F(SessionLedgerTest, ARunAnEarlierProcessHeldIsReportedFailedOnce) {
  ledger_.Adopt({"s1", "lease-s1-3", 3, 30000, "build", std::nullopt}, kT0);
  ledger_.Adopt({"s2", "lease-s2-1", 1, 30000, "", std::nullopt}, kT0);
  v1::Hello hello;
  ledger_.HeldLeases(&hello);
  ASSERT_EQ(hello.held_leases_size(), 2);
  EXPECT_FALSE(hello.held_leases(0).running());
  EXPECT_THAT(log_lines_, Contains(HasSubstr("reporting a stage")));
  // The manager resumes s1's lease; s2's it gave to another delegate.
  std::vector<v1::DelegateMessage> out = ResumeOnly("s1", 3);
  EXPECT_THAT(Describe(out), ElementsAre("stage s1/3/stage", "credit 4"));
  const v1::StageResult& result = out[0].stage_result().result();
  EXPECT_EQ(result.status(), v1::STEP_STATUS_FAILURE);
  EXPECT_THAT(result.error(), HasSubstr("the delegate restarted during step "
                                        "build"));
  EXPECT_EQ(out[0].stage_result().header().lease_id(), "lease-s1-3");
  EXPECT_THAT(ledger_.Ack(AckOf("s1/3/stage")).cancels, IsEmpty());
  EXPECT_TRUE(ledger_.empty());
}

TEST_F(SessionLedgerTest, AResultTheManagerHadNotTakenGoesAsItWas) {
  // The first process: the stage finished, its result recorded.
  v1::StageResultReport report;
  report.mutable_header()->set_stage_id("s1");
  report.mutable_header()->set_idempotency_key("s1/2/stage");
  report.mutable_result()->set_status(v1::STEP_STATUS_SUCCESS);
  ledger_.Adopt(
      {"s1", "lease-s1-2", 2, 30000, "build", report.SerializeAsString()}, kT0);
  std::vector<v1::DelegateMessage> out = ResumeOnly("s1", 2);
  EXPECT_THAT(Describe(out), ElementsAre("stage s1/2/stage", "credit 4"));
  EXPECT_EQ(out[0].stage_result().result().status(), v1::STEP_STATUS_SUCCESS);
  EXPECT_THAT(log_lines_, Not(Contains(HasSubstr("reporting a stage"))));
}

// ------------------------------------------------------------ reconnect

TEST_F(SessionLedgerTest, AfterAReconnectEverythingUnacknowledgedIsResent) {
  RunPtr run = Dispatch("s1", 1, absl::Seconds(30));
  ledger_.StepStarted(run, "a", kT0);
  for (const char* text : {"l0", "l1", "l2", "l3"}) Line(run, "a", text);
  ledger_.CloseLog(run, "a");
  const absl::Time t1 = kT0 + SessionLedger::kProgressDelay;
  EXPECT_THAT(Describe(Collect(t1)),
              ElementsAre("log s1/a@0 LOG_STREAM_STDOUT [l0,l1,l2,l3] closed",
                          "started s1/1/started/a"));
  StepResult step;
  step.id = "a";
  ledger_.StepDone(run, ToProto(step), t1);
  EXPECT_THAT(Describe(Collect(t1 + SessionLedger::kProgressDelay)),
              ElementsAre("step s1/1/step/a"));
  // Only the started report was acknowledged when the stream broke.
  EXPECT_THAT(ledger_.Ack(AckOf("s1/1/started/a")).cancels, IsEmpty());

  v1::Hello hello;
  ledger_.HeldLeases(&hello);
  ASSERT_EQ(hello.held_leases_size(), 1);
  EXPECT_EQ(hello.held_leases(0).stage_id(), "s1");
  EXPECT_EQ(hello.held_leases(0).lease_id(), "lease-s1-1");
  EXPECT_EQ(hello.held_leases(0).fencing_token(), 1u);
  EXPECT_TRUE(hello.held_leases(0).running());

  // The manager resumes the lease and keeps two lines of the log.
  v1::HelloAck ack;
  v1::LeaseRenewed& resumed = *ack.add_resumed();
  resumed.set_stage_id("s1");
  resumed.set_lease_id("lease-s1-1");
  resumed.set_fencing_token(1);
  *resumed.mutable_lease_duration() = DurationToProto(absl::Seconds(6));
  *ack.add_log_acks() = LogAckOf("s1", 1, "a", 2);
  const absl::Time t2 = t1 + absl::Seconds(1);
  SessionLedger::Stops stops = ledger_.Resume(ack, t2);
  EXPECT_THAT(stops.cancels, IsEmpty());
  EXPECT_EQ(stops.leases_lost, 0);
  EXPECT_THAT(Describe(Collect(t2)),
              ElementsAre("log s1/a@2 LOG_STREAM_STDOUT [l2,l3] closed",
                          "step s1/1/step/a", "credit 3"));
  // The resumed lease runs from then, renewed at a third of its new length.
  std::vector<v1::DelegateMessage> renewals;
  ledger_.Renewals(t2 + absl::Seconds(1), &renewals);
  EXPECT_THAT(Describe(renewals), IsEmpty());
  ledger_.Renewals(t2 + absl::Seconds(2), &renewals);
  EXPECT_THAT(Describe(renewals), ElementsAre("renew s1#1"));
}

TEST_F(SessionLedgerTest, ANewStreamLosesTheLeasesItDoesNotResume) {
  RunPtr kept = Dispatch("kept", 1);
  RunPtr lost = Dispatch("lost", 1);
  RunPtr unanswered = Dispatch("unanswered", 1);
  EXPECT_TRUE(ledger_.StageDone(unanswered, Success(), kT0));
  v1::HelloAck ack;
  v1::LeaseRenewed& resumed = *ack.add_resumed();
  resumed.set_stage_id("kept");
  resumed.set_fencing_token(1);
  v1::LeaseLost& gone = *ack.add_lost();
  gone.set_stage_id("lost");
  gone.set_fencing_token(1);
  gone.set_message("re-dispatched");
  SessionLedger::Stops stops = ledger_.Resume(ack, kT0);
  // The running stage is cancelled; the finished one is forgotten.
  EXPECT_THAT(stops.cancels, ElementsAre("lost#1"));
  EXPECT_EQ(stops.leases_lost, 2);
  EXPECT_THAT(log_lines_, ElementsAre(HasSubstr("re-dispatched"),
                                      HasSubstr("did not resume its lease")));
  // Two stages run: two of four slots are free.
  EXPECT_THAT(Describe(Collect(kT0)), ElementsAre("credit 2"));
  v1::Hello hello;
  ledger_.HeldLeases(&hello);
  ASSERT_EQ(hello.held_leases_size(), 1);
  EXPECT_EQ(hello.held_leases(0).stage_id(), "kept");
  EXPECT_EQ(SessionLedger::TaskId(*kept), "kept#1");
  EXPECT_EQ(ledger_.Find("unanswered#1"), nullptr);
  EXPECT_EQ(ledger_.Find("kept#1"), kept);
}

// ------------------------------------------------------------ reports

TEST_F(SessionLedgerTest, StepReportsAreLeftOutWhenTheStageResultIsReadyFirst) {
  RunPtr run = Dispatch("s1", 1);
  ledger_.StepStarted(run, "a", kT0);
  StepResult step;
  step.id = "a";
  ledger_.StepDone(run, ToProto(step), kT0 + absl::Milliseconds(2));
  EXPECT_EQ(ledger_.NextDue(), kT0 + SessionLedger::kProgressDelay);
  EXPECT_THAT(Describe(Collect(kT0 + absl::Milliseconds(5))), IsEmpty());

  StageResult result = Success();
  result.steps.push_back(step);
  EXPECT_TRUE(ledger_.StageDone(run, result, kT0 + absl::Milliseconds(5)));
  std::vector<v1::DelegateMessage> out = Collect(kT0 + absl::Milliseconds(5));
  EXPECT_THAT(Describe(out), ElementsAre("stage s1/1/stage", "credit 1"));
  const v1::StageResultReport& report = out[0].stage_result();
  EXPECT_EQ(report.header().stage_id(), "s1");
  EXPECT_EQ(report.header().lease_id(), "lease-s1-1");
  EXPECT_EQ(report.header().fencing_token(), 1u);
  EXPECT_EQ(report.result().task_id(), "s1");
  EXPECT_EQ(report.result().steps_size(), 1);
  // When the step reports fall due, they are gone.
  EXPECT_THAT(Describe(Collect(kT0 + absl::Milliseconds(20))), IsEmpty());

  // Once the manager accepts the result, the stage is forgotten.
  EXPECT_FALSE(ledger_.empty());
  EXPECT_THAT(ledger_.Ack(AckOf("s1/1/stage")).cancels, IsEmpty());
  EXPECT_TRUE(ledger_.empty());
  EXPECT_THAT(ledger_.Ack(AckOf("s1/1/stage")).cancels, IsEmpty());  // repeat
}

TEST_F(SessionLedgerTest, StepReportsGoOutAfterTheProgressDelay) {
  RunPtr run = Dispatch("s1", 1);
  EXPECT_EQ(ledger_.NextDue(), absl::InfiniteFuture());
  ledger_.StepStarted(run, "a", kT0);
  const absl::Time due = kT0 + SessionLedger::kProgressDelay;
  EXPECT_EQ(ledger_.NextDue(), due);
  EXPECT_THAT(Describe(Collect(due - absl::Milliseconds(1))), IsEmpty());
  std::vector<v1::DelegateMessage> out = Collect(due);
  EXPECT_THAT(Describe(out), ElementsAre("started s1/1/started/a"));
  EXPECT_EQ(out[0].step_started().step_id(), "a");
  EXPECT_EQ(out[0].step_started().time().seconds(), absl::ToUnixSeconds(kT0));
  EXPECT_EQ(ledger_.NextDue(), absl::InfiniteFuture());
  // Sent once per stream, until acknowledged.
  EXPECT_THAT(Describe(Collect(due + absl::Seconds(1))), IsEmpty());
}

TEST_F(SessionLedgerTest, ACancelledStageReportsTheManagersReason) {
  RunPtr run = Dispatch("s1", 1);
  v1::Cancel cancel;
  cancel.set_stage_id("s1");
  cancel.set_lease_id("another lease");
  EXPECT_THAT(ledger_.Cancel(cancel).cancels, IsEmpty());
  cancel.set_lease_id("lease-s1-1");
  cancel.set_reason("user asked");
  EXPECT_THAT(ledger_.Cancel(cancel).cancels, ElementsAre("s1#1"));
  StageResult result = Success();
  result.status = StepStatus::kCancelled;
  ledger_.StageDone(run, result, kT0);
  std::vector<v1::DelegateMessage> out = Collect(kT0);
  ASSERT_THAT(Describe(out), ElementsAre("stage s1/1/stage", "credit 1"));
  EXPECT_EQ(out[0].stage_result().result().error(), "user asked");
  // A stage that no longer runs is not cancelled.
  EXPECT_THAT(ledger_.Cancel(cancel).cancels, IsEmpty());
}

// ------------------------------------------------------------ leases

TEST_F(SessionLedgerTest, ALapsedLeaseIsLostAndItsRunningStageCancelled) {
  RunPtr run = Dispatch("s1", 1, absl::Seconds(3));
  std::vector<v1::DelegateMessage> renewals;
  ledger_.Renewals(kT0 + absl::Milliseconds(999), &renewals);
  EXPECT_THAT(Describe(renewals), IsEmpty());
  ledger_.Renewals(kT0 + absl::Seconds(1), &renewals);
  EXPECT_THAT(Describe(renewals), ElementsAre("renew s1#1"));
  EXPECT_EQ(renewals[0].lease_renew().lease_id(), "lease-s1-1");
  // The manager renews it at 2 s: it now ends at 5 s.
  v1::LeaseRenewed renewed;
  renewed.set_stage_id("s1");
  renewed.set_lease_id("lease-s1-1");
  renewed.set_fencing_token(1);
  *renewed.mutable_lease_duration() = DurationToProto(absl::Seconds(3));
  ledger_.Renewed(renewed, kT0 + absl::Seconds(2));
  SessionLedger::Stops stops =
      ledger_.ExpireLeases(kT0 + absl::Seconds(5) - absl::Milliseconds(1));
  EXPECT_THAT(stops.cancels, IsEmpty());
  Line(run, "a", "before");

  stops = ledger_.ExpireLeases(kT0 + absl::Seconds(5));
  EXPECT_THAT(stops.cancels, ElementsAre("s1#1"));
  EXPECT_EQ(stops.leases_lost, 1);
  EXPECT_THAT(log_lines_, ElementsAre(HasSubstr("lease lost")));
  // Nothing more of it goes out: not the lines it held, not what it writes
  // or reports now, not a renewal; a new stream does not hold its lease.
  EXPECT_FALSE(Line(run, "a", "after"));
  ledger_.StepStarted(run, "a", kT0 + absl::Seconds(5));
  renewals.clear();
  ledger_.Renewals(kT0 + absl::Seconds(5), &renewals);
  EXPECT_THAT(Describe(renewals), IsEmpty());
  EXPECT_THAT(Describe(Collect(kT0 + absl::Seconds(6))), IsEmpty());
  v1::Hello hello;
  ledger_.HeldLeases(&hello);
  EXPECT_EQ(hello.held_leases_size(), 0);
  // Once the cancelled stage stops, its slot is free and it is forgotten.
  EXPECT_FALSE(ledger_.empty());
  EXPECT_TRUE(ledger_.StageDone(run, Success(), kT0 + absl::Seconds(6)));
  EXPECT_THAT(Describe(Collect(kT0 + absl::Seconds(6))),
              ElementsAre("credit 1"));
  EXPECT_TRUE(ledger_.empty());
  EXPECT_THAT(ledger_.ExpireLeases(kT0 + absl::Seconds(60)).cancels, IsEmpty());
}

TEST_F(SessionLedgerTest, AReportRefusedForAStaleFencingTokenLosesTheLease) {
  RunPtr run = Dispatch("s1", 1);
  ledger_.StepStarted(run, "a", kT0);
  EXPECT_THAT(Describe(Collect(kT0 + SessionLedger::kProgressDelay)),
              ElementsAre("started s1/1/started/a"));
  Line(run, "a", "line");
  SessionLedger::Stops stops = ledger_.Ack(
      AckOf("s1/1/started/a", false, v1::Ack::REFUSAL_STALE_FENCING_TOKEN));
  EXPECT_THAT(stops.cancels, ElementsAre("s1#1"));
  EXPECT_EQ(stops.leases_lost, 1);
  EXPECT_THAT(log_lines_, ElementsAre(HasSubstr("refused a report"),
                                      HasSubstr("lease lost")));
  EXPECT_THAT(Describe(Collect(kT0 + absl::Seconds(1))), IsEmpty());

  // A refusal for another reason is final for the report alone.
  RunPtr other = Dispatch("s2", 1);
  ledger_.StageDone(other, Success(), kT0);
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("stage s2/1/stage", "credit 1"));
  stops = ledger_.Ack(AckOf("s2/1/stage", false, v1::Ack::REFUSAL_INVALID));
  EXPECT_THAT(stops.cancels, IsEmpty());
  EXPECT_EQ(stops.leases_lost, 0);
  EXPECT_EQ(ledger_.Find("s2#1"), nullptr);
}

TEST_F(SessionLedgerTest, ADispatchUnderAGreaterTokenLosesThePreviousOne) {
  RunPtr first = Dispatch("s1", 1);
  SessionLedger::Stops stops;
  RunPtr second = ledger_.Dispatch(DispatchOf("s1", 2), kT0, &stops);
  ASSERT_NE(second, nullptr);
  EXPECT_THAT(stops.cancels, ElementsAre("s1#1"));
  EXPECT_EQ(stops.leases_lost, 1);
  // The manager's messages name the current dispatch.
  v1::LeaseLost lost;
  lost.set_stage_id("s1");
  lost.set_fencing_token(1);
  EXPECT_THAT(ledger_.LeaseLost(lost).cancels, IsEmpty());
  lost.set_fencing_token(2);
  EXPECT_THAT(ledger_.LeaseLost(lost).cancels, ElementsAre("s1#2"));
}

// Found by tests/fuzz/grpc_session_fuzz.cc: retiring the old run erased the
// map entry that Dispatch had passed to Lose by reference, and Lose went on
// reading it (a use after free under ASan).
TEST_F(SessionLedgerTest, ADispatchAgainAfterTheStageStoppedRetiresTheOldRun) {
  RunPtr first = Dispatch("s1", 1);
  // The stage stopped; its result waits for the manager's acknowledgement.
  ledger_.StageDone(first, Success(), kT0);
  first.reset();  // only the ledger holds the run now
  SessionLedger::Stops stops;
  RunPtr second = ledger_.Dispatch(DispatchOf("s1", 2), kT0, &stops);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(stops.leases_lost, 1);
  EXPECT_THAT(stops.cancels, IsEmpty());  // nothing runs to cancel
  EXPECT_EQ(ledger_.Find("s1#1"), nullptr);
  EXPECT_EQ(ledger_.Find("s1#2"), second);
  EXPECT_THAT(ledger_.RunningTaskIds(), ElementsAre("s1#2"));
}

TEST_F(SessionLedgerTest, ForcedToStopItGivesUpOnUnacknowledgedResults) {
  RunPtr running = Dispatch("running", 1);
  RunPtr finished = Dispatch("finished", 1);
  ledger_.StageDone(finished, Success(), kT0);
  SessionLedger::Stops stops = ledger_.GiveUpWaiting();
  EXPECT_THAT(stops.cancels, IsEmpty());
  EXPECT_EQ(stops.leases_lost, 1);
  EXPECT_EQ(ledger_.Find("finished#1"), nullptr);
  EXPECT_THAT(ledger_.RunningTaskIds(), ElementsAre("running#1"));
}

// ------------------------------------------------------------ credit

class SessionLedgerCreditTest : public SessionLedgerTest {
 protected:
  SessionLedgerCreditTest() : SessionLedgerTest(/*capacity=*/2) {}
  SessionLedger::Stops ResumeAll(absl::Time now) {
    v1::HelloAck ack;
    for (const std::string& id : {"s1", "s2"}) {
      v1::LeaseRenewed& r = *ack.add_resumed();
      r.set_stage_id(id);
      r.set_fencing_token(1);
    }
    return ledger_.Resume(ack, now);
  }
};

TEST_F(SessionLedgerCreditTest, CreditCountsTheRunningStages) {
  ResumeAll(kT0);
  EXPECT_THAT(Describe(Collect(kT0)), ElementsAre("credit 2"));
  RunPtr s1 = Dispatch("s1", 1);
  RunPtr s2 = Dispatch("s2", 1);
  // A repeated dispatch runs nothing: its slot is granted again.
  SessionLedger::Stops stops;
  EXPECT_EQ(ledger_.Dispatch(DispatchOf("s2", 1), kT0, &stops), nullptr);
  EXPECT_THAT(Describe(Collect(kT0)), ElementsAre("credit 1"));
  // Both slots are busy on a new stream.
  EXPECT_THAT(ResumeAll(kT0).cancels, IsEmpty());
  EXPECT_THAT(Describe(Collect(kT0)), IsEmpty());
  // A slot is free when its stage stops, before the manager's Ack.
  ledger_.StageDone(s1, Success(), kT0);
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("stage s1/1/stage", "credit 1"));
  // The finished stage is held, but takes no slot.
  EXPECT_THAT(ResumeAll(kT0).cancels, IsEmpty());
  EXPECT_THAT(Describe(Collect(kT0)),
              ElementsAre("stage s1/1/stage", "credit 1"));
  // Draining: no more grants.
  ledger_.StopGranting();
  EXPECT_TRUE(ledger_.StageDone(s2, Success(), kT0));  // the result is due
  EXPECT_THAT(Describe(Collect(kT0)), ElementsAre("stage s2/1/stage"));
  ResumeAll(kT0);
  EXPECT_THAT(Describe(Collect(kT0)),
              UnorderedElementsAre("stage s1/1/stage", "stage s2/1/stage"));
}

}  // namespace
}  // namespace delegate::grpcv1
