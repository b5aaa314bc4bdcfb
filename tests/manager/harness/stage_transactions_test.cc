#include "manager/harness/stage_transactions.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "delegate/executor.h"
#include "delegate/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manager/harness/task_responses.h"
#include "tests/fakes/recording_log_sink.h"

namespace delegate::harness {
namespace {

namespace fs = std::filesystem;
using ::delegate::testing::RecordingLogSink;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kDelegateId[] = "d-1";

// What the "local" test executor did, in order.
struct Journal {
  void Add(std::string call) {
    absl::MutexLock lock(&mu);
    calls.push_back(std::move(call));
  }
  std::vector<std::string> Calls() {
    absl::MutexLock lock(&mu);
    return calls;
  }
  std::vector<std::string> StageIds() {
    absl::MutexLock lock(&mu);
    return stage_ids;
  }
  absl::Mutex mu;
  std::vector<std::string> calls ABSL_GUARDED_BY(mu);
  // StageContext::task_id of each Initialize.
  std::vector<std::string> stage_ids ABSL_GUARDED_BY(mu);
};

// Stands in for the "local" platform. A stage whose env has REFUSE is
// refused by Validate, one with FAIL_INIT fails Initialize. A step's first
// command is its script: "say:TEXT" writes a line, "fail" fails.
class TestExecutor final : public Executor {
 public:
  explicit TestExecutor(Journal& journal) : journal_(journal) {}
  absl::Status Validate(const Stage& stage) override {
    if (stage.env.count("REFUSE")) {
      return absl::InvalidArgumentError("refused by the test executor");
    }
    return absl::OkStatus();
  }
  absl::Status Initialize(const StageContext& ctx) override {
    journal_.Add("init:" + ctx.stage.name);
    {
      absl::MutexLock lock(&journal_.mu);
      journal_.stage_ids.push_back(ctx.task_id);
    }
    if (ctx.stage.env.count("FAIL_INIT")) {
      return absl::UnavailableError("no network today");
    }
    return absl::OkStatus();
  }
  // A stage with CANNOT_RESUME has the default: it cannot.
  absl::Status Resume(const StageContext& ctx) override {
    journal_.Add("resume:" + ctx.task_id);
    if (ctx.stage.env.count("CANNOT_RESUME")) return Executor::Resume(ctx);
    return absl::OkStatus();
  }
  StepResult Execute(const StepContext& ctx) override {
    journal_.Add((ctx.reattach ? "reattach:" : "exec:") + ctx.step.id);
    StepResult r;
    const std::string script =
        ctx.step.commands.empty() ? "" : ctx.step.commands[0];
    if (absl::StartsWith(script, "say:")) {
      ctx.output.Write(LogStream::kStdout, script.substr(4));
      ctx.output.Write(LogStream::kStdout, "\n");
    } else if (script == "fail") {
      r.status = StepStatus::kFailure;
      r.exit_code = 3;
    }
    return r;
  }
  absl::Status Cleanup(const StageContext& ctx) override {
    journal_.Add("cleanup:" + ctx.stage.name);
    return absl::OkStatus();
  }

