// Stages on "ecs-fargate" and "ecs-ec2" through the scheduler against the
// strict loopback ECS and CloudWatch Logs fake: what a user sees (results,
// log lines, errors) and what is left on "AWS" afterwards (nothing running,
// nothing registered), including the fault cases: throttling, 5xx, a task
// that never starts, a non-zero exit, credentials that expire mid-stage, and
// a delegate killed mid-stage then started again.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/stage_run.h"

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
    Step s;
    s.id = std::move(id);
    s.image = kTestImage;
    s.commands = std::move(commands);
    return s;
  }

  std::string Text(const std::string& step) {
    return absl::StrJoin(sink_.TextOf(step), "\n");
  }

  std::unique_ptr<FakeAws> fake_;
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
  FakeAwsOptions options;
  const char* host = getenv("DOCKER_HOST");
  options.docker_host = host ? host : "unix:///var/run/docker.sock";
  StartFake(std::move(options));
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
    pid_t pid = fork();
    if (pid == 0) {
      setenv("AWS_ACCESS_KEY_ID", kKey, 1);
      setenv("AWS_SECRET_ACCESS_KEY", kSecret, 1);
      setenv("AWS_REGION", "us-east-1", 1);
      setenv("AWS_ENDPOINT_URL", fake_->url().c_str(), 1);
      setenv("DELEGATE_ECS_CLUSTER", "ci", 1);
      setenv("DELEGATE_ECS_POLL_SECONDS", "0.05", 1);
      setenv("HARNESS_NAME", "killed-delegate", 1);
      execl(DELEGATE_BINARY, DELEGATE_BINARY, "exec", file.c_str(), nullptr);
      _exit(127);
    }
    return pid;
  };
  pid_t first = spawn(dir + "/long.yaml");
  bool running = false;
  for (int i = 0; i < 400 && !running; ++i) {
    for (const FakeTask& t : fake_->Tasks())
      running |= t.last_status == "RUNNING";
    if (!running) absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_TRUE(running) << "the first delegate never got its task running";
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

}  // namespace
}  // namespace delegate::testing
