// The "ecs-fargate" and "ecs-ec2" executors. Each step is one ECS task: the
// stage registers the task definitions its steps need (tagged with the
// delegate, its instance and the stage), runs each step with RunTask (a
// client token per attempt, so a retried call cannot start it twice), follows
// it with DescribeTasks (one call for every running step of the delegate)
// and reads its output back from CloudWatch Logs while it runs. Timeout and
// cancel stop it with StopTask; cleanup stops stragglers and deregisters and
// deletes the stage's task definitions, and the first stage removes what a
// crashed earlier run of the same instance left.
#include "delegate/ecs_executor.h"

#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "aws/credentials.h"
#include "aws/endpoints.h"
#include "aws/json_client.h"
#include "aws/logs_client.h"
#include "aws/sigv4.h"
#include "aws/task_metadata.h"
#include "executor/ecs/task_definition.h"
#include "http/http_client.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/env.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate {
namespace {

using ecs::LaunchType;
using json::Writer;

constexpr char kTagDelegate[] = "libdelegate:delegate";
constexpr char kTagInstance[] = "libdelegate:instance";
constexpr char kTagStage[] = "libdelegate:stage";
constexpr char kTagStep[] = "libdelegate:step";

absl::StatusOr<rapidjson::Document> ParseJson(const std::string& body,
                                              std::string_view what) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InternalError(
        absl::StrCat("ECS ", AbslView(what), ": the answer is not JSON"));
  }
  return doc;
}

std::map<std::string, std::string> TagMap(const rapidjson::Value& v) {
  std::map<std::string, std::string> out;
  if (const rapidjson::Value* tags = json::ArrayMember(v, "tags")) {
    for (const rapidjson::Value& t : tags->GetArray()) {
      out[json::StringMember(t, "key")] = json::StringMember(t, "value");
    }
  }
  return out;
}

// `items` in pieces of at most `n` (the API's limits per call).
std::vector<std::vector<std::string>> Chunks(
    const std::vector<std::string>& items, size_t n) {
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < items.size(); i += n) {
    out.emplace_back(items.begin() + i,
                     items.begin() + std::min(items.size(), i + n));
  }
  return out;
}

std::string TaskId(const std::string& arn) {
  return arn.substr(arn.rfind('/') + 1);
}

// What DescribeTasks last said about a task.
struct TaskState {
  uint64_t version = 0;  // bumped at every change
  std::string last_status;
  std::string stop_code;
  std::string stopped_reason;
  std::optional<int> exit_code;
  std::string container_reason;
  std::string missing;  // a failure reason ("MISSING") instead of a task
  // Only from Describe: the tags (when asked for) and the awsvpc subnets.
  std::map<std::string, std::string> tags;
  std::vector<std::string> subnets;
};
using TaskStates = std::map<std::string, TaskState>;  // by task ARN

// ------------------------------------------------------------ runtime

// What every stage of the delegate shares: the AWS clients, the resolved
// settings and the DescribeTasks poller. Thread-safe.
class EcsRuntime {
 public:
  explicit EcsRuntime(EcsExecutorOptions options)
      : options_(std::move(options)),
        clock_(options_.clock ? *options_.clock : Clock::Real()) {}

