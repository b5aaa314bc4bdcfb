#include "executor/ecs/ecs_runtime.h"

#include <algorithm>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "aws/endpoints.h"
#include "executor/ecs/task_definition.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/env.h"
#include "util/json.h"
#include "util/strings.h"

namespace delegate::ecs {
namespace {

using json::Writer;

std::map<std::string, std::string> TagMap(const rapidjson::Value& v) {
  std::map<std::string, std::string> out;
  if (const rapidjson::Value* tags = json::ArrayMember(v, "tags")) {
    for (const rapidjson::Value& t : tags->GetArray()) {
      out[json::StringMember(t, "key")] = json::StringMember(t, "value");
    }
  }
  return out;
}

}  // namespace

std::string StartedBy(const std::string& delegate_name) {
  return "libdelegate-" + EcsName(delegate_name, 100);
}

std::string TaskId(const std::string& arn) {
  return arn.substr(arn.rfind('/') + 1);
}

std::string RequestBody(absl::FunctionRef<void(json::Writer&)> write) {
  rapidjson::StringBuffer b;
  Writer w(b);
  w.StartObject();
  write(w);
  w.EndObject();
  return b.GetString();
}

absl::StatusOr<rapidjson::Document> ParseAnswer(const std::string& body,
                                                std::string_view operation) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InternalError(
        absl::StrCat("ECS ", AbslView(operation), ": the answer is not JSON"));
  }
  return doc;
}

absl::StatusOr<TaskStates> ParseDescribeTasksAnswer(const std::string& body) {
  absl::StatusOr<rapidjson::Document> doc = ParseAnswer(body, "DescribeTasks");
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
          // The step's container, or a stage task's runner.
          const std::string name = json::StringMember(c, "name");
          if (name != kStepContainer && name != kRunnerContainer &&
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
            } else if (json::StringMember(d, "name") == "privateIPv4Address") {
              s.private_ip = json::StringMember(d, "value");
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

bool IsLeftover(const std::map<std::string, std::string>& tags,
                const std::string& delegate_name, const std::string& instance,
                const std::string& stage,
                absl::FunctionRef<bool(const std::string&)> instance_gone) {
  auto d = tags.find(kTagDelegate);
  auto i = tags.find(kTagInstance);
  auto s = tags.find(kTagStage);
  if (d == tags.end() || d->second != EcsTagValue(delegate_name) ||
      i == tags.end()) {
    return false;
  }
  if (!stage.empty()) {
    return s != tags.end() && s->second == EcsTagValue(stage) &&
           i->second == EcsTagValue(instance);
  }
  return i->second == EcsTagValue(instance) || instance_gone(i->second);
}

bool IsKeptForResume(const std::map<std::string, std::string>& tags,
                     const std::string& instance,
                     const std::set<std::string>& resuming) {
  auto i = tags.find(kTagInstance);
  auto s = tags.find(kTagStage);
  if (i == tags.end() || i->second != EcsTagValue(instance) ||
      s == tags.end()) {
    return false;
  }
  return std::any_of(resuming.begin(), resuming.end(),
                     [&](const std::string& stage) {
                       return EcsTagValue(stage) == s->second;
                     });
}

// ------------------------------------------------------------ runtime

EcsRuntime::EcsRuntime(EcsExecutorOptions options)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : Clock::Real()) {}

EcsRuntime::~EcsRuntime() {
  if (background_.joinable()) background_.join();
}

bool EcsRuntime::Configured() const {
  if (!options_.cluster.empty()) return true;
  const EnvMap env = options_.env ? *options_.env : ProcessEnvironment();
  auto it = env.find(aws::kMetadataUriVar);
  return it != env.end() && !it->second.empty();
}

void EcsRuntime::ReadyInBackground(
    std::string delegate_name,
    std::function<void(const absl::Status&, const ReapReport&)> done) {
  if (background_started_.exchange(true)) return;
  background_ = std::thread(
      [this, name = std::move(delegate_name), done = std::move(done)] {
        ReapReport report;
        absl::StatusOr<EcsSession*> session = SetUp(name, &report);
        // Told before a stage may go on: its removals are the start's.
        done(session.status(), report);
        background_done_.Notify();
      });
}

absl::StatusOr<EcsSession*> EcsRuntime::Ready(const std::string& delegate_name,
                                              ReapReport* report) {
  // What the start-up began goes first: its removals are not a stage's.
  if (background_started_.load()) background_done_.WaitForNotification();
  return SetUp(delegate_name, report);
}

absl::StatusOr<EcsSession*> EcsRuntime::SetUp(const std::string& delegate_name,
                                              ReapReport* report) {
  absl::MutexLock lock(&mu_);
  if (session_) return session_.get();
  const EnvMap env = options_.env ? *options_.env : ProcessEnvironment();

  std::optional<aws::TaskMetadata> self;
  if (auto it = env.find(aws::kMetadataUriVar);
      it != env.end() && !it->second.empty()) {
    absl::StatusOr<aws::TaskMetadata> m =
        aws::FetchTaskMetadata(http_, it->second);
    if (!m.ok()) return m.status();
    self = *m;
  }
  EcsSession::Resolved resolved;
  absl::StatusOr<std::string> region =
      aws::ResolveRegion(env, self ? self->task_arn : "");
  if (!region.ok()) return region.status();
  resolved.region = *region;
  resolved.cluster = !options_.cluster.empty() ? options_.cluster
                     : self                    ? self->cluster
                                               : "";
  if (resolved.cluster.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ECS: no cluster: set DELEGATE_ECS_CLUSTER, or run the delegate as "
        "an ECS task (",
        aws::kMetadataUriVar, " tells it its cluster)"));
  }
  resolved.instance = !options_.instance.empty() ? options_.instance
                      : self                     ? self->task_arn
                                                 : HostName();
  resolved.subnets = options_.subnets;

  if (!credentials_) {
    absl::StatusOr<std::unique_ptr<aws::CredentialsProvider>> creds =
        aws::DefaultCredentialsChain(env, {}, http_, clock_);
    if (!creds.ok()) return creds.status();
    credentials_ = *std::move(creds);
  }
  absl::StatusOr<std::unique_ptr<EcsSession>> session = EcsSession::Open(
      options_, std::move(resolved), self, env, *credentials_, http_, clock_);
  if (!session.ok()) return session.status();

  ReapReport local;
  if (report == nullptr) report = &local;
  std::vector<std::string> removed =
      (*session)->Reap(delegate_name, "", &report->errors, resuming_, &kept_);
  report->removed.insert(report->removed.end(), removed.begin(), removed.end());
  session_ = *std::move(session);
  return session_.get();
}

