// The "ecs-fargate" and "ecs-ec2" executors, one instance per stage. Each
// step is one ECS task: the stage registers the task definitions its steps
// need (tagged with the delegate, its instance and the stage), runs each step
// with RunTask (a client token per attempt, so a retried call cannot start it
// twice), follows it with the session's DescribeTasks poller and reads its
// output back from CloudWatch Logs while it runs. Timeout and cancel stop it
// with StopTask; cleanup stops stragglers and deregisters and deletes the
// stage's task definitions. After a restart, a resumed stage adopts what the
// earlier process made for it (kept by the start's removal of leftovers),
// and the step it was running is found by its startedBy and tags and
// followed like one just started. What every stage shares (the AWS clients,
// the poller, the removal of a crashed earlier run's leftovers at the first
// stage) is in ecs_runtime.h.
#include "delegate/ecs_executor.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "aws/logs_client.h"
#include "aws/sigv4.h"
#include "executor/ecs/ecs_runtime.h"
#include "executor/ecs/task_definition.h"
#include "executor/shell.h"
#include "rapidjson/document.h"
#include "runner/identity.h"
#include "runner/step_runner_client.h"
#include "util/json.h"

namespace delegate {
namespace {

using ecs::EcsRuntime;
using ecs::EcsSession;
using ecs::kTagDelegate;
using ecs::kTagInstance;
using ecs::kTagStage;
using ecs::kTagStep;
using ecs::LaunchType;
using ecs::ParseAnswer;
using ecs::ReapReport;
using ecs::RequestBody;
using ecs::StartedBy;
using ecs::TaskId;
using ecs::TaskState;
using json::Writer;

class EcsExecutor final : public Executor {
 public:
  EcsExecutor(std::shared_ptr<EcsRuntime> runtime, LaunchType launch)
      : runtime_(std::move(runtime)), launch_(launch) {
    std::random_device rd;
    nonce_ = absl::StrCat(rd(), rd());
  }