  ~EcsRuntime() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (poller_.joinable()) poller_.join();
  }

  struct Resolved {
    std::string region;
    std::string cluster;
    std::vector<std::string> subnets;
    std::string instance;
  };

  // Connects, discovers what is not configured and, the first time, reaps
  // what an earlier run of this instance left. Retried at the next stage
  // when it fails.
  absl::Status Ready(const std::string& delegate_name, OutputWriter& out)
      ABSL_LOCKS_EXCLUDED(mu_);

  const EcsExecutorOptions& options() const { return options_; }
  Clock& clock() { return clock_; }
  aws::JsonClient& ecs() { return *ecs_; }
  aws::LogsClient& logs() { return *logs_; }
  const Resolved& resolved() const { return resolved_; }

  // The poller follows `arn` until Unwatch.
  void Watch(const std::string& arn) ABSL_LOCKS_EXCLUDED(mu_);
  void Unwatch(const std::string& arn) ABSL_LOCKS_EXCLUDED(mu_);
  // The task's state once its version passes `seen`, or after `wait`.
  TaskState WaitForChange(const std::string& arn, uint64_t seen,
                          absl::Duration wait) ABSL_LOCKS_EXCLUDED(mu_);

  // DescribeTasks of up to 100 ARNs, with their tags when asked.
  absl::StatusOr<TaskStates> Describe(const std::vector<std::string>& arns,
                                      bool tags, const std::string& cluster);

  absl::Status StopTask(const std::string& arn, const std::string& reason,
                        const std::string& cluster);

  // Deregisters, then deletes, task definition revisions; returns those
  // deregistered (an already missing one counts), with failures in
  // `errors`.
  std::vector<std::string> RemoveTaskDefinitions(
      const std::vector<std::string>& arns, std::vector<std::string>* errors);

  // Removes this delegate's leftovers: tasks still running and ACTIVE task
  // definitions whose instance tag is `instance` (or an ECS task that no
  // longer runs). With `stage`, only that stage's tasks of this instance.
  // Returns what it removed.
  std::vector<std::string> Reap(const std::string& delegate_name,
                                const std::string& stage,
                                std::vector<std::string>* errors);

 private:
  void PollLoop() ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<std::string>> ListTaskArns(
      const std::string& started_by);

  const EcsExecutorOptions options_;
  Clock& clock_;
  http::HttpClient http_;

  absl::Mutex ready_mu_;  // one Ready at a time
  bool ready_ ABSL_GUARDED_BY(ready_mu_) = false;
  // Set once by Ready (under ready_mu_), read-only after.
  std::unique_ptr<aws::CredentialsProvider> credentials_;
  std::unique_ptr<aws::JsonClient> ecs_;
  std::unique_ptr<aws::JsonClient> logs_json_;
  std::unique_ptr<aws::LogsClient> logs_;
  Resolved resolved_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, TaskState> watched_ ABSL_GUARDED_BY(mu_);
  std::thread poller_;
};

