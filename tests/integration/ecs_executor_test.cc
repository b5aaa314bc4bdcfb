// Stages on "ecs-fargate" and "ecs-ec2" through the scheduler against the
// strict loopback ECS and CloudWatch Logs fake: what a user sees (results,
// log lines, errors) and what is left on "AWS" afterwards (nothing running,
// nothing registered), including the fault cases: throttling, 5xx, a task
// that never starts, a non-zero exit, credentials that expire mid-stage, a
// delegate killed mid-stage then started again, and a restarted delegate
// resuming a stage and re-attaching to the task of its running step.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "delegate/builtin_executors.h"
#include "delegate/event_log.h"
#include "delegate/scheduler.h"
#include "executor/ecs/ecs_runtime.h"
#include "executor/ecs/task_definition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/hand_run.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/stage_run.h"
#include "util/env.h"

namespace delegate::testing {
namespace {

using ::testing::Contains;
using ::testing::Each;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kKey[] = "AKIDECSTEST";
constexpr char kSecret[] = "ecs-test-secret";
constexpr char kExecRole[] = "arn:aws:iam::123456789012:role/ci-exec";

class EcsExecutorTest : public ::testing::Test {
 protected:
  void StartFake(FakeAwsOptions options = {}) {
    options.testdata_dir = AwsTestdataDir();
    options.credentials.push_back({kKey, kSecret, "", absl::InfiniteFuture()});
    auto fake = FakeAws::Start(std::move(options));
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
  }
  // The fake running its tasks as containers on the test's Docker Engine.
  void StartFakeOnDocker() {
    FakeAwsOptions options;
    const char* host = getenv("DOCKER_HOST");
    options.docker_host = host ? host : "unix:///var/run/docker.sock";
    StartFake(std::move(options));
  }

  EnvMap Env() {
    return {{"AWS_ACCESS_KEY_ID", kKey},
            {"AWS_SECRET_ACCESS_KEY", kSecret},
            {"AWS_REGION", "us-east-1"},
            {"AWS_ENDPOINT_URL", fake_->url()}};
  }

  // Cluster "ci", one subnet, quick polls.
  static EcsExecutorOptions Options(EnvMap env) {
    EcsExecutorOptions options;
    options.env = std::move(env);
    options.cluster = "ci";
    options.subnets = {"subnet-0123456789abcdef0"};
    options.execution_role_arn = kExecRole;
    options.poll_interval = absl::Milliseconds(50);
    options.start_timeout = absl::Seconds(30);
    options.grace_period = absl::Seconds(2);
    options.instance = "test-instance-" + std::to_string(getpid());
    return options;
  }

  void StartScheduler(EnvMap env) { StartScheduler(Options(std::move(env))); }
  void StartScheduler(EcsExecutorOptions options) {
    ASSERT_TRUE(RegisterEcsExecutors(registry_, std::move(options)).ok());
    SchedulerOptions sched;
    sched.registry = &registry_;
    sched.delegate_name = "ecs-test";
    scheduler_ = std::make_unique<Scheduler>(sched);
  }

  void TearDown() override {
    scheduler_.reset();
    if (!fake_) return;
    std::vector<FakeRejection> rejected = fake_->Rejected();
    if (expired_tokens_expected_) {
      std::erase_if(rejected, [](const FakeRejection& r) {
        return r.code == "ExpiredTokenException";
      });
    }
    EXPECT_THAT(rejected, IsEmpty()) << Rejections();
    // Nothing left running, nothing left registered.
    for (const FakeTask& t : fake_->Tasks()) {
      EXPECT_EQ(t.desired_status, "STOPPED") << t.arn;
    }
    for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
      EXPECT_NE(d.status, "ACTIVE") << d.arn;
    }
  }

  std::string Rejections() {
    std::string out;
    for (const FakeRejection& r : fake_->Rejected()) {
      absl::StrAppend(&out, r.operation, ": ", r.code, ": ", r.message, "\n");
    }
    return out;
  }

