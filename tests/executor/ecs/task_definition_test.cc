// How a step becomes an ECS task definition and overrides, checked against
// the ECS API model, and what the ECS executors refuse before any AWS call.
#include "executor/ecs/task_definition.h"

#include <string>

#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/aws_model.h"

namespace delegate::ecs {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

rapidjson::Document Parse(const std::string& json) {
  rapidjson::Document d;
  d.Parse(json.c_str());
  EXPECT_FALSE(d.HasParseError()) << json;
  return d;
}

const testing::AwsModel& EcsModel() {
  static const testing::AwsModel* model = [] {
    auto m = testing::AwsModel::Load(testing::AwsTestdataDir() +
                                     "/ecs-model/service-2.json");
    EXPECT_TRUE(m.ok()) << m.status();
    return new testing::AwsModel(*std::move(m));
  }();
  return *model;
}

class TaskDefinitionTest : public ::testing::Test {
 protected:
  StepTaskInputs Inputs(LaunchType launch) {
    StepTaskInputs in;
    in.launch = launch;
    in.region = "eu-west-1";
    in.network_mode = launch == LaunchType::kFargate ? "awsvpc" : "bridge";
    in.family = TaskFamily("ci delegate");
    in.options = &options_;
    in.tags = {{"libdelegate:stage", "task-1"}};
    return in;
  }
  // A Fargate stage task of delegate "ci delegate" in eu-west-1.
  StageTaskInputs StageInputs() {
    StageTaskInputs in;
    in.launch = LaunchType::kFargate;
    in.region = "eu-west-1";
    in.family = TaskFamily("ci delegate");
    in.options = &options_;
    in.runner_image = "libdelegate/delegate:0.1.0";
    in.tags = {{"libdelegate:stage", "task-1"}};
    return in;
  }
  EcsExecutorOptions options_;
};

TEST(FargateTaskSizeTest, FollowsTheFargateTable) {
  auto size = [](std::optional<double> cpus, std::optional<int64_t> mem) {
    return FargateTaskSize(Resources{cpus, mem}, "steps[0].resources");
  };
  EXPECT_EQ(size(std::nullopt, std::nullopt)->cpu_units, 1024);
  EXPECT_EQ(size(std::nullopt, std::nullopt)->memory_mib, 2048);
  EXPECT_EQ(size(0.25, std::nullopt)->memory_mib, 512);
  EXPECT_EQ(size(std::nullopt, 3072)->cpu_units, 512);
  EXPECT_EQ(size(2, 16384)->memory_mib, 16384);
  EXPECT_EQ(size(8, 20480)->cpu_units, 8192);

  absl::StatusOr<TaskSize> bad = size(0.25, 4096);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "steps[0].resources.memory_mib: 4096 MiB does not go with 0.25 "
            "vCPU on Fargate; use 512, 1024, 2048 MiB");
  bad = size(3, std::nullopt);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("no task size of 3 vCPU"));
  bad = size(8, 18000);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("16384 to 61440 in steps of 4096"));
}

TEST(CheckStageForEcsTest, SecretValuesNeverGoToTheEcsApi) {
  Stage stage;
  stage.secrets = {{"token", "s3cr3t-value"}};
  Step step;
  step.id = "build";
  step.image = "alpine";
  step.envs = {
      {"TOKEN", "s3cr3t-value"},
      {"DB_PASSWORD",
       "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}};
  step.commands = {"echo s3cr3t-value | login"};
  stage.steps = {step};
  std::vector<std::string> problems = CheckStageForEcs(stage, LaunchType::kEc2);
  ASSERT_EQ(problems.size(), 2u) << absl::StrJoin(problems, "\n");
  EXPECT_THAT(problems[0],
              HasSubstr("steps[0].envs.TOKEN holds a secret value"));
  EXPECT_THAT(problems[0], HasSubstr("Secrets Manager"));
  EXPECT_THAT(problems[1], HasSubstr("steps[0].commands[0]"));
  for (const std::string& p : problems) {
    EXPECT_THAT(p, Not(HasSubstr("s3cr3t-value")));
  }
}

TEST(CheckStageForEcsTest, RegistryPasswordMustBeASecretArn) {
  Stage stage;
  Step step;
  step.id = "s";
  step.image = "registry.example.com/app";
  step.registry = RegistryCredentials{"registry.example.com", "me", "hunter2"};
  stage.steps = {step};
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kFargate),
              Contains(HasSubstr("steps[0].registry.password")));
  stage.steps[0].registry->password =
      "arn:aws:secretsmanager:eu-west-1:123456789012:secret:registry-AbCdEf";
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kFargate), IsEmpty());
}

