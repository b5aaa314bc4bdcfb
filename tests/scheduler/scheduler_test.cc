#include "delegate/scheduler.h"

#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/recording_log_sink.h"

namespace delegate {
namespace {

using ::delegate::testing::FakeClock;
using ::delegate::testing::RecordingLogSink;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// What the test executor did, shared by all its instances.
struct Journal {
  std::mutex mu;
  std::vector<std::string> calls;  // "init:TASK", "exec:TASK:STEP", ...
  std::vector<const void*> instances;
  std::vector<std::thread::id> threads;
  std::vector<absl::Time> deadlines;
  void Add(const std::string& call, const void* instance) {
    std::lock_guard<std::mutex> lock(mu);
    calls.push_back(call);
    instances.push_back(instance);
    threads.push_back(std::this_thread::get_id());
  }
  std::vector<std::string> Calls() {
    std::lock_guard<std::mutex> lock(mu);
    return calls;
  }
};

// A custom executor, as a host program would write one. Each step's first
// command is its script: "ok", "fail", "wait" (until stopped), "take:DUR"
// (moves the fake clock), "say:TEXT", "error:TEXT", "output:K=V".
class TestExecutor final : public Executor {
 public:
  TestExecutor(Journal& journal, FakeClock* clock, bool fail_init)
      : journal_(journal), clock_(clock), fail_init_(fail_init) {}

  absl::Status Initialize(const StageContext& ctx) override {
    journal_.Add("init:" + ctx.task_id, this);
    if (fail_init_) return absl::UnavailableError("no network today");
    return absl::OkStatus();
  }

  // "broken-init" has the default (cannot resume).
  absl::Status Resume(const StageContext& ctx) override {
    journal_.Add("resume:" + ctx.task_id, this);
    if (fail_init_) return Executor::Resume(ctx);
    return absl::OkStatus();
  }

  StepResult Execute(const StepContext& ctx) override {
    journal_.Add((ctx.reattach ? "reattach:" : "exec:") + ctx.stage.task_id +
                     ":" + ctx.step.id,
                 this);
    {
      std::lock_guard<std::mutex> lock(journal_.mu);
      journal_.deadlines.push_back(ctx.deadline);
    }
    StepResult r;
    const std::string script =
        ctx.step.commands.empty() ? "ok" : ctx.step.commands[0];
    if (script == "fail") {
      r.status = StepStatus::kFailure;
      r.exit_code = 3;
      r.error = "exit status 3";
    } else if (script == "wait") {
      std::mutex m;
      std::condition_variable cv;
      bool stopped = false;
      std::stop_callback cb(ctx.stop, [&] {
        std::lock_guard<std::mutex> lock(m);
        stopped = true;
        cv.notify_all();
      });
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return stopped; });
      r.status = StepStatus::kCancelled;
      r.error = "cancelled";
    } else if (absl::StartsWith(script, "take:")) {
      absl::Duration d;
      absl::ParseDuration(script.substr(5), &d);
      const absl::Time now = clock_->Now();
      if (now + d >= ctx.deadline) {
        clock_->Advance(ctx.deadline - now);
        r.status = StepStatus::kTimeout;
        r.error = "timed out";
      } else {
        clock_->Advance(d);
      }
    } else if (absl::StartsWith(script, "say:")) {
      ctx.output.Write(LogStream::kStdout, script.substr(4));
      ctx.output.Write(LogStream::kStdout, "\n");
    } else if (absl::StartsWith(script, "error:")) {
      r.status = StepStatus::kFailure;
      r.error = script.substr(6);
    } else if (absl::StartsWith(script, "output:")) {
      std::string kv = script.substr(7);
      size_t eq = kv.find('=');
      r.outputs[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    return r;
  }

  absl::Status Cleanup(const StageContext& ctx) override {
    journal_.Add("cleanup:" + ctx.task_id, this);
    return absl::OkStatus();
  }

 private:
  Journal& journal_;
  FakeClock* clock_;
  bool fail_init_;
};

Step MakeStep(const std::string& id, const std::string& script) {
  Step step;
  step.id = id;
  step.commands = {script};
  return step;
}

Stage MakeStage(std::vector<Step> steps, const std::string& platform = "test") {
  Stage stage;
  stage.name = "s";
  stage.platform = platform;
  stage.steps = std::move(steps);
  return stage;
}

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() {
    EXPECT_TRUE(registry_
                    .Register("test",
                              [this] {
                                return std::make_unique<TestExecutor>(
                                    journal_, &clock_, false);
                              })
                    .ok());
    EXPECT_TRUE(registry_
                    .Register("broken-init",
                              [this] {
                                return std::make_unique<TestExecutor>(
                                    journal_, &clock_, true);
                              })
                    .ok());
  }

  std::unique_ptr<Scheduler> Make(std::optional<int> max_stages = {}) {
    SchedulerOptions options;
    options.registry = &registry_;
    options.clock = &clock_;
    options.max_stages = max_stages;
    return std::make_unique<Scheduler>(options);
  }

