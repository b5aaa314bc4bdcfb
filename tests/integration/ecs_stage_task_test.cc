// A stage as one ECS task, on the AWS fake running its containers on the
// real Docker Engine: the task definition BuildStageTask makes, one RunTask,
// the runner (the built delegate, in an image made from it) dialled at the
// task's IP over TLS, steps in two kinds of image sharing /harness, the
// secret only on the channel and masked in CloudWatch Logs, and Shutdown
// ending the task. The ECS executors do not drive this yet (README "One
// ECS task per stage").
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "delegate/builtin_executors.h"
#include "delegate/event_log.h"
#include "delegate/scheduler.h"
#include "executor/ecs/ecs_runtime.h"
#include "executor/ecs/task_definition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "runner/identity.h"
#include "runner/step_runner_client.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/docker_engine.h"
#include "tests/fakes/hand_run.h"
#include "tests/fakes/recording_log_sink.h"
#include "tests/fakes/stage_run.h"

namespace delegate::ecs {
namespace {

using delegate::testing::FakeAws;
using delegate::testing::FakeAwsClient;
using delegate::testing::FakeAwsOptions;
using delegate::testing::FakeLogEvent;
using delegate::testing::FakeTask;
using delegate::testing::FakeTaskDefinition;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKey[] = "AKIDSTAGETASK";
constexpr char kSecret[] = "stage-task-secret";
constexpr char kGlibcImage[] = "delegate-test/dash-glibc:latest";
constexpr char kStepSecret[] = "s3cr3t-only-on-the-channel";

// The built delegate as an image (scripts/delegate-test-image.sh).
std::string DelegateTestImage() {
  const std::string command =
      absl::StrCat(DELEGATE_SOURCE_DIR, "/scripts/delegate-test-image.sh ",
                   DELEGATE_BINARY, " ", DELEGATE_STEP_BINARY);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  char line[256] = {0};
  std::string tag = fgets(line, sizeof(line), pipe) ? line : "";
  if (pclose(pipe) != 0) return "";
  return std::string(absl::StripAsciiWhitespace(tag));
}

class EcsStageTaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DELEGATE_CONNECT_TEST_ENGINE_OR_SKIP(engine_);
    image_ = DelegateTestImage();
    ASSERT_FALSE(image_.empty()) << "scripts/delegate-test-image.sh failed";
    FakeAwsOptions options;
    options.testdata_dir = delegate::testing::AwsTestdataDir();
    options.credentials.push_back({kKey, kSecret, "", absl::InfiniteFuture()});
    const char* host = getenv("DOCKER_HOST");
    options.docker_host = host ? host : "unix:///var/run/docker.sock";
    absl::StatusOr<std::unique_ptr<FakeAws>> fake =
        FakeAws::Start(std::move(options));
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
    client_ = std::make_unique<FakeAwsClient>(
        *fake_, delegate::testing::FakeAwsCredential{kKey, kSecret, "",
                                                     absl::InfiniteFuture()});
    options_.execution_role_arn = "arn:aws:iam::123456789012:role/ci-exec";
    options_.log_group = "/ecs/stage-tasks";
  }

  void TearDown() override {
    if (!fake_) return;
    for (const auto& r : fake_->Rejected()) {
      ADD_FAILURE() << "AWS would refuse " << r.operation << ": " << r.code
                    << ": " << r.message;
    }
  }

  static rapidjson::Document Json(const std::string& body) {
    rapidjson::Document doc;
    doc.Parse(body.c_str());
    return doc;
  }

  // The ecs executors on the fake in cluster "ci", one subnet, each stage
  // one task with the built delegate as its runner.
  EcsExecutorOptions StageTaskOptions() {
    EcsExecutorOptions o;
    o.env = EnvMap{{"AWS_ACCESS_KEY_ID", kKey},
                   {"AWS_SECRET_ACCESS_KEY", kSecret},
                   {"AWS_REGION", "us-east-1"},
                   {"AWS_ENDPOINT_URL", fake_->url()}};
    o.cluster = "ci";
    o.subnets = {"subnet-0123456789abcdef0"};
    o.execution_role_arn = "arn:aws:iam::123456789012:role/ci-exec";
    o.poll_interval = absl::Milliseconds(100);
    o.start_timeout = absl::Seconds(60);
    o.grace_period = absl::Seconds(2);
    o.instance = "stage-task-" + std::to_string(getpid());
    o.stage_task = true;
    o.runner_image = image_;
    return o;
  }

  std::unique_ptr<docker::DockerClient> engine_;
  std::string image_;
  std::unique_ptr<FakeAws> fake_;
  std::unique_ptr<FakeAwsClient> client_;
  EcsExecutorOptions options_;
};