absl::Status EcsRuntime::Ready(const std::string& delegate_name,
                               OutputWriter& out) {
  absl::MutexLock lock(&ready_mu_);
  if (ready_) return absl::OkStatus();
  const EnvMap env = options_.env ? *options_.env : ProcessEnvironment();

  std::optional<aws::TaskMetadata> self;
  if (auto it = env.find(aws::kMetadataUriVar);
      it != env.end() && !it->second.empty()) {
    absl::StatusOr<aws::TaskMetadata> m =
        aws::FetchTaskMetadata(http_, it->second);
    if (!m.ok()) return m.status();
    self = *m;
  }
  absl::StatusOr<std::string> region =
      aws::ResolveRegion(env, self ? self->task_arn : "");
  if (!region.ok()) return region.status();
  resolved_.region = *region;
  resolved_.cluster = !options_.cluster.empty() ? options_.cluster
                      : self                    ? self->cluster
                                                : "";
  if (resolved_.cluster.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ECS: no cluster: set DELEGATE_ECS_CLUSTER, or run the delegate as "
        "an ECS task (",
        aws::kMetadataUriVar, " tells it its cluster)"));
  }
  resolved_.instance = !options_.instance.empty() ? options_.instance
                       : self                     ? self->task_arn
                                                  : HostName();

  if (!credentials_) {
    absl::StatusOr<std::unique_ptr<aws::CredentialsProvider>> creds =
        aws::DefaultCredentialsChain(env, {}, http_, clock_);
    if (!creds.ok()) return creds.status();
    credentials_ = *std::move(creds);
  }
  absl::StatusOr<std::string> ecs_url =
      aws::ResolveEndpoint(aws::kEcs, resolved_.region, env);
  if (!ecs_url.ok()) return ecs_url.status();
  absl::StatusOr<std::string> logs_url =
      aws::ResolveEndpoint(aws::kCloudWatchLogs, resolved_.region, env);
  if (!logs_url.ok()) return logs_url.status();
  auto client = [&](const aws::ServiceSpec& spec, const std::string& url) {
    aws::JsonClientOptions o;
    o.service = spec;
    o.endpoint = url;
    o.region = resolved_.region;
    o.credentials = credentials_.get();
    o.http = &http_;
    o.clock = &clock_;
    return std::make_unique<aws::JsonClient>(std::move(o));
  };
  ecs_ = client(aws::kEcs, *ecs_url);
  logs_json_ = client(aws::kCloudWatchLogs, *logs_url);
  aws::LogsRateLimits limits;
  limits.get_log_events_per_s = options_.log_reads_per_second;
  logs_ = std::make_unique<aws::LogsClient>(*logs_json_, limits, &clock_);

  resolved_.subnets = options_.subnets;
  if (resolved_.subnets.empty() && self && !self->task_arn.empty()) {
    // The delegate's own subnet, as Harness's runner does.
    absl::StatusOr<TaskStates> own =
        Describe({self->task_arn}, false, self->cluster);
    if (!own.ok()) return own.status();
    if (auto it = own->find(self->task_arn); it != own->end()) {
      resolved_.subnets = it->second.subnets;
    }
  }

  if (absl::Status s = logs_->EnsureLogGroup(options_.log_group); !s.ok()) {
    return s;
  }
  std::vector<std::string> errors;
  for (const std::string& removed : Reap(delegate_name, "", &errors)) {
    out.SystemLine(absl::StrCat("ECS: removed ", removed,
                                ", left by an earlier run of this delegate"));
  }
  for (const std::string& e : errors) out.SystemLine("ECS: " + e);
  ready_ = true;
  return absl::OkStatus();
}

void EcsRuntime::Watch(const std::string& arn) {
  absl::MutexLock lock(&mu_);
  watched_.emplace(arn, TaskState{});
  if (!poller_.joinable()) poller_ = std::thread([this] { PollLoop(); });
}

void EcsRuntime::Unwatch(const std::string& arn) {
  absl::MutexLock lock(&mu_);
  watched_.erase(arn);
}

TaskState EcsRuntime::WaitForChange(const std::string& arn, uint64_t seen,
                                    absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  auto changed = [&] {
    auto it = watched_.find(arn);
    return stopping_ || it == watched_.end() || it->second.version > seen;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), wait);
  auto it = watched_.find(arn);
  return it == watched_.end() ? TaskState{} : it->second;
}

absl::StatusOr<TaskStates> EcsRuntime::Describe(
    const std::vector<std::string>& arns, bool tags,
    const std::string& cluster) {
  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  json::Key(w, "cluster");
  json::String(w, cluster);
  json::Key(w, "tasks");
  json::StringList(w, arns);
  if (tags) {
    json::Key(w, "include");
    json::StringList(w, {"TAGS"});
  }
  w.EndObject();
  absl::StatusOr<std::string> answer =
      ecs_->Call("DescribeTasks", b.GetString());
  if (!answer.ok()) return answer.status();
  absl::StatusOr<rapidjson::Document> doc = ParseJson(*answer, "DescribeTasks");
  if (!doc.ok()) return doc.status();
  TaskStates out;
  if (const rapidjson::Value* tasks = json::ArrayMember(*doc, "tasks")) {
    for (const rapidjson::Value& t : tasks->GetArray()) {
      TaskState s;
      s.last_status = json::StringMember(t, "lastStatus");
      s.stop_code = json::StringMember(t, "stopCode");
      s.stopped_reason = json::StringMember(t, "stoppedReason");
      if (const rapidjson::Value* containers =
              json::ArrayMember(t, "containers")) {
        for (const rapidjson::Value& c : containers->GetArray()) {
          if (json::StringMember(c, "name") != ecs::kStepContainer &&
              containers->Size() > 1) {
            continue;
          }
          auto code = c.FindMember("exitCode");
          if (code != c.MemberEnd() && code->value.IsInt()) {
            s.exit_code = code->value.GetInt();
          }
          s.container_reason = json::StringMember(c, "reason");
        }
      }
      s.tags = TagMap(t);
      if (const rapidjson::Value* attachments =
              json::ArrayMember(t, "attachments")) {
        for (const rapidjson::Value& a : attachments->GetArray()) {
          const rapidjson::Value* details = json::ArrayMember(a, "details");
          if (json::StringMember(a, "type") != "ElasticNetworkInterface" ||
              !details) {
            continue;
          }
          for (const rapidjson::Value& d : details->GetArray()) {
            if (json::StringMember(d, "name") == "subnetId") {
              s.subnets.push_back(json::StringMember(d, "value"));
            }
          }
        }
      }
      out[json::StringMember(t, "taskArn")] = std::move(s);
    }
  }
  if (const rapidjson::Value* failures = json::ArrayMember(*doc, "failures")) {
    for (const rapidjson::Value& f : failures->GetArray()) {
      TaskState s;
      s.missing = json::StringMember(f, "reason");
      out[json::StringMember(f, "arn")] = std::move(s);
    }
  }
  return out;
}