  // Submits and returns a future for the result.
  std::future<StageResult> Run(Scheduler& scheduler, const std::string& id,
                               Stage stage,
                               Priority priority = Priority::kNormal) {
    auto promise = std::make_shared<std::promise<StageResult>>();
    StageTask task;
    task.id = id;
    task.stage = std::move(stage);
    task.priority = priority;
    task.observer = ObserveWith(
        {.done = [promise](const StageResult& r) { promise->set_value(r); },
         .log = &sink_});
    EXPECT_TRUE(scheduler.Submit(std::move(task)).ok());
    return promise->get_future();
  }

  void WaitForCall(const std::string& call) {
    for (int i = 0; i < 5000; ++i) {
      for (const std::string& c : journal_.Calls()) {
        if (c == call) return;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    FAIL() << "never saw " << call;
  }

  Journal journal_;
  FakeClock clock_;
  ExecutorRegistry registry_;
  RecordingLogSink sink_;
};

TEST_F(SchedulerTest, RunsInitStepsAndCleanupOnOneInstanceAndThread) {
  auto scheduler = Make();
  StageResult r =
      Run(*scheduler, "t1",
          MakeStage({MakeStep("a", "ok"), MakeStep("b", "output:V=1.2")}))
          .get();
  EXPECT_EQ(r.status, StepStatus::kSuccess);
  ASSERT_EQ(r.steps.size(), 2u);
  EXPECT_EQ(r.steps[1].outputs.at("V"), "1.2");
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:t1", "exec:t1:a", "exec:t1:b", "cleanup:t1"));
  for (size_t i = 1; i < journal_.instances.size(); ++i) {
    EXPECT_EQ(journal_.instances[i], journal_.instances[0]);
    EXPECT_EQ(journal_.threads[i], journal_.threads[0]);
  }
}

TEST_F(SchedulerTest, ProgressHooksReportStartStepsAndResultsInOrder) {
  auto scheduler = Make();
  auto events = std::make_shared<std::vector<std::string>>();
  auto promise = std::make_shared<std::promise<StageResult>>();
  StageTask task;
  task.id = "t1";
  task.stage = MakeStage(
      {MakeStep("a", "ok"), MakeStep("b", "fail"), MakeStep("c", "ok")});
  task.observer = ObserveWith({
      .started = [events] { events->push_back("started"); },
      .step_started =
          [events](const Step& step, size_t index) {
            events->push_back(absl::StrCat("step:", step.id, ":", index));
          },
      .step_done =
          [events](const StepResult& r) {
            events->push_back(
                absl::StrCat("done:", r.id, ":", StepStatusName(r.status)));
          },
      .done =
          [events, promise](const StageResult& r) {
            events->push_back("finished");
            promise->set_value(r);
          },
  });
  ASSERT_TRUE(scheduler->Submit(std::move(task)).ok());
  StageResult r = promise->get_future().get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  // c is skipped after b failed: it never starts and has no step hook.
  EXPECT_THAT(*events, ElementsAre("started", "step:a:0", "done:a:SUCCESS",
                                   "step:b:1", "done:b:FAILURE", "finished"));
}

TEST_F(SchedulerTest, CleanupRunsOnceWhenInitFails) {
  auto scheduler = Make();
  StageResult r =
      Run(*scheduler, "t1", MakeStage({MakeStep("a", "ok")}, "broken-init"))
          .get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_THAT(r.error, HasSubstr("initialize: no network today"));
  EXPECT_EQ(r.steps[0].status, StepStatus::kSkipped);
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:t1", "cleanup:t1"));
}

TEST_F(SchedulerTest, FailedStepSkipsTheRestUnlessContinueOnError) {
  auto scheduler = Make();
  Step tolerated = MakeStep("lint", "fail");
  tolerated.continue_on_error = true;
  StageResult r = Run(*scheduler, "t1",
                      MakeStage({tolerated, MakeStep("build", "fail"),
                                 MakeStep("test", "ok")}))
                      .get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].exit_code, 3);
  EXPECT_EQ(r.steps[1].status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[2].status, StepStatus::kSkipped);
  EXPECT_THAT(r.steps[2].error, HasSubstr("step build failed"));
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:t1", "exec:t1:lint",
                                            "exec:t1:build", "cleanup:t1"));
}

TEST_F(SchedulerTest, OnlyToleratedFailuresMeanSuccess) {
  auto scheduler = Make();
  Step tolerated = MakeStep("lint", "fail");
  tolerated.continue_on_error = true;
  StageResult r =
      Run(*scheduler, "t1", MakeStage({tolerated, MakeStep("b", "ok")})).get();
  EXPECT_EQ(r.status, StepStatus::kSuccess);
  EXPECT_EQ(r.steps[1].status, StepStatus::kSuccess);
}

TEST_F(SchedulerTest, RefusesATaskIdDeliveredTwice) {
  auto scheduler = Make();
  Run(*scheduler, "t1", MakeStage({MakeStep("a", "ok")})).get();
  StageTask again;
  again.id = "t1";
  again.stage = MakeStage({MakeStep("a", "ok")});
  absl::Status s = scheduler->Submit(std::move(again));
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:t1", "exec:t1:a", "cleanup:t1"));
}

