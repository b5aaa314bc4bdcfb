// DelegateSession end to end: the real `delegate` binary (`delegate server
// --manager grpc://...`) against the in-process reference SessionManager over
// real gRPC on loopback: dispatch by credit and tags, logs with offsets,
// leases that lapse and move a stage elsewhere, fencing of a delegate that
// comes back late, reconnects that resume, cancel, and a version mismatch.
#include <signal.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "delegate/v1/runtime.grpc.pb.h"
#include "delegate/v1/session.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "manager/grpc/convert.h"
#include "session_manager.h"
#include "tests/fakes/delegate_process.h"
#include "tests/fakes/tcp_proxy.h"
#include "tests/fakes/test_ca.h"

namespace delegate {
namespace {

using ::delegate::reference::SessionManager;
using ::delegate::reference::SessionManagerOptions;
using ::delegate::reference::StageSnapshot;
using ::delegate::testing::DelegateProcess;
using ::delegate::testing::TcpProxy;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

Stage HostStage(const std::string& name, std::vector<std::string> commands,
                std::vector<std::string> tags = {}) {
  Stage stage;
  stage.name = name;
  stage.platform = "host";
  stage.tags = std::move(tags);
  Step step;
  step.id = "run";
  step.commands = std::move(commands);
  stage.steps.push_back(std::move(step));
  return stage;
}

// The kept lines of one step of a stage.
std::vector<std::string> StepLog(const StageSnapshot& s,
                                 const std::string& step) {
  for (const auto& [id, lines] : s.logs) {
    if (id == step) return lines;
  }
  return {};
}

class GrpcSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat(
               "grpc-session-", getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    delegates_.clear();
    if (manager_) manager_->Stop();
    if (!getenv("KEEP_TEST_DIR")) std::filesystem::remove_all(dir_);
  }

  void StartManager(SessionManagerOptions options = {}) {
    options.log = &manager_log_;
    auto m = SessionManager::Start(std::move(options));
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }

  DelegateProcess& StartDelegate(const std::string& name,
                                 std::vector<std::string> extra_env = {},
                                 std::string address = "",
                                 const std::string& scheme = "grpc://") {
    std::vector<std::string> env = {
        "HARNESS_NAME=" + name,
        "HARNESS_WORKDIR=" + (dir_ / name).string(),
        "HTTPS_BIND=127.0.0.1:0",
        "MAX_STAGES=4",
        "CLEANUP_GRACE_PERIOD_SECONDS=1",
    };
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    if (address.empty()) address = manager_->address();
    delegates_.push_back(std::make_unique<DelegateProcess>(
        std::vector<std::string>{"server", "--manager", scheme + address}, env,
        (dir_ / (name + ".log")).string()));
    return *delegates_.back();
  }

