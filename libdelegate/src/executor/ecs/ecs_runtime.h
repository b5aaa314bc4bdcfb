// The part of the "ecs-fargate" and "ecs-ec2" executors that every stage of
// the delegate shares: the AWS clients, where step tasks run (found from the
// delegate's own task metadata when not configured), the one DescribeTasks
// poller for every running step, and the removal of what a crashed earlier
// run of the delegate left.
#ifndef DELEGATE_EXECUTOR_ECS_ECS_RUNTIME_H_
#define DELEGATE_EXECUTOR_ECS_ECS_RUNTIME_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "aws/credentials.h"
#include "aws/json_client.h"
#include "aws/logs_client.h"
#include "aws/task_metadata.h"
#include "delegate/clock.h"
#include "delegate/ecs_executor.h"
#include "delegate/env.h"
#include "delegate/log_sink.h"
#include "executor/ecs/task_poller.h"
#include "http/http_client.h"
#include "rapidjson/document.h"
#include "util/json.h"

namespace delegate::ecs {

// The tags of every task and task definition the executors make; tasks also
// name their step.
inline constexpr char kTagDelegate[] = "libdelegate:delegate";
inline constexpr char kTagInstance[] = "libdelegate:instance";
inline constexpr char kTagStage[] = "libdelegate:stage";
inline constexpr char kTagStep[] = "libdelegate:step";

// The startedBy of every step task of `delegate_name`: ListTasks finds them
// by it.
std::string StartedBy(const std::string& delegate_name);
// The task id: the last part of a task ARN.
std::string TaskId(const std::string& arn);
// A request body: the JSON object of the members `write` writes.
std::string RequestBody(absl::FunctionRef<void(json::Writer&)> write);
// An ECS answer's body as a JSON object; Internal naming `operation` when it
// is not one.
absl::StatusOr<rapidjson::Document> ParseAnswer(const std::string& body,
                                                std::string_view operation);

// A DescribeTasks answer: each task's state by ARN (the step container's
// exit code, reasons, tags, ENI subnets), and each failure's reason by ARN.
absl::StatusOr<TaskStates> ParseDescribeTasksAnswer(const std::string& body);

// Whether a task or task definition tagged `tags` is a leftover that Reap
// removes: one of `delegate_name`'s that, with `stage` empty, belongs to
// `instance` or to an instance for which `instance_gone` (given the
// instance tag) is true; with `stage`, one of that stage of `instance`.
bool IsLeftover(const std::map<std::string, std::string>& tags,
                const std::string& delegate_name, const std::string& instance,
                const std::string& stage,
                absl::FunctionRef<bool(const std::string&)> instance_gone);

// Whether a task or task definition tagged `tags` belongs to one of the
// stages `resuming` (StageTask ids) of `instance`: what Reap keeps for
// Executor::Resume.
bool IsKeptForResume(const std::map<std::string, std::string>& tags,
                     const std::string& instance,
                     const std::set<std::string>& resuming);

// What Reap kept of one stage to be resumed.
struct KeptStage {
  std::vector<std::string> tasks;             // ARNs, not yet stopped
  std::vector<std::string> task_definitions;  // ARNs, ACTIVE
};
// By the stage's tag value (EcsTagValue of its id).
using KeptStages = std::map<std::string, KeptStage>;

// The connection that EcsRuntime::Ready sets up once for every stage: the
// clients, the settings it resolved and the task poller. Nothing in it
// changes once Open returns, so it is used without a lock. Thread-safe.
class EcsSession {
 public:
  // Configured, or found from the delegate's own task.
  struct Resolved {
    std::string region;
    std::string cluster;
    std::vector<std::string> subnets;
    std::string instance;  // EcsExecutorOptions::instance
  };

  // Connects to ECS and CloudWatch Logs in resolved.region (endpoints, proxy
  // and CA bundle from `env`: aws::TransportFromEnv, whose errors it
  // returns before any call); without subnets in `resolved`, takes those of
  // the delegate's own task `self` (as Harness's runner does); creates
  // options.log_group when missing. REQUIRES: credentials, http and clock
  // outlive the session.
  static absl::StatusOr<std::unique_ptr<EcsSession>> Open(
      const EcsExecutorOptions& options, Resolved resolved,
      const std::optional<aws::TaskMetadata>& self, const EnvMap& env,
      aws::CredentialsProvider& credentials, http::HttpClient& http,
      Clock& clock);
  EcsSession(const EcsSession&) = delete;
  EcsSession& operator=(const EcsSession&) = delete;

  const Resolved& resolved() const { return resolved_; }
  aws::JsonClient& ecs() { return *ecs_; }
  aws::LogsClient& logs() { return *logs_; }
  // Follows running step tasks in resolved().cluster.
  TaskPoller& poller() { return poller_; }

  // DescribeTasks of up to kMaxDescribeTasks ARNs, with their tags when
  // asked.
  absl::StatusOr<TaskStates> Describe(const std::vector<std::string>& arns,
                                      bool tags, const std::string& cluster);

  absl::Status StopTask(const std::string& arn, const std::string& reason,
                        const std::string& cluster);

