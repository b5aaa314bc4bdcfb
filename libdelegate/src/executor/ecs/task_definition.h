// How one step becomes an ECS task: the task definition it needs (image,
// security context, mounts, volumes, size, logging), the per-run overrides
// (command, environment), and the checks of what ECS cannot or must not be
// given. Pure functions: no I/O, no clock.
#ifndef DELEGATE_EXECUTOR_ECS_TASK_DEFINITION_H_
#define DELEGATE_EXECUTOR_ECS_TASK_DEFINITION_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "delegate/ecs_executor.h"
#include "delegate/stage.h"
#include "util/json.h"

namespace delegate::ecs {

enum class LaunchType { kFargate, kEc2 };

// The container of every step task.
inline constexpr char kStepContainer[] = "step";
// Where each step task has a scratch volume of its own, as on Docker.
inline constexpr char kWorkspacePath[] = "/harness";

struct TaskSize {
  int cpu_units = 0;  // 1024 per vCPU
  int memory_mib = 0;
};

// The Fargate task size for `resources`: the given pair when Fargate offers
// it; with only cpus, the least memory that goes with it; with only memory,
// the least cpu that allows it; with neither, 1 vCPU and 2 GiB.
// InvalidArgument naming `field` ("steps[0].resources") and the valid values.
absl::StatusOr<TaskSize> FargateTaskSize(const Resources& resources,
                                         const std::string& field);

// Every reason `stage` cannot run on ECS beyond the platform policy, one
// "FIELD: what is wrong; what to do" each: secret values in a step's
// environment or commands (ECS would show them in the task's overrides and
// CloudTrail), registry passwords that are not Secrets Manager ARNs,
// outputs, Fargate sizes, ephemeral storage over 200 GiB.
// With `stage_task` (one task per stage, its steps driven over the
// runner's channel), secret values and outputs are fine: the env and
// commands never reach the ECS API then.
std::vector<std::string> CheckStageForEcs(const Stage& stage, LaunchType launch,
                                          bool stage_task = false);

struct StepTaskInputs {
  LaunchType launch = LaunchType::kFargate;
  std::string region;
  std::string network_mode;  // "awsvpc" or "bridge"
  std::string family;        // the task definition family (TaskFamily)
  const EcsExecutorOptions* options = nullptr;
  // Tags of the task definition (and of the task).
  std::vector<std::pair<std::string, std::string>> tags;
};

struct StepTask {
  // Equal for two steps that can share one task definition revision.
  std::string definition_key;
  std::string register_json;   // RegisterTaskDefinition input
  std::string overrides_json;  // RunTask `overrides`, or "" for none
};

// REQUIRES: CheckStageForEcs(stage) found nothing. Command and environment
// go in the overrides unless those would pass ECS's 8,192 characters; then
// they are part of the definition.
absl::StatusOr<StepTask> BuildStepTask(const Stage& stage, const Step& step,
                                       const StepTaskInputs& inputs);

// ------------------------------------------------------------ stage task
// A stage as one task (README "One ECS task per stage"): the runner, the
// install container, and a step container per distinct image and container
// settings, sharing the workspace and the runner's directory.
inline constexpr char kRunnerContainer[] = "runner";
inline constexpr char kInstallContainer[] = "install";
inline constexpr char kRunnerDir[] = "/delegate";
// Where each step's output file is (HARNESS_OUTPUT_FILE), out of the
// workspace, as on Docker.
inline constexpr char kEnginePath[] = "/tmp/engine";
// ECS's 10 containers per task, less the runner's two.
inline constexpr size_t kMaxStepContainers = 8;
inline constexpr int kRunnerPort = 9079;

struct StageTaskInputs {
  LaunchType launch = LaunchType::kFargate;
  std::string region;
  std::string family;
  const EcsExecutorOptions* options = nullptr;
  // The image of the runner and install containers: the delegate's own.
  std::string runner_image;
  std::vector<std::pair<std::string, std::string>> tags;
};

struct StageTask {
  // Equal for two stages that can share one task definition revision.
  std::string definition_key;
  std::string register_json;  // RegisterTaskDefinition input
  // The step container of each step, by step index ("step-1", ...).
  std::vector<std::string> step_containers;
  // Each step container's name, in order (no repeats).
  std::vector<std::string> containers;
};

// REQUIRES: CheckStageForEcs(stage) found nothing. Always awsvpc (the
// delegate dials the task's IP). The task's size is the largest of its
// steps' resources (on Fargate, checked against the Fargate table).
// Nothing of a step's env or commands is in it: they go over the runner's
// channel.
absl::StatusOr<StageTask> BuildStageTask(const Stage& stage,
                                         const StageTaskInputs& inputs);

// The RunTask `overrides` of a stage task: the runner's client fingerprint
// and each step container's token (values for this run only; nothing
// secret: the fingerprint is public, a token only keeps the task's own
// containers apart).
std::string StageTaskOverrides(
    const std::string& client_sha256,
    const std::vector<std::pair<std::string, std::string>>& container_tokens);

// The family of every task definition a delegate registers.
std::string TaskFamily(std::string_view delegate_name);

// `s` cut to `max` characters of [A-Za-z0-9_-] (others become '-'): for
// families, startedBy and client tokens.
std::string EcsName(std::string_view s, size_t max);
// [{"key": K, "value": V}, ...], as RegisterTaskDefinition and RunTask take
// them.
void WriteTags(json::Writer& w,
               const std::vector<std::pair<std::string, std::string>>& tags);

// `s` reduced to what a tag value may hold.
std::string EcsTagValue(std::string_view s);
// Whether `value` is a Secrets Manager secret or SSM parameter ARN.
bool IsSecretArn(std::string_view value);

}  // namespace delegate::ecs

#endif  // DELEGATE_EXECUTOR_ECS_TASK_DEFINITION_H_