TEST_F(SchedulerTest, SubmitAllQueuesInOrderAndReportsEachTask) {
  auto scheduler = Make(1);
  auto blocker = Run(*scheduler, "block", MakeStage({MakeStep("a", "wait")}));
  WaitForCall("exec:block:a");
  std::vector<std::future<StageResult>> done;
  std::vector<StageTask> tasks;
  for (const char* id : {"b1", "block", "b2", "", "b3"}) {
    auto promise = std::make_shared<std::promise<StageResult>>();
    if (std::string(id) != "block" && *id)
      done.push_back(promise->get_future());
    StageTask task;
    task.id = id;
    task.stage = MakeStage({MakeStep("a", "ok")});
    task.observer = ObserveWith(
        {.done = [promise](const StageResult& r) { promise->set_value(r); }});
    tasks.push_back(std::move(task));
  }
  StageTask bad;
  bad.id = "b4";
  bad.stage = MakeStage({MakeStep("a", "ok")}, "nowhere");
  tasks.push_back(std::move(bad));
  std::vector<absl::Status> results = scheduler->SubmitAll(std::move(tasks));
  ASSERT_EQ(results.size(), 6u);
  EXPECT_TRUE(results[0].ok());
  EXPECT_TRUE(absl::IsAlreadyExists(results[1]));
  EXPECT_TRUE(results[2].ok());
  EXPECT_TRUE(absl::IsInvalidArgument(results[3]));
  EXPECT_TRUE(results[4].ok());
  EXPECT_TRUE(absl::IsInvalidArgument(results[5]));
  ASSERT_TRUE(scheduler->Cancel("block").ok());
  blocker.get();
  for (auto& f : done) EXPECT_EQ(f.get().status, StepStatus::kSuccess);
  std::vector<std::string> inits;
  for (const std::string& c : journal_.Calls()) {
    if (absl::StartsWith(c, "init:")) inits.push_back(c.substr(5));
  }
  EXPECT_THAT(inits, ElementsAre("block", "b1", "b2", "b3"));
}

TEST_F(SchedulerTest, RefusesAnUnknownPlatformNamingTheRegisteredOnes) {
  auto scheduler = Make();
  StageTask task;
  task.id = "t1";
  task.stage = MakeStage({MakeStep("a", "ok")}, "kubernetes");
  absl::Status s = scheduler->Submit(std::move(task));
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(s.message(), HasSubstr("'kubernetes'"));
  EXPECT_THAT(s.message(), HasSubstr("broken-init, test"));
}

TEST_F(SchedulerTest, CapacityQueuesByPriorityThenFirstInFirstOut) {
  auto scheduler = Make(/*max_stages=*/1);
  auto blocker = Run(*scheduler, "block", MakeStage({MakeStep("a", "wait")}));
  WaitForCall("exec:block:a");
  std::vector<std::future<StageResult>> later;
  later.push_back(Run(*scheduler, "low1", MakeStage({MakeStep("a", "ok")}),
                      Priority::kLow));
  later.push_back(Run(*scheduler, "normal1", MakeStage({MakeStep("a", "ok")})));
  later.push_back(Run(*scheduler, "high1", MakeStage({MakeStep("a", "ok")}),
                      Priority::kHigh));
  later.push_back(Run(*scheduler, "normal2", MakeStage({MakeStep("a", "ok")})));
  later.push_back(Run(*scheduler, "high2", MakeStage({MakeStep("a", "ok")}),
                      Priority::kHigh));
  EXPECT_EQ(scheduler->stats().running, 1u);
  EXPECT_EQ(scheduler->stats().queued, 5u);
  ASSERT_TRUE(scheduler->Cancel("block").ok());
  EXPECT_EQ(blocker.get().status, StepStatus::kCancelled);
  for (auto& f : later) EXPECT_EQ(f.get().status, StepStatus::kSuccess);
  std::vector<std::string> inits;
  for (const std::string& c : journal_.Calls()) {
    if (absl::StartsWith(c, "init:")) inits.push_back(c.substr(5));
  }
  EXPECT_THAT(inits, ElementsAre("block", "high1", "high2", "normal1",
                                 "normal2", "low1"));
}

TEST_F(SchedulerTest, UnboundedCapacityRunsStagesAtOnce) {
  auto scheduler = Make();
  auto a = Run(*scheduler, "a", MakeStage({MakeStep("x", "wait")}));
  auto b = Run(*scheduler, "b", MakeStage({MakeStep("x", "wait")}));
  auto c = Run(*scheduler, "c", MakeStage({MakeStep("x", "wait")}));
  WaitForCall("exec:a:x");
  WaitForCall("exec:b:x");
  WaitForCall("exec:c:x");
  EXPECT_EQ(scheduler->stats().running, 3u);
  for (const char* id : {"a", "b", "c"})
    EXPECT_TRUE(scheduler->Cancel(id).ok());
  EXPECT_EQ(a.get().status, StepStatus::kCancelled);
  EXPECT_EQ(b.get().status, StepStatus::kCancelled);
  EXPECT_EQ(c.get().status, StepStatus::kCancelled);
}

