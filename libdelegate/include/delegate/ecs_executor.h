// The "ecs-fargate" and "ecs-ec2" executors (target delegate::ecs): every
// step as an ECS task.
#ifndef DELEGATE_ECS_EXECUTOR_H_
#define DELEGATE_ECS_EXECUTOR_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "delegate/env.h"
#include "delegate/executor.h"
#include "delegate/export.h"
#include "delegate/policy.h"

namespace delegate {

struct EcsExecutorOptions {
  // The cluster steps run in. Empty: the delegate's own cluster, from the ECS
  // task metadata endpoint (ECS_CONTAINER_METADATA_URI_V4).
  std::string cluster;
  // awsvpc networking of the step tasks (always on Fargate; on EC2 when
  // subnets are known, otherwise bridge). Empty subnets: the delegate's own
  // subnet, found with DescribeTasks on its own task. Empty security groups:
  // the VPC's default group.
  std::vector<std::string> subnets;
  std::vector<std::string> security_groups;
  bool assign_public_ip = false;
  // The role ECS uses to pull images, write the step logs and read
  // `secrets` (required on Fargate), and the role the steps' own AWS calls
  // use (optional).
  std::string execution_role_arn;
  std::string task_role_arn;
  // Step output goes to this CloudWatch Logs group (created when missing),
  // in stream PREFIX/step/TASK_ID, and is read back into the step's log.
  std::string log_group = "/ecs/harness-delegates";
  std::string log_stream_prefix = "step";
  std::string platform_version = "LATEST";  // Fargate
  // AWS_* variables (credentials, region, endpoints, AWS_CA_BUNDLE),
  // HTTPS_PROXY, HTTP_PROXY, NO_PROXY (and their lower-case forms) and
  // ECS_CONTAINER_METADATA_URI_V4. Unset: the process environment.
  std::optional<EnvMap> env;
  // DescribeTasks cadence for running steps (one call for all of them), and
  // the wait for a task to reach RUNNING before it is stopped as stuck.
  absl::Duration poll_interval = absl::Seconds(2);
  absl::Duration start_timeout = absl::Minutes(10);
  // GetLogEvents calls per second for reading step output back, shared by
  // every running step (CloudWatch's documented quota was 10; raise it when
  // the account's is higher). Each step is read once per poll_interval at
  // most, so past about 10 * poll_interval seconds' worth of running steps
  // their output arrives later than it is written.
  double log_reads_per_second = 10;
  // A stopped step's container gets SIGTERM, then SIGKILL after this long
  // (ECS stopTimeout; 2 s to 120 s on Fargate).
  absl::Duration grace_period = absl::Seconds(30);
  // Identifies this delegate process among replicas of the same name, for
  // cleanup after a crash. Empty: the delegate's own task ARN on ECS,
  // otherwise the host name.
  std::string instance;
  // A whole stage as one ECS task (README "One ECS task per stage"): its
  // steps run in step containers through a runner from `runner_image`
  // (the delegate's own image), dialled at the task's IP. Off: each step
  // is a task of its own.
  bool stage_task = false;
  std::string runner_image;
  Clock* clock = nullptr;  // nullptr: Clock::Real()
};

// Reads DELEGATE_ECS_CLUSTER, DELEGATE_ECS_SUBNETS and
// DELEGATE_ECS_SECURITY_GROUPS (comma-separated), DELEGATE_ECS_ASSIGN_PUBLIC_IP
// (ENABLED or DISABLED), DELEGATE_ECS_EXECUTION_ROLE_ARN,
// DELEGATE_ECS_TASK_ROLE_ARN, DELEGATE_ECS_LOG_GROUP,
// DELEGATE_ECS_PLATFORM_VERSION, DELEGATE_ECS_POLL_SECONDS,
// DELEGATE_ECS_START_TIMEOUT_SECONDS, DELEGATE_ECS_LOG_READS_PER_SECOND,
// DELEGATE_ECS_STAGE_TASK (true or false) and DELEGATE_ECS_RUNNER_IMAGE
// (required with DELEGATE_ECS_STAGE_TASK=true);
// `env` also becomes options.env. InvalidArgument naming the variable for a
// malformed value.
DELEGATE_EXPORT absl::StatusOr<EcsExecutorOptions> LoadEcsExecutorOptions(
    const EnvMap& env);

// Registers "ecs-fargate" and "ecs-ec2": every step runs as an ECS task of a
// task definition registered for the stage (one per distinct image, security
// context and mounts), tagged with the delegate, its instance and the stage,
// and its output is read back from CloudWatch Logs. Cleanup stops what still
// runs and deregisters and deletes the stage's task definitions; the first
// stage also removes what an earlier, crashed run of this instance left, but
// what the stages it will resume (ExecutorStartup::resuming, given to
// ExecutorRegistry::Start before the first stage) made. A resumed stage
// (Executor::Resume) adopts those task definitions and tasks, and the step
// that was running (StepContext::reattach) is followed to its end from the
// start of its log; when no task of it is found, that step fails saying
// so. When ECS is set up (a cluster configured, or the delegate runs as an
// ECS task), ExecutorRegistry::Start removes those leftovers in the
// background, and the first stage waits for it; otherwise the first stage
// removes them. AWS is not contacted here.
DELEGATE_EXPORT absl::Status RegisterEcsExecutors(ExecutorRegistry& registry,
                                                  EcsExecutorOptions options);

// What `delegate cleanup` does on ECS: stops the step tasks and deletes the
// task definitions that this instance (options.instance: by default the
// delegate's own task ARN on ECS, otherwise the host name) and stopped
// delegate tasks of the same name left, each appended to `removed` ("ECS
// task ARN", "ECS task definition ARN") even when an error follows. Does
// nothing when ECS is not set up. Errors: what resolving the cluster, region
// or credentials, or a removal, failed with.
DELEGATE_EXPORT absl::Status ReapEcsLeftovers(
    EcsExecutorOptions options, const std::string& delegate_name,
    std::vector<std::string>* removed);

// What "ecs-ec2" and "ecs-fargate" run. Fargate runs tasks on hosts nobody
// can reach: no privilege, no host paths, of the capabilities only
// SYS_PTRACE, and 21 GiB to 200 GiB of ephemeral storage.
DELEGATE_EXPORT const PlatformProfile& EcsEc2PlatformProfile();
DELEGATE_EXPORT const PlatformProfile& FargatePlatformProfile();

}  // namespace delegate

#endif  // DELEGATE_ECS_EXECUTOR_H_