void EcsRuntime::KeepForResume(const std::vector<std::string>& stages) {
  absl::MutexLock lock(&mu_);
  resuming_ = std::set<std::string>(stages.begin(), stages.end());
}

KeptStage EcsRuntime::TakeKept(const std::string& stage) {
  absl::MutexLock lock(&mu_);
  auto it = kept_.find(EcsTagValue(stage));
  if (it == kept_.end()) return {};
  KeptStage out = std::move(it->second);
  kept_.erase(it);
  return out;
}

// ------------------------------------------------------------ session

EcsSession::EcsSession(const EcsExecutorOptions& options, Resolved resolved,
                       std::unique_ptr<aws::JsonClient> ecs,
                       std::unique_ptr<aws::JsonClient> logs_json, Clock& clock)
    : resolved_(std::move(resolved)),
      ecs_(std::move(ecs)),
      logs_json_(std::move(logs_json)),
      logs_(std::make_unique<aws::LogsClient>(
          *logs_json_,
          aws::LogsRateLimits{.get_log_events_per_s =
                                  options.log_reads_per_second},
          &clock)),
      poller_(
          [this](const std::vector<std::string>& arns) {
            return Describe(arns, false, resolved_.cluster);
          },
          options.poll_interval) {}

absl::StatusOr<std::unique_ptr<EcsSession>> EcsSession::Open(
    const EcsExecutorOptions& options, Resolved resolved,
    const std::optional<aws::TaskMetadata>& self, const EnvMap& env,
    aws::CredentialsProvider& credentials, http::HttpClient& http,
    Clock& clock) {
  // The proxy and CA bundle of the service calls; the metadata and
  // credential endpoints are always reached directly (aws/transport.h).
  absl::StatusOr<aws::Transport> transport = aws::TransportFromEnv(env);
  if (!transport.ok()) {
    return absl::Status(transport.status().code(),
                        absl::StrCat("ECS: ", transport.status().message()));
  }
  absl::StatusOr<std::string> ecs_url =
      aws::ResolveEndpoint(aws::kEcs, resolved.region, env);
  if (!ecs_url.ok()) return ecs_url.status();
  absl::StatusOr<std::string> logs_url =
      aws::ResolveEndpoint(aws::kCloudWatchLogs, resolved.region, env);
  if (!logs_url.ok()) return logs_url.status();
  auto client = [&](const aws::ServiceSpec& spec, const std::string& url) {
    aws::JsonClientOptions o;
    o.service = spec;
    o.endpoint = url;
    o.region = resolved.region;
    o.credentials = &credentials;
    o.http = &http;
    o.clock = &clock;
    o.transport = *transport;
    return std::make_unique<aws::JsonClient>(std::move(o));
  };
  std::unique_ptr<aws::JsonClient> ecs = client(aws::kEcs, *ecs_url);
  std::unique_ptr<aws::JsonClient> logs_json =
      client(aws::kCloudWatchLogs, *logs_url);
  auto session = absl::WrapUnique(new EcsSession(options, std::move(resolved),
                                                 std::move(ecs),
                                                 std::move(logs_json), clock));

  if (session->resolved_.subnets.empty() && self && !self->task_arn.empty()) {
    // The delegate's own subnet, as Harness's runner does.
    absl::StatusOr<TaskStates> own =
        session->Describe({self->task_arn}, false, self->cluster);
    if (!own.ok()) return own.status();
    if (auto it = own->find(self->task_arn); it != own->end()) {
      session->resolved_.subnets = it->second.subnets;
    }
  }

  if (absl::Status s = session->logs_->EnsureLogGroup(options.log_group);
      !s.ok()) {
    return s;
  }
  return session;
}