TEST(CheckStageForEcsTest, FargateSizesAndStorageAreChecked) {
  Stage stage;
  stage.volumes = {{"a", EmptyDirVolume{150 * 1024}},
                   {"b", EmptyDirVolume{60 * 1024}}};
  Step step;
  step.id = "s";
  step.image = "alpine";
  step.resources = {0.5, 8192};
  step.volume_mounts = {{"a", "/a"}, {"b", "/b"}};
  stage.steps = {step};
  std::vector<std::string> problems =
      CheckStageForEcs(stage, LaunchType::kFargate);
  EXPECT_THAT(problems, ElementsAre(HasSubstr("steps[0].resources.memory_mib"),
                                    HasSubstr("at most 204800 MiB")));
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kEc2), IsEmpty());
}

TEST_F(TaskDefinitionTest, FargateStepIsAValidRegistrationAndRun) {
  options_.execution_role_arn = "arn:aws:iam::123456789012:role/ci-exec";
  Stage stage;
  stage.volumes = {{"cache", EfsVolume{"fs-12345678", "/", true,
                                       "fsap-0123456789abcdef0", true}},
                   {"scratch", EmptyDirVolume{30 * 1024}}};
  Step step;
  step.id = "build";
  step.image = "public.ecr.aws/docker/library/alpine:3.20";
  step.commands = {"make", "make test"};
  step.envs = {
      {"MODE", "release"},
      {"NPM_TOKEN",
       "arn:aws:secretsmanager:eu-west-1:123456789012:secret:npm-AbCdEf"}};
  step.security_context.run_as_user = 1000;
  step.security_context.run_as_group = 1000;
  step.security_context.read_only_root_filesystem = true;
  step.security_context.add_capability = {"CAP_SYS_PTRACE"};
  step.security_context.drop_capability = {"ALL"};
  step.volume_mounts = {{"cache", "/cache"}, {"scratch", "tmp"}};
  step.resources = {2, 4096};
  stage.steps = {step};

  absl::StatusOr<StepTask> task =
      BuildStepTask(stage, step, Inputs(LaunchType::kFargate));
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_THAT(
      EcsModel().ValidateInput("RegisterTaskDefinition", task->register_json),
      IsEmpty());

  rapidjson::Document def = Parse(task->register_json);
  EXPECT_STREQ(def["family"].GetString(), "libdelegate-ci-delegate");
  EXPECT_STREQ(def["networkMode"].GetString(), "awsvpc");
  EXPECT_STREQ(def["cpu"].GetString(), "2048");
  EXPECT_STREQ(def["memory"].GetString(), "4096");
  EXPECT_EQ(def["ephemeralStorage"]["sizeInGiB"].GetInt(), 30);
  const auto& c = def["containerDefinitions"][0];
  EXPECT_STREQ(c["user"].GetString(), "1000:1000");
  EXPECT_TRUE(c["readonlyRootFilesystem"].GetBool());
  EXPECT_STREQ(c["linuxParameters"]["capabilities"]["add"][0].GetString(),
               "SYS_PTRACE");
  EXPECT_STREQ(c["secrets"][0]["name"].GetString(), "NPM_TOKEN");
  EXPECT_STREQ(c["logConfiguration"]["options"]["awslogs-group"].GetString(),
               "/ecs/harness-delegates");
  EXPECT_STREQ(c["mountPoints"][2]["containerPath"].GetString(),
               "/harness/tmp");
  const auto& efs = def["volumes"][1]["efsVolumeConfiguration"];
  EXPECT_STREQ(efs["fileSystemId"].GetString(), "fs-12345678");
  EXPECT_STREQ(efs["authorizationConfig"]["iam"].GetString(), "ENABLED");

  // The run: the command and plain variables, never the secret's ARN.
  ASSERT_FALSE(task->overrides_json.empty());
  EXPECT_THAT(task->overrides_json, HasSubstr("make test"));
  EXPECT_THAT(task->overrides_json, HasSubstr("release"));
  EXPECT_THAT(task->overrides_json, Not(HasSubstr("secretsmanager")));
  const std::string run = absl::StrCat(
      R"({"cluster":"ci","taskDefinition":"libdelegate-ci-delegate:1",)",
      R"("launchType":"FARGATE","networkConfiguration":{"awsvpcConfiguration":)",
      R"({"subnets":["subnet-0123456789abcdef0"]}},"overrides":)",
      task->overrides_json, "}");
  EXPECT_THAT(EcsModel().ValidateInput("RunTask", run), IsEmpty());
}