  StageResult Run(Stage stage) {
    return RunStage(*scheduler_, "task-" + std::to_string(next_++),
                    std::move(stage), &sink_);
  }

  // Every container of every task does `b`.
  static FakeAwsOptions Every(ContainerBehaviour b) {
    FakeAwsOptions options;
    options.behaviour = [b](const FakeContainer&) { return b; };
    return options;
  }

  static Step Shell(std::string id, std::vector<std::string> commands) {
    return ImageStep(std::move(id), std::move(commands));
  }

  std::string Text(const std::string& step) {
    return absl::StrJoin(sink_.TextOf(step), "\n");
  }

  // `delegate exec FILE` as delegate `name` on ecs-ec2 in cluster "ci",
  // against the fake; its ECS instance is this host's name.
  pid_t SpawnExec(const std::string& file, const std::string& name,
                  const std::string& state_dir = "") {
    return SpawnDelegate({"exec", file}, name, state_dir);
  }

  // Whether a task of the fake reaches RUNNING within 10 s.
  bool AwaitRunningTask() {
    for (int i = 0; i < 400; ++i) {
      for (const FakeTask& t : fake_->Tasks()) {
        if (t.last_status == "RUNNING") return true;
      }
      absl::SleepFor(absl::Milliseconds(25));
    }
    return false;
  }

  // The delegate binary with `args`, set up as SpawnExec says; its stdout
  // goes to `out` when given.
  pid_t SpawnDelegate(const std::vector<std::string>& args,
                      const std::string& name, const std::string& state_dir,
                      const std::string& out = "") {
    std::vector<const char*> argv = {DELEGATE_BINARY};
    for (const std::string& a : args) argv.push_back(a.c_str());
    argv.push_back(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      if (!out.empty() && !freopen(out.c_str(), "w", stdout)) _exit(126);
      setenv("AWS_ACCESS_KEY_ID", kKey, 1);
      setenv("AWS_SECRET_ACCESS_KEY", kSecret, 1);
      setenv("AWS_REGION", "us-east-1", 1);
      setenv("AWS_ENDPOINT_URL", fake_->url().c_str(), 1);
      setenv("DELEGATE_ECS_CLUSTER", "ci", 1);
      setenv("DELEGATE_ECS_POLL_SECONDS", "0.05", 1);
      setenv("HARNESS_NAME", name.c_str(), 1);
      if (!state_dir.empty())
        setenv("DELEGATE_STATE_DIR", state_dir.c_str(), 1);
      execv(DELEGATE_BINARY, const_cast<char* const*>(argv.data()));
      _exit(127);
    }
    return pid;
  }

  // The executors registered and started as a restarted delegate does:
  // `resuming` are the stages it will resume.
  void StartExecutors(EcsExecutorOptions options,
                      std::vector<std::string> resuming) {
    ASSERT_TRUE(RegisterEcsExecutors(registry_, std::move(options)).ok());
    registry_.Start({.delegate_name = "ecs-test",
                     .log = &event_log_,
                     .resuming = std::move(resuming)});
  }

  // What the executors' start-up hooks logged.
  std::string Events() {
    absl::MutexLock lock(&events_mu_);
    return absl::StrJoin(events_, "\n");
  }