  // Deregisters, then deletes, task definition revisions; returns those
  // deregistered (an already missing one counts), with failures in
  // `errors`.
  std::vector<std::string> RemoveTaskDefinitions(
      const std::vector<std::string>& arns, std::vector<std::string>* errors);

  // Removes this delegate's leftovers (IsLeftover with this instance): tasks
  // still running and, with `stage` empty, ACTIVE task definitions of its
  // family; a leftover's instance is gone when it is an ECS task that no
  // longer runs. What belongs to the stages `resuming` of this instance
  // (IsKeptForResume) stays, and goes into `kept` when given. Returns what it
  // removed ("task ID", "task definition FAMILY:REVISION"), with failures in
  // `errors`.
  std::vector<std::string> Reap(const std::string& delegate_name,
                                const std::string& stage,
                                std::vector<std::string>* errors,
                                const std::set<std::string>& resuming = {},
                                KeptStages* kept = nullptr);

  // The tasks of step `step` of stage `stage` that this instance started
  // (found by StartedBy and their tags), running or recently stopped, with
  // their state.
  absl::StatusOr<TaskStates> StepTasks(const std::string& delegate_name,
                                       const std::string& stage,
                                       const std::string& step);

 private:
  EcsSession(const EcsExecutorOptions& options, Resolved resolved,
             std::unique_ptr<aws::JsonClient> ecs,
             std::unique_ptr<aws::JsonClient> logs_json, Clock& clock);

  // ListTasks by startedBy; `desired_status` empty: ECS's default
  // (RUNNING).
  absl::StatusOr<std::vector<std::string>> ListTaskArns(
      const std::string& started_by, const std::string& desired_status = "");

  Resolved resolved_;  // fixed once Open returns
  const std::unique_ptr<aws::JsonClient> ecs_;
  const std::unique_ptr<aws::JsonClient> logs_json_;
  const std::unique_ptr<aws::LogsClient> logs_;
  TaskPoller poller_;  // last: its thread ends before the clients go
};

// What Ready removed of an earlier run, and what it could not.
struct ReapReport {
  std::vector<std::string> removed;  // "task ARN", "task definition ARN"
  std::vector<std::string> errors;
};

// What every stage of the delegate shares: the options, and the session once
// a stage has set it up. Thread-safe.
class EcsRuntime {
 public:
  explicit EcsRuntime(EcsExecutorOptions options);
  ~EcsRuntime();  // waits for ReadyInBackground
  EcsRuntime(const EcsRuntime&) = delete;
  EcsRuntime& operator=(const EcsRuntime&) = delete;

  // Whether ECS is set up for this delegate at all: a cluster configured, or
  // the delegate runs as an ECS task (ECS_CONTAINER_METADATA_URI_V4).
  bool Configured() const;

  // The session, set up at the first call: the cluster, region and instance
  // resolved (from ECS_CONTAINER_METADATA_URI_V4 when not configured), the
  // clients made, and what an earlier run of this instance left removed
  // (but what the stages named by KeepForResume need), told in `report`
  // (nullptr: not told). A failure is retried at the next call. The session
  // lives as long as the runtime.
  absl::StatusOr<EcsSession*> Ready(const std::string& delegate_name,
                                    ReapReport* report)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ready on a thread of the runtime's, `done` called with its outcome
  // there: the delegate's start-up does not wait for AWS, and a stage's Ready
  // waits for this one. Called once; a second call is ignored.
  void ReadyInBackground(
      std::string delegate_name,
      std::function<void(const absl::Status&, const ReapReport&)> done)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The stages (StageTask ids) an earlier process of this instance left that
  // will be resumed (ExecutorStartup::resuming): Ready keeps their tasks and
  // task definitions. Effective when called before the first Ready.
  void KeepForResume(const std::vector<std::string>& stages)
      ABSL_LOCKS_EXCLUDED(mu_);
  // What Ready kept of `stage`, handed over once (empty afterwards, and for
  // a stage it did not keep anything of).
  KeptStage TakeKept(const std::string& stage) ABSL_LOCKS_EXCLUDED(mu_);

  const EcsExecutorOptions& options() const { return options_; }
  Clock& clock() { return clock_; }

 private:
  absl::StatusOr<EcsSession*> SetUp(const std::string& delegate_name,
                                    ReapReport* report)
      ABSL_LOCKS_EXCLUDED(mu_);

  const EcsExecutorOptions options_;
  Clock& clock_;
  http::HttpClient http_;

  absl::Mutex mu_;          // one Ready at a time
  std::thread background_;  // ReadyInBackground's; set once, before use
  std::atomic<bool> background_started_{false};
  absl::Notification background_done_;
  // Kept across failed Ready calls (a refreshing provider keeps its cache).
  std::unique_ptr<aws::CredentialsProvider> credentials_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<EcsSession> session_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> resuming_ ABSL_GUARDED_BY(mu_);
  KeptStages kept_ ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::ecs

#endif  // DELEGATE_EXECUTOR_ECS_ECS_RUNTIME_H_
