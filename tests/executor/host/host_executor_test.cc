// The host executor against a scripted process on a fake clock: timeouts,
// signal escalation and the process spec, without real time or processes.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>

#include "absl/strings/match.h"
#include "delegate/builtin_executors.h"
#include "delegate/event_log.h"
#include "delegate/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/hand_run.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/scripted_process.h"
#include "tests/fakes/stage_run.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::delegate::testing::FakeClock;
using ::delegate::testing::HandRun;
using ::delegate::testing::ProcessScript;
using ::delegate::testing::RecordingLogSink;
using ::delegate::testing::ScriptedLauncher;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class HostExecutorTest : public ::testing::Test {
 protected:
  HostExecutorTest() : launcher_(clock_) {
    HostExecutorOptions options;
    options.workdir = ::testing::TempDir() + "/host-executor-test";
    options.grace_period = absl::Seconds(10);
    options.launcher = &launcher_;
    options.base_env =
        std::vector<std::string>{"PATH=/usr/bin:/bin", "HOME=/root"};
    EXPECT_TRUE(RegisterHostExecutor(registry_, options).ok());
    SchedulerOptions sched;
    sched.registry = &registry_;
    sched.clock = &clock_;
    scheduler_ = std::make_unique<Scheduler>(sched);
  }

  StageResult Run(Stage stage) {
    return testing::RunStage(*scheduler_, "task-" + std::to_string(next_id_++),
                             std::move(stage), &sink_);
  }

  static Stage OneStep(std::vector<std::string> commands) {
    Stage stage;
    stage.name = "s";
    Step step;
    step.id = "only";
    step.commands = std::move(commands);
    stage.steps.push_back(step);
    return stage;
  }

  FakeClock clock_;
  ScriptedLauncher launcher_;
  ExecutorRegistry registry_;
  RecordingLogSink sink_;
  std::unique_ptr<Scheduler> scheduler_;
  int next_id_ = 1;
};

TEST_F(HostExecutorTest, RunsCommandsThroughShellWithMergedEnvironment) {
  ProcessScript script;
  script.output = "hi\n";
  launcher_.set_script(script);
  Stage stage = OneStep({"make -j2"});
  stage.env["CI"] = "true";
  stage.steps[0].envs["MODE"] = "fast";
  stage.steps[0].working_dir = "src";
  StageResult r = Run(stage);
  EXPECT_EQ(r.status, StepStatus::kSuccess);
  EXPECT_EQ(r.steps[0].exit_code, 0);
  ASSERT_EQ(launcher_.specs.size(), 1u);
  const ProcessSpec& spec = launcher_.specs[0];
  ASSERT_EQ(spec.argv.size(), 4u);
  EXPECT_EQ(spec.argv[0], "/bin/sh");
  EXPECT_EQ(spec.argv[1], "-c");
  EXPECT_EQ(spec.argv[2], "set -e\nprintf '+ %s\\n' 'make -j2'\nmake -j2\n");
  EXPECT_TRUE(absl::EndsWith(spec.working_dir, "/workspace/src"));
  EXPECT_THAT(spec.env, Contains("CI=true"));
  EXPECT_THAT(spec.env, Contains("MODE=fast"));
  EXPECT_THAT(spec.env, Contains("HOME=/root"));
  bool has_output_file = false, has_drone_output = false;
  for (const std::string& kv : spec.env) {
    has_output_file |= absl::StartsWith(kv, "HARNESS_OUTPUT_FILE=");
    has_drone_output |= absl::StartsWith(kv, "DRONE_OUTPUT=");
  }
  EXPECT_TRUE(has_output_file);
  EXPECT_TRUE(has_drone_output);
  EXPECT_THAT(sink_.TextOf("only"), ElementsAre("hi"));
}

TEST_F(HostExecutorTest, NonZeroExitIsAFailureWithTheExitStatus) {
  ProcessScript script;
  script.exit_code = 7;
  launcher_.set_script(script);
  StageResult r = Run(OneStep({"false"}));
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].exit_code, 7);
  EXPECT_EQ(r.steps[0].error, "exit status 7");
}

TEST_F(HostExecutorTest, TimeoutSendsSigtermAndStopsWithinTheGracePeriod) {
  ProcessScript script;
  script.runs_for = absl::InfiniteDuration();
  launcher_.set_script(script);
  Stage stage = OneStep({"sleep 1000"});
  stage.steps[0].timeout = absl::Minutes(10);
  const absl::Time start = clock_.Now();
  StageResult r = Run(stage);
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  EXPECT_THAT(r.steps[0].error, HasSubstr("timed out"));
  EXPECT_THAT(launcher_.signals, ElementsAre(SIGTERM));
  EXPECT_EQ(clock_.Now() - start, absl::Minutes(10));
}