  std::unique_ptr<FakeAws> fake_;
  absl::Mutex events_mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(events_mu_);
  EventLog event_log_{[this](std::string_view line) {
    absl::MutexLock lock(&events_mu_);
    events_.emplace_back(line);
  }};
  bool expired_tokens_expected_ = false;
  ExecutorRegistry registry_;
  RecordingLogSink sink_;
  std::unique_ptr<Scheduler> scheduler_;
  int next_ = 1;
};

TEST_F(EcsExecutorTest, FargateStepsRunAsTasksAndTheirOutputComesBack) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer& c) {
    ContainerBehaviour b;
    const std::string script = absl::StrJoin(c.command, " ");
    b.output = {"output of " + c.environment.at("STEP_NAME")};
    b.exit_code = absl::StrContains(script, "false") ? 3 : 0;
    return b;
  };
  StartFake(std::move(options));
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-fargate";
  Step one = Shell("one", {"echo one"});
  one.envs = {{"STEP_NAME", "one"}};
  Step two = Shell("two", {"false"});
  two.envs = {{"STEP_NAME", "two"}};
  stage.steps = {one, two};

  StageResult result = Run(stage);
  ASSERT_EQ(result.steps.size(), 2u);
  EXPECT_EQ(result.steps[0].status, StepStatus::kSuccess)
      << result.steps[0].error;
  EXPECT_EQ(result.steps[0].exit_code, 0);
  EXPECT_THAT(Text("one"), HasSubstr("output of one"));
  EXPECT_EQ(result.steps[1].status, StepStatus::kFailure);
  EXPECT_EQ(result.steps[1].exit_code, 3);
  EXPECT_EQ(result.steps[1].error, "exit status 3");
  EXPECT_THAT(Text("two"), HasSubstr("output of two"));

  // Both steps share one task definition revision: only the command differs.
  EXPECT_EQ(fake_->CallCount("RegisterTaskDefinition"), 1);
  std::vector<FakeTask> tasks = fake_->Tasks();
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[0].launch_type, "FARGATE");
  EXPECT_EQ(tasks[0].tags.at("libdelegate:stage"), "task-1");
  EXPECT_EQ(tasks[1].tags.at("libdelegate:step"), "two");
  EXPECT_FALSE(tasks[0].client_token.empty());
  EXPECT_NE(tasks[0].client_token, tasks[1].client_token);
  // The shared log group exists.
  EXPECT_THAT(fake_->LogGroups(), Contains("/ecs/harness-delegates"));
}

TEST_F(EcsExecutorTest, PolicyIsCheckedBeforeAnyAwsCall) {
  StartFake();
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-fargate";
  Step step = Shell("root", {"id"});
  step.security_context.privileged = true;
  step.security_context.add_capability = {"NET_ADMIN"};
  step.resources = {0.25, 4096};
  stage.steps = {step};
  // Submit refuses the stage: the scheduler checks it before it queues it.
  StageRun run(*scheduler_, testing::TaskFor("refused", stage, &sink_));
  const absl::Status& refused = run.submitted();
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_THAT(refused.message(),
              HasSubstr("steps[0].security_context.privileged"));
  EXPECT_THAT(refused.message(), HasSubstr("NET_ADMIN"));
  EXPECT_THAT(refused.message(), HasSubstr("steps[0].resources.memory_mib"));
  EXPECT_THAT(fake_->Calls(), IsEmpty());
}

TEST_F(EcsExecutorTest, ThrottlingAndServerErrorsAreRetried) {
  StartFake();
  StartScheduler(Env());
  fake_->InjectError("RunTask", 400, "ThrottlingException", 1);
  fake_->InjectError("RegisterTaskDefinition", 500, "ServerException", 1);
  fake_->InjectError("DescribeTasks", 503, "ServiceUnavailableException", 2);
  Stage stage;
  stage.platform = "ecs-ec2";
  stage.steps = {Shell("s", {"true"})};
  StageResult result = Run(stage);
  EXPECT_EQ(result.status, StepStatus::kSuccess)
      << (result.steps.empty() ? result.error : result.steps[0].error);
  EXPECT_EQ(fake_->CallCount("RunTask"), 2);
  // The retried RunTask started one task, not two.
  EXPECT_EQ(fake_->Tasks().size(), 1u);
}

TEST_F(EcsExecutorTest, ATaskThatNeverStartsIsStoppedAtTheStepTimeout) {
  StartFake(Every({.stuck_in_pending = true}));
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-fargate";
  Step step = Shell("stuck", {"true"});
  step.timeout = absl::Seconds(1);
  stage.steps = {step};
  StageResult result = Run(stage);
  ASSERT_EQ(result.steps.size(), 1u);
  EXPECT_EQ(result.steps[0].status, StepStatus::kTimeout);
  EXPECT_GE(fake_->CallCount("StopTask"), 1);
  ASSERT_EQ(fake_->Tasks().size(), 1u);
  EXPECT_EQ(fake_->Tasks()[0].stop_code, "UserInitiated");
}