 private:
  Journal& journal_;
};

class HarnessStageTransactionsTest : public ::testing::Test {
 protected:
  HarnessStageTransactionsTest() {
    EXPECT_TRUE(registry_
                    .Register("local",
                              [this] {
                                return std::make_unique<TestExecutor>(journal_);
                              })
                    .ok());
    SchedulerOptions options;
    options.registry = &registry_;
    scheduler_ = std::make_unique<Scheduler>(options);
    // No log service: every line goes to the console.
    stages_ = std::make_unique<StageTransactions>(
        *scheduler_, log_, console_,
        [](const TaskLogger&, bool) -> std::shared_ptr<LogServiceStream> {
          ADD_FAILURE() << "a log stream opened for a task that names none";
          return nullptr;
        });
    root_ =
        fs::path(::testing::TempDir()) /
        absl::StrCat(
            "stage_transactions_", getpid(), "_",
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  ~HarnessStageTransactionsTest() override {
    stages_.reset();
    fs::remove_all(root_);
  }

  std::string Dir(const std::string& name) { return (root_ / name).string(); }

  // local_init data for the stage `key` with host directories.
  static std::string InitData(const std::string& key,
                              const std::vector<std::string>& volumes,
                              const std::string& envs = "{}") {
    return absl::StrCat(R"({"network":{"id":"net"},"stage_runtime_id":")", key,
                        R"(","envs":)", envs, R"(,"volumes":[)",
                        absl::StrJoin(volumes, ","), "]}");
  }
  // A host volume of local_init.
  static std::string HostVolume(const std::string& id, const std::string& path,
                                bool create, bool remove) {
    return absl::StrCat(R"({"host":{"id":")", id, R"(","path":")", path,
                        R"(","create":)", create ? "true" : "false",
                        R"(,"remove":)", remove ? "true" : "false", "}}");
  }
  static std::string ExecuteData(const std::string& key,
                                 const std::string& step_id,
                                 const std::string& script,
                                 const std::string& secrets = "[]") {
    return absl::StrCat(R"({"id":")", step_id, R"(","stage_runtime_id":")", key,
                        R"(","network":"net","run":{"commands":[")", script,
                        R"("]},"secrets":)", secrets, "}");
  }
  // local_cleanup data listing `remove` as host volumes to remove.
  static std::string CleanupData(const std::string& key,
                                 const std::vector<std::string>& remove) {
    std::vector<std::string> volumes;
    for (const std::string& path : remove) {
      volumes.push_back(
          absl::StrCat(R"({"host":{"path":")", path, R"(","remove":true}})"));
    }
    return absl::StrCat(R"({"network":"net","stage_runtime_id":")", key,
                        R"(","volumes":[)", absl::StrJoin(volumes, ","), "]}");
  }

  TaskAnswer Init(const std::string& data,
                  const std::vector<std::string>& masks = {}) {
    return stages_->Init(TaskLogger{}, data, masks, kDelegateId);
  }
  TaskAnswer Execute(const std::string& data) {
    return stages_->Execute(TaskLogger{}, data, {});
  }
  TaskAnswer Cleanup(const std::string& data) {
    return stages_->Cleanup(TaskLogger{}, data);
  }

  // True once no stage is open (a stage that ends on its own is cleaned up
  // after its init or step has been answered), false after 5 s.
  bool NoneOpenSoon() {
    for (int i = 0; i < 5000 && stages_->OpenStages() > 0; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return stages_->OpenStages() == 0;
  }

  std::vector<std::string> Events() {
    absl::MutexLock lock(&events_mu_);
    return events_;
  }

  Journal journal_;
  ExecutorRegistry registry_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::Mutex events_mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(events_mu_);
  EventLog log_{[this](std::string_view line) {
    absl::MutexLock lock(&events_mu_);
    events_.emplace_back(line);
  }};
  RecordingLogSink console_;
  std::unique_ptr<StageTransactions> stages_;
  fs::path root_;
};

TEST_F(HarnessStageTransactionsTest, InitStepsAndCleanupRunAsOneStage) {
  const std::string ws = Dir("ws");
  TaskAnswer init = Init(InitData("rt-1", {HostVolume("ws", ws, true, true)}));
  EXPECT_TRUE(init.ok) << init.error;
  EXPECT_EQ(init.data_json, InitResponseData(true, "", kDelegateId));
  EXPECT_TRUE(fs::is_directory(ws));
  EXPECT_EQ(stages_->OpenStages(), 1u);

  TaskAnswer step = Execute(ExecuteData("rt-1", "s1", "say:hello"));
  EXPECT_TRUE(step.ok) << step.error;
  StepResult ok;
  ok.id = "s1";
  EXPECT_EQ(step.data_json, ExecutionResponseData(ok));
  TaskAnswer failing = Execute(ExecuteData("rt-1", "s2", "fail"));
  EXPECT_TRUE(failing.ok) << "a failed step is still an OK task";
  EXPECT_THAT(failing.data_json,
              HasSubstr(R"("command_execution_status":"FAILURE")"));
  EXPECT_THAT(console_.TextOf("s1"), ElementsAre("hello"));

  TaskAnswer cleanup = Cleanup(CleanupData("rt-1", {}));
  EXPECT_TRUE(cleanup.ok) << cleanup.error;
  EXPECT_EQ(cleanup.data_json, CleanupResponseData(true, ""));
  EXPECT_FALSE(fs::exists(ws));
  EXPECT_EQ(stages_->OpenStages(), 0u);
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:rt-1", "exec:s1", "exec:s2", "cleanup:rt-1"));
}