void EcsRuntime::PollLoop() {
  absl::Duration interval = options_.poll_interval;
  for (;;) {
    std::vector<std::string> arns;
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this] { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), interval);
      if (stopping_) return;
      for (const auto& [arn, state] : watched_) arns.push_back(arn);
    }
    bool failed = false;
    for (const std::vector<std::string>& chunk : Chunks(arns, 100)) {
      auto states = Describe(chunk, false, resolved_.cluster);
      if (!states.ok()) {
        failed = true;
        continue;
      }
      absl::MutexLock lock(&mu_);
      for (auto& [arn, now] : *states) {
        auto it = watched_.find(arn);
        if (it == watched_.end()) continue;
        TaskState& old = it->second;
        if (now.last_status != old.last_status ||
            now.exit_code != old.exit_code || now.missing != old.missing ||
            old.version == 0) {
          now.version = old.version + 1;
          old = now;
        }
      }
    }
    // Back off while ECS refuses or cannot be reached, up to 30 s.
    interval = failed ? std::min(interval * 2, absl::Seconds(30))
                      : options_.poll_interval;
  }
}

absl::Status EcsRuntime::StopTask(const std::string& arn,
                                  const std::string& reason,
                                  const std::string& cluster) {
  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  json::Key(w, "cluster");
  json::String(w, cluster);
  json::Key(w, "task");
  json::String(w, arn);
  json::Key(w, "reason");
  json::String(w, reason.substr(0, 255));
  w.EndObject();
  absl::StatusOr<std::string> r = ecs_->Call("StopTask", b.GetString());
  return r.ok() ? absl::OkStatus() : r.status();
}

std::vector<std::string> EcsRuntime::RemoveTaskDefinitions(
    const std::vector<std::string>& arns, std::vector<std::string>* errors) {
  std::vector<std::string> deregistered;
  for (const std::string& arn : arns) {
    absl::StatusOr<std::string> gone =
        ecs_->Call("DeregisterTaskDefinition",
                   absl::StrCat(R"({"taskDefinition":")", arn, "\"}"));
    if (!gone.ok() && !absl::IsNotFound(gone.status())) {
      errors->push_back(std::string(gone.status().message()));
      continue;
    }
    deregistered.push_back(arn);
  }
  // DeleteTaskDefinitions takes at most 10 at a time.
  for (const std::vector<std::string>& chunk : Chunks(deregistered, 10)) {
    rapidjson::StringBuffer b;
    Writer w(b);
    w.StartObject();
    json::Key(w, "taskDefinitions");
    json::StringList(w, chunk);
    w.EndObject();
    absl::StatusOr<std::string> deleted =
        ecs_->Call("DeleteTaskDefinitions", b.GetString());
    if (!deleted.ok())
      errors->push_back(std::string(deleted.status().message()));
  }
  return deregistered;
}