absl::StatusOr<TaskStates> EcsSession::Describe(
    const std::vector<std::string>& arns, bool tags,
    const std::string& cluster) {
  const std::string body = RequestBody([&](Writer& w) {
    json::StringField(w, "cluster", cluster);
    json::Key(w, "tasks");
    json::StringList(w, arns);
    if (tags) {
      json::Key(w, "include");
      json::StringList(w, {"TAGS"});
    }
  });
  absl::StatusOr<std::string> answer = ecs_->Call("DescribeTasks", body);
  if (!answer.ok()) return answer.status();
  return ParseDescribeTasksAnswer(*answer);
}

absl::Status EcsSession::StopTask(const std::string& arn,
                                  const std::string& reason,
                                  const std::string& cluster) {
  const std::string body = RequestBody([&](Writer& w) {
    json::StringField(w, "cluster", cluster);
    json::StringField(w, "task", arn);
    json::StringField(w, "reason", reason.substr(0, 255));
  });
  absl::StatusOr<std::string> r = ecs_->Call("StopTask", body);
  return r.ok() ? absl::OkStatus() : r.status();
}

std::vector<std::string> EcsSession::RemoveTaskDefinitions(
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
    const std::string body = RequestBody([&](Writer& w) {
      json::Key(w, "taskDefinitions");
      json::StringList(w, chunk);
    });
    absl::StatusOr<std::string> deleted =
        ecs_->Call("DeleteTaskDefinitions", body);
    if (!deleted.ok())
      errors->push_back(std::string(deleted.status().message()));
  }
  return deregistered;
}