TEST_F(SchedulerTest, CancelQueuedStageNeverInitializesIt) {
  auto scheduler = Make(1);
  auto blocker = Run(*scheduler, "block", MakeStage({MakeStep("a", "wait")}));
  WaitForCall("exec:block:a");
  auto queued = Run(*scheduler, "q", MakeStage({MakeStep("a", "ok")}));
  ASSERT_TRUE(scheduler->Cancel("q").ok());
  StageResult r = queued.get();
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[0].status, StepStatus::kSkipped);
  EXPECT_TRUE(absl::IsNotFound(scheduler->Cancel("q")));
  ASSERT_TRUE(scheduler->Cancel("block").ok());
  blocker.get();
  for (const std::string& c : journal_.Calls()) EXPECT_NE(c, "init:q");
}

// An executor's destructor may call back into the scheduler: a queued stage
// that was cancelled drops its executor outside the scheduler's lock.
class CallsBackOnDestroy final : public Executor {
 public:
  explicit CallsBackOnDestroy(std::atomic<Scheduler*>& scheduler)
      : scheduler_(scheduler) {}
  ~CallsBackOnDestroy() override {
    if (Scheduler* s = scheduler_.load()) s->stats();  // takes its lock
  }
  absl::Status Initialize(const StageContext&) override {
    return absl::OkStatus();
  }
  StepResult Execute(const StepContext&) override {
    StepResult r;
    r.exit_code = 0;
    return r;
  }
  absl::Status Cleanup(const StageContext&) override {
    return absl::OkStatus();
  }

 private:
  std::atomic<Scheduler*>& scheduler_;
};

TEST_F(SchedulerTest, ExecutorOfACancelledQueuedStageIsDroppedOutsideTheLock) {
  std::atomic<Scheduler*> watched{nullptr};
  ASSERT_TRUE(registry_
                  .Register("calls-back",
                            [&watched] {
                              return std::make_unique<CallsBackOnDestroy>(
                                  watched);
                            })
                  .ok());
  auto scheduler = Make(1);
  watched = scheduler.get();
  auto blocker = Run(*scheduler, "block", MakeStage({MakeStep("a", "wait")}));
  WaitForCall("exec:block:a");
  auto queued =
      Run(*scheduler, "q", MakeStage({MakeStep("a", "ok")}, "calls-back"));
  ASSERT_TRUE(scheduler->Cancel("q").ok());
  EXPECT_EQ(queued.get().status, StepStatus::kCancelled);
  // The queue still holds the cancelled stage: the worker that frees up next
  // skips it and drops its executor, which calls stats().
  ASSERT_TRUE(scheduler->Cancel("block").ok());
  blocker.get();
  auto after = Run(*scheduler, "after", MakeStage({MakeStep("a", "ok")}));
  EXPECT_EQ(after.get().status, StepStatus::kSuccess);
  scheduler->Shutdown(absl::ZeroDuration());
  watched = nullptr;
}

// Once the stage has been cleaned up there is nothing to cancel, even while
// its observer is still being told (the id is then still reserved).
TEST_F(SchedulerTest, CancelAfterCleanupIsNotFoundEvenDuringDone) {
  auto scheduler = Make();
  std::promise<absl::Status> cancel_in_done;
  StageTask task;
  task.id = "t1";
  task.stage = MakeStage({MakeStep("a", "ok")});
  task.observer = ObserveWith({.done = [&](const StageResult&) {
    cancel_in_done.set_value(scheduler->Cancel("t1"));
  }});
  ASSERT_TRUE(scheduler->Submit(std::move(task)).ok());
  const absl::Status status = cancel_in_done.get_future().get();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
}

TEST_F(SchedulerTest, CancelRunningStageStopsStepSkipsRestAndCleansUp) {
  auto scheduler = Make();
  auto f = Run(*scheduler, "t1",
               MakeStage({MakeStep("a", "wait"), MakeStep("b", "ok")}));
  WaitForCall("exec:t1:a");
  ASSERT_TRUE(scheduler->Cancel("t1").ok());
  StageResult r = f.get();
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[0].status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[1].status, StepStatus::kSkipped);
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:t1", "exec:t1:a", "cleanup:t1"));
}

TEST_F(SchedulerTest, StepDeadlineIsTheEarlierOfStepAndStageTimeouts) {
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("a", "ok"), MakeStep("b", "ok")});
  stage.timeout = absl::Minutes(5);
  stage.steps[0].timeout = absl::Minutes(1);
  stage.steps[1].timeout = absl::Minutes(10);
  const absl::Time start = clock_.Now();
  Run(*scheduler, "t1", stage).get();
  ASSERT_EQ(journal_.deadlines.size(), 2u);
  EXPECT_EQ(journal_.deadlines[0], start + absl::Minutes(1));
  EXPECT_EQ(journal_.deadlines[1], start + absl::Minutes(5));
}