TEST_F(TaskDefinitionTest, StepsThatDifferOnlyInCommandShareADefinition) {
  Stage stage;
  Step a;
  a.id = "a";
  a.image = "alpine";
  a.commands = {"echo a"};
  Step b = a;
  b.id = "b";
  b.commands = {"echo b"};
  b.envs = {{"X", "1"}};
  Step c = a;
  c.image = "busybox";
  stage.steps = {a, b, c};
  auto key = [&](const Step& s) {
    return BuildStepTask(stage, s, Inputs(LaunchType::kEc2))->definition_key;
  };
  EXPECT_EQ(key(a), key(b));
  EXPECT_NE(key(a), key(c));
}

TEST_F(TaskDefinitionTest, Ec2StepWithHostPathAndPrivilegeIsValid) {
  Stage stage;
  stage.volumes = {{"docker", HostPathVolume{"/var/run/docker.sock", true}}};
  Step step;
  step.id = "dind";
  step.image = "docker:cli";
  step.entrypoint = {"docker"};
  step.args = {"version"};
  step.security_context.privileged = true;
  step.volume_mounts = {{"docker", "/var/run/docker.sock"}};
  stage.steps = {step};
  absl::StatusOr<StepTask> task =
      BuildStepTask(stage, step, Inputs(LaunchType::kEc2));
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_THAT(
      EcsModel().ValidateInput("RegisterTaskDefinition", task->register_json),
      IsEmpty());
  rapidjson::Document def = Parse(task->register_json);
  const auto& c = def["containerDefinitions"][0];
  EXPECT_TRUE(c["privileged"].GetBool());
  EXPECT_EQ(c["memory"].GetInt(), 512);
  EXPECT_STREQ(def["volumes"][1]["host"]["sourcePath"].GetString(),
               "/var/run/docker.sock");
  EXPECT_TRUE(c["mountPoints"][1]["readOnly"].GetBool());
  EXPECT_STREQ(c["entryPoint"][0].GetString(), "docker");
}

TEST_F(TaskDefinitionTest, LongCommandsMoveIntoTheDefinition) {
  Stage stage;
  Step step;
  step.id = "long";
  step.image = "alpine";
  step.commands = {std::string(9000, 'x')};
  stage.steps = {step};
  absl::StatusOr<StepTask> task =
      BuildStepTask(stage, step, Inputs(LaunchType::kEc2));
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->overrides_json, "");
  EXPECT_THAT(task->register_json, HasSubstr(std::string(9000, 'x')));
}