absl::StatusOr<std::vector<std::string>> EcsRuntime::ListTaskArns(
    const std::string& started_by) {
  std::vector<std::string> arns;
  std::string token;
  do {
    rapidjson::StringBuffer b;
    Writer w(b);
    w.StartObject();
    json::Key(w, "cluster");
    json::String(w, resolved_.cluster);
    json::Key(w, "startedBy");
    json::String(w, started_by);
    if (!token.empty()) {
      json::Key(w, "nextToken");
      json::String(w, token);
    }
    w.EndObject();
    absl::StatusOr<std::string> answer = ecs_->Call("ListTasks", b.GetString());
    if (!answer.ok()) return answer.status();
    absl::StatusOr<rapidjson::Document> doc = ParseJson(*answer, "ListTasks");
    if (!doc.ok()) return doc.status();
    if (const rapidjson::Value* list = json::ArrayMember(*doc, "taskArns")) {
      for (const rapidjson::Value& a : list->GetArray()) {
        if (a.IsString()) arns.push_back(a.GetString());
      }
    }
    token = json::StringMember(*doc, "nextToken");
  } while (!token.empty());
  return arns;
}

std::string StartedBy(const std::string& delegate_name) {
  return "libdelegate-" + ecs::EcsName(delegate_name, 100);
}

std::vector<std::string> EcsRuntime::Reap(const std::string& delegate_name,
                                          const std::string& stage,
                                          std::vector<std::string>* errors) {
  std::vector<std::string> removed;
  const std::string& me = resolved_.instance;
  // Instances other than this one that are ECS tasks which no longer run:
  // their leftovers are orphans too (a replaced delegate task).
  std::map<std::string, bool> dead;
  auto is_dead = [&](const std::string& instance) {
    if (instance == me) return true;
    if (!stage.empty() || !absl::StrContains(instance, ":task/")) return false;
    auto it = dead.find(instance);
    if (it != dead.end()) return it->second;
    // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID
    std::vector<std::string> parts = absl::StrSplit(instance, '/');
    bool gone = false;
    if (parts.size() == 3) {
      auto states = Describe({instance}, false, parts[1]);
      if (states.ok()) {
        auto s = states->find(instance);
        gone = s == states->end() || !s->second.missing.empty() ||
               s->second.last_status == "STOPPED";
      }
    }
    dead[instance] = gone;
    return gone;
  };
  auto ours = [&](const std::map<std::string, std::string>& tags) {
    auto d = tags.find(kTagDelegate);
    auto i = tags.find(kTagInstance);
    auto s = tags.find(kTagStage);
    if (d == tags.end() || d->second != ecs::EcsTagValue(delegate_name) ||
        i == tags.end()) {
      return false;
    }
    if (!stage.empty()) {
      return s != tags.end() && s->second == ecs::EcsTagValue(stage) &&
             i->second == ecs::EcsTagValue(me);
    }
    return i->second == ecs::EcsTagValue(me) || is_dead(i->second);
  };

  absl::StatusOr<std::vector<std::string>> arns =
      ListTaskArns(StartedBy(delegate_name));
  if (!arns.ok()) {
    errors->push_back(
        absl::StrCat("cannot list tasks: ", arns.status().message()));
  } else {
    for (const std::vector<std::string>& chunk : Chunks(*arns, 100)) {
      auto states = Describe(chunk, true, resolved_.cluster);
      if (!states.ok()) {
        errors->push_back(std::string(states.status().message()));
        continue;
      }
      for (const auto& [arn, state] : *states) {
        if (state.last_status == "STOPPED" || !state.missing.empty() ||
            !ours(state.tags)) {
          continue;
        }
        if (absl::Status s = StopTask(arn, "stage cleanup by the delegate",
                                      resolved_.cluster);
            !s.ok()) {
          errors->push_back(std::string(s.message()));
        } else {
          removed.push_back("task " + TaskId(arn));
        }
      }
    }
  }

  // Task definitions: the delegate's family, ACTIVE revisions. A stage's
  // own are deregistered by its Cleanup, which knows them.
  if (!stage.empty()) return removed;
  std::string token;
  std::vector<std::string> defs;
  do {
    rapidjson::StringBuffer b;
    Writer w(b);
    w.StartObject();
    json::Key(w, "familyPrefix");
    json::String(w, ecs::TaskFamily(delegate_name));
    json::Key(w, "status");
    json::String(w, "ACTIVE");
    if (!token.empty()) {
      json::Key(w, "nextToken");
      json::String(w, token);
    }
    w.EndObject();
    absl::StatusOr<std::string> answer =
        ecs_->Call("ListTaskDefinitions", b.GetString());
    if (!answer.ok()) {
      errors->push_back(absl::StrCat("cannot list task definitions: ",
                                     answer.status().message()));
      break;
    }
    absl::StatusOr<rapidjson::Document> doc =
        ParseJson(*answer, "ListTaskDefinitions");
    if (!doc.ok()) break;
    if (const rapidjson::Value* list =
            json::ArrayMember(*doc, "taskDefinitionArns")) {
      for (const rapidjson::Value& a : list->GetArray()) {
        if (a.IsString()) defs.push_back(a.GetString());
      }
    }
    token = json::StringMember(*doc, "nextToken");
  } while (!token.empty());
  std::vector<std::string> to_delete;
  for (const std::string& arn : defs) {
    absl::StatusOr<std::string> answer = ecs_->Call(
        "DescribeTaskDefinition", absl::StrCat(R"({"taskDefinition":")", arn,
                                               R"(","include":["TAGS"]})"));
    if (!answer.ok()) {
      errors->push_back(std::string(answer.status().message()));
      continue;
    }
    absl::StatusOr<rapidjson::Document> doc =
        ParseJson(*answer, "DescribeTaskDefinition");
    if (!doc.ok() || !ours(TagMap(*doc))) continue;
    to_delete.push_back(arn);
  }
  for (const std::string& arn : RemoveTaskDefinitions(to_delete, errors)) {
    removed.push_back("task definition " + arn.substr(arn.rfind('/') + 1));
  }
  return removed;
}