  // Waits until `n` delegates have a session.
  bool WaitDelegates(size_t n, absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (manager_->Delegates().size() >= n) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::string Logs() const {
    std::string out;
    for (const auto& d : delegates_) out += d->Output();
    std::lock_guard lock(log_mu_);  // the manager logs from its threads
    return out + manager_log_text_;
  }

  // Waits until the stage has been dispatched.
  bool WaitLeased(const std::string& id) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      absl::StatusOr<StageSnapshot> s = manager_->Snapshot(id);
      if (s.ok() && s->state == StageSnapshot::State::kLeased) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  StageSnapshot Snap(const std::string& id) {
    absl::StatusOr<StageSnapshot> s = manager_->Snapshot(id);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : StageSnapshot{};
  }

  std::filesystem::path dir_;
  std::string manager_log_text_;
  mutable std::mutex log_mu_;
  EventLog manager_log_{[this](std::string_view line) {
    std::lock_guard lock(log_mu_);
    manager_log_text_.append(line).append("\n");
  }};
  std::unique_ptr<SessionManager> manager_;
  std::vector<std::unique_ptr<DelegateProcess>> delegates_;
};

TEST_F(GrpcSessionTest, StageRunsOnAPushedDispatchWithLogsAndResult) {
  StartManager();
  StartDelegate("solo");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("s-1",
                           HostStage("greet", {"echo hello over grpc",
                                               "echo second line"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(30))) << Logs();
  StageSnapshot s = Snap("s-1");
  ASSERT_TRUE(s.result.has_value());
  EXPECT_EQ(s.result->status, StepStatus::kSuccess) << s.result->error;
  EXPECT_EQ(s.result->task_id, "s-1");
  ASSERT_EQ(s.result->steps.size(), 1u);
  EXPECT_EQ(s.result->steps[0].exit_code, 0);
  EXPECT_EQ(s.attempts, 1u);
  EXPECT_EQ(s.results_applied, 1u);
  EXPECT_THAT(s.delegates, ElementsAre("solo"));
  const std::vector<std::string> log = StepLog(s, "run");
  EXPECT_THAT(log, Contains("hello over grpc"));
  EXPECT_THAT(log, Contains("second line"));

  // The delegate said who it is.
  std::vector<reference::DelegateSnapshot> d = manager_->Delegates();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_THAT(d[0].executors, Contains("host"));
  // Its credit came back once the result was accepted: MAX_STAGES=4.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (manager_->Delegates()[0].credit != 4 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(manager_->Delegates()[0].credit, 4u);
}

TEST_F(GrpcSessionTest, NoMoreStagesThanTheCreditGranted) {
  StartManager();
  StartDelegate("narrow", {"MAX_STAGES=2"});
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(manager_
                    ->Submit(absl::StrCat("c-", i),
                             HostStage("slow", {"sleep 0.3"}),
                             Priority::kNormal, nullptr)
                    .ok());
  }
  // While they run, at most two are out at once.
  size_t most = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!manager_->WaitAllDone(absl::Milliseconds(10)) &&
         absl::Now() < deadline) {
    most = std::max<size_t>(most, manager_->Capacity().running);
  }
  ASSERT_TRUE(manager_->WaitAllDone(absl::ZeroDuration())) << Logs();
  EXPECT_EQ(most, 2u);
  for (const StageSnapshot& s : manager_->Stages()) {
    EXPECT_EQ(s.result->status, StepStatus::kSuccess) << s.id;
  }
}

TEST_F(GrpcSessionTest, StagesGoOnlyToDelegatesWithTheirTags) {
  StartManager();
  StartDelegate("plain", {"HARNESS_TAGS=linux"});
  StartDelegate("gpu-box", {"HARNESS_TAGS=linux,gpu"});
  ASSERT_TRUE(WaitDelegates(2)) << Logs();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(manager_
                    ->Submit(absl::StrCat("g-", i),
                             HostStage("train", {"true"}, {"gpu"}),
                             Priority::kNormal, nullptr)
                    .ok());
  }
  ASSERT_TRUE(manager_
                  ->Submit("needs-arm", HostStage("x", {"true"}, {"arm"}),
                           Priority::kNormal, nullptr)
                  .ok());
  absl::SleepFor(absl::Seconds(1));
  for (int i = 0; i < 6; ++i) {
    StageSnapshot s = Snap(absl::StrCat("g-", i));
    ASSERT_EQ(s.state, StageSnapshot::State::kDone) << Logs();
    EXPECT_THAT(s.delegates, ElementsAre("gpu-box"));
  }
  // Nobody has "arm": it waits.
  EXPECT_EQ(Snap("needs-arm").state, StageSnapshot::State::kQueued);
  EXPECT_EQ(Snap("needs-arm").attempts, 0u);
}