TEST_F(EcsStageTaskTest, TheStepsOfAStageRunInOneTaskThroughTheRunner) {
  Stage stage;
  stage.secrets = {{"token", kStepSecret}};
  Step one;
  one.id = "one";
  one.image = delegate::testing::kTestImage;
  one.commands = {"echo built > artifact.txt"};
  Step two;
  two.id = "two";
  two.image = kGlibcImage;
  two.commands = {"read line < artifact.txt; echo \"two read: $line\""};
  two.security_context.run_as_user = 1000;
  stage.steps = {one, two};
  StageTaskInputs in;
  in.launch = LaunchType::kFargate;
  in.region = "us-east-1";
  in.family = TaskFamily("stage-test");
  in.options = &options_;
  in.runner_image = image_;
  absl::StatusOr<StageTask> task = BuildStageTask(stage, in);
  ASSERT_TRUE(task.ok()) << task.status();

  http::Response registered =
      client_->Ecs("RegisterTaskDefinition", task->register_json);
  ASSERT_EQ(registered.status, 200) << registered.body;
  const std::string definition =
      Json(registered.body)["taskDefinition"]["taskDefinitionArn"].GetString();
  absl::StatusOr<runner::Identity> me = runner::MakeIdentity("delegate");
  ASSERT_TRUE(me.ok());
  const std::vector<std::pair<std::string, std::string>> tokens = {
      {"step-1", "token-one"}, {"step-2", "token-two"}};
  // The log group must exist (awslogs-create-group is not set).
  ASSERT_EQ(
      client_->Logs("CreateLogGroup", R"({"logGroupName":"/ecs/stage-tasks"})")
          .status,
      200);
  http::Response ran = client_->Ecs(
      "RunTask",
      absl::StrCat(R"({"cluster":"ci","taskDefinition":")", definition,
                   R"(","launchType":"FARGATE","networkConfiguration":)",
                   R"({"awsvpcConfiguration":{"subnets":)",
                   R"(["subnet-0123456789abcdef0"]}},"overrides":)",
                   StageTaskOverrides(me->sha256, tokens), "}"));
  ASSERT_EQ(ran.status, 200) << ran.body;
  const std::string arn = Json(ran.body)["tasks"][0]["taskArn"].GetString();
  const std::string running =
      client_->WaitForTask("ci", arn, "RUNNING", absl::Seconds(60));
  ASSERT_FALSE(running.empty()) << "the stage task never ran";
  // The task's IP, from its network interface.
  std::string ip;
  const rapidjson::Document described = Json(running);
  for (const auto& a : described["tasks"][0]["attachments"].GetArray()) {
    for (const auto& d : a["details"].GetArray()) {
      if (std::string(d["name"].GetString()) == "privateIPv4Address") {
        ip = d["value"].GetString();
      }
    }
  }
  ASSERT_FALSE(ip.empty()) << running;

  absl::StatusOr<std::unique_ptr<runner::StepRunnerClient>> runner =
      runner::StepRunnerClient::Connect(absl::StrCat(ip, ":", kRunnerPort), *me,
                                        absl::Seconds(60));
  ASSERT_TRUE(runner.ok()) << runner.status();
  std::string out;
  for (size_t i = 0; i < stage.steps.size(); ++i) {
    runner::RunnerStep step;
    step.container = task->step_containers[i];
    step.container_token = tokens[i].second;
    step.step_id = stage.steps[i].id;
    step.argv = {"/bin/sh", "-c",
                 absl::StrCat(stage.steps[i].commands[0], "; echo $TOKEN")};
    step.env = {{"PATH", "/bin"}, {"TOKEN", kStepSecret}};
    step.working_dir = kWorkspacePath;
    step.mask = {kStepSecret};
    absl::StatusOr<runner::RunnerStepEnd> end = (*runner)->Run(
        step,
        [&out](int, std::string_view data) {
          out.append(data.data(), data.size());
        },
        {}, absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(end.ok()) << end.status();
    EXPECT_EQ(end->exit_code, 0) << out;
  }
  EXPECT_EQ(
      out, absl::StrCat(kStepSecret, "\ntwo read: built\n", kStepSecret, "\n"));
  ASSERT_TRUE((*runner)->Shutdown().ok());
  EXPECT_FALSE(
      client_->WaitForTask("ci", arn, "STOPPED", absl::Seconds(60)).empty());

  // One task for the stage; the secret went over the channel only.
  EXPECT_EQ(fake_->CallCount("RunTask"), 1);
  for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
    EXPECT_THAT(d.json, Not(HasSubstr(kStepSecret)));
  }
  for (const FakeTask& t : fake_->Tasks()) {
    EXPECT_THAT(t.request_json, Not(HasSubstr(kStepSecret)));
  }
  // CloudWatch Logs has the runner's record, masked.
  std::string record;
  for (const std::string& stream : fake_->LogStreams("/ecs/stage-tasks")) {
    for (const FakeLogEvent& e : fake_->LogEvents("/ecs/stage-tasks", stream)) {
      record += e.message + "\n";
    }
  }
  EXPECT_THAT(record, HasSubstr("[two] two read: built"));
  EXPECT_THAT(record, HasSubstr("[one] **************"));
  EXPECT_THAT(record, Not(HasSubstr(kStepSecret)));
}