TEST_F(SchedulerTest, StepTimeoutFailsTheStageWithTimeout) {
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("slow", "take:2m"), MakeStep("b", "ok")});
  stage.steps[0].timeout = absl::Seconds(30);
  StageResult r = Run(*scheduler, "t1", stage).get();
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  EXPECT_EQ(r.steps[0].duration, absl::Seconds(30));
  EXPECT_EQ(r.steps[1].status, StepStatus::kSkipped);
  EXPECT_EQ(r.status, StepStatus::kTimeout);
}

TEST_F(SchedulerTest, StageTimeoutSkipsRemainingStepsAndStillCleansUp) {
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("a", "take:40s"), MakeStep("b", "take:40s"),
                           MakeStep("c", "ok")});
  stage.timeout = absl::Minutes(1);
  StageResult r = Run(*scheduler, "t1", stage).get();
  EXPECT_EQ(r.status, StepStatus::kTimeout);
  EXPECT_THAT(r.error, HasSubstr("timed out after 1m"));
  EXPECT_EQ(r.steps[0].status, StepStatus::kSuccess);
  EXPECT_EQ(r.steps[1].status, StepStatus::kTimeout);
  EXPECT_EQ(r.steps[2].status, StepStatus::kSkipped);
  EXPECT_EQ(journal_.Calls().back(), "cleanup:t1");
}

TEST_F(SchedulerTest, SecretsAreSubstitutedAndMaskedInLogsErrorsAndOutputs) {
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("a", "say:token=${{ secrets.API }}"),
                           MakeStep("b", "output:T=${{secrets.API}}"),
                           MakeStep("c", "error:bad ${{secrets.API}}")});
  stage.secrets["API"] = "hunter2-value";
  StageResult r = Run(*scheduler, "t1", stage).get();
  EXPECT_THAT(sink_.TextOf("a"), ElementsAre("token=**************"));
  EXPECT_EQ(r.steps[1].outputs.at("T"), "**************");
  EXPECT_EQ(r.steps[2].error, "bad **************");
  EXPECT_THAT(StageResultToJson(r), Not(HasSubstr("hunter2")));
  EXPECT_THAT(sink_.All(), Not(HasSubstr("hunter2")));
}

TEST_F(SchedulerTest, UnknownSecretFailsBeforeInitialize) {
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("a", "say:${{secrets.NOPE}}")});
  stage.secrets["API"] = "x-secret-x";
  // Refused by Submit, which checks the whole stage before it queues it.
  StageTask task;
  task.id = "t1";
  task.stage = stage;
  absl::Status refused = scheduler->Submit(std::move(task));
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_THAT(refused.message(),
              HasSubstr("steps[0].commands[0]: unknown secret 'NOPE'"));
  EXPECT_THAT(refused.message(), Not(HasSubstr("x-secret-x")));
  EXPECT_TRUE(journal_.Calls().empty());
}

TEST_F(SchedulerTest, StageEnvIsMergedUnderStepEnvs) {
  std::map<std::string, std::string> seen;
  class EnvExecutor final : public Executor {
   public:
    explicit EnvExecutor(std::map<std::string, std::string>& seen)
        : seen_(seen) {}
    absl::Status Initialize(const StageContext&) override {
      return absl::OkStatus();
    }
    StepResult Execute(const StepContext& ctx) override {
      seen_ = ctx.step.envs;
      return {};
    }
    absl::Status Cleanup(const StageContext&) override {
      return absl::OkStatus();
    }

   private:
    std::map<std::string, std::string>& seen_;
  };
  ASSERT_TRUE(
      registry_
          .Register("env", [&] { return std::make_unique<EnvExecutor>(seen); })
          .ok());
  auto scheduler = Make();
  Stage stage = MakeStage({MakeStep("a", "ok")}, "env");
  stage.env = {{"CI", "true"}, {"MODE", "stage"}};
  stage.steps[0].envs = {{"MODE", "step"}};
  Run(*scheduler, "t1", stage).get();
  EXPECT_EQ(seen.at("CI"), "true");
  EXPECT_EQ(seen.at("MODE"), "step");
}

TEST_F(SchedulerTest, ShutdownLetsRunningStageFinishWithinDrain) {
  auto scheduler = Make(1);
  auto running = Run(*scheduler, "t1", MakeStage({MakeStep("a", "wait")}));
  WaitForCall("exec:t1:a");
  auto queued = Run(*scheduler, "t2", MakeStage({MakeStep("a", "ok")}));
  scheduler->Shutdown(absl::Milliseconds(50));
  StageResult r = running.get();
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_THAT(r.error, HasSubstr("shutting down"));
  EXPECT_EQ(journal_.Calls().back(), "cleanup:t1");
  EXPECT_EQ(queued.get().status, StepStatus::kCancelled);
  StageTask late;
  late.id = "t3";
  late.stage = MakeStage({MakeStep("a", "ok")});
  EXPECT_TRUE(absl::IsUnavailable(scheduler->Submit(std::move(late))));
}