  absl::Status Validate(const Stage& stage) override {
    std::vector<std::string> problems =
        ecs::CheckStageForEcs(stage, launch_, runtime_->options().stage_task);
    if (launch_ == LaunchType::kFargate &&
        runtime_->options().execution_role_arn.empty()) {
      problems.push_back(
          "DELEGATE_ECS_EXECUTION_ROLE_ARN is not set: Fargate needs an "
          "execution role to write the steps' output to CloudWatch Logs "
          "(and to read their secrets)");
    }
    if (problems.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  }

  absl::Status Initialize(const StageContext& ctx) override {
    if (absl::Status s = Open(ctx); !s.ok()) return s;
    if (runtime_->options().stage_task) return StartStageTask(ctx);
    return absl::OkStatus();
  }
  absl::Status Resume(const StageContext& ctx) override;
  StepResult Execute(const StepContext& ctx) override;
  absl::Status Cleanup(const StageContext& ctx) override;

 private:
  // The session, checked for what the stage's launch type needs.
  absl::Status Open(const StageContext& ctx);
  std::vector<std::pair<std::string, std::string>> Tags(
      const StageContext& ctx) const {
    return {{kTagDelegate, ecs::EcsTagValue(ctx.delegate_name)},
            {kTagInstance, ecs::EcsTagValue(session_->resolved().instance)},
            {kTagStage, ecs::EcsTagValue(ctx.task_id)}};
  }
  absl::StatusOr<std::string> TaskDefinitionFor(
      const std::string& key, const std::string& register_json,
      const std::stop_token& stop);
  // `step_id` empty and `index` -1: the stage's task.
  absl::StatusOr<std::string> RunTask(const StageContext& stage,
                                      const std::string& step_id, int index,
                                      const std::string& definition,
                                      const std::string& overrides);
  // A stage task: registered, run, waited for, and its runner dialled.
  absl::Status StartStageTask(const StageContext& ctx);
  // A step through the stage task's runner.
  StepResult ExecuteInStageTask(const StepContext& ctx);
  // The step's task an earlier process of the delegate started, followed
  // from the start of its log.
  StepResult Reattach(const StepContext& ctx);
  // Follows the step's started task `arn` to its end: its log to the step's
  // output, stopped at the step's deadline or stop (or when it does not
  // start in time), its exit or why it never ran read.
  StepResult FollowToEnd(const StepContext& ctx, const std::string& arn);
  std::string LogStreamOf(const std::string& arn) const {
    return absl::StrCat(runtime_->options().log_stream_prefix, "/",
                        ecs::kStepContainer, "/", TaskId(arn));
  }

  std::shared_ptr<EcsRuntime> runtime_;
  const LaunchType launch_;
  std::string nonce_;
  EcsSession* session_ = nullptr;  // set by a successful Initialize/Resume
  bool unanswered_run_ = false;    // a RunTask call ended without an answer
  std::map<std::string, std::string> definitions_;  // key -> ARN
  std::vector<std::string> registered_;             // ARNs, in order
  std::map<std::string, std::string> started_;      // task ARN -> last status
  // A stage task's.
  ecs::StageTask stage_task_;
  std::map<std::string, std::string> tokens_;  // by step container
  std::unique_ptr<runner::StepRunnerClient> runner_;
};

absl::Status EcsExecutor::Open(const StageContext& ctx) {
  ReapReport report;
  absl::StatusOr<EcsSession*> session =
      runtime_->Ready(ctx.delegate_name, &report);
  for (const std::string& removed : report.removed) {
    ctx.output.SystemLine(absl::StrCat(
        "ECS: removed ", removed, ", left by an earlier run of this delegate"));
  }
  for (const std::string& e : report.errors) ctx.output.SystemLine("ECS: " + e);
  if (!session.ok()) return session.status();
  if (launch_ == LaunchType::kFargate &&
      (*session)->resolved().subnets.empty()) {
    return absl::FailedPreconditionError(
        "ECS: Fargate steps need subnets: set DELEGATE_ECS_SUBNETS, or run "
        "the delegate as an awsvpc ECS task (its subnet is then used)");
  }
  session_ = *session;
  return absl::OkStatus();
}

absl::Status EcsExecutor::Resume(const StageContext& ctx) {
  if (absl::Status s = Open(ctx); !s.ok()) return s;
  // What the earlier process made for the stage, which the start's removal
  // of its leftovers kept (EcsRuntime::KeepForResume): its task definitions
  // go at cleanup with those registered from now on, its tasks are stopped
  // then if still running. Steps register their definitions anew (the
  // cache of the earlier process is gone).
  ecs::KeptStage kept = runtime_->TakeKept(ctx.task_id);
  for (const std::string& arn : kept.tasks) started_[arn] = "RUNNING";
  registered_ = std::move(kept.task_definitions);
  if (runtime_->options().stage_task) {
    // The stage's key went with the earlier process: its runner cannot be
    // dialled again. The stage is cleaned up (its task stopped, adopted
    // above) and reported.
    return absl::UnimplementedError(
        "a stage task cannot be resumed after the delegate restarted (the "
        "key its runner accepts died with the earlier process)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EcsExecutor::TaskDefinitionFor(
    const std::string& key, const std::string& register_json,
    const std::stop_token& stop) {
  if (auto it = definitions_.find(key); it != definitions_.end()) {
    return it->second;
  }
  absl::StatusOr<std::string> answer =
      session_->ecs().Call("RegisterTaskDefinition", register_json,
                           [&] { return stop.stop_requested(); });
  if (!answer.ok()) return answer.status();
  absl::StatusOr<rapidjson::Document> doc =
      ParseAnswer(*answer, "RegisterTaskDefinition");
  if (!doc.ok()) return doc.status();
  const rapidjson::Value* td = json::Member(*doc, "taskDefinition");
  const std::string arn =
      td ? json::StringMember(*td, "taskDefinitionArn") : "";
  if (arn.empty()) {
    return absl::InternalError(
        "ECS RegisterTaskDefinition: the answer has no taskDefinitionArn");
  }
  definitions_[key] = arn;
  registered_.push_back(arn);
  return arn;
}

absl::StatusOr<std::string> EcsExecutor::RunTask(const StageContext& stage,
                                                 const std::string& step_id,
                                                 int index,
                                                 const std::string& definition,
                                                 const std::string& overrides) {
  const EcsSession::Resolved& r = session_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  std::vector<std::pair<std::string, std::string>> tags = Tags(stage);
  if (!step_id.empty()) tags.push_back({kTagStep, ecs::EcsTagValue(step_id)});
  const std::string body = RequestBody([&](Writer& w) {
    json::StringField(w, "cluster", r.cluster);
    json::StringField(w, "taskDefinition", definition);
    json::Key(w, "count");
    w.Int(1);
    json::StringField(w, "launchType",
                      launch_ == LaunchType::kFargate ? "FARGATE" : "EC2");
    if (launch_ == LaunchType::kFargate) {
      json::StringField(w, "platformVersion", o.platform_version);
    }
    if (!r.subnets.empty()) {
      json::Key(w, "networkConfiguration");
      w.StartObject();
      json::Key(w, "awsvpcConfiguration");
      w.StartObject();
      json::Key(w, "subnets");
      json::StringList(w, r.subnets);
      if (!o.security_groups.empty()) {
        json::Key(w, "securityGroups");
        json::StringList(w, o.security_groups);
      }
      json::StringField(w, "assignPublicIp",
                        o.assign_public_ip ? "ENABLED" : "DISABLED");
      w.EndObject();
      w.EndObject();
    }
    if (!overrides.empty()) {
      json::Key(w, "overrides");
      w.RawValue(overrides.data(), overrides.size(), rapidjson::kObjectType);
    }
    json::StringField(w, "startedBy", StartedBy(stage.delegate_name));
    json::Key(w, "tags");
    ecs::WriteTags(w, tags);
    // The same token for every retry of this call, a new one per stage run.
    json::StringField(
        w, "clientToken",
        "ld" + aws::HexSha256(absl::StrCat(r.instance, "|", stage.task_id, "|",
                                           index, "|", nonce_))
                   .substr(0, 62));
  });
  absl::StatusOr<std::string> answer = session_->ecs().Call(
      "RunTask", body, [&] { return stage.stop.stop_requested(); });
  if (!answer.ok()) {
    // Without an answer (no connection, throttled to the end, cancelled in
    // flight) ECS may have started the task all the same.
    const absl::StatusCode code = answer.status().code();
    unanswered_run_ |= code != absl::StatusCode::kInvalidArgument &&
                       code != absl::StatusCode::kPermissionDenied &&
                       code != absl::StatusCode::kUnauthenticated &&
                       code != absl::StatusCode::kNotFound;
    return answer.status();
  }
  absl::StatusOr<rapidjson::Document> doc = ParseAnswer(*answer, "RunTask");
  if (!doc.ok()) return doc.status();
  if (const rapidjson::Value* failures = json::ArrayMember(*doc, "failures");
      failures && !failures->Empty()) {
    const rapidjson::Value& f = (*failures)[0];
    return absl::UnavailableError(
        absl::StrCat("ECS could not start the step's task: ",
                     json::StringMember(f, "reason"),
                     json::StringMember(f, "detail").empty() ? "" : ": ",
                     json::StringMember(f, "detail")));
  }
  const rapidjson::Value* tasks = json::ArrayMember(*doc, "tasks");
  if (!tasks || tasks->Empty()) {
    return absl::InternalError("ECS RunTask: the answer names no task");
  }
  return json::StringMember((*tasks)[0], "taskArn");
}

StepResult EcsExecutor::Execute(const StepContext& ctx) {
  StepResult result;
  result.status = StepStatus::kFailure;
  if (!session_) {
    result.error = "ECS: the stage was not initialized";
    return result;
  }
  if (ctx.reattach) return Reattach(ctx);
  if (runtime_->options().stage_task) return ExecuteInStageTask(ctx);
  const EcsSession::Resolved& r = session_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  ecs::StepTaskInputs in;
  in.launch = launch_;
  in.region = r.region;
  in.network_mode = launch_ == LaunchType::kFargate || !r.subnets.empty()
                        ? "awsvpc"
                        : "bridge";
  in.family = ecs::TaskFamily(ctx.stage.delegate_name);
  in.options = &o;
  in.tags = Tags(ctx.stage);
  absl::StatusOr<ecs::StepTask> task =
      ecs::BuildStepTask(ctx.stage.stage, ctx.step, in);
  if (!task.ok()) {
    result.error = std::string(task.status().message());
    return result;
  }
  absl::StatusOr<std::string> definition =
      TaskDefinitionFor(task->definition_key, task->register_json, ctx.stop);
  if (!definition.ok()) {
    result.status = absl::IsCancelled(definition.status())
                        ? StepStatus::kCancelled
                        : StepStatus::kFailure;
    result.error = std::string(definition.status().message());
    return result;
  }
  absl::StatusOr<std::string> arn =
      RunTask(ctx.stage, ctx.step.id, static_cast<int>(ctx.index), *definition,
              task->overrides_json);
  if (!arn.ok()) {
    result.status = absl::IsCancelled(arn.status()) ? StepStatus::kCancelled
                                                    : StepStatus::kFailure;
    result.error = std::string(arn.status().message());
    return result;
  }
  started_[*arn] = "PROVISIONING";
  ctx.output.SystemLine(
      absl::StrCat("ECS task ", TaskId(*arn), " (",
                   definition->substr(definition->rfind('/') + 1), "), log ",
                   o.log_group, " ", LogStreamOf(*arn)));
  return FollowToEnd(ctx, *arn);
}

StepResult EcsExecutor::Reattach(const StepContext& ctx) {
  StepResult result;
  result.status = StepStatus::kFailure;
  absl::StatusOr<ecs::TaskStates> tasks = session_->StepTasks(
      ctx.stage.delegate_name, ctx.stage.task_id, ctx.step.id);
  if (!tasks.ok()) {
    result.error = absl::StrCat("re-attaching to the ECS task of step ",
                                ctx.step.id, ": ", tasks.status().message());
    return result;
  }
  // A step runs as one task; were there more, the one still running.
  std::string arn;
  for (const auto& [a, state] : *tasks) {
    if (arn.empty() || state.last_status != "STOPPED") arn = a;
  }
  if (arn.empty()) {
    result.error = absl::StrCat(
        "the delegate restarted during step ", ctx.step.id,
        " before its ECS task was started (or after it was gone): there is "
        "nothing to re-attach to, and the step's result is unknown");
    return result;
  }
  started_[arn] = tasks->at(arn).last_status;
  ctx.output.SystemLine(
      absl::StrCat("re-attached to ECS task ", TaskId(arn),
                   " after the delegate restarted; its log from the start "
                   "follows (log ",
                   runtime_->options().log_group, " ", LogStreamOf(arn), ")"));
  return FollowToEnd(ctx, arn);
}

StepResult EcsExecutor::FollowToEnd(const StepContext& ctx,
                                    const std::string& arn) {
  StepResult result;
  result.status = StepStatus::kFailure;
  const EcsSession::Resolved& r = session_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  Clock& clock = runtime_->clock();
  aws::LogTailer tailer(session_->logs(), o.log_group, LogStreamOf(arn));
  auto tail = [&] {
    absl::StatusOr<std::vector<aws::LogEvent>> events = tailer.Poll();
    if (!events.ok()) return size_t{0};
    for (const aws::LogEvent& e : *events) {
      ctx.output.Write(LogStream::kStdout, e.message);
      if (e.message.empty() || e.message.back() != '\n') {
        ctx.output.Write(LogStream::kStdout, "\n");
      }
    }
    return events->size();
  };

  session_->poller().Watch(arn);
  // A re-attached task gets start_timeout from now to start.
  const absl::Time run_at = clock.Now();
  std::optional<StepStatus> stopped_for;
  std::string stopped_why;
  absl::Time give_up = absl::InfiniteFuture();
  TaskState state;
  bool started = false;
  absl::Time last_tail = absl::InfinitePast();
  for (;;) {
    state =
        session_->poller().WaitForChange(arn, state.version, o.poll_interval);
    if (!state.last_status.empty()) started_[arn] = state.last_status;
    const bool stopped = state.last_status == "STOPPED";
    if (state.last_status == "RUNNING" || state.last_status == "DEACTIVATING" ||
        state.last_status == "STOPPING" ||
        state.last_status == "DEPROVISIONING") {
      started = true;
    }
    const absl::Time now = clock.Now();
    if (!stopped && now - last_tail >= o.poll_interval) {
      tail();
      last_tail = now;
    }
    if (stopped) break;
    if (!stopped_for) {
      std::optional<StepStatus> why = StopReason(ctx);
      if (!why && !started && now - run_at > o.start_timeout) {
        why = StepStatus::kFailure;
        stopped_why = absl::StrCat(
            "the task did not start within ",
            absl::FormatDuration(o.start_timeout), " (still ",
            state.last_status.empty() ? "unknown" : state.last_status,
            "); stopped it. Check the cluster's capacity, the subnets' route "
            "to the image registry, and the task's events in the ECS console");
      }
      if (why) {
        stopped_for = why;
        const std::string reason =
            *why == StepStatus::kCancelled ? "cancelled by the delegate"
            : *why == StepStatus::kTimeout ? "step timed out"
                                           : "did not start in time";
        if (absl::Status s = session_->StopTask(arn, reason, r.cluster);
            !s.ok()) {
          ctx.output.SystemLine(absl::StrCat("ECS: ", s.message()));
        }
        give_up = now + o.grace_period + absl::Seconds(60);
      }
    } else if (now > give_up) {
      break;  // cleanup stops it again
    }
  }
  session_->poller().Unwatch(arn);
  // awslogs delivers a little after the container ends: read until quiet.
  for (int quiet = 0, polls = 0; quiet < 2 && polls < 20; ++polls) {
    quiet = tail() == 0 ? quiet + 1 : 0;
    if (quiet < 2) clock.SleepFor(std::min(o.poll_interval, absl::Seconds(1)));
  }
  ctx.output.Flush();

  if (stopped_for == StepStatus::kCancelled ||
      stopped_for == StepStatus::kTimeout) {
    result.status = *stopped_for;
    result.error =
        *stopped_for == StepStatus::kTimeout ? "timed out" : "cancelled";
    return result;
  }
  if (stopped_for == StepStatus::kFailure) {
    result.error = stopped_why;
    return result;
  }
  if (state.last_status != "STOPPED") {
    result.error = "ECS did not report the task as stopped";
    return result;
  }
  if (state.exit_code) {
    result.exit_code = state.exit_code;
    if (*state.exit_code == 0) {
      result.status = StepStatus::kSuccess;
    } else {
      result.error = absl::StrCat("exit status ", *state.exit_code);
      if (!state.container_reason.empty()) {
        absl::StrAppend(&result.error, " (", state.container_reason, ")");
      }
    }
    return result;
  }
  result.error =
      absl::StrCat("the step never ran: ECS stopped its task (",
                   state.stop_code.empty() ? "no stop code" : state.stop_code,
                   "): ", state.stopped_reason,
                   state.container_reason.empty() ||
                           state.container_reason == state.stopped_reason
                       ? ""
                       : "; " + state.container_reason);
  return result;
}

absl::Status EcsExecutor::StartStageTask(const StageContext& ctx) {
  const EcsSession::Resolved& r = session_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  if (r.subnets.empty()) {
    return absl::FailedPreconditionError(
        "ECS: a stage task needs subnets (the delegate dials its IP): set "
        "DELEGATE_ECS_SUBNETS, or run the delegate as an awsvpc ECS task");
  }
  ecs::StageTaskInputs in;
  in.launch = launch_;
  in.region = r.region;
  in.family = ecs::TaskFamily(ctx.delegate_name);
  in.options = &o;
  in.runner_image = o.runner_image;
  in.tags = Tags(ctx);
  absl::StatusOr<ecs::StageTask> task = ecs::BuildStageTask(ctx.stage, in);
  if (!task.ok()) return task.status();
  stage_task_ = *std::move(task);
  absl::StatusOr<std::string> definition = TaskDefinitionFor(
      stage_task_.definition_key, stage_task_.register_json, ctx.stop);
  if (!definition.ok()) return definition.status();
  // The stage's key, and a token per step container: this run's alone.
  absl::StatusOr<runner::Identity> identity =
      runner::MakeIdentity("delegate " + ctx.task_id);
  if (!identity.ok()) return identity.status();
  std::vector<std::pair<std::string, std::string>> tokens;
  std::random_device rd;
  for (const std::string& container : stage_task_.containers) {
    tokens.emplace_back(container,
                        absl::StrCat(absl::Hex(rd()), absl::Hex(rd()),
                                     absl::Hex(rd()), absl::Hex(rd())));
    tokens_[container] = tokens.back().second;
  }
  absl::StatusOr<std::string> arn =
      RunTask(ctx, "", -1, *definition,
              ecs::StageTaskOverrides(identity->sha256, tokens));
  if (!arn.ok()) return arn.status();
  started_[*arn] = "PROVISIONING";
  ctx.output.SystemLine(
      absl::StrCat("ECS stage task ", TaskId(*arn), " (",
                   definition->substr(definition->rfind('/') + 1),
                   "): ", stage_task_.containers.size(), " step container",
                   stage_task_.containers.size() == 1 ? "" : "s", ", log ",
                   o.log_group, " stage/"));
  // Until it runs (or stops, or does not start in time).
  Clock& clock = runtime_->clock();
  session_->poller().Watch(*arn);
  const absl::Time give_up = clock.Now() + o.start_timeout;
  TaskState state;
  // A task just started may be MISSING for a moment (DescribeTasks is
  // eventually consistent): only the timeout ends the wait.
  while (state.last_status != "RUNNING" && state.last_status != "STOPPED" &&
         !ctx.stop.stop_requested() && clock.Now() < give_up) {
    state =
        session_->poller().WaitForChange(*arn, state.version, o.poll_interval);
    if (!state.last_status.empty()) started_[*arn] = state.last_status;
  }
  session_->poller().Unwatch(*arn);
  if (ctx.stop.stop_requested()) {
    return absl::CancelledError("cancelled while the stage task started");
  }
  if (state.last_status != "RUNNING") {
    return absl::UnavailableError(
        state.last_status == "STOPPED"
            ? absl::StrCat("the stage task never ran: ECS stopped it (",
                           state.stop_code, "): ", state.stopped_reason,
                           state.container_reason.empty()
                               ? ""
                               : "; " + state.container_reason)
            : absl::StrCat(
                  "the stage task did not start within ",
                  absl::FormatDuration(o.start_timeout), " (still ",
                  state.last_status.empty() ? "unknown" : state.last_status,
                  "); check the cluster's capacity and the subnets' "
                  "route to the image registry"));
  }
  if (state.private_ip.empty()) {
    return absl::UnavailableError("the stage task runs but has no IP");
  }
  // In short tries, so that a cancel is heard while the runner starts.
  const std::string target =
      absl::StrCat(state.private_ip, ":", ecs::kRunnerPort);
  const absl::Time connect_until =
      std::max(give_up, clock.Now() + absl::Seconds(30));
  absl::StatusOr<std::unique_ptr<runner::StepRunnerClient>> client;
  do {
    client =
        runner::StepRunnerClient::Connect(target, *identity, absl::Seconds(5));
  } while (!client.ok() && !absl::IsUnauthenticated(client.status()) &&
           !ctx.stop.stop_requested() && clock.Now() < connect_until);
  if (ctx.stop.stop_requested()) {
    return absl::CancelledError("cancelled while the stage task started");
  }
  if (!client.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the stage task's runner at ", state.private_ip, ":", ecs::kRunnerPort,
        " did not answer: ", client.status().message(),
        " (the security group must let the delegate reach that port)"));
  }
  runner_ = *std::move(client);
  return absl::OkStatus();
}

StepResult EcsExecutor::ExecuteInStageTask(const StepContext& ctx) {
  StepResult result;
  result.status = StepStatus::kFailure;
  const Step& step = ctx.step;
  if (!runner_ || ctx.index >= stage_task_.step_containers.size()) {
    result.error = "ECS: the stage task has no container for this step";
    return result;
  }
  const std::string& container = stage_task_.step_containers[ctx.index];
  runner::RunnerStep run;
  run.container = container;
  run.container_token = tokens_[container];
  run.step_id = step.id;
  const std::string working_dir =
      step.working_dir.empty()
          ? ecs::kWorkspacePath
          : (absl::StartsWith(step.working_dir, "/")
                 ? step.working_dir
                 : absl::StrCat(ecs::kWorkspacePath, "/", step.working_dir));
  if (!step.commands.empty()) {
    run.argv = {"/bin/sh", "-c", CommandScript(step.commands)};
  } else if (!step.entrypoint.empty()) {
    run.argv = step.entrypoint;
    run.argv.insert(run.argv.end(), step.args.begin(), step.args.end());
  } else {
    result.error =
        "in an ECS stage task a step needs commands or an entrypoint (the "
        "image's own command is not run)";
    return result;
  }
  run.working_dir = working_dir;
  for (const auto& [name, value] : step.envs) {
    // A secret ARN's value is the secret, which ECS gave the container
    // (its definition's `secrets`): the container's env has it.
    if (!ecs::IsSecretArn(value)) run.env[name] = value;
  }
  // As on Docker: the output file out of the workspace.
  run.output_file = absl::StrCat(ecs::kEnginePath, "/", ctx.index, "-",
                                 ecs::EcsName(step.id, 64), "-output.env");
  run.env["HARNESS_OUTPUT_FILE"] = run.output_file;
  run.env["DRONE_OUTPUT"] = run.output_file;
  run.env["HARNESS_WORKSPACE"] = ecs::kWorkspacePath;
  run.env["HARNESS_STAGE_ID"] = ctx.stage.task_id;
  run.env["HARNESS_STEP_ID"] = step.id;
  for (const auto& [id, value] : ctx.stage.stage.secrets) {
    if (!value.empty()) run.mask.push_back(value);
  }
  run.stop_grace = runtime_->options().grace_period;
  absl::StatusOr<runner::RunnerStepEnd> end = runner_->Run(
      run,
      [&](int stream, std::string_view data) {
        ctx.output.Write(stream == 2 ? LogStream::kStderr : LogStream::kStdout,
                         data);
      },
      ctx.stop, ctx.deadline);
  ctx.output.Flush();
  if (!end.ok()) {
    result.error = std::string(end.status().message());
    return result;
  }
  if (end->deadline_passed) {
    result.status = StepStatus::kTimeout;
    result.error = "timed out";
    return result;
  }
  if (end->stopped) {
    result.status = StepStatus::kCancelled;
    result.error = "cancelled";
    return result;
  }
  if (!end->error.empty()) {
    result.error = end->error;
    return result;
  }
  if (end->signal != 0) {
    // As a shell (and Docker) reports it.
    result.exit_code = 128 + end->signal;
    result.error = absl::StrCat("killed by signal ", end->signal,
                                end->signal == 9 ? " (out of memory?)" : "");
    return result;
  }
  result.exit_code = end->exit_code;
  for (const std::string& name : step.outputs) {
    if (auto it = end->outputs.find(name); it != end->outputs.end()) {
      result.outputs[name] = it->second;
    }
  }
  if (!end->outputs_error.empty()) {
    ctx.output.SystemLine("outputs: " + end->outputs_error);
  }
  if (end->exit_code == 0) {
    result.status = StepStatus::kSuccess;
  } else {
    result.error = absl::StrCat("exit status ", end->exit_code);
  }
  return result;
}

absl::Status EcsExecutor::Cleanup(const StageContext& ctx) {
  if (!session_) return absl::OkStatus();
  // The runner ends the task itself; StopTask below covers it when not.
  if (runner_) {
    (void)runner_->Shutdown();
    runner_.reset();
  }
  const EcsSession::Resolved& r = session_->resolved();
  std::vector<std::string> errors;
  for (const auto& [arn, status] : started_) {
    if (status == "STOPPED") continue;
    auto states = session_->Describe({arn}, false, r.cluster);
    if (states.ok()) {
      auto it = states->find(arn);
      if (it != states->end() && (it->second.last_status == "STOPPED" ||
                                  !it->second.missing.empty())) {
        continue;
      }
    }
    if (absl::Status s = session_->StopTask(arn, "stage cleanup", r.cluster);
        !s.ok()) {
      errors.push_back(std::string(s.message()));
    } else {
      ctx.output.SystemLine("ECS: stopped task " + TaskId(arn));
    }
  }
  // What a RunTask without an answer may have started: found by its tags.
  if (unanswered_run_) session_->Reap(ctx.delegate_name, ctx.task_id, &errors);
  session_->RemoveTaskDefinitions(registered_, &errors);
  if (errors.empty()) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("ECS cleanup: ", absl::StrJoin(errors, "; ")));
}

}  // namespace

absl::Status ReapEcsLeftovers(EcsExecutorOptions options,
                              const std::string& delegate_name,
                              std::vector<std::string>* removed) {
  EcsRuntime runtime(std::move(options));
  if (!runtime.Configured()) return absl::OkStatus();
  ReapReport report;
  absl::StatusOr<EcsSession*> session = runtime.Ready(delegate_name, &report);
  for (const std::string& what : report.removed) {
    removed->push_back("ECS " + what);
  }
  if (!session.ok()) return session.status();
  if (!report.errors.empty()) {
    return absl::UnavailableError(
        absl::StrCat("ECS: ", absl::StrJoin(report.errors, "; ")));
  }
  return absl::OkStatus();
}

absl::Status RegisterEcsExecutors(ExecutorRegistry& registry,
                                  EcsExecutorOptions options) {
  auto runtime = std::make_shared<EcsRuntime>(std::move(options));
  // When ECS is set up, what an earlier run left is removed at start-up (on
  // a thread of the runtime's: the first stage waits for it, the delegate's
  // start does not); otherwise AWS is contacted at the first stage, which
  // removes it then. Both executors share the runtime: it runs once.
  auto on_start = [runtime](const ExecutorStartup& startup) {
    runtime->KeepForResume(startup.resuming);
    if (!runtime->Configured()) return;
    EventLog* log = startup.log;
    runtime->ReadyInBackground(
        startup.delegate_name,
        [log](const absl::Status& status, const ReapReport& report) {
          for (const std::string& what : report.removed) {
            log->Info("removed a leftover of an earlier run",
                      {{"what", "ECS " + what}});
          }
          for (const std::string& e : report.errors) {
            log->Warn("could not remove a leftover on ECS", {{"error", e}});
          }
          if (!status.ok()) {
            log->Warn("could not look for leftovers on ECS",
                      {{"error", status.message()}});
          }
        });
  };
  absl::Status s = registry.Register(
      "ecs-fargate",
      [runtime] {
        return std::make_unique<EcsExecutor>(runtime, LaunchType::kFargate);
      },
      {.profile = &FargatePlatformProfile(), .on_start = on_start});
  if (!s.ok()) return s;
  return registry.Register(
      "ecs-ec2",
      [runtime] {
        return std::make_unique<EcsExecutor>(runtime, LaunchType::kEc2);
      },
      {.profile = &EcsEc2PlatformProfile(), .on_start = on_start});
}

}  // namespace delegate