TEST_F(GrpcSessionTest, CancelStopsARunningStageWithTheReason) {
  StartManager();
  StartDelegate("canceller");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("long", HostStage("long", {"sleep 30"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(WaitLeased("long")) << Logs();
  absl::SleepFor(absl::Milliseconds(300));  // the step is running
  const absl::Time asked = absl::Now();
  ASSERT_TRUE(manager_->Cancel("long", "superseded by a newer commit").ok());
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(10))) << Logs();
  EXPECT_LT(absl::Now() - asked, absl::Seconds(5));
  StageSnapshot s = Snap("long");
  EXPECT_EQ(s.result->status, StepStatus::kCancelled);
  EXPECT_EQ(s.result->error, "superseded by a newer commit");
  EXPECT_TRUE(absl::IsNotFound(manager_->Cancel("long", "")));
}

TEST_F(GrpcSessionTest, ThreeDelegatesThreeHundredStagesOneKilledHalfWay) {
  SessionManagerOptions options;
  options.lease_duration = absl::Milliseconds(1500);
  StartManager(options);
  StartDelegate("d1");
  DelegateProcess& victim = StartDelegate("d2");
  StartDelegate("d3");
  ASSERT_TRUE(WaitDelegates(3)) << Logs();
  constexpr int kStages = 300;
  for (int i = 0; i < kStages; ++i) {
    ASSERT_TRUE(manager_
                    ->Submit(absl::StrCat("st-", i),
                             HostStage("s", {absl::StrCat("echo first-", i),
                                             "sleep 0.05",
                                             absl::StrCat("echo second-", i)}),
                             Priority::kNormal, nullptr)
                    .ok());
  }
  // Half way, one delegate dies without a word.
  std::set<std::string> held_by_victim;
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline) {
    size_t done = 0;
    for (const StageSnapshot& s : manager_->Stages()) {
      done += s.state == StageSnapshot::State::kDone;
    }
    if (done >= kStages / 2) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  kill(victim.pid(), SIGKILL);
  victim.Wait();
  // What was already on the wire has arrived: the stages d2 still holds can
  // only finish by running again elsewhere.
  absl::SleepFor(absl::Milliseconds(200));
  for (const StageSnapshot& s : manager_->Stages()) {
    if (s.state == StageSnapshot::State::kLeased && s.delegate == "d2") {
      held_by_victim.insert(s.id);
    }
  }
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(120))) << Logs();

  EXPECT_FALSE(held_by_victim.empty()) << "d2 held nothing when killed";
  for (const StageSnapshot& s : manager_->Stages()) {
    SCOPED_TRACE(s.id);
    ASSERT_TRUE(s.result.has_value());
    EXPECT_EQ(s.result->status, StepStatus::kSuccess) << s.result->error;
    EXPECT_EQ(s.results_applied, 1u);  // exactly once
    const std::string n = s.id.substr(3);
    // What the manager keeps of the step's log: each line once, in order.
    const std::vector<std::string> log = StepLog(s, "run");
    EXPECT_EQ(std::count(log.begin(), log.end(), "first-" + n), 1);
    EXPECT_EQ(std::count(log.begin(), log.end(), "second-" + n), 1);
    const auto first = std::find(log.begin(), log.end(), "first-" + n);
    const auto second = std::find(log.begin(), log.end(), "second-" + n);
    EXPECT_LT(first, second);
    std::set<std::string> unique(log.begin(), log.end());
    EXPECT_EQ(unique.size(), log.size()) << absl::StrJoin(log, "|");
    if (s.attempts > 1) {  // only a lapsed lease makes a second attempt
      EXPECT_EQ(s.delegates.front(), "d2");
    }
    if (held_by_victim.contains(s.id)) {
      // Re-run elsewhere under a new fencing token.
      EXPECT_GE(s.attempts, 2u);
      EXPECT_NE(s.delegate, "d2");
      EXPECT_EQ(s.delegates.front(), "d2");
    }
  }
}