// The ecs-fargate executor with DELEGATE_ECS_STAGE_TASK: a whole stage,
// submitted to the scheduler, as one task. Secrets and output variables
// work; a failing step's exit code and a timed-out step are reported as on
// Docker; cleanup stops the task and deregisters its definition.
TEST_F(EcsStageTaskTest, TheExecutorRunsAStageAsOneTask) {
  ExecutorRegistry registry;
  ASSERT_TRUE(RegisterEcsExecutors(registry, StageTaskOptions()).ok());
  SchedulerOptions sched;
  sched.registry = &registry;
  sched.delegate_name = "stage-test";
  auto scheduler = std::make_unique<Scheduler>(sched);

  Stage stage;
  stage.platform = "ecs-fargate";
  stage.secrets = {{"token", kStepSecret}};
  Step write =
      delegate::testing::ImageStep("write", {"echo built > artifact.txt",
                                             "echo VERSION=1.2.$((1+2)) >> "
                                             "$HARNESS_OUTPUT_FILE"});
  write.outputs = {"VERSION"};
  write.envs = {{"TOKEN", "${{secrets.token}}"}};
  write.commands.push_back("echo token is $TOKEN");
  Step read;
  read.id = "read";
  read.image = kGlibcImage;
  read.commands = {"read line < artifact.txt", "echo \"read: $line\"",
                   "exit 3"};
  read.continue_on_error = true;
  Step slow = delegate::testing::ImageStep("slow", {"sleep 60"});
  slow.timeout = absl::Seconds(2);
  stage.steps = {write, read, slow};
  delegate::testing::RecordingLogSink sink;
  StageResult result =
      delegate::testing::RunStage(*scheduler, "task-1", stage, &sink);
  scheduler.reset();

  ASSERT_EQ(result.steps.size(), 3u) << sink.All();
  EXPECT_EQ(result.steps[0].status, StepStatus::kSuccess)
      << result.steps[0].error << sink.All();
  EXPECT_EQ(result.steps[0].outputs.at("VERSION"), "1.2.3");
  EXPECT_EQ(result.steps[1].status, StepStatus::kFailure);
  EXPECT_EQ(result.steps[1].exit_code, 3);
  EXPECT_EQ(result.steps[2].status, StepStatus::kTimeout)
      << result.steps[2].error;
  const std::string log = sink.All();
  EXPECT_THAT(log, HasSubstr("token is **************"));
  EXPECT_THAT(log, HasSubstr("read: built"));
  EXPECT_THAT(log, Not(HasSubstr(kStepSecret)));
  // One task for the three steps; its definition gone; the secret never
  // sent to AWS.
  EXPECT_EQ(fake_->CallCount("RunTask"), 1);
  EXPECT_EQ(fake_->CallCount("RegisterTaskDefinition"), 1);
  for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
    EXPECT_NE(d.status, "ACTIVE") << d.arn;
    EXPECT_THAT(d.json, Not(HasSubstr(kStepSecret)));
  }
  for (const FakeTask& t : fake_->Tasks()) {
    EXPECT_EQ(t.desired_status, "STOPPED");
    EXPECT_THAT(t.request_json, Not(HasSubstr(kStepSecret)));
  }
}

// A delegate that restarted cannot dial the runner of the stage task its
// earlier process started (the key died with it): Resume says so, and the
// cleanup that follows stops the task and deletes its definition.
TEST_F(EcsStageTaskTest, AStageTaskIsCleanedUpNotResumedAfterARestart) {
  Stage stage;
  stage.platform = "ecs-fargate";
  stage.steps = {delegate::testing::ImageStep("s", {"true"})};
  EventLog events([](std::string_view) {});
  ExecutorRegistry first;
  ASSERT_TRUE(RegisterEcsExecutors(first, StageTaskOptions()).ok());
  delegate::testing::HandRun run(stage, "task-9", "stage-test");
  std::unique_ptr<Executor> started = first.Create("ecs-fargate");
  ASSERT_TRUE(started->Initialize(run.context()).ok()) << run.Text();
  ASSERT_EQ(fake_->Tasks().size(), 1u);
  // The earlier process is gone (its executor is dropped without cleanup);
  // the restarted one keeps the stage's leftovers for its resume.
  started.reset();
  ExecutorRegistry second;
  ASSERT_TRUE(RegisterEcsExecutors(second, StageTaskOptions()).ok());
  second.Start(
      {.delegate_name = "stage-test", .log = &events, .resuming = {"task-9"}});
  std::unique_ptr<Executor> resumed = second.Create("ecs-fargate");
  absl::Status s = resumed->Resume(run.context());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(s.message(), HasSubstr("cannot be resumed"));
  EXPECT_EQ(fake_->Tasks()[0].desired_status, "RUNNING");
  ASSERT_TRUE(resumed->Cleanup(run.context()).ok()) << run.Text();
  EXPECT_EQ(fake_->Tasks()[0].desired_status, "STOPPED");
  for (const FakeTaskDefinition& d : fake_->TaskDefinitions()) {
    EXPECT_NE(d.status, "ACTIVE") << d.arn;
  }
}

}  // namespace
}  // namespace delegate::ecs
