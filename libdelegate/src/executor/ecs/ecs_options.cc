// The ECS executors' options from DELEGATE_ECS_* variables.
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "aws/endpoints.h"
#include "delegate/ecs_executor.h"
#include "util/env.h"

namespace delegate {

absl::StatusOr<EcsExecutorOptions> LoadEcsExecutorOptions(const EnvMap& env) {
  EcsExecutorOptions o;
  o.env = env;
  if (auto v = EnvValue(env, "DELEGATE_ECS_CLUSTER")) o.cluster = *v;
  if (auto v = EnvValue(env, "DELEGATE_ECS_SUBNETS")) {
    o.subnets = SplitList(*v);
    for (const std::string& s : o.subnets) {
      if (!absl::StartsWith(s, "subnet-")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "DELEGATE_ECS_SUBNETS: '", s, "' is not a subnet id (subnet-...)"));
      }
    }
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_SECURITY_GROUPS")) {
    o.security_groups = SplitList(*v);
    for (const std::string& s : o.security_groups) {
      if (!absl::StartsWith(s, "sg-")) {
        return absl::InvalidArgumentError(
            absl::StrCat("DELEGATE_ECS_SECURITY_GROUPS: '", s,
                         "' is not a security group id (sg-...)"));
      }
    }
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_ASSIGN_PUBLIC_IP")) {
    if (*v != "ENABLED" && *v != "DISABLED") {
      return absl::InvalidArgumentError(absl::StrCat(
          "DELEGATE_ECS_ASSIGN_PUBLIC_IP: expected ENABLED or DISABLED, got '",
          *v, "'"));
    }
    o.assign_public_ip = *v == "ENABLED";
  }
  for (auto [var, field] :
       {std::pair{"DELEGATE_ECS_EXECUTION_ROLE_ARN", &o.execution_role_arn},
        std::pair{"DELEGATE_ECS_TASK_ROLE_ARN", &o.task_role_arn}}) {
    if (auto v = EnvValue(env, var)) {
      absl::StatusOr<aws::Arn> arn = aws::ParseArn(*v);
      if (!arn.ok() || arn->service != "iam") {
        return absl::InvalidArgumentError(absl::StrCat(
            var, ": expected a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"));
      }
      *field = *v;
    }
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_LOG_GROUP")) o.log_group = *v;
  if (auto v = EnvValue(env, "DELEGATE_ECS_PLATFORM_VERSION"))
    o.platform_version = *v;
  for (auto [var, field] :
       {std::pair{"DELEGATE_ECS_POLL_SECONDS", &o.poll_interval},
        std::pair{"DELEGATE_ECS_START_TIMEOUT_SECONDS", &o.start_timeout}}) {
    if (auto v = EnvValue(env, var)) {
      double seconds = 0;
      if (!absl::SimpleAtod(*v, &seconds) || seconds <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            var, ": expected a positive number of seconds, got '", *v, "'"));
      }
      *field = absl::Seconds(seconds);
    }
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_STAGE_TASK")) {
    if (*v != "true" && *v != "false") {
      return absl::InvalidArgumentError(absl::StrCat(
          "DELEGATE_ECS_STAGE_TASK: expected true or false, got '", *v, "'"));
    }
    o.stage_task = *v == "true";
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_RUNNER_IMAGE")) o.runner_image = *v;
  if (o.stage_task && o.runner_image.empty()) {
    return absl::InvalidArgumentError(
        "DELEGATE_ECS_STAGE_TASK=true needs DELEGATE_ECS_RUNNER_IMAGE: the "
        "delegate's own image (libdelegate/delegate:VERSION, as pushed to "
        "your registry), which runs each stage task's runner");
  }
  if (auto v = EnvValue(env, "DELEGATE_ECS_LOG_READS_PER_SECOND")) {
    if (!absl::SimpleAtod(*v, &o.log_reads_per_second) ||
        o.log_reads_per_second <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DELEGATE_ECS_LOG_READS_PER_SECOND: expected a positive number, "
          "got '",
          *v, "'"));
    }
  }
  return o;
}

}  // namespace delegate