// ------------------------------------------------------------ executor

class EcsExecutor final : public Executor {
 public:
  EcsExecutor(std::shared_ptr<EcsRuntime> runtime, LaunchType launch)
      : runtime_(std::move(runtime)), launch_(launch) {
    std::random_device rd;
    nonce_ = absl::StrCat(rd(), rd());
  }

  absl::Status Validate(const Stage& stage) override {
    std::vector<std::string> problems = ecs::CheckStageForEcs(stage, launch_);
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
    if (absl::Status s = runtime_->Ready(ctx.delegate_name, ctx.output);
        !s.ok()) {
      return s;
    }
    const EcsRuntime::Resolved& r = runtime_->resolved();
    if (launch_ == LaunchType::kFargate && r.subnets.empty()) {
      return absl::FailedPreconditionError(
          "ECS: Fargate steps need subnets: set DELEGATE_ECS_SUBNETS, or run "
          "the delegate as an awsvpc ECS task (its subnet is then used)");
    }
    initialized_ = true;
    return absl::OkStatus();
  }

  StepResult Execute(const StepContext& ctx) override;
  absl::Status Cleanup(const StageContext& ctx) override;

 private:
  std::vector<std::pair<std::string, std::string>> Tags(
      const StageContext& ctx) const {
    return {{kTagDelegate, ecs::EcsTagValue(ctx.delegate_name)},
            {kTagInstance, ecs::EcsTagValue(runtime_->resolved().instance)},
            {kTagStage, ecs::EcsTagValue(ctx.task_id)}};
  }
  absl::StatusOr<std::string> TaskDefinitionFor(const StepContext& ctx,
                                                const ecs::StepTask& task);
  absl::StatusOr<std::string> RunTask(const StepContext& ctx,
                                      const std::string& definition,
                                      const ecs::StepTask& task);