TEST_F(HostExecutorTest, TimeoutEscalatesToSigkillWhenSigtermIsIgnored) {
  ProcessScript script;
  script.runs_for = absl::InfiniteDuration();
  script.ignores_sigterm = true;
  launcher_.set_script(script);
  Stage stage = OneStep({"trap '' TERM; sleep 1000"});
  stage.steps[0].timeout = absl::Seconds(30);
  const absl::Time start = clock_.Now();
  StageResult r = Run(stage);
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  EXPECT_THAT(launcher_.signals, ElementsAre(SIGTERM, SIGKILL));
  EXPECT_EQ(clock_.Now() - start, absl::Seconds(40));
  EXPECT_THAT(r.steps[0].error, HasSubstr("SIGKILL"));
  EXPECT_THAT(sink_.TextOf("only"), Contains(HasSubstr("sending SIGKILL")));
}

TEST_F(HostExecutorTest, ProcessThatFinishesBeforeItsTimeoutSucceeds) {
  ProcessScript script;
  script.runs_for = absl::Minutes(9);
  launcher_.set_script(script);
  Stage stage = OneStep({"sleep 540"});
  stage.steps[0].timeout = absl::Minutes(10);
  StageResult r = Run(stage);
  EXPECT_EQ(r.steps[0].status, StepStatus::kSuccess);
  EXPECT_TRUE(launcher_.signals.empty());
  EXPECT_EQ(r.steps[0].duration, absl::Minutes(9));
}

TEST_F(HostExecutorTest, EntrypointAndArgsRunWithoutAShell) {
  Stage stage = OneStep({});
  stage.steps[0].entrypoint = {"/usr/bin/env"};
  stage.steps[0].args = {"-u", "X", "printenv"};
  EXPECT_EQ(Run(stage).status, StepStatus::kSuccess);
  EXPECT_THAT(launcher_.specs[0].argv,
              ElementsAre("/usr/bin/env", "-u", "X", "printenv"));
}

TEST_F(HostExecutorTest, DelegateTokenIsNotPassedToSteps) {
  HostExecutorOptions options;
  options.launcher = &launcher_;
  options.base_env = std::nullopt;
  setenv("HARNESS_TOKEN", "should-not-leak-0000", 1);
  setenv("DELEGATE_TOKEN", "should-not-leak-0000", 1);
  ExecutorRegistry registry;
  ASSERT_TRUE(RegisterHostExecutor(registry, options).ok());
  unsetenv("HARNESS_TOKEN");
  unsetenv("DELEGATE_TOKEN");
  SchedulerOptions sched;
  sched.registry = &registry;
  sched.clock = &clock_;
  Scheduler scheduler(sched);
  testing::RunStage(scheduler, "t", OneStep({"env"}), &sink_);
  for (const std::string& kv : launcher_.specs.back().env) {
    EXPECT_FALSE(absl::StrContains(kv, "should-not-leak")) << kv;
  }
}

TEST_F(HostExecutorTest, ValidateNamesEveryUnsupportedField) {
  Stage stage = OneStep({"true"});
  stage.steps[0].image = "alpine";
  stage.steps[0].security_context.privileged = true;
  stage.steps[0].security_context.add_capability = {"NET_ADMIN"};
  EfsVolume efs;
  efs.filesystem_id = "fs-12345678";
  stage.volumes.push_back({"shared", efs});
  stage.volumes.push_back({"cache", EmptyDirVolume{}});
  stage.steps[0].volume_mounts.push_back({"cache", "/cache"});
  absl::Status s = ValidateForPlatform(registry_, stage);
  ASSERT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(s.message(), HasSubstr("steps[0].image"));
  EXPECT_THAT(s.message(), HasSubstr("steps[0].security_context.privileged"));
  EXPECT_THAT(s.message(),
              HasSubstr("steps[0].security_context.add_capability"));
  EXPECT_THAT(s.message(), HasSubstr("volumes[0].efs"));
  EXPECT_THAT(s.message(), HasSubstr("steps[0].volume_mounts[0].path"));
  EXPECT_TRUE(launcher_.specs.empty());
}

TEST_F(HostExecutorTest, WorkingDirMayNotLeaveTheWorkspace) {
  Stage stage = OneStep({"true"});
  stage.steps[0].working_dir = "../../etc";
  absl::Status s = ValidateForPlatform(registry_, stage);
  EXPECT_THAT(s.message(), HasSubstr("steps[0].working_dir"));
  EXPECT_THAT(s.message(), HasSubstr("leaves the workspace"));
}

// The value of `key` in a process spec's environment.
std::string EnvOf(const ProcessSpec& spec, std::string_view key) {
  for (const std::string& kv : spec.env) {
    if (kv.starts_with(std::string(key) + "=")) {
      return kv.substr(key.size() + 1);
    }
  }
  return "";
}