TEST_F(EcsExecutorTest, AnImageThatCannotBePulledSaysWhy) {
  StartFake(Every(
      {.fail_to_start =
           "CannotPullContainerError: pull image manifest has been retried 5 "
           "time(s): failed to resolve ref docker.io/library/nope:latest"}));
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-fargate";
  Step step = Shell("pull", {"true"});
  step.image = "nope:latest";
  stage.steps = {step};
  StageResult result = Run(stage);
  ASSERT_EQ(result.steps.size(), 1u);
  EXPECT_EQ(result.steps[0].status, StepStatus::kFailure);
  EXPECT_EQ(result.steps[0].exit_code, std::nullopt);
  EXPECT_THAT(result.steps[0].error, HasSubstr("never ran"));
  EXPECT_THAT(result.steps[0].error, HasSubstr("TaskFailedToStart"));
  EXPECT_THAT(result.steps[0].error, HasSubstr("CannotPullContainerError"));
}

TEST_F(EcsExecutorTest, CancelStopsTheRunningTask) {
  StartFake(Every({.run_for = absl::Minutes(10)}));
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-ec2";
  stage.steps = {Shell("long", {"sleep 600"})};
  StageRun run(*scheduler_, testing::TaskFor("cancel-me", stage, &sink_));
  ASSERT_TRUE(run.submitted().ok());
  for (int i = 0; i < 200; ++i) {
    std::vector<FakeTask> tasks = fake_->Tasks();
    if (!tasks.empty() && tasks[0].last_status == "RUNNING") break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_TRUE(scheduler_->Cancel("cancel-me").ok());
  StageResult result = run.Wait();
  EXPECT_EQ(result.status, StepStatus::kCancelled);
  ASSERT_EQ(fake_->Tasks().size(), 1u);
  EXPECT_EQ(fake_->Tasks()[0].stopped_reason, "cancelled by the delegate");
}

TEST_F(EcsExecutorTest, CredentialsThatExpireMidStageAreRefreshed) {
  StartFake(Every({.run_for = absl::Milliseconds(600)}));
  const std::string uri =
      fake_->ServeContainerCredentials("Bearer ci-token", absl::Hours(1));
  EnvMap env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", uri},
                {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer ci-token"},
                {"AWS_REGION", "us-east-1"},
                {"AWS_ENDPOINT_URL", fake_->url()}};
  StartScheduler(env);
  expired_tokens_expected_ = true;
  std::atomic<bool> stop{false};
  std::thread expirer([&] {
    // Once the step runs, every credential issued so far expires.
    while (!stop) {
      for (const FakeTask& t : fake_->Tasks()) {
        if (t.last_status == "RUNNING") {
          fake_->ExpireIssuedContainerCredentials();
          return;
        }
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  Stage stage;
  stage.platform = "ecs-fargate";
  stage.steps = {Shell("s", {"true"})};
  StageResult result = Run(stage);
  stop = true;
  expirer.join();
  EXPECT_EQ(result.status, StepStatus::kSuccess)
      << (result.steps.empty() ? result.error : result.steps[0].error);
  EXPECT_GE(fake_->container_credential_fetches(), 2);
}

TEST_F(EcsExecutorTest, OwnClusterAndSubnetComeFromTheTaskMetadata) {
  StartFake();
  const std::string metadata =
      fake_->ServeOwnTask("delegates", "FARGATE", "subnet-0aaaaaaaaaaaaaaaa",
                          "sg-0bbbbbbbbbbbbbbbb");
  EnvMap env = Env();
  env["ECS_CONTAINER_METADATA_URI_V4"] = metadata;
  EcsExecutorOptions options = Options(env);
  options.cluster.clear();  // both from the metadata
  options.subnets.clear();
  StartScheduler(std::move(options));
  Stage stage;
  stage.platform = "ecs-fargate";
  stage.steps = {Shell("s", {"true"})};
  StageResult result = Run(stage);
  EXPECT_EQ(result.status, StepStatus::kSuccess)
      << (result.steps.empty() ? result.error : result.steps[0].error);
  ASSERT_EQ(fake_->Tasks().size(), 1u);
  EXPECT_THAT(fake_->Tasks()[0].cluster, HasSubstr("delegates"));
  EXPECT_THAT(fake_->Tasks()[0].request_json,
              HasSubstr("subnet-0aaaaaaaaaaaaaaaa"));
}

// The steps really run: the fake starts their containers on the local
// Docker Engine and ships their output to CloudWatch Logs like awslogs.
TEST_F(EcsExecutorTest, StepsRunInRealContainersOnDocker) {
  std::unique_ptr<docker::DockerClient> engine;
  DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(engine);
  StartFakeOnDocker();
  StartScheduler(Env());
  Stage stage;
  stage.platform = "ecs-ec2";
  Step hello = Shell("hello", {"echo hello from $STEP_NAME", "id -u"});
  hello.envs = {{"STEP_NAME", "ecs"}};
  hello.security_context.run_as_user = 1234;
  Step fail = Shell("fail", {"echo about to fail", "exit 7"});
  stage.steps = {hello, fail};
  StageResult result = Run(stage);
  ASSERT_EQ(result.steps.size(), 2u);
  EXPECT_EQ(result.steps[0].status, StepStatus::kSuccess)
      << result.steps[0].error;
  EXPECT_THAT(Text("hello"), HasSubstr("hello from ecs"));
  EXPECT_THAT(Text("hello"), HasSubstr("1234"));
  EXPECT_EQ(result.steps[1].exit_code, 7);
  EXPECT_THAT(Text("fail"), HasSubstr("about to fail"));
}

// The delegate binary, SIGKILLed while a step runs, then started again: the
// second run removes the first one's task and task definition.
TEST_F(EcsExecutorTest, ADelegateKilledMidStageCleansUpWhenItComesBack) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer& c) {
    ContainerBehaviour b;
    b.run_for = absl::StrContains(absl::StrJoin(c.command, " "), "sleep")
                    ? absl::Hours(1)
                    : absl::Milliseconds(20);
    return b;
  };
  StartFake(std::move(options));
  const std::string dir =
      ::testing::TempDir() + "/ecs-kill-" + std::to_string(getpid());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  auto write_stage = [&](const std::string& name, const std::string& command) {
    std::ofstream(dir + "/" + name)
        << "name: " << name << "\nplatform: ecs-ec2\n"
        << "steps:\n  - id: s\n    image: busybox\n"
        << "    commands: [\"" << command << "\"]\n";
  };
  write_stage("long.yaml", "sleep 3600");
  write_stage("short.yaml", "true");
  auto spawn = [&](const std::string& file) {
    return SpawnExec(file, "killed-delegate");
  };
  pid_t first = spawn(dir + "/long.yaml");
  ASSERT_TRUE(AwaitRunningTask())
      << "the first delegate never got its task running";
  kill(first, SIGKILL);
  int status = 0;
  waitpid(first, &status, 0);
  // Left behind: a running task and an active task definition.
  EXPECT_EQ(fake_->Tasks()[0].desired_status, "RUNNING");

  pid_t second = spawn(dir + "/short.yaml");
  waitpid(second, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // TearDown checks that nothing runs and nothing is registered any more.
  std::vector<FakeTask> tasks = fake_->Tasks();
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[0].stopped_reason, "stage cleanup by the delegate");
}

// What a killed `delegate exec` left on ECS, `delegate cleanup` removes,
// and says what it removed.
TEST_F(EcsExecutorTest, CleanupRemovesTheTasksAKilledDelegateLeft) {
  FakeAwsOptions options;
  options.behaviour = [](const FakeContainer&) {
    ContainerBehaviour b;
    b.run_for = absl::Hours(1);
    return b;
  };
  StartFake(std::move(options));
  const std::string dir =
      ::testing::TempDir() + "/ecs-cleanup-" + std::to_string(getpid());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  std::ofstream(dir + "/long.yaml")
      << "name: long\nplatform: ecs-ec2\nsteps:\n  - id: s\n"
      << "    image: busybox\n    commands: [\"sleep 3600\"]\n";
  pid_t first = SpawnExec(dir + "/long.yaml", "cleaned-delegate", dir + "/st");
  ASSERT_TRUE(AwaitRunningTask()) << "the delegate never got its task running";
  kill(first, SIGKILL);
  int status = 0;
  waitpid(first, &status, 0);
  const FakeTask left = fake_->Tasks()[0];
  ASSERT_EQ(left.desired_status, "RUNNING");

  pid_t cleanup = SpawnDelegate({"cleanup"}, "cleaned-delegate", dir + "/st",
                                dir + "/cleanup.out");
  waitpid(cleanup, &status, 0);
  std::ifstream in(dir + "/cleanup.out");
  const std::string out((std::istreambuf_iterator<char>(in)),
                        std::istreambuf_iterator<char>());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_THAT(out, HasSubstr("removed ECS task " + ecs::TaskId(left.arn)));
  EXPECT_THAT(out, HasSubstr("removed ECS task definition "));
  EXPECT_EQ(fake_->Tasks()[0].desired_status, "STOPPED");
  // TearDown checks that nothing runs and nothing is registered any more.
}

// The delegate binary, SIGKILLed while its step's task runs (on Docker); a
// restarted delegate (an executor driven by hand, as its Harness connection
// would) resumes the stage, re-attaches to that task without starting it
// again, and gets its whole log and real exit; the next step runs, and the
// cleanup leaves nothing.
TEST_F(EcsExecutorTest, ARestartedDelegateReattachesToTheTaskOfItsStep) {
  std::unique_ptr<docker::DockerClient> engine;
  DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(engine);
  StartFakeOnDocker();
  const std::string name = "resumed-delegate-" + std::to_string(getpid());
  const std::string dir =
      ::testing::TempDir() + "/ecs-resume-" + std::to_string(getpid());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  // Computed markers: an echoed command line does not count.
  std::ofstream(dir + "/stage.yaml")
      << "name: resume\nplatform: ecs-ec2\nsteps:\n  - id: build\n"
      << "    image: " << kTestImage << "\n"
      << "    commands: [\"echo before-$((6*7))\", \"sleep 3\", "
         "\"echo after-$((6*7))\", \"exit 5\"]\n";
  pid_t first = SpawnExec(dir + "/stage.yaml", name, dir + "/state");
  std::string arn;
  for (int i = 0; i < 800 && arn.empty(); ++i) {
    for (const FakeTask& t : fake_->Tasks()) {
      for (const FakeLogEvent& e : fake_->LogEvents(
               "/ecs/harness-delegates", "step/step/" + ecs::TaskId(t.arn))) {
        if (e.message == "before-42") arn = t.arn;
      }
    }
    if (arn.empty()) absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_FALSE(arn.empty()) << "the first delegate's step never printed";
  kill(first, SIGKILL);
  int status = 0;
  waitpid(first, &status, 0);
  ASSERT_EQ(fake_->Tasks().size(), 1u);
  const FakeTask left = fake_->Tasks()[0];
  EXPECT_EQ(left.desired_status, "RUNNING");
  const std::string task_id = left.tags.at("libdelegate:stage");

  // The same instance as the killed process: the host's name.
  EcsExecutorOptions resumed_options = Options(Env());
  resumed_options.instance = HostName();
  ASSERT_TRUE(RegisterEcsExecutors(registry_, resumed_options).ok());
  registry_.Start(
      {.delegate_name = name, .log = &event_log_, .resuming = {task_id}});
  Stage stage;
  stage.name = "resume";
  stage.platform = "ecs-ec2";
  stage.steps = {Shell("build", {}), Shell("later", {"echo later-$((6*7))"})};
  HandRun run(stage, task_id, name);
  std::unique_ptr<Executor> resumed = registry_.Create("ecs-ec2");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  EXPECT_EQ(fake_->Tasks()[0].desired_status, "RUNNING") << run.Text();

  StepResult build = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(build.status, StepStatus::kFailure);
  EXPECT_EQ(build.exit_code, 5);
  EXPECT_EQ(build.error, "exit status 5");
  const std::string text = run.Text();
  const size_t reattached = text.find(
      absl::StrCat("re-attached to ECS task ", ecs::TaskId(arn),
                   " after the delegate restarted; its log from the start "
                   "follows"));
  ASSERT_NE(reattached, std::string::npos) << text;
  EXPECT_NE(text.find("\nbefore-42\n", reattached), std::string::npos) << text;
  EXPECT_NE(text.find("\nafter-42\n", reattached), std::string::npos) << text;
  EXPECT_EQ(fake_->Tasks().size(), 1u) << "the step was started again";

  StepResult later = run.Step(*resumed, 1);
  EXPECT_EQ(later.status, StepStatus::kSuccess) << later.error << run.Text();
  EXPECT_THAT(run.Text(), HasSubstr("\nlater-42\n"));
  EXPECT_EQ(fake_->CallCount("RunTask"), 2);
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok()) << run.Text();
  // The killed process's task definition went with the stage's cleanup.
  for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
    EXPECT_NE(d.status, "ACTIVE") << d.arn;
  }
  // TearDown checks that nothing runs any more.
}

// What a killed process left for two stages: the start keeps the task and
// task definition of the one to be resumed and removes the other's; the
// resumed stage's step is followed to its end, its cleanup removes the rest.
TEST_F(EcsExecutorTest, TheStartKeepsWhatAStageToBeResumedHas) {
  FakeAwsOptions fake_options;
  fake_options.behaviour = [](const FakeContainer& c) {
    ContainerBehaviour b;
    if (absl::StrContains(absl::StrJoin(c.command, " "), "sleep")) {
      b.run_for = absl::Hours(1);
    } else {
      b.output = {"first line", "second line"};
      b.exit_code = 4;
      b.run_for = absl::Milliseconds(1500);
    }
    return b;
  };
  StartFake(std::move(fake_options));
  const EcsExecutorOptions options = Options(Env());
  FakeAwsClient client(*fake_, {kKey, kSecret, "", absl::InfiniteFuture()});
  // As the executors make them: tagged, in the delegate's family, started
  // by it.
  auto leave = [&](const std::string& stage, const std::string& command) {
    const std::string tags = absl::StrCat(
        R"([{"key":"libdelegate:delegate","value":"ecs-test"},)",
        R"({"key":"libdelegate:instance","value":")", options.instance,
        R"("},{"key":"libdelegate:stage","value":")", stage, R"("})");
    http::Response registered = client.Ecs(
        "RegisterTaskDefinition",
        absl::StrCat(
            R"({"family":")", ecs::TaskFamily("ecs-test"),
            R"(","containerDefinitions":[{"name":"step",)",
            R"("image":"busybox","memory":128,"command":["sh","-c",")", command,
            R"("],"logConfiguration":{"logDriver":"awslogs",)",
            R"("options":{"awslogs-group":"/ecs/harness-delegates",)",
            R"("awslogs-region":"us-east-1",)",
            R"("awslogs-create-group":"true",)",
            R"("awslogs-stream-prefix":"step"}}}],"tags":)", tags, "]}"));
    EXPECT_EQ(registered.status, 200) << registered.body;
    rapidjson::Document def;
    def.Parse(registered.body.c_str());
    const std::string def_arn =
        def["taskDefinition"]["taskDefinitionArn"].GetString();
    http::Response ran = client.Ecs(
        "RunTask",
        absl::StrCat(R"({"cluster":"ci","taskDefinition":")", def_arn,
                     R"(","launchType":"EC2","startedBy":")",
                     ecs::StartedBy("ecs-test"), R"(","tags":)", tags,
                     R"(,{"key":"libdelegate:step","value":"s"}]})"));
    EXPECT_EQ(ran.status, 200) << ran.body;
    rapidjson::Document task;
    task.Parse(ran.body.c_str());
    return std::pair<std::string, std::string>(
        task["tasks"][0]["taskArn"].GetString(), def_arn);
  };
  const auto [kept_task, kept_def] = leave("stage-a", "echo a");
  const auto [gone_task, gone_def] = leave("stage-b", "sleep 3600");

  StartExecutors(options, {"stage-a"});
  Stage stage;
  stage.platform = "ecs-ec2";
  stage.steps = {Shell("s", {"echo a"})};
  HandRun run(stage, "stage-a", "ecs-test");
  std::unique_ptr<Executor> resumed = registry_.Create("ecs-ec2");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  std::map<std::string, FakeTask> tasks;
  for (const FakeTask& t : fake_->Tasks()) tasks[t.arn] = t;
  EXPECT_EQ(tasks[kept_task].desired_status, "RUNNING");
  EXPECT_EQ(tasks[gone_task].desired_status, "STOPPED");
  EXPECT_EQ(tasks[gone_task].stopped_reason, "stage cleanup by the delegate");
  std::map<std::string, std::string> definitions;
  for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
    definitions[d.arn] = d.status;
  }
  EXPECT_EQ(definitions[kept_def], "ACTIVE");
  EXPECT_NE(definitions[gone_def], "ACTIVE");
  // Removed at the start, before the stage (which waited for it).
  EXPECT_THAT(Events(), HasSubstr("ECS task " + ecs::TaskId(gone_task)))
      << run.Text();
  EXPECT_THAT(Events(), Not(HasSubstr(ecs::TaskId(kept_task))));
  EXPECT_THAT(run.Text(), Not(HasSubstr(ecs::TaskId(kept_task))));

  StepResult r = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_EQ(r.error, "exit status 4");
  EXPECT_THAT(run.Text(),
              HasSubstr("re-attached to ECS task " + ecs::TaskId(kept_task)));
  EXPECT_THAT(run.Text(), HasSubstr("\nfirst line\nsecond line\n"));
  EXPECT_EQ(fake_->CallCount("RunTask"), 2);  // the two left above
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok()) << run.Text();
  // TearDown: the kept task definition went with the cleanup too.
}