TEST_F(GrpcSessionTest, ALateDelegateIsFencedOffAndItsResultRefused) {
  SessionManagerOptions options;
  options.lease_duration = absl::Milliseconds(1000);
  StartManager(options);
  DelegateProcess& first = StartDelegate("early");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("fenced",
                           HostStage("f", {"sleep 4", "echo finished"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(WaitLeased("fenced")) << Logs();
  // A second delegate is there to take the stage over.
  StartDelegate("late-comer");
  ASSERT_TRUE(WaitDelegates(2)) << Logs();
  ASSERT_EQ(Snap("fenced").delegate, "early");
  // Frozen: no renewals. The lease lapses; the other delegate takes it.
  kill(first.pid(), SIGSTOP);
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (Snap("fenced").attempts < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(Snap("fenced").attempts, 2u) << Logs();
  kill(first.pid(), SIGCONT);  // it wakes up believing it holds the stage
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(30))) << Logs();
  absl::SleepFor(absl::Seconds(2));  // whatever "early" still sends arrives
  StageSnapshot s = Snap("fenced");
  EXPECT_EQ(s.results_applied, 1u);
  EXPECT_EQ(s.result->status, StepStatus::kSuccess);
  EXPECT_EQ(s.delegate, "late-comer");
  EXPECT_THAT(s.delegates, ElementsAre("early", "late-comer"));
  EXPECT_EQ(s.fencing_token, 2u);
  // "early" stopped the stage: by its own clock, or when the manager told it.
  EXPECT_THAT(first.Output(), HasSubstr("lease lost: stopping the stage"));
}

TEST_F(GrpcSessionTest, AReconnectResumesTheLeaseAndLosesNoLogLine) {
  StartManager();
  const std::vector<std::string> host_port =
      absl::StrSplit(manager_->address(), ':');
  TcpProxy proxy(std::stoi(host_port.back()));
  StartDelegate("flaky", {}, proxy.address());
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(
      manager_
          ->Submit("resumed",
                   HostStage("r", {"echo before", "sleep 1.5", "echo after"}),
                   Priority::kNormal, nullptr)
          .ok());
  // Until "before" itself has arrived: the command's trace line ("+ echo
  // before") can come in a batch of its own, ahead of it.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (
      !::testing::Value(StepLog(Snap("resumed"), "run"), Contains("before")) &&
      absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_THAT(StepLog(Snap("resumed"), "run"), Contains("before")) << Logs();
  proxy.Refuse(true);
  proxy.Cut();  // the network drops; the step goes on
  absl::SleepFor(absl::Milliseconds(800));
  proxy.Refuse(false);
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(30))) << Logs();
  StageSnapshot s = Snap("resumed");
  EXPECT_EQ(s.result->status, StepStatus::kSuccess);
  EXPECT_EQ(s.attempts, 1u);  // resumed, not re-run
  EXPECT_EQ(s.results_applied, 1u);
  const std::vector<std::string> log = StepLog(s, "run");
  EXPECT_EQ(std::count(log.begin(), log.end(), "before"), 1);
  EXPECT_EQ(std::count(log.begin(), log.end(), "after"), 1);
  EXPECT_THAT(delegates_[0]->Output(), HasSubstr("disconnected; reconnecting"));
}