TEST_F(HostExecutorTest, AResumedStageGoesOnInTheDirectoryItHad) {
  Stage stage = OneStep({"make"});
  stage.volumes.push_back({"cache", EmptyDirVolume{}});
  HandRun run(stage, "resume-" + std::to_string(getpid()), "host-test", clock_);
  // The executor of the process that was killed mid-stage: never cleaned
  // up.
  std::unique_ptr<Executor> killed = registry_.Create("host");
  ASSERT_TRUE(killed->Initialize(run.context()).ok());
  ASSERT_EQ(run.Step(*killed, 0).status, StepStatus::kSuccess);
  const std::string workspace =
      EnvOf(launcher_.specs.back(), "HARNESS_WORKSPACE");
  ASSERT_FALSE(workspace.empty());
  std::ofstream(workspace + "/built") << "from before the restart\n";

  std::unique_ptr<Executor> resumed = registry_.Create("host");
  ASSERT_TRUE(resumed->Resume(run.context()).ok());
  EXPECT_THAT(run.Text(), HasSubstr("goes on after the delegate restarted"));
  // The step the killed process was running died with it (its keeper ends
  // it): it is not started again.
  StepResult reattached = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(reattached.status, StepStatus::kFailure);
  EXPECT_EQ(reattached.error,
            "the delegate restarted during step only; host steps stop with "
            "the delegate (its keeper ends their processes), so there is "
            "nothing to re-attach to and the step's result is unknown");
  EXPECT_EQ(launcher_.specs.size(), 1u);
  // The next steps see the workspace and the volumes it had.
  EXPECT_EQ(run.Step(*resumed, 0).status, StepStatus::kSuccess);
  EXPECT_EQ(EnvOf(launcher_.specs.back(), "HARNESS_WORKSPACE"), workspace);
  EXPECT_TRUE(fs::exists(workspace + "/built"));
  EXPECT_TRUE(fs::is_directory(fs::path(workspace).parent_path() / "volumes" /
                               "cache"));
  ASSERT_TRUE(resumed->Cleanup(run.context()).ok());
  EXPECT_FALSE(fs::exists(workspace));

  // Nothing is left to adopt now.
  std::unique_ptr<Executor> late = registry_.Create("host");
  absl::Status gone = late->Resume(run.context());
  EXPECT_TRUE(absl::IsFailedPrecondition(gone)) << gone;
  EXPECT_THAT(gone.message(), HasSubstr("stage's directory"));
  EXPECT_THAT(gone.message(), HasSubstr("is gone"));
  EXPECT_TRUE(late->Cleanup(run.context()).ok());
}

TEST(HostReapTest, AStartKeepsTheDirectoriesOfTheStagesToBeResumed) {
  const fs::path root = fs::path(::testing::TempDir()) /
                        ("host-reap-" + std::to_string(getpid()));
  fs::remove_all(root);
  const std::string own(32, 'a');
  const std::string gone(32, 'b');
  fs::create_directories(root / "state" / "instances");
  std::ofstream(root / "state" / "instances" / (gone + ".lock")).close();
  HostExecutorOptions options;
  options.workdir = (root / "work").string();
  options.instance = own;
  options.state_dir = (root / "state").string();
  options.base_env = std::vector<std::string>{"PATH=/usr/bin:/bin"};
  ExecutorRegistry registry;
  ASSERT_TRUE(RegisterHostExecutor(registry, options).ok());

  // What a killed earlier process of this instance left: a stage to be
  // resumed and one that is not; and what a gone instance left of a stage
  // with the same id, which is not this instance's to resume.
  Stage stage;
  stage.name = "s";
  HandRun resuming(stage, "keep-me", "host-test");
  HandRun other(stage, "drop-me", "host-test");
  std::unique_ptr<Executor> a = registry.Create("host");
  std::unique_ptr<Executor> b = registry.Create("host");
  ASSERT_TRUE(a->Initialize(resuming.context()).ok());
  ASSERT_TRUE(b->Initialize(other.context()).ok());
  fs::create_directories(root / "work" /
                         ("delegate-" + gone + "-keep-me-Ab12Cd"));

  std::string log;
  EventLog events([&log](std::string_view line) {
    log.append(line);
    log.append("\n");
  });
  registry.Start(
      {.delegate_name = "host-test", .log = &events, .resuming = {"keep-me"}});
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(root / "work")) {
    left.push_back(entry.path().filename().string());
  }
  ASSERT_EQ(left.size(), 1u) << log;
  EXPECT_TRUE(absl::StartsWith(left[0], "delegate-" + own + "-keep-me-"))
      << left[0];
  EXPECT_THAT(log, HasSubstr("drop-me"));
  EXPECT_THAT(log, HasSubstr(gone + "-keep-me"));

  // And the stage goes on there.
  std::unique_ptr<Executor> resumed = registry.Create("host");
  ASSERT_TRUE(resumed->Resume(resuming.context()).ok());
  EXPECT_THAT(resuming.Text(), HasSubstr(left[0]));
  EXPECT_TRUE(resumed->Cleanup(resuming.context()).ok());
  fs::remove_all(root);
}

}  // namespace
}  // namespace delegate