TEST_F(SchedulerTest, ShutdownWaitsForAStageThatFinishesInTime) {
  auto scheduler = Make();
  absl::Notification release;
  class SlowExecutor final : public Executor {
   public:
    explicit SlowExecutor(absl::Notification& n) : n_(n) {}
    absl::Status Initialize(const StageContext&) override {
      return absl::OkStatus();
    }
    StepResult Execute(const StepContext&) override {
      n_.WaitForNotification();
      return {};
    }
    absl::Status Cleanup(const StageContext&) override {
      return absl::OkStatus();
    }

   private:
    absl::Notification& n_;
  };
  ASSERT_TRUE(
      registry_
          .Register("slow",
                    [&] { return std::make_unique<SlowExecutor>(release); })
          .ok());
  auto f = Run(*scheduler, "t1", MakeStage({MakeStep("a", "ok")}, "slow"));
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(100));
    release.Notify();
  });
  scheduler->Shutdown(absl::Seconds(60));
  releaser.join();
  EXPECT_EQ(f.get().status, StepStatus::kSuccess);
}

TEST_F(SchedulerTest, ManyStagesFromManyThreadsAllCompleteOnce) {
  auto scheduler = Make(4);
  std::atomic<int> done{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < 250; ++i) {
        StageTask task;
        task.id = absl::StrCat(t, "-", i);
        task.stage = MakeStage({MakeStep("a", "ok")});
        task.observer = ObserveWith({.done = [&](const StageResult& r) {
          if (r.status == StepStatus::kSuccess) done.fetch_add(1);
        }});
        ASSERT_TRUE(scheduler->Submit(std::move(task)).ok());
      }
    });
  }
  for (auto& t : submitters) t.join();
  for (int i = 0; i < 10000 && scheduler->stats().completed < 1000; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(done.load(), 1000);
  EXPECT_EQ(scheduler->stats().completed, 1000u);
}

// A stage whose steps arrive one at a time, as Harness sends them.
struct FedStage {
  std::shared_ptr<StageFeed> feed;
  std::future<absl::Status> initialized;
  std::future<StageResult> done;
};

FedStage OpenFed(Scheduler& scheduler, LogSink* lines, const std::string& id,
                 const std::string& platform = "test",
                 absl::Duration idle = absl::Hours(1), bool resume = false) {
  auto init = std::make_shared<std::promise<absl::Status>>();
  auto result = std::make_shared<std::promise<StageResult>>();
  FedStage fed;
  fed.initialized = init->get_future();
  fed.done = result->get_future();
  fed.feed = std::make_shared<StageFeed>(
      [init](const absl::Status& s) { init->set_value(s); }, idle);
  StageTask task;
  task.id = id;
  task.stage = MakeStage({}, platform);
  task.feed = fed.feed;
  task.resume = resume;
  task.observer = ObserveWith(
      {.done = [result](const StageResult& r) { result->set_value(r); },
       .log = lines});
  EXPECT_TRUE(scheduler.Submit(std::move(task)).ok());
  return fed;
}

std::future<StepResult> PushStep(StageFeed& feed, Step step,
                                 std::vector<std::string> masks = {},
                                 bool reattach = false) {
  auto promise = std::make_shared<std::promise<StepResult>>();
  auto future = promise->get_future();
  auto done = [promise](const StepResult& r) { promise->set_value(r); };
  absl::Status s = reattach
                       ? feed.Reattach(std::move(step), std::move(masks), done)
                       : feed.Push(std::move(step), std::move(masks), done);
  if (!s.ok()) {
    StepResult r;
    r.status = StepStatus::kSkipped;
    r.error = std::string(s.message());
    promise->set_value(r);
  }
  return future;
}

std::future<absl::Status> CloseFed(StageFeed& feed) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  feed.Close([promise](const absl::Status& s) { promise->set_value(s); });
  return promise->get_future();
}

TEST_F(SchedulerTest, FedStageRunsStepsAsTheyArriveOnOneInstance) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn");
  ASSERT_TRUE(fed.initialized.get().ok());
  StepResult a = PushStep(*fed.feed, MakeStep("a", "output:V=1")).get();
  EXPECT_EQ(a.status, StepStatus::kSuccess);
  EXPECT_EQ(a.outputs.at("V"), "1");
  // A failed step does not end a fed stage: the manager sends what is next.
  StepResult b = PushStep(*fed.feed, MakeStep("b", "fail")).get();
  EXPECT_EQ(b.status, StepStatus::kFailure);
  EXPECT_EQ(b.exit_code, 3);
  StepResult c = PushStep(*fed.feed, MakeStep("c", "ok")).get();
  EXPECT_EQ(c.status, StepStatus::kSuccess);
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  StageResult r = fed.done.get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  ASSERT_EQ(r.steps.size(), 3u);
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:txn", "exec:txn:a", "exec:txn:b", "exec:txn:c",
                          "cleanup:txn"));
  for (size_t i = 1; i < journal_.instances.size(); ++i) {
    EXPECT_EQ(journal_.instances[i], journal_.instances[0]);
  }
  // Cleanup is idempotent; a step after it is refused.
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  EXPECT_THAT(PushStep(*fed.feed, MakeStep("d", "ok")).get().error,
              HasSubstr("has ended"));
}