TEST_F(GrpcSessionTest, ALogTheManagerKeptDamagedIsSentAgainAndArrivesWhole) {
  SessionManagerOptions options;
  options.damage_logs = true;  // the first copy of each log, one line off
  StartManager(options);
  StartDelegate("d", {"DELEGATE_STATE_DIR=" + (dir_ / "state").string()});
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("damaged",
                           HostStage("d", {"seq 1 3000", "echo done"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(30))) << Logs();
  // Confirmed, the logs leave the delegate's spool (the confirmation may
  // come after the result).
  const std::filesystem::path spool = dir_ / "state" / "log-spool";
  auto spooled = [&] {
    size_t n = 0;
    std::error_code ec;
    for (const auto& e :
         std::filesystem::recursive_directory_iterator(spool, ec)) {
      n += e.path().extension() == ".log";
    }
    return n;
  };
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (spooled() > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(spooled(), 0u);
  EXPECT_TRUE(std::filesystem::exists(spool));
  StageSnapshot s = Snap("damaged");
  ASSERT_TRUE(s.result.has_value());
  EXPECT_EQ(s.result->status, StepStatus::kSuccess);
  // Whole, once, and as printed: the damaged copy was replaced.
  const std::vector<std::string> log = StepLog(s, "run");
  std::vector<std::string> numbers;
  for (const std::string& line : log) {
    if (!line.empty() && line[0] != '+' && line != "done") {
      numbers.push_back(line);
    }
  }
  ASSERT_EQ(numbers.size(), 3000u) << Logs();
  for (int i = 0; i < 3000; ++i) ASSERT_EQ(numbers[i], absl::StrCat(i + 1));
  EXPECT_EQ(std::count(log.begin(), log.end(), "done"), 1);
  EXPECT_THAT(log, Not(Contains(HasSubstr("(damaged)"))));
  // Each log (the step's, the stage's own) failed the check once, then
  // passed it.
  EXPECT_GE(s.logs_resent, 1u);
  EXPECT_EQ(s.logs_checked, s.logs_resent);
  EXPECT_THAT(Logs(), HasSubstr("did not match its CRC-32"));
  EXPECT_THAT(Logs(), Not(HasSubstr("did not confirm")));
}

TEST_F(GrpcSessionTest, ARestartedDelegateReportsTheStageItWasRunningOnce) {
  StartManager();  // 30 s leases: waiting one out would fail the test
  DelegateProcess& first = StartDelegate("phoenix");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(
      manager_
          ->Submit("again",
                   HostStage("a", {"echo started", "sleep 30", "echo done"}),
                   Priority::kNormal, nullptr)
          .ok());
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (
      !::testing::Value(StepLog(Snap("again"), "run"), Contains("started")) &&
      absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_THAT(StepLog(Snap("again"), "run"), Contains("started")) << Logs();
  // The step's record reaches the session journal within 50 ms.
  absl::SleepFor(absl::Milliseconds(200));
  kill(first.pid(), SIGKILL);
  first.Wait();
  const absl::Time restarted = absl::Now();
  // Same name, same state directory: its session journal names the stage.
  StartDelegate("phoenix");
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(20))) << Logs();
  EXPECT_LT(absl::Now() - restarted, absl::Seconds(5));
  StageSnapshot s = Snap("again");
  ASSERT_TRUE(s.result.has_value());
  EXPECT_EQ(s.result->status, StepStatus::kFailure);
  EXPECT_THAT(s.result->error,
              HasSubstr("the delegate restarted during step run"));
  EXPECT_EQ(s.attempts, 1u);  // reported, not run again
  EXPECT_EQ(s.results_applied, 1u);
  EXPECT_THAT(StepLog(s, "run"), Not(Contains("done")));
  EXPECT_THAT(Logs(), HasSubstr("reporting a stage the delegate was running"));

  // Settled, it left the journal: a third start has nothing to report.
  absl::SleepFor(absl::Milliseconds(200));  // the retirement's record
  kill(delegates_.back()->pid(), SIGKILL);
  delegates_.back()->Wait();
  DelegateProcess& third = StartDelegate("phoenix");
  const absl::Time connect_until = absl::Now() + absl::Seconds(10);
  while (!absl::StrContains(third.Output(), "\"msg\":\"connected\"") &&
         absl::Now() < connect_until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_THAT(third.Output(), HasSubstr("\"msg\":\"connected\""));
  EXPECT_THAT(third.Output(), Not(HasSubstr("reporting a stage")));
  EXPECT_EQ(Snap("again").results_applied, 1u);
}

TEST_F(GrpcSessionTest, ARestartWithoutItsJournalGetsTheLostStageBackAtOnce) {
  StartManager();
  DelegateProcess& first = StartDelegate("phoenix");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("again", HostStage("a", {"sleep 1", "echo done"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(WaitLeased("again")) << Logs();
  kill(first.pid(), SIGKILL);
  first.Wait();
  const absl::Time restarted = absl::Now();
  // Same name, a state directory of its own: it holds nothing, and the
  // manager dispatches the stage again at once.
  StartDelegate("phoenix",
                {"DELEGATE_STATE_DIR=" + (dir_ / "fresh-state").string()});
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(20))) << Logs();
  EXPECT_LT(absl::Now() - restarted, absl::Seconds(15));
  StageSnapshot s = Snap("again");
  EXPECT_EQ(s.result->status, StepStatus::kSuccess);
  EXPECT_EQ(s.attempts, 2u);
  EXPECT_EQ(s.results_applied, 1u);
  EXPECT_THAT(StepLog(s, "run"), Contains("done"));
}

TEST_F(GrpcSessionTest, ACancelAskedWhileDisconnectedReachesTheDelegate) {
  StartManager();
  const std::vector<std::string> host_port =
      absl::StrSplit(manager_->address(), ':');
  TcpProxy proxy(std::stoi(host_port.back()));
  StartDelegate("away", {}, proxy.address());
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("stop-me", HostStage("s", {"sleep 30"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(WaitLeased("stop-me")) << Logs();
  proxy.Refuse(true);
  proxy.Cut();
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!manager_->Delegates().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(manager_->Cancel("stop-me", "not needed any more").ok());
  proxy.Refuse(false);
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(20))) << Logs();
  StageSnapshot s = Snap("stop-me");
  EXPECT_EQ(s.result->status, StepStatus::kCancelled);
  EXPECT_EQ(s.result->error, "not needed any more");
  EXPECT_EQ(s.attempts, 1u);
}

TEST_F(GrpcSessionTest, MutualTlsWithTheCertsDirAndAClientCertificate) {
  absl::StatusOr<std::unique_ptr<testing::TestCa>> ca =
      testing::TestCa::Create();
  ASSERT_TRUE(ca.ok()) << ca.status();
  const std::filesystem::path certs = dir_ / "certs";
  std::filesystem::create_directories(certs);
  std::filesystem::copy_file((*ca)->ca_file(), certs / "ca.pem");
  SessionManagerOptions options;
  options.tls_cert_file = (*ca)->server().cert_file;
  options.tls_key_file = (*ca)->server().key_file;
  options.client_ca_file = (*ca)->ca_file();
  StartManager(options);
  StartDelegate("trusted",
                {"HARNESS_CERTS_DIR=" + certs.string(),
                 "HARNESS_CLIENT_CERT_FILE=" + (*ca)->client().cert_file,
                 "HARNESS_CLIENT_KEY_FILE=" + (*ca)->client().key_file},
                "", "grpcs://");
  // Without a client certificate the manager does not let it in; without
  // the CA it does not trust the manager.
  DelegateProcess& anonymous = StartDelegate(
      "anonymous", {"HARNESS_CERTS_DIR=" + certs.string()}, "", "grpcs://");
  DelegateProcess& trusting_nobody = StartDelegate("no-ca", {}, "", "grpcs://");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  ASSERT_TRUE(manager_
                  ->Submit("tls-1", HostStage("t", {"echo over tls"}),
                           Priority::kNormal, nullptr)
                  .ok());
  ASSERT_TRUE(manager_->WaitAllDone(absl::Seconds(30))) << Logs();
  StageSnapshot s = Snap("tls-1");
  EXPECT_EQ(s.result->status, StepStatus::kSuccess);
  EXPECT_THAT(s.delegates, ElementsAre("trusted"));
  EXPECT_THAT(StepLog(s, "run"), Contains("over tls"));
  std::vector<reference::DelegateSnapshot> d = manager_->Delegates();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].name, "trusted");
  for (DelegateProcess* p : {&anonymous, &trusting_nobody}) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!absl::StrContains(p->Output(), "manager unreachable") &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_THAT(p->Output(), HasSubstr("manager unreachable"));
  }
  EXPECT_EQ(manager_->Delegates().size(), 1u);
}

// A controller submits through the manager's RuntimeService (the same gRPC
// port as DelegateSession) and watches the stage run on a delegate.
TEST_F(GrpcSessionTest, RuntimeServiceOnTheManagerRunsTheStageOnADelegate) {
  StartManager();
  StartDelegate("worker");
  ASSERT_TRUE(WaitDelegates(1)) << Logs();
  auto stub = v1::RuntimeService::NewStub(grpc::CreateChannel(
      manager_->address(), grpc::InsecureChannelCredentials()));
  v1::SubmitStageRequest submit;
  submit.set_task_id("via-runtime");
  *submit.mutable_stage() =
      grpcv1::ToProto(HostStage("rt", {"echo through the manager"}));
  v1::SubmitStageResponse submitted;
  {
    grpc::ClientContext context;
    grpc::Status st = stub->SubmitStage(&context, submit, &submitted);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_TRUE(submitted.created());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  v1::WatchStageRequest watch;
  watch.set_task_id("via-runtime");
  auto reader = stub->WatchStage(&context, watch);
  std::vector<std::string> kinds;
  std::vector<std::string> lines;
  std::string delegate_name;
  v1::StageEvent event;
  uint64_t sequence = 0;
  std::optional<v1::StageResult> finished;
  while (reader->Read(&event)) {
    EXPECT_EQ(event.sequence(), ++sequence);
    switch (event.event_case()) {
      case v1::StageEvent::kStageStarted:
        kinds.push_back("stage_started");
        delegate_name = event.stage_started().delegate_name();
        break;
      case v1::StageEvent::kStepStarted:
        kinds.push_back("step_started");
        break;
      case v1::StageEvent::kStepFinished:
        kinds.push_back("step_finished");
        break;
      case v1::StageEvent::kLog:
        for (const v1::LogLine& l : event.log().lines()) {
          lines.push_back(l.text());
        }
        break;
      case v1::StageEvent::kStageFinished:
        kinds.push_back("stage_finished");
        finished = event.stage_finished();
        break;
      default:
        break;
    }
  }
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message() << Logs();
  EXPECT_EQ(delegate_name, "worker");
  ASSERT_FALSE(kinds.empty());
  EXPECT_EQ(kinds.front(), "stage_started");
  EXPECT_EQ(kinds.back(), "stage_finished");
  EXPECT_THAT(kinds, Contains("step_finished"));
  EXPECT_THAT(lines, Contains("through the manager"));
  ASSERT_TRUE(finished.has_value());
  EXPECT_EQ(finished->status(), v1::STEP_STATUS_SUCCESS);
}

// The manager side alone, driven by a hand-written delegate: what a
// misbehaving or late delegate sends is refused, repeats get the first
// answer, and a log chunk that leaves a gap is not kept.
TEST_F(GrpcSessionTest, ManagerFencesStaleReportsAndAppliesEachKeyOnce) {
  SessionManagerOptions options;
  options.lease_duration = absl::Milliseconds(300);
  StartManager(options);
  auto channel = grpc::CreateChannel(manager_->address(),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::DelegateSession::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Connect(&context);
  v1::DelegateMessage m;
  v1::Hello& hello = *m.mutable_hello();
  hello.set_protocol_version(1);
  hello.set_delegate_name("by-hand");
  hello.add_executors("host");
  ASSERT_TRUE(stream->Write(m));
  v1::ManagerMessage in;
  ASSERT_TRUE(stream->Read(&in));
  ASSERT_TRUE(in.has_hello_ack()) << in.DebugString();
  // Reads until a message of `kind` arrives (skipping others).
  auto read_until = [&](v1::ManagerMessage::BodyCase kind) {
    v1::ManagerMessage msg;
    while (stream->Read(&msg)) {
      if (msg.body_case() == kind) return msg;
    }
    ADD_FAILURE() << "stream ended before message kind " << kind;
    return msg;
  };
  auto send = [&](const v1::DelegateMessage& msg) {
    ASSERT_TRUE(stream->Write(msg));
  };

  ASSERT_TRUE(
      manager_
          ->Submit("x", HostStage("x", {"true"}), Priority::kNormal, nullptr)
          .ok());
  v1::DelegateMessage credit;
  credit.mutable_credit()->set_slots(1);
  send(credit);
  const v1::Dispatch first =
      read_until(v1::ManagerMessage::kDispatch).dispatch();
  EXPECT_EQ(first.fencing_token(), 1u);
  EXPECT_EQ(first.attempt(), 1u);
  EXPECT_EQ(first.stage().steps(0).commands(0), "true");

  // No renewal: the lease lapses and the manager says so.
  const v1::LeaseLost lost =
      read_until(v1::ManagerMessage::kLeaseLost).lease_lost();
  EXPECT_EQ(lost.reason(), v1::LeaseLost::REASON_EXPIRED);
  EXPECT_EQ(lost.fencing_token(), 1u);

  // A result under the lapsed lease is refused.
  auto result_report = [&](const v1::Dispatch& d, const std::string& key) {
    v1::DelegateMessage r;
    v1::StageResultReport& report = *r.mutable_stage_result();
    report.mutable_header()->set_stage_id(d.stage_id());
    report.mutable_header()->set_lease_id(d.lease_id());
    report.mutable_header()->set_fencing_token(d.fencing_token());
    report.mutable_header()->set_idempotency_key(key);
    StageResult result;
    result.task_id = d.stage_id();
    report.mutable_result()->CopyFrom(grpcv1::ToProto(result));
    return r;
  };
  send(result_report(first, "x/1/stage"));
  v1::Ack ack = read_until(v1::ManagerMessage::kAck).ack();
  EXPECT_FALSE(ack.accepted());
  EXPECT_EQ(ack.refusal(), v1::Ack::REFUSAL_STALE_FENCING_TOKEN);
  EXPECT_EQ(ack.idempotency_key(), "x/1/stage");

  // More credit: the stage comes again under token 2.
  send(credit);
  const v1::Dispatch second =
      read_until(v1::ManagerMessage::kDispatch).dispatch();
  EXPECT_EQ(second.fencing_token(), 2u);
  EXPECT_EQ(second.attempt(), 2u);
  v1::DelegateMessage renew;
  renew.mutable_lease_renew()->set_stage_id("x");
  renew.mutable_lease_renew()->set_lease_id(second.lease_id());
  renew.mutable_lease_renew()->set_fencing_token(2);
  send(renew);
  EXPECT_EQ(read_until(v1::ManagerMessage::kLeaseRenewed)
                .lease_renewed()
                .fencing_token(),
            2u);

  // Logs: a chunk at offset 0 is kept, one that leaves a gap is not, and a
  // resent chunk that overlaps adds only its new lines.
  auto chunk = [&](uint64_t offset, std::vector<std::string> lines) {
    v1::DelegateMessage c;
    v1::LogChunkReport& report = *c.mutable_log();
    report.set_lease_id(second.lease_id());
    report.set_fencing_token(2);
    report.mutable_chunk()->set_task_id("x");
    report.mutable_chunk()->set_step_id("run");
    report.mutable_chunk()->set_stream(v1::LOG_STREAM_STDOUT);
    report.mutable_chunk()->set_offset(offset);
    for (const std::string& l : lines) {
      report.mutable_chunk()->add_lines()->set_text(l);
    }
    return c;
  };
  send(chunk(0, {"a", "b"}));
  EXPECT_EQ(read_until(v1::ManagerMessage::kLogAck).log_ack().offset(), 2u);
  send(chunk(5, {"f"}));
  EXPECT_EQ(read_until(v1::ManagerMessage::kLogAck).log_ack().offset(), 2u);
  send(chunk(1, {"b", "c"}));
  EXPECT_EQ(read_until(v1::ManagerMessage::kLogAck).log_ack().offset(), 3u);

  send(result_report(second, "x/2/stage"));
  ack = read_until(v1::ManagerMessage::kAck).ack();
  EXPECT_TRUE(ack.accepted()) << ack.message();
  send(result_report(second, "x/2/stage"));  // a resend: the same answer
  ack = read_until(v1::ManagerMessage::kAck).ack();
  EXPECT_TRUE(ack.accepted());
  EXPECT_EQ(ack.idempotency_key(), "x/2/stage");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  StageSnapshot s = Snap("x");
  EXPECT_EQ(s.results_applied, 1u);
  EXPECT_EQ(s.fencing_token, 2u);
  EXPECT_THAT(StepLog(s, "run"), ElementsAre("a", "b", "c"));
}

TEST_F(GrpcSessionTest, AVersionMismatchIsAClearErrorOnBothSides) {
  SessionManagerOptions options;
  options.supported_versions = {2};
  StartManager(options);
  DelegateProcess& d = StartDelegate("old-delegate");
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!d.Exited() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(d.Exited()) << d.Output();
  testing::Outcome o = d.Wait();
  EXPECT_EQ(o.exit_code, 1) << o.out;
  EXPECT_THAT(o.out, HasSubstr("REASON_VERSION_MISMATCH"));
  EXPECT_THAT(o.out,
              HasSubstr("this delegate speaks DelegateSession protocol "
                        "version 1, the manager speaks 2: upgrade the older "
                        "side"));
  std::vector<std::string> rejections = manager_->Rejections();
  ASSERT_EQ(rejections.size(), 1u);  // once, not in a loop
  EXPECT_THAT(rejections[0], HasSubstr("delegate old-delegate"));
  EXPECT_THAT(rejections[0],
              HasSubstr("speaks DelegateSession protocol version 1; this "
                        "manager speaks 2"));
}

}  // namespace
}  // namespace delegate