absl::StatusOr<std::vector<std::string>> EcsSession::ListTaskArns(
    const std::string& started_by, const std::string& desired_status) {
  std::vector<std::string> arns;
  std::string token;
  do {
    const std::string body = RequestBody([&](Writer& w) {
      json::StringField(w, "cluster", resolved_.cluster);
      json::StringField(w, "startedBy", started_by);
      if (!desired_status.empty()) {
        json::StringField(w, "desiredStatus", desired_status);
      }
      if (!token.empty()) {
        json::StringField(w, "nextToken", token);
      }
    });
    absl::StatusOr<std::string> answer = ecs_->Call("ListTasks", body);
    if (!answer.ok()) return answer.status();
    absl::StatusOr<rapidjson::Document> doc = ParseAnswer(*answer, "ListTasks");
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

absl::StatusOr<TaskStates> EcsSession::StepTasks(
    const std::string& delegate_name, const std::string& stage,
    const std::string& step) {
  std::vector<std::string> arns;
  // A task stopped while nobody followed it is listed as STOPPED for about
  // an hour.
  for (const char* desired : {"RUNNING", "STOPPED"}) {
    absl::StatusOr<std::vector<std::string>> listed =
        ListTaskArns(StartedBy(delegate_name), desired);
    if (!listed.ok()) return listed.status();
    arns.insert(arns.end(), listed->begin(), listed->end());
  }
  const std::map<std::string, std::string> wanted = {
      {kTagDelegate, EcsTagValue(delegate_name)},
      {kTagInstance, EcsTagValue(resolved_.instance)},
      {kTagStage, EcsTagValue(stage)},
      {kTagStep, EcsTagValue(step)}};
  TaskStates out;
  for (const std::vector<std::string>& chunk :
       Chunks(arns, kMaxDescribeTasks)) {
    absl::StatusOr<TaskStates> states =
        Describe(chunk, true, resolved_.cluster);
    if (!states.ok()) return states.status();
    for (auto& [arn, state] : *states) {
      if (!state.missing.empty()) continue;
      // Not captured by the lambda: clang 14 refuses a structured binding
      // in a capture.
      const auto& tags = state.tags;
      const bool match =
          std::all_of(wanted.begin(), wanted.end(), [&](const auto& tag) {
            auto it = tags.find(tag.first);
            return it != tags.end() && it->second == tag.second;
          });
      if (match) out[arn] = std::move(state);
    }
  }
  return out;
}

std::vector<std::string> EcsSession::Reap(const std::string& delegate_name,
                                          const std::string& stage,
                                          std::vector<std::string>* errors,
                                          const std::set<std::string>& resuming,
                                          KeptStages* kept) {
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
    return IsLeftover(tags, delegate_name, me, stage, is_dead);
  };
  // What a stage to be resumed has is recorded, not removed.
  auto keep = [&](const std::string& arn,
                  const std::map<std::string, std::string>& tags,
                  std::vector<std::string> KeptStage::*list) {
    if (!IsKeptForResume(tags, me, resuming)) return false;
    if (kept) ((*kept)[tags.at(kTagStage)].*list).push_back(arn);
    return true;
  };

  absl::StatusOr<std::vector<std::string>> arns =
      ListTaskArns(StartedBy(delegate_name));
  if (!arns.ok()) {
    errors->push_back(
        absl::StrCat("cannot list tasks: ", arns.status().message()));
  } else {
    for (const std::vector<std::string>& chunk :
         Chunks(*arns, kMaxDescribeTasks)) {
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
        if (keep(arn, state.tags, &KeptStage::tasks)) continue;
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
    const std::string body = RequestBody([&](Writer& w) {
      json::StringField(w, "familyPrefix", TaskFamily(delegate_name));
      json::StringField(w, "status", "ACTIVE");
      if (!token.empty()) {
        json::StringField(w, "nextToken", token);
      }
    });
    absl::StatusOr<std::string> answer =
        ecs_->Call("ListTaskDefinitions", body);
    if (!answer.ok()) {
      errors->push_back(absl::StrCat("cannot list task definitions: ",
                                     answer.status().message()));
      break;
    }
    absl::StatusOr<rapidjson::Document> doc =
        ParseAnswer(*answer, "ListTaskDefinitions");
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
        ParseAnswer(*answer, "DescribeTaskDefinition");
    if (!doc.ok()) continue;
    const std::map<std::string, std::string> tags = TagMap(*doc);
    if (!ours(tags)) continue;
    if (keep(arn, tags, &KeptStage::task_definitions)) continue;
    to_delete.push_back(arn);
  }
  for (const std::string& arn : RemoveTaskDefinitions(to_delete, errors)) {
    removed.push_back("task definition " + arn.substr(arn.rfind('/') + 1));
  }
  return removed;
}

}  // namespace delegate::ecs
