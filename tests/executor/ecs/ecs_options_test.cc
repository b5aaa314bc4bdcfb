// The ECS executors' settings from DELEGATE_ECS_* variables.
#include "delegate/builtin_executors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LoadEcsExecutorOptionsTest, ReadsEveryVariable) {
  absl::StatusOr<EcsExecutorOptions> o =
      LoadEcsExecutorOptions({{"DELEGATE_ECS_CLUSTER", "ci"},
                              {"DELEGATE_ECS_SUBNETS", "subnet-0a, subnet-0b"},
                              {"DELEGATE_ECS_SECURITY_GROUPS", "sg-01"},
                              {"DELEGATE_ECS_ASSIGN_PUBLIC_IP", "ENABLED"},
                              {"DELEGATE_ECS_EXECUTION_ROLE_ARN",
                               "arn:aws:iam::123456789012:role/exec"},
                              {"DELEGATE_ECS_LOG_GROUP", "/ci/steps"},
                              {"DELEGATE_ECS_POLL_SECONDS", "0.5"},
                              {"DELEGATE_ECS_LOG_READS_PER_SECOND", "25"}});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->cluster, "ci");
  EXPECT_THAT(o->subnets, ElementsAre("subnet-0a", "subnet-0b"));
  EXPECT_THAT(o->security_groups, ElementsAre("sg-01"));
  EXPECT_TRUE(o->assign_public_ip);
  EXPECT_EQ(o->log_group, "/ci/steps");
  EXPECT_EQ(o->poll_interval, absl::Milliseconds(500));
  EXPECT_EQ(o->log_reads_per_second, 25);
  // Defaults.
  o = LoadEcsExecutorOptions({});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->log_group, "/ecs/harness-delegates");
  EXPECT_FALSE(o->assign_public_ip);
}

TEST(LoadEcsExecutorOptionsTest, BadValuesNameTheVariable) {
  for (const auto& [var, value] :
       std::vector<std::pair<std::string, std::string>>{
           {"DELEGATE_ECS_SUBNETS", "10.0.0.0/24"},
           {"DELEGATE_ECS_SECURITY_GROUPS", "default"},
           {"DELEGATE_ECS_ASSIGN_PUBLIC_IP", "yes"},
           {"DELEGATE_ECS_TASK_ROLE_ARN", "my-role"},
           {"DELEGATE_ECS_POLL_SECONDS", "-1"},
           {"DELEGATE_ECS_START_TIMEOUT_SECONDS", "soon"},
           {"DELEGATE_ECS_STAGE_TASK", "yes"}}) {
    absl::StatusOr<EcsExecutorOptions> o =
        LoadEcsExecutorOptions({{var, value}});
    ASSERT_FALSE(o.ok()) << var;
    EXPECT_THAT(o.status().message(), HasSubstr(var));
  }
}

TEST(LoadEcsExecutorOptionsTest, AStageTaskNeedsTheRunnerImage) {
  absl::StatusOr<EcsExecutorOptions> o =
      LoadEcsExecutorOptions({{"DELEGATE_ECS_STAGE_TASK", "true"}});
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("DELEGATE_ECS_RUNNER_IMAGE"));
  o = LoadEcsExecutorOptions({{"DELEGATE_ECS_STAGE_TASK", "true"},
                              {"DELEGATE_ECS_RUNNER_IMAGE",
                               "123.dkr.ecr.eu-west-1.amazonaws.com/d:1"}});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->stage_task);
  EXPECT_EQ(o->runner_image, "123.dkr.ecr.eu-west-1.amazonaws.com/d:1");
  EXPECT_FALSE(LoadEcsExecutorOptions({})->stage_task);
}

}  // namespace
}  // namespace delegate