  std::shared_ptr<EcsRuntime> runtime_;
  const LaunchType launch_;
  std::string nonce_;
  bool initialized_ = false;
  bool unanswered_run_ = false;  // a RunTask call ended without an answer
  std::map<std::string, std::string> definitions_;  // key -> ARN
  std::vector<std::string> registered_;             // ARNs, in order
  std::map<std::string, std::string> started_;      // task ARN -> last status
};

absl::StatusOr<std::string> EcsExecutor::TaskDefinitionFor(
    const StepContext& ctx, const ecs::StepTask& task) {
  if (auto it = definitions_.find(task.definition_key);
      it != definitions_.end()) {
    return it->second;
  }
  absl::StatusOr<std::string> answer =
      runtime_->ecs().Call("RegisterTaskDefinition", task.register_json,
                           [&] { return ctx.stop.stop_requested(); });
  if (!answer.ok()) return answer.status();
  absl::StatusOr<rapidjson::Document> doc =
      ParseJson(*answer, "RegisterTaskDefinition");
  if (!doc.ok()) return doc.status();
  auto td = doc->FindMember("taskDefinition");
  const std::string arn =
      td == doc->MemberEnd()
          ? ""
          : json::StringMember(td->value, "taskDefinitionArn");
  if (arn.empty()) {
    return absl::InternalError(
        "ECS RegisterTaskDefinition: the answer has no taskDefinitionArn");
  }
  definitions_[task.definition_key] = arn;
  registered_.push_back(arn);
  return arn;
}

absl::StatusOr<std::string> EcsExecutor::RunTask(const StepContext& ctx,
                                                 const std::string& definition,
                                                 const ecs::StepTask& task) {
  const EcsRuntime::Resolved& r = runtime_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  std::vector<std::pair<std::string, std::string>> tags = Tags(ctx.stage);
  tags.push_back({kTagStep, ecs::EcsTagValue(ctx.step.id)});
  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  json::Key(w, "cluster");
  json::String(w, r.cluster);
  json::Key(w, "taskDefinition");
  json::String(w, definition);
  json::Key(w, "count");
  w.Int(1);
  json::Key(w, "launchType");
  json::String(w, launch_ == LaunchType::kFargate ? "FARGATE" : "EC2");
  if (launch_ == LaunchType::kFargate) {
    json::Key(w, "platformVersion");
    json::String(w, o.platform_version);
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
    json::Key(w, "assignPublicIp");
    json::String(w, o.assign_public_ip ? "ENABLED" : "DISABLED");
    w.EndObject();
    w.EndObject();
  }
  if (!task.overrides_json.empty()) {
    json::Key(w, "overrides");
    w.RawValue(task.overrides_json.data(), task.overrides_json.size(),
               rapidjson::kObjectType);
  }
  json::Key(w, "startedBy");
  json::String(w, StartedBy(ctx.stage.delegate_name));
  json::Key(w, "tags");
  ecs::WriteTags(w, tags);
  // The same token for every retry of this call, a new one per stage run.
  json::Key(w, "clientToken");
  json::String(
      w, "ld" + aws::HexSha256(absl::StrCat(r.instance, "|", ctx.stage.task_id,
                                            "|", ctx.index, "|", nonce_))
                    .substr(0, 62));
  w.EndObject();
  absl::StatusOr<std::string> answer = runtime_->ecs().Call(
      "RunTask", b.GetString(), [&] { return ctx.stop.stop_requested(); });
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
  absl::StatusOr<rapidjson::Document> doc = ParseJson(*answer, "RunTask");
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
  const EcsRuntime::Resolved& r = runtime_->resolved();
  const EcsExecutorOptions& o = runtime_->options();
  if (!initialized_) {
    result.error = "ECS: the stage was not initialized";
    return result;
  }
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
  absl::StatusOr<std::string> definition = TaskDefinitionFor(ctx, *task);
  if (!definition.ok()) {
    result.status = absl::IsCancelled(definition.status())
                        ? StepStatus::kCancelled
                        : StepStatus::kFailure;
    result.error = std::string(definition.status().message());
    return result;
  }
  absl::StatusOr<std::string> arn = RunTask(ctx, *definition, *task);
  if (!arn.ok()) {
    result.status = absl::IsCancelled(arn.status()) ? StepStatus::kCancelled
                                                    : StepStatus::kFailure;
    result.error = std::string(arn.status().message());
    return result;
  }
  started_[*arn] = "PROVISIONING";
  Clock& clock = runtime_->clock();
  const std::string stream = absl::StrCat(
      o.log_stream_prefix, "/", ecs::kStepContainer, "/", TaskId(*arn));
  ctx.output.SystemLine(
      absl::StrCat("ECS task ", TaskId(*arn), " (",
                   definition->substr(definition->rfind('/') + 1), "), log ",
                   o.log_group, " ", stream));
  aws::LogTailer tailer(runtime_->logs(), o.log_group, stream);
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

  runtime_->Watch(*arn);
  const absl::Time run_at = clock.Now();
  std::optional<StepStatus> stopped_for;
  std::string stopped_why;
  absl::Time give_up = absl::InfiniteFuture();
  TaskState state;
  bool started = false;
  absl::Time last_tail = absl::InfinitePast();
  for (;;) {
    state = runtime_->WaitForChange(*arn, state.version, o.poll_interval);
    if (!state.last_status.empty()) started_[*arn] = state.last_status;
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
        if (absl::Status s = runtime_->StopTask(*arn, reason, r.cluster);
            !s.ok()) {
          ctx.output.SystemLine(absl::StrCat("ECS: ", s.message()));
        }
        give_up = now + o.grace_period + absl::Seconds(60);
      }
    } else if (now > give_up) {
      break;  // cleanup stops it again
    }
  }
  runtime_->Unwatch(*arn);
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