TEST_F(HarnessStageTransactionsTest, ARefusedInitCreatesNoDirectory) {
  const std::string ws = Dir("ws");
  TaskAnswer init = Init(InitData("rt-1", {HostVolume("ws", ws, true, true)},
                                  R"({"REFUSE":"1"})"));
  // Like a failed setup: an OK task whose data says FAILURE.
  EXPECT_TRUE(init.ok);
  EXPECT_THAT(init.error, StartsWith("local_init: "));
  EXPECT_THAT(init.error, HasSubstr("refused by the test executor"));
  EXPECT_EQ(init.data_json, InitResponseData(false, init.error, kDelegateId));
  EXPECT_FALSE(fs::exists(ws));
  EXPECT_EQ(stages_->OpenStages(), 0u);
  EXPECT_TRUE(journal_.Calls().empty());
  // Nothing of it is left: its steps find no stage.
  EXPECT_FALSE(Execute(ExecuteData("rt-1", "s1", "say:hi")).ok);
}

TEST_F(HarnessStageTransactionsTest,
       AFailedSetupIsAnOkTaskWhoseDataSaysFailure) {
  const std::string ws = Dir("ws");
  TaskAnswer init = Init(InitData("rt-1", {HostVolume("ws", ws, true, true)},
                                  R"({"FAIL_INIT":"1"})"));
  EXPECT_TRUE(init.ok);
  EXPECT_EQ(init.error, "no network today");
  EXPECT_EQ(init.data_json,
            InitResponseData(false, "no network today", kDelegateId));
  EXPECT_TRUE(NoneOpenSoon());
  // The stage ended, but its cleanup still removes what its init made.
  EXPECT_TRUE(fs::is_directory(ws));
  TaskAnswer cleanup = Cleanup(CleanupData("rt-1", {}));
  EXPECT_TRUE(cleanup.ok) << cleanup.error;
  EXPECT_FALSE(fs::exists(ws));
}

TEST_F(HarnessStageTransactionsTest,
       ACleanupRemovesOnlyTheDirectoriesItsInitDeclared) {
  const std::string kept = Dir("kept");        // declared, not to remove
  const std::string listed = Dir("listed");    // declared, listed at cleanup
  const std::string removed = Dir("removed");  // declared remove
  const std::string other = Dir("other");      // never declared
  fs::create_directories(other);
  ASSERT_TRUE(
      Init(InitData("rt-1", {HostVolume("kept", kept, true, false),
                             HostVolume("listed", listed, true, false),
                             HostVolume("removed", removed, true, true)}))
          .ok);
  TaskAnswer cleanup = Cleanup(CleanupData("rt-1", {listed, other}));
  EXPECT_TRUE(cleanup.ok) << cleanup.error;
  EXPECT_EQ(cleanup.data_json, CleanupResponseData(true, ""));
  EXPECT_TRUE(fs::is_directory(kept));
  EXPECT_FALSE(fs::exists(listed));
  EXPECT_FALSE(fs::exists(removed));
  EXPECT_TRUE(fs::is_directory(other));
}

TEST_F(HarnessStageTransactionsTest, ACleanupOfAnUnknownStageRemovesNothing) {
  const std::string other = Dir("other");
  fs::create_directories(other);
  TaskAnswer cleanup = Cleanup(CleanupData("rt-unknown", {other}));
  EXPECT_TRUE(cleanup.ok) << cleanup.error;
  EXPECT_EQ(cleanup.data_json, CleanupResponseData(true, ""));
  EXPECT_TRUE(fs::is_directory(other));
  EXPECT_THAT(absl::StrJoin(Events(), "\n"),
              HasSubstr("cleanup of a stage this delegate does not know"));
}