TEST_F(EcsExecutorTest, ReattachingWithNoTaskLeftSaysTheResultIsUnknown) {
  StartFake();
  StartExecutors(Options(Env()), {"stage-a"});
  Stage stage;
  stage.platform = "ecs-fargate";
  stage.steps = {Shell("compile", {"true"}), Shell("test", {"true"})};
  HandRun run(stage, "stage-a", "ecs-test");
  std::unique_ptr<Executor> resumed = registry_.Create("ecs-fargate");
  ASSERT_TRUE(resumed->Resume(run.context()).ok()) << run.Text();
  StepResult r = run.Step(*resumed, 0, /*reattach=*/true);
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.exit_code, std::nullopt);
  EXPECT_EQ(r.error,
            "the delegate restarted during step compile before its ECS task "
            "was started (or after it was gone): there is nothing to "
            "re-attach to, and the step's result is unknown");
  EXPECT_EQ(fake_->CallCount("RunTask"), 0);
  // The stage goes on.
  StepResult next = run.Step(*resumed, 1);
  EXPECT_EQ(next.status, StepStatus::kSuccess) << next.error << run.Text();
  EXPECT_TRUE(resumed->Cleanup(run.context()).ok()) << run.Text();
}

}  // namespace
}  // namespace delegate::testing