TEST_F(SchedulerTest, FedStageReportsAFailedInitializeAndStillCleansUp) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn", "broken-init");
  absl::Status init = fed.initialized.get();
  EXPECT_THAT(init.message(), HasSubstr("no network today"));
  EXPECT_EQ(fed.done.get().status, StepStatus::kFailure);
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:txn", "cleanup:txn"));
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
}

TEST_F(SchedulerTest, AResumedStageIsAdoptedAndItsInterruptedStepReattached) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn", "test", absl::Hours(1),
                         /*resume=*/true);
  ASSERT_TRUE(fed.initialized.get().ok());
  StepResult a =
      PushStep(*fed.feed, MakeStep("a", "output:V=1"), {}, /*reattach=*/true)
          .get();
  EXPECT_EQ(a.status, StepStatus::kSuccess);
  EXPECT_EQ(a.outputs.at("V"), "1");
  EXPECT_EQ(PushStep(*fed.feed, MakeStep("b", "ok")).get().status,
            StepStatus::kSuccess);
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  EXPECT_EQ(fed.done.get().status, StepStatus::kSuccess);
  // Resume instead of Initialize; the step it was running re-attached, the
  // next one run as usual; cleanup as always.
  EXPECT_THAT(journal_.Calls(), ElementsAre("resume:txn", "reattach:txn:a",
                                            "exec:txn:b", "cleanup:txn"));
}

TEST_F(SchedulerTest, AStageItsPlatformCannotResumeIsCleanedUp) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn", "broken-init",
                         absl::Hours(1), /*resume=*/true);
  absl::Status resumed = fed.initialized.get();
  EXPECT_TRUE(absl::IsUnimplemented(resumed)) << resumed;
  EXPECT_THAT(resumed.message(), HasSubstr("cannot resume"));
  StageResult r = fed.done.get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_THAT(r.error, HasSubstr("resume: "));
  // What the earlier process made is still removed.
  EXPECT_THAT(journal_.Calls(), ElementsAre("resume:txn", "cleanup:txn"));
}

TEST_F(SchedulerTest, FedStepsAreMaskedAndCheckedAsTheyArrive) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn");
  ASSERT_TRUE(fed.initialized.get().ok());
  StepResult said =
      PushStep(*fed.feed, MakeStep("a", "say:token=hunter2"), {"hunter2"})
          .get();
  EXPECT_EQ(said.status, StepStatus::kSuccess);
  EXPECT_THAT(sink_.All(), HasSubstr("token="));
  EXPECT_THAT(sink_.All(), Not(HasSubstr("hunter2")));
  StepResult unknown =
      PushStep(*fed.feed, MakeStep("b", "say:${{secrets.nope}}")).get();
  EXPECT_EQ(unknown.status, StepStatus::kFailure);
  EXPECT_THAT(unknown.error, HasSubstr("nope"));
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:txn", "exec:txn:a", "cleanup:txn"));
}

TEST_F(SchedulerTest, DelegateCredentialsAreMaskedInEveryStage) {
  SchedulerOptions options;
  options.registry = &registry_;
  options.clock = &clock_;
  options.masked_values = {"delegate-tok-123"};
  Scheduler scheduler(options);
  // The stage has no secrets of its own: the value reached it some other
  // way (pasted into its env, read from the delegate's /proc entry).
  StageResult r = Run(scheduler, "t1",
                      MakeStage({MakeStep("a", "say:got delegate-tok-123"),
                                 MakeStep("b", "output:T=delegate-tok-123"),
                                 MakeStep("c", "error:bad delegate-tok-123")}))
                      .get();
  EXPECT_THAT(sink_.TextOf("a"), ElementsAre("got **************"));
  EXPECT_EQ(r.steps[1].outputs.at("T"), "**************");
  EXPECT_EQ(r.steps[2].error, "bad **************");
  EXPECT_THAT(StageResultToJson(r), Not(HasSubstr("delegate-tok")));

  FedStage fed = OpenFed(scheduler, &sink_, "txn");
  ASSERT_TRUE(fed.initialized.get().ok());
  StepResult said =
      PushStep(*fed.feed, MakeStep("f", "say:fed delegate-tok-123"), {"xyz1"})
          .get();
  EXPECT_EQ(said.status, StepStatus::kSuccess);
  EXPECT_THAT(sink_.TextOf("f"), ElementsAre("fed **************"));
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  EXPECT_THAT(sink_.All(), Not(HasSubstr("delegate-tok")));
}