TEST_F(HarnessStageTransactionsTest, AnExecuteForAStageNotOpenNamesItsKey) {
  TaskAnswer step = Execute(ExecuteData("rt-9", "s1", "say:hi"));
  EXPECT_FALSE(step.ok);
  const std::string error =
      "stage rt-9 is not open on this delegate: its local_init must run here "
      "first";
  EXPECT_EQ(step.error, error);
  StepResult failed;
  failed.id = "s1";
  failed.status = StepStatus::kFailure;
  failed.error = error;
  EXPECT_EQ(step.data_json, ExecutionResponseData(failed));
  EXPECT_TRUE(journal_.Calls().empty());
}

TEST_F(HarnessStageTransactionsTest, ARetriedInitOfAnOpenStageRunsNoSecondOne) {
  ASSERT_TRUE(Init(InitData("rt-1", {})).ok);
  TaskAnswer again = Init(InitData("rt-1", {}));
  EXPECT_TRUE(again.ok);
  EXPECT_EQ(again.data_json, InitResponseData(true, "", kDelegateId));
  EXPECT_EQ(stages_->OpenStages(), 1u);
  EXPECT_TRUE(Cleanup(CleanupData("rt-1", {})).ok);
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:rt-1", "cleanup:rt-1"));
}

TEST_F(HarnessStageTransactionsTest, RefusingNewStagesLetsTheOpenOnesFinish) {
  ASSERT_TRUE(Init(InitData("rt-1", {})).ok);
  stages_->RefuseNewStages();
  const std::string ws = Dir("ws");
  TaskAnswer refused =
      Init(InitData("rt-2", {HostVolume("ws", ws, true, true)}));
  EXPECT_FALSE(refused.ok);
  EXPECT_EQ(refused.error,
            "the delegate is shutting down and takes no new stages");
  EXPECT_EQ(refused.data_json,
            InitResponseData(false, refused.error, kDelegateId));
  EXPECT_FALSE(fs::exists(ws));
  EXPECT_TRUE(Execute(ExecuteData("rt-1", "s1", "say:hi")).ok);
  EXPECT_TRUE(Cleanup(CleanupData("rt-1", {})).ok);
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:rt-1", "exec:s1", "cleanup:rt-1"));
}

TEST_F(HarnessStageTransactionsTest, AnAbandonedStageIsCleanedUpWithItsDirs) {
  const std::string ws = Dir("ws");
  const std::string kept = Dir("kept");
  ASSERT_TRUE(Init(InitData("rt-1", {HostVolume("ws", ws, true, true),
                                     HostVolume("kept", kept, true, false)}))
                  .ok);
  ASSERT_TRUE(fs::exists(ws));
  // No local_cleanup will come: the stage is cleaned up now, and the
  // directories its init marked remove go with it.
  stages_->AbandonOpen("the manager lost them");
  EXPECT_EQ(stages_->OpenStages(), 0u);
  EXPECT_FALSE(fs::exists(ws));
  EXPECT_TRUE(fs::exists(kept));
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:rt-1", "cleanup:rt-1"));
  // A step or cleanup that comes anyway finds the stage gone.
  TaskAnswer step = Execute(ExecuteData("rt-1", "s1", "say:hi"));
  EXPECT_FALSE(step.ok);
  EXPECT_THAT(step.error, HasSubstr("is not open on this delegate"));
  EXPECT_TRUE(Cleanup(CleanupData("rt-1", {})).ok);
  EXPECT_THAT(absl::StrJoin(Events(), "\n"),
              HasSubstr("the manager lost them"));
}