// A stage as one task: the runner, the install container, and one step
// container per distinct image and settings; every container shares the
// workspace; the step's env, commands and secret values are nowhere in it.
TEST_F(TaskDefinitionTest, AStageIsOneTaskWithAContainerPerStepShape) {
  options_.execution_role_arn = "arn:aws:iam::123456789012:role/ci-exec";
  Stage stage;
  stage.secrets = {{"token", "s3cr3t-value"}};
  stage.volumes = {{"cache", EmptyDirVolume{30 * 1024}}};
  auto step = [](std::string id, std::string image) {
    Step s;
    s.id = std::move(id);
    s.image = std::move(image);
    s.commands = {"echo $TOKEN"};
    s.envs = {{"TOKEN", "s3cr3t-value"}};
    return s;
  };
  Step build = step("build", "golang:1.22");
  build.volume_mounts = {{"cache", "/cache"}};
  build.resources = {2, 4096};
  Step test = step("test", "golang:1.22");
  test.volume_mounts = {{"cache", "/cache"}};
  test.resources = build.resources;  // the same container
  Step lint = step("lint", "alpine:3.20");
  lint.security_context.run_as_user = 1000;
  lint.security_context.read_only_root_filesystem = true;
  lint.resources = {1, 8192};
  stage.steps = {build, test, lint};

  const StageTaskInputs in = StageInputs();
  absl::StatusOr<StageTask> task = BuildStageTask(stage, in);
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_THAT(
      EcsModel().ValidateInput("RegisterTaskDefinition", task->register_json),
      IsEmpty());
  EXPECT_THAT(task->step_containers,
              ::testing::ElementsAre("step-1", "step-1", "step-2"));
  EXPECT_THAT(task->register_json, Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(task->register_json, Not(HasSubstr("echo")));

  rapidjson::Document def = Parse(task->register_json);
  EXPECT_STREQ(def["networkMode"].GetString(), "awsvpc");
  // The smallest Fargate size that fits each step (2 vCPU; 8 GiB).
  EXPECT_STREQ(def["cpu"].GetString(), "2048");
  EXPECT_STREQ(def["memory"].GetString(), "8192");
  EXPECT_EQ(def["ephemeralStorage"]["sizeInGiB"].GetInt(), 30);
  const auto& containers = def["containerDefinitions"];
  ASSERT_EQ(containers.Size(), 4u);
  EXPECT_STREQ(containers[0]["name"].GetString(), "install");
  EXPECT_FALSE(containers[0]["essential"].GetBool());
  EXPECT_STREQ(containers[1]["name"].GetString(), "runner");
  EXPECT_TRUE(containers[1]["essential"].GetBool());
  EXPECT_STREQ(containers[1]["image"].GetString(),
               "libdelegate/delegate:0.1.0");
  for (unsigned i = 2; i < 4; ++i) {
    const auto& c = containers[i];
    EXPECT_FALSE(c["essential"].GetBool());
    EXPECT_STREQ(c["entryPoint"][0].GetString(), "/delegate/delegate-step");
    EXPECT_STREQ(c["dependsOn"][0]["containerName"].GetString(), "install");
    EXPECT_STREQ(c["dependsOn"][0]["condition"].GetString(), "SUCCESS");
    bool workspace = false;
    for (const auto& m : c["mountPoints"].GetArray()) {
      workspace |= std::string(m["containerPath"].GetString()) == "/harness";
    }
    EXPECT_TRUE(workspace) << i;
  }
  EXPECT_STREQ(containers[2]["image"].GetString(), "golang:1.22");
  EXPECT_STREQ(containers[3]["image"].GetString(), "alpine:3.20");
  EXPECT_STREQ(containers[3]["user"].GetString(), "1000");
  EXPECT_TRUE(containers[3]["readonlyRootFilesystem"].GetBool());

  // The same shape of stage shares the revision; the run's values are
  // overrides.
  absl::StatusOr<StageTask> again = BuildStageTask(stage, in);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->definition_key, task->definition_key);
  const std::string overrides =
      StageTaskOverrides(std::string(64, 'a'), {{"step-1", "t1"}});
  EXPECT_THAT(overrides, HasSubstr("DELEGATE_RUNNER_CLIENT_SHA256"));
  EXPECT_THAT(overrides, HasSubstr("DELEGATE_STEP_TOKEN"));
}

// Each step's own Fargate size is valid; the task takes the smallest that
// fits them all, also when the largest cpu and memory are no pair.
TEST_F(TaskDefinitionTest, AStageTaskFitsEveryStepAndHoldsAtMostEightShapes) {
  Stage stage;
  Step small;
  small.id = "small";
  small.image = "alpine:3.20";
  small.commands = {"true"};
  small.resources = {0.25, std::nullopt};
  Step wide = small;
  wide.id = "wide";
  wide.resources = {std::nullopt, 4096};
  stage.steps = {small, wide};
  absl::StatusOr<StageTask> task = BuildStageTask(stage, StageInputs());
  ASSERT_TRUE(task.ok()) << task.status();
  rapidjson::Document def = Parse(task->register_json);
  EXPECT_STREQ(def["cpu"].GetString(), "512");
  EXPECT_STREQ(def["memory"].GetString(), "4096");
  // The install container is root; the runner is the image's user.
  EXPECT_STREQ(def["containerDefinitions"][0]["user"].GetString(), "0");
  EXPECT_FALSE(def["containerDefinitions"][1].HasMember("user"));

  for (int i = 0; i < 9; ++i) {
    Step s = small;
    s.id = absl::StrCat("s", i);
    s.image = absl::StrCat("image-", i);
    stage.steps.push_back(s);
  }
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kFargate, true),
              ::testing::Contains(HasSubstr("at most 8")));
  Step bare = small;
  bare.commands.clear();
  stage.steps = {bare};
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kFargate, true),
              ::testing::Contains(HasSubstr("commands or an entrypoint")));
  EXPECT_THAT(CheckStageForEcs(stage, LaunchType::kFargate, false), IsEmpty());
}

}  // namespace
}  // namespace delegate::ecs