absl::Status EcsExecutor::Cleanup(const StageContext& ctx) {
  if (!initialized_) return absl::OkStatus();
  const EcsRuntime::Resolved& r = runtime_->resolved();
  std::vector<std::string> errors;
  for (const auto& [arn, status] : started_) {
    if (status == "STOPPED") continue;
    auto states = runtime_->Describe({arn}, false, r.cluster);
    if (states.ok()) {
      auto it = states->find(arn);
      if (it != states->end() && (it->second.last_status == "STOPPED" ||
                                  !it->second.missing.empty())) {
        continue;
      }
    }
    if (absl::Status s = runtime_->StopTask(arn, "stage cleanup", r.cluster);
        !s.ok()) {
      errors.push_back(std::string(s.message()));
    } else {
      ctx.output.SystemLine("ECS: stopped task " + TaskId(arn));
    }
  }
  // What a RunTask without an answer may have started: found by its tags.
  if (unanswered_run_) runtime_->Reap(ctx.delegate_name, ctx.task_id, &errors);
  runtime_->RemoveTaskDefinitions(registered_, &errors);
  if (errors.empty()) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("ECS cleanup: ", absl::StrJoin(errors, "; ")));
}

}  // namespace

absl::Status RegisterEcsExecutors(ExecutorRegistry& registry,
                                  EcsExecutorOptions options) {
  auto runtime = std::make_shared<EcsRuntime>(std::move(options));
  absl::Status s = registry.Register("ecs-fargate",
                                     [runtime] {
                                       return std::make_unique<EcsExecutor>(
                                           runtime, LaunchType::kFargate);
                                     },
                                     {.profile = &FargatePlatformProfile()});
  if (!s.ok()) return s;
  return registry.Register("ecs-ec2",
                           [runtime] {
                             return std::make_unique<EcsExecutor>(
                                 runtime, LaunchType::kEc2);
                           },
                           {.profile = &EcsEc2PlatformProfile()});
}

}  // namespace delegate