TEST_F(HarnessStageTransactionsTest, AStageIsResumedUnderTheIdItHadBefore) {
  const std::string ws = Dir("ws");
  TaskAnswer init = stages_->Init(
      TaskLogger{}, InitData("rt-1", {HostVolume("ws", ws, true, true)}), {},
      kDelegateId, "init-task-7");
  ASSERT_TRUE(init.ok) << init.error;
  // The process dies here; its successor's StageTransactions resumes.
  Scheduler scheduler({.registry = &registry_});
  {
    StageTransactions after(scheduler, log_, console_, nullptr);
    ASSERT_TRUE(
        after
            .Resume(InitData("rt-1", {HostVolume("ws", ws, true, true)}), {},
                    "init-task-7")
            .ok());
    EXPECT_TRUE(after.IsOpen("rt-1"));
    TaskAnswer step = after.Execute(
        TaskLogger{}, ExecuteData("rt-1", "s1", "say:hi"), {}, true);
    EXPECT_THAT(step.data_json,
                HasSubstr(R"("command_execution_status":"SUCCESS")"));
    EXPECT_TRUE(
        after.Execute(TaskLogger{}, ExecuteData("rt-1", "s2", ""), {}).ok);
    EXPECT_TRUE(after.Cleanup(TaskLogger{}, CleanupData("rt-1", {})).ok);
  }
  EXPECT_FALSE(fs::exists(ws));
  // The same stage id in both processes: what it made is found by it.
  EXPECT_THAT(journal_.StageIds(), ElementsAre("rt-1#init-task-7"));
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:rt-1", "resume:rt-1#init-task-7", "reattach:s1",
                          "exec:s2", "cleanup:rt-1"));
}

TEST_F(HarnessStageTransactionsTest, AStageThatCannotResumeIsCleanedUp) {
  const std::string ws = Dir("ws");
  Scheduler scheduler({.registry = &registry_});
  StageTransactions after(scheduler, log_, console_, nullptr);
  absl::Mutex mu;
  std::vector<std::string> closed;
  after.OnStageClosed([&](const std::string& key, const std::string& init) {
    absl::MutexLock lock(&mu);
    closed.push_back(key + " " + init);
  });
  fs::create_directories(ws);
  absl::Status resumed =
      after.Resume(InitData("rt-1", {HostVolume("ws", ws, true, true)},
                            R"({"CANNOT_RESUME":"1"})"),
                   {}, "init-task-7");
  EXPECT_THAT(resumed.message(), HasSubstr("cannot resume"));
  EXPECT_FALSE(after.IsOpen("rt-1"));
  EXPECT_FALSE(fs::exists(ws)) << "its directories marked remove";
  // Cleanup runs on the stage's thread after Resume has returned.
  for (int i = 0; i < 2500 && journal_.Calls().size() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("resume:rt-1#init-task-7", "cleanup:rt-1"));
  // The journal hears that the stage is over: no resume at the next start.
  auto closed_now = [&] {
    absl::MutexLock lock(&mu);
    return closed;
  };
  for (int i = 0; i < 2500 && closed_now().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_THAT(closed_now(), ElementsAre("rt-1 init-task-7"));
}

TEST_F(HarnessStageTransactionsTest, TheTasksSecretsAreMaskedInTheStageOutput) {
  ASSERT_TRUE(Init(InitData("rt-1", {}), {"init-s3cret"}).ok);
  EXPECT_TRUE(
      Execute(ExecuteData("rt-1", "s1", "say:init-s3cret and step-s3cret",
                          R"(["step-s3cret"])"))
          .ok);
  EXPECT_TRUE(Cleanup(CleanupData("rt-1", {})).ok);
  const std::string out = console_.All();
  EXPECT_THAT(out, HasSubstr(" and "));
  EXPECT_THAT(out, Not(HasSubstr("s3cret")));
}

TEST_F(HarnessStageTransactionsTest, ShutdownEndsTheOpenStages) {
  ASSERT_TRUE(Init(InitData("rt-1", {})).ok);
  stages_->Shutdown();
  EXPECT_EQ(stages_->OpenStages(), 0u);
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:rt-1", "cleanup:rt-1"));
}

}  // namespace
}  // namespace delegate::harness