TEST_F(SchedulerTest, DuplicateStepIdsAreRefusedNamingTheId) {
  auto scheduler = Make();
  StageTask task;
  task.id = "t1";
  task.stage = MakeStage({MakeStep("build", "ok"), MakeStep("test", "ok"),
                          MakeStep("build", "ok")});
  absl::Status refused = scheduler->Submit(std::move(task));
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_THAT(refused.message(),
              HasSubstr("steps[2].id: duplicate step id 'build' (first at "
                        "steps[0])"));
  EXPECT_TRUE(journal_.Calls().empty());

  FedStage fed = OpenFed(*scheduler, &sink_, "txn");
  ASSERT_TRUE(fed.initialized.get().ok());
  EXPECT_EQ(PushStep(*fed.feed, MakeStep("a", "ok")).get().status,
            StepStatus::kSuccess);
  StepResult again = PushStep(*fed.feed, MakeStep("a", "ok")).get();
  EXPECT_EQ(again.status, StepStatus::kFailure);
  EXPECT_THAT(again.error, HasSubstr("duplicate step id 'a'"));
  EXPECT_TRUE(CloseFed(*fed.feed).get().ok());
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:txn", "exec:txn:a", "cleanup:txn"));
}

TEST_F(SchedulerTest, DuplicateStepIdsAreRefusedInALongStageToo) {
  // Short stages are compared pairwise and long ones through a map: both
  // name the same first occurrence.
  auto scheduler = Make();
  std::vector<Step> steps;
  for (int i = 0; i < 40; ++i) {
    steps.push_back(MakeStep(absl::StrCat("s", i), "ok"));
  }
  steps.push_back(MakeStep("s7", "ok"));
  steps.push_back(MakeStep("s7", "ok"));
  StageTask task;
  task.id = "long";
  task.stage = MakeStage(std::move(steps));
  absl::Status refused = scheduler->Submit(std::move(task));
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_THAT(refused.message(),
              HasSubstr("steps[40].id: duplicate step id 's7' (first at "
                        "steps[7])"));
  EXPECT_THAT(refused.message(),
              HasSubstr("steps[41].id: duplicate step id 's7' (first at "
                        "steps[7])"));
  EXPECT_TRUE(journal_.Calls().empty());
}

TEST_F(SchedulerTest, CancelOfAFedStageStopsTheStepAndAnswersTheQueued) {
  auto scheduler = Make();
  FedStage fed = OpenFed(*scheduler, &sink_, "txn");
  ASSERT_TRUE(fed.initialized.get().ok());
  auto waiting = PushStep(*fed.feed, MakeStep("a", "wait"));
  auto queued = PushStep(*fed.feed, MakeStep("b", "ok"));
  WaitForCall("exec:txn:a");
  ASSERT_TRUE(scheduler->Cancel("txn").ok());
  EXPECT_EQ(waiting.get().status, StepStatus::kCancelled);
  EXPECT_EQ(queued.get().status, StepStatus::kCancelled);
  EXPECT_EQ(fed.done.get().status, StepStatus::kCancelled);
  EXPECT_THAT(journal_.Calls(),
              ElementsAre("init:txn", "exec:txn:a", "cleanup:txn"));
}

TEST_F(SchedulerTest, FedStageHoldsItsCapacitySlotUntilCleanup) {
  auto scheduler = Make(1);
  FedStage first = OpenFed(*scheduler, &sink_, "one");
  ASSERT_TRUE(first.initialized.get().ok());
  FedStage second = OpenFed(*scheduler, &sink_, "two");
  EXPECT_EQ(second.initialized.wait_for(std::chrono::milliseconds(50)),
            std::future_status::timeout);
  EXPECT_EQ(scheduler->stats().queued, 1u);
  EXPECT_TRUE(CloseFed(*first.feed).get().ok());
  EXPECT_TRUE(second.initialized.get().ok());
  EXPECT_TRUE(CloseFed(*second.feed).get().ok());
}

TEST_F(SchedulerTest, AFedStageThatHearsNothingIsCleanedUp) {
  auto scheduler = Make();
  FedStage fed =
      OpenFed(*scheduler, &sink_, "txn", "test", absl::Milliseconds(20));
  ASSERT_TRUE(fed.initialized.get().ok());
  StageResult r = fed.done.get();
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_THAT(r.error, HasSubstr("no step and no cleanup arrived"));
  EXPECT_THAT(journal_.Calls(), ElementsAre("init:txn", "cleanup:txn"));
}

TEST_F(SchedulerTest, ShutdownCancelsAFedStageWaitingForCapacity) {
  auto scheduler = Make(1);
  FedStage first = OpenFed(*scheduler, &sink_, "one");
  ASSERT_TRUE(first.initialized.get().ok());
  FedStage second = OpenFed(*scheduler, &sink_, "two");
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    first.feed->Close(nullptr);
  });
  scheduler->Shutdown(absl::Seconds(5));
  closer.join();
  EXPECT_THAT(second.initialized.get().message(), HasSubstr("shut down"));
  EXPECT_EQ(second.done.get().status, StepStatus::kCancelled);
  EXPECT_EQ(first.done.get().status, StepStatus::kSuccess);
}

}  // namespace
}  // namespace delegate
